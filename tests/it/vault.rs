//! The Vault credential source against the Vault double: one lease and one
//! role per connection, renewal, end of lease life, revocation on every exit
//! path, outages, pgwarden's own token, prefetch, and no secret in any log.

use std::time::{Duration, Instant};

use crate::support::harness::{
    GENEROUS, Harness, Options, VaultAuth, VaultOptions, ended_with, session_user, wait_until,
};
use crate::support::vault_double::Mode;

/// After a test: every lease revoked, every role gone, no secret logged.
async fn finish(mut h: Harness) {
    h.shutdown().await;
    h.wait_for_no_dynamic_roles().await;
    assert!(
        h.vault().leases().is_empty(),
        "leases left: {:?}",
        h.vault().leases().len()
    );
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_gets_its_own_lease_and_role() {
    let h = Harness::start(Options::vault(VaultOptions::default())).await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(h.connect().await);
    }
    let mut users = Vec::new();
    for c in &clients {
        users.push(session_user(c).await);
    }
    let leases = h.vault().leases();
    assert_eq!(leases.len(), 5, "one lease per connection");
    let mut distinct = users.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 5, "one role per connection: {users:?}");
    for u in &users {
        assert!(u.starts_with("v-"), "Vault's username template: {u}");
        assert!(leases.iter().any(|l| &l.username == u));
        assert!(h.dynamic_roles().await.contains(u));
    }
    // Each connection made its own creds request.
    assert_eq!(h.vault().count("/v1/database/creds/"), 5);
    drop(clients);
    h.wait_for_no_dynamic_roles().await;
    wait_until(GENEROUS, "every lease is revoked", async || {
        h.vault().leases().is_empty()
    })
    .await;
    for u in &users {
        assert!(
            h.vault().revoked().contains(u),
            "{u} was revoked through Vault"
        );
    }
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_session_outlives_three_short_leases() {
    let h = Harness::start(Options::vault(VaultOptions {
        default_ttl: Duration::from_secs(3),
        max_ttl: Duration::from_secs(300),
        ..VaultOptions::default()
    }))
    .await;
    let c = h.connect().await;
    let role = session_user(&c).await;
    let first = h.valid_until(&role).await.expect("role has VALID UNTIL");
    let start = Instant::now();
    let mut last = first.clone();
    let mut advanced = 0;
    // More than three lease durations, working all the while.
    while start.elapsed() < Duration::from_secs(11) {
        let n: i32 = c.query_one("SELECT 1", &[]).await.unwrap().get(0);
        assert_eq!(n, 1);
        let now = h.valid_until(&role).await.expect("role still exists");
        if now != last {
            advanced += 1;
            last = now;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        advanced >= 2,
        "VALID UNTIL advanced {advanced} times ({first} → {last})"
    );
    let lease = h
        .vault()
        .leases()
        .into_iter()
        .find(|l| l.username == role)
        .unwrap();
    assert!(
        lease.renew_count >= 2,
        "renewed {} times",
        lease.renew_count
    );
    drop(c);
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_ttl_recycles_the_session_only_between_transactions() {
    // Vault's default revocation only drops the role, so whatever ends this
    // session is pgwarden's doing. The first renewal asks for more than the
    // max TTL leaves, so recycling starts then, long before the lease expires
    // (when pgwarden would end the session even inside a transaction).
    let h = Harness::start(Options::vault(VaultOptions {
        default_ttl: Duration::from_secs(2),
        max_ttl: Duration::from_secs(60),
        renew_increment: Some("1h".into()),
        terminate_on_revoke: false,
        ..VaultOptions::default()
    }))
    .await;
    let (c, conn) = h.connect_parts(&h.pg_config()).await.unwrap();
    let conn = tokio::spawn(conn);
    c.batch_execute("BEGIN").await.unwrap();
    let ends = h.logs.wait_for("lease_end", 1).await;
    assert_eq!(ends[0]["action"], "stop_when_idle", "{ends:?}");
    // The max TTL is reached, inside a transaction: untouched.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        c.query_one("SELECT 1", &[])
            .await
            .expect("in-transaction work goes on");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!conn.is_finished(), "session ended inside a transaction");
    c.batch_execute("COMMIT")
        .await
        .expect("commit goes through");
    // Now idle: pgwarden ends it with 57P01.
    let (code, message) = ended_with(conn).await;
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("lease"), "{message}");
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminate_policy_ends_the_session_at_once() {
    let h = Harness::start(Options::vault(VaultOptions {
        default_ttl: Duration::from_secs(2),
        max_ttl: Duration::from_secs(3),
        on_lease_end: Some("terminate".into()),
        ..VaultOptions::default()
    }))
    .await;
    let (c, conn) = h.connect_parts(&h.pg_config()).await.unwrap();
    let conn = tokio::spawn(conn);
    c.batch_execute("BEGIN").await.unwrap();
    let (code, message) = ended_with(conn).await;
    assert_eq!(code, "57P01", "{message}");
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_are_revoked_on_every_exit_path() {
    let mut h = Harness::start(Options::vault(VaultOptions::default())).await;
    // 1. The client closes.
    let c = h.connect().await;
    let closed = session_user(&c).await;
    drop(c);
    // 2. The client vanishes mid-query.
    let (c, conn) = h.connect_parts(&h.pg_config()).await.unwrap();
    let conn = tokio::spawn(conn);
    let killed = session_user(&c).await;
    let sleeper = tokio::spawn(async move { c.query("SELECT pg_sleep(60)", &[]).await });
    wait_until(GENEROUS, "the query runs", async || {
        h.direct()
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE usename = $1 AND query LIKE '%pg_sleep%'",
                &[&killed],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    conn.abort();
    sleeper.abort();
    // 3. The upstream backend is terminated.
    let c = h.connect().await;
    let terminated = session_user(&c).await;
    h.direct()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&terminated],
        )
        .await
        .unwrap();
    // 4. Shutdown with a session still open.
    let still_open = h.connect().await;
    let at_shutdown = session_user(&still_open).await;
    for role in [&closed, &killed, &terminated] {
        wait_until(GENEROUS, "the lease is revoked", async || {
            h.vault().revoked().contains(role)
        })
        .await;
    }
    assert_eq!(h.shutdown().await, 0, "nothing left unrevoked at shutdown");
    assert!(h.vault().revoked().contains(&at_shutdown));
    h.wait_for_no_dynamic_roles().await;
    drop(c);
    drop(still_open);
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_trouble_fails_new_connections_fast_with_08006() {
    let h = Harness::start(Options::vault(VaultOptions {
        timeout: "2s".into(),
        ..VaultOptions::default()
    }))
    .await;
    for mode in [
        Mode::Down,
        Mode::Slow(Duration::from_secs(120)),
        Mode::Sealed,
        Mode::Forbidden,
        Mode::RateLimited,
    ] {
        h.vault().set_mode(mode);
        // A 30 s client deadline: if pgwarden waited on a 120 s Vault, this would time out instead.
        let mut config = h.pg_config();
        config.connect_timeout(Duration::from_secs(30));
        let err = h
            .try_connect(&config)
            .await
            .err()
            .unwrap_or_else(|| panic!("{mode:?}: connected"));
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{mode:?}: not a server error: {err}"));
        assert_eq!(db.code().code(), "08006", "{mode:?}");
        assert_eq!(
            db.message(),
            "could not obtain database credentials",
            "{mode:?}"
        );
    }
    h.vault().set_mode(Mode::Up);
    let c = h.connect().await;
    assert!(
        session_user(&c).await.starts_with("v-"),
        "recovers without a restart"
    );
    drop(c);
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_leaves_live_sessions_alone_and_backlog_drains_after() {
    let h = Harness::start(Options::vault(VaultOptions::default())).await;
    let live = h.connect().await;
    let leaving = h.connect().await;
    let leaving_role = session_user(&leaving).await;
    h.vault().set_mode(Mode::Down);
    // Live sessions keep working.
    for _ in 0..10 {
        live.query_one("SELECT 1", &[])
            .await
            .expect("live session untouched");
    }
    // A session ending now cannot be revoked yet: its role stays, the revocation is pending.
    drop(leaving);
    wait_until(GENEROUS, "a revocation is pending", async || {
        h.pending_revocations() > 0
    })
    .await;
    assert!(h.dynamic_roles().await.contains(&leaving_role));
    h.vault().set_mode(Mode::Up);
    // The next connection works, and the backlog drains without waiting out a long backoff.
    let again = h.connect().await;
    assert!(session_user(&again).await.starts_with("v-"));
    wait_until(GENEROUS, "the backlog is drained", async || {
        h.pending_revocations() == 0
    })
    .await;
    assert!(!h.dynamic_roles().await.contains(&leaving_role));
    drop(live);
    drop(again);
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_token_is_renewed_and_obtained_again() {
    // Renewals come at 2/3 of the TTL: a third of it (2 s) must be slack
    // enough on a loaded machine, or the token dies first (and with it, in
    // Vault, the leases it issued — a session then in flight would die too).
    let h = Harness::start(Options::vault(VaultOptions {
        token_ttl: Duration::from_secs(6),
        token_max_ttl: Duration::from_secs(13),
        ..VaultOptions::default()
    }))
    .await;
    // Over two max TTLs: renewals, then fresh logins, and connections work throughout.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(28) {
        let c = h.connect().await;
        assert!(session_user(&c).await.starts_with("v-"));
        drop(c);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        h.vault().count("/v1/auth/token/renew-self") >= 2,
        "token renewed"
    );
    assert!(
        h.vault().count("/v1/auth/approle/login") >= 2,
        "logged in again after the max TTL"
    );
    // Revoked behind pgwarden's back: the next request logs in again.
    h.vault().revoke_all_tokens();
    let c = h.connect().await;
    assert!(session_user(&c).await.starts_with("v-"));
    drop(c);
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_and_token_logins_work() {
    for auth in [VaultAuth::Kubernetes, VaultAuth::Token] {
        let h = Harness::start(Options::vault(VaultOptions {
            auth,
            ..VaultOptions::default()
        }))
        .await;
        let c = h.connect().await;
        assert!(session_user(&c).await.starts_with("v-"), "{auth:?}");
        drop(c);
        finish(h).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_takes_vault_off_the_connect_path() {
    let h = Harness::start(Options::vault(VaultOptions {
        prefetch: 2,
        ..VaultOptions::default()
    }))
    .await;
    wait_until(GENEROUS, "the pool is full", async || {
        h.vault().leases().len() == 2
    })
    .await;
    let before: Vec<String> = h.vault().leases().into_iter().map(|l| l.username).collect();
    let started = Instant::now();
    let c = h.connect().await;
    let user = session_user(&c).await;
    // The session runs on a credential issued before it connected.
    assert!(
        before.contains(&user),
        "{user} came from the pool {before:?}"
    );
    let lease = h
        .vault()
        .leases()
        .into_iter()
        .find(|l| l.username == user)
        .unwrap();
    assert!(lease.issued_at < started);
    // The pool refills; each credential is used once.
    wait_until(GENEROUS, "the pool refills", async || {
        h.vault().leases().len() == 3
    })
    .await;
    let c2 = h.connect().await;
    assert_ne!(session_user(&c2).await, user);
    drop(c);
    drop(c2);
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetched_credentials_too_old_are_revoked_not_used() {
    let h = Harness::start(Options::vault(VaultOptions {
        prefetch: 1,
        prefetch_max_age: "2s".into(),
        ..VaultOptions::default()
    }))
    .await;
    wait_until(GENEROUS, "the pool is full", async || {
        h.vault().leases().len() == 1
    })
    .await;
    let first = h.vault().leases()[0].username.clone();
    wait_until(GENEROUS, "the stale credential is revoked", async || {
        h.vault().revoked().contains(&first)
    })
    .await;
    let c = h.connect().await;
    assert_ne!(session_user(&c).await, first);
    drop(c);
    finish(h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_the_database_refuses_is_retried_and_counted_until_it_succeeds() {
    let h = Harness::start(Options {
        admin: true,
        ..Options::vault(VaultOptions::default())
    })
    .await;
    let c = h.connect().await;
    let role = session_user(&c).await;
    // Vault answers 400 (the revocation statements failed), as when the database is
    // unreachable from Vault or refuses the DROP.
    h.vault().set_revocation_failure(true);
    drop(c);
    let failures = "pgwarden_lease_revocations_total{outcome=\"failure\"}";
    wait_until(
        GENEROUS,
        "the revocation failed and was tried again",
        async || h.metric(failures).await >= 2.0,
    )
    .await;
    assert_eq!(h.pending_revocations(), 1, "kept, not forgotten");
    assert_eq!(h.metric("pgwarden_lease_revocations_pending").await, 1.0);
    assert!(h.dynamic_roles().await.contains(&role), "not yet dropped");
    assert_eq!(h.vault().leases().len(), 1, "Vault still holds the lease");
    h.vault().set_revocation_failure(false);
    wait_until(GENEROUS, "a retry succeeds", async || {
        h.pending_revocations() == 0
    })
    .await;
    assert!(h.vault().revoked().contains(&role));
    assert!(!h.dynamic_roles().await.contains(&role));
    assert_eq!(
        h.metric("pgwarden_lease_revocations_total{outcome=\"success\"}")
            .await,
        1.0
    );
    finish(h).await;
}
