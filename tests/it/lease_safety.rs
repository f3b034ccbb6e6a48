//! No credential outlives what it was issued for: one that arrives after its
//! connection gave up (the handshake deadline, `[vault] timeout`) is revoked,
//! not lost; and a session is not let run past its credential's expiry unless
//! `on_lease_end = "keep"` says so, even when it never goes idle.

use std::time::Duration;

use crate::support::harness::{
    GENEROUS, Harness, Options, VaultOptions, ended_with, server_error, session_user, wait_until,
};
use crate::support::vault_double::Mode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_credential_that_arrives_after_the_timeout_is_revoked() {
    let mut h = Harness::start(Options::vault(VaultOptions {
        timeout: "1s".into(),
        ..VaultOptions::default()
    }))
    .await;
    // Vault answers after pgwarden stopped waiting, and issues the credential anyway.
    h.vault().set_finish_abandoned(true);
    h.vault().set_mode(Mode::Slow(Duration::from_secs(8)));
    let err = h
        .try_connect(&h.pg_config())
        .await
        .expect_err("no credential within the timeout");
    let (code, message) = server_error(&err);
    assert_eq!(code, "08006");
    assert_eq!(message, "could not obtain database credentials");
    // The double records a call once it has answered it.
    assert_eq!(
        h.vault().count("/v1/database/creds/"),
        0,
        "the client was answered before Vault was"
    );
    h.vault().set_mode(Mode::Up);
    // The late credential was issued: a lease and a role...
    wait_until(GENEROUS, "Vault issues the late credential", async || {
        h.vault().count("/v1/database/creds/") == 1
    })
    .await;
    // ...which pgwarden revokes instead of forgetting.
    wait_until(GENEROUS, "the late lease is revoked", async || {
        h.vault().leases().is_empty() && h.vault().revoked().len() == 1
    })
    .await;
    h.wait_for_no_dynamic_roles().await;
    let abandoned = h.logs.wait_for("credential_abandoned", 1).await;
    assert!(
        abandoned[0]["upstream_user"].as_str().is_some_and(|u| h
            .vault()
            .revoked()
            .iter()
            .any(|r| r == u)),
        "{abandoned:?}"
    );
    assert_eq!(h.shutdown().await, 0, "nothing left unrevoked");
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_created_after_the_handshake_deadline_is_dropped() {
    let h = Harness::start(Options {
        handshake_timeout: "2s".into(),
        role_prefix: Some("late_".into()),
        ..Options::default()
    })
    .await;
    // Warm the admin connection, so that the CREATE ROLE below is what waits.
    drop(h.connect().await);
    h.wait_for_no_dynamic_roles().await;
    // Holding pg_authid in SHARE mode lets logins read it but blocks CREATE ROLE.
    let locker = h.cluster.connect("postgres").await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE pg_authid IN SHARE MODE")
        .await
        .unwrap();
    let err = h
        .try_connect(&h.pg_config())
        .await
        .expect_err("the handshake deadline passes while the role is being created");
    // As PostgreSQL's own authentication_timeout answers.
    let (code, message) = server_error(&err);
    assert_eq!(code, "57014", "{message}");
    // The CREATE ROLE still waits on the lock; let it go through.
    wait_until(GENEROUS, "CREATE ROLE waits on the lock", async || {
        h.direct()
            .query_opt(
                "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
                 AND query ILIKE 'CREATE ROLE%'",
                &[],
            )
            .await
            .unwrap()
            .is_some()
    })
    .await;
    locker.batch_execute("COMMIT").await.unwrap();
    h.logs.wait_for("credential_abandoned", 1).await;
    h.wait_for_no_dynamic_roles().await;
    // And the source still works.
    let c = h.connect().await;
    assert!(session_user(&c).await.starts_with("late_"));
    drop(c);
    h.wait_for_no_dynamic_roles().await;
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_idle_in_a_transaction_is_ended_when_its_credential_expires() {
    // Vault's default revocation only drops the role, so whatever ends this
    // session is pgwarden's doing.
    let mut h = Harness::start(Options::vault(VaultOptions {
        default_ttl: Duration::from_secs(2),
        max_ttl: Duration::from_secs(4),
        terminate_on_revoke: false,
        ..VaultOptions::default()
    }))
    .await;
    let (c, conn) = h.connect_parts(&h.pg_config()).await.unwrap();
    let conn = tokio::spawn(conn);
    // Idle in a transaction from now on: recycle-when-idle never gets its chance.
    c.batch_execute("BEGIN").await.unwrap();
    let (code, message) = ended_with(conn).await;
    assert_eq!(code, "57P01", "{message}");
    assert!(message.contains("lease"), "{message}");
    let ends = h.logs.wait_for("lease_end", 2).await;
    assert!(
        ends.iter()
            .any(|e| e["reason"] == "the credential expires" && e["action"] == "stop"),
        "{ends:?}"
    );
    assert_eq!(h.shutdown().await, 0);
    h.wait_for_no_dynamic_roles().await;
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_lets_a_session_run_past_its_lease() {
    let mut h = Harness::start(Options::vault(VaultOptions {
        default_ttl: Duration::from_secs(2),
        max_ttl: Duration::from_secs(3),
        terminate_on_revoke: false,
        on_lease_end: Some("keep".into()),
        ..VaultOptions::default()
    }))
    .await;
    let (c, conn) = h.connect_parts(&h.pg_config()).await.unwrap();
    let conn = tokio::spawn(conn);
    c.batch_execute("BEGIN").await.unwrap();
    let role = session_user(&c).await;
    // Vault expires the lease by itself and drops the role.
    wait_until(GENEROUS, "Vault expires the lease", async || {
        h.vault().leases().is_empty() && !h.dynamic_roles().await.contains(&role)
    })
    .await;
    // Past the lease and any grace pgwarden would have given: still working.
    let ends = h.logs.wait_for("lease_end", 1).await;
    assert_eq!(ends[0]["action"], "keep", "{ends:?}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let n: i32 = c
        .query_one("SELECT 1", &[])
        .await
        .expect("the session runs on")
        .get(0);
    assert_eq!(n, 1);
    c.batch_execute("COMMIT").await.unwrap();
    assert!(!conn.is_finished());
    drop(c);
    h.shutdown().await;
    h.assert_no_secrets_logged();
}

/// A lock that blocks role creation fails the connection with 08006 once the
/// admin connection's `lock_timeout` passes, well inside the handshake
/// deadline (a minute here), instead of holding it until the deadline; and the
/// source works again when the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_on_role_creation_fails_the_connection_instead_of_hanging_it() {
    let h = Harness::start(Options {
        handshake_timeout: "120s".into(),
        ..Options::default()
    })
    .await;
    let locker = h.cluster.connect("postgres").await.unwrap();
    locker
        .batch_execute("BEGIN; LOCK TABLE pg_authid IN SHARE MODE")
        .await
        .unwrap();
    let mut config = h.pg_config();
    config.connect_timeout(Duration::from_secs(90));
    let err = h
        .try_connect(&config)
        .await
        .expect_err("no role can be created");
    // A server error: the client's own 90 s did not run out first.
    let (code, message) = server_error(&err);
    assert_eq!(code, "08006", "{message}");
    assert_eq!(message, "could not obtain database credentials");
    let failures = h.logs.text();
    assert!(
        failures.contains("lock timeout"),
        "the log says why: {failures}"
    );
    locker.batch_execute("COMMIT").await.unwrap();
    let c = h.connect().await;
    assert!(!session_user(&c).await.is_empty());
    drop(c);
    h.wait_for_no_dynamic_roles().await;
}
