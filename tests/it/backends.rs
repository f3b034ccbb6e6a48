//! A session's backend ends with its session, however the session ends, and a
//! built-in source role is dropped whatever its client did with it (issue 8,
//! items 1 and 2): a backend left running by a vanished client, a lease's
//! end, an idle timeout or a shutdown is cancelled (and, by the built-in
//! source, terminated before its role is dropped); a role that came to own
//! objects through `SET ROLE NONE` is cleaned up in the route's database; and
//! issuing never waits behind a revocation that waits on a lock.

use crate::support::harness::{GENEROUS, Harness, Options, VaultOptions, session_user, wait_until};

/// A loop that runs until it is stopped: it produces no output, so pgwarden
/// sees nothing move, and closing its socket alone does not stop it.
const ENDLESS: &str = "DO $$ BEGIN LOOP PERFORM pg_sleep(0.05); END LOOP; END $$";
/// The same, deaf to cancels: only a termination ends it.
const DEAF: &str = "DO $$ BEGIN LOOP BEGIN PERFORM pg_sleep(0.05); \
                    EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $$";

/// Starts `sql` on a new session; returns its backend's pid, its issued role
/// and the task holding the connection (abort it to make the client vanish).
async fn busy_session(
    h: &Harness,
    sql: &'static str,
) -> (
    i32,
    String,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, connection) = h.connect_parts(&h.pg_config()).await.unwrap();
    let connection = tokio::spawn(connection);
    let role = session_user(&client).await;
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    tokio::spawn(async move {
        let _ = client.batch_execute(sql).await;
    });
    wait_until(GENEROUS, "the loop runs upstream", async || {
        backend_state(h, pid).await.as_deref() == Some("active")
    })
    .await;
    (pid, role, connection)
}

async fn backend_state(h: &Harness, pid: i32) -> Option<String> {
    h.direct()
        .query_opt("SELECT state FROM pg_stat_activity WHERE pid = $1", &[&pid])
        .await
        .unwrap()
        .map(|r| r.get::<_, Option<String>>(0).unwrap_or_default())
}

async fn wait_for_backend_gone(h: &Harness, pid: i32, why: &str) {
    wait_until(GENEROUS, why, async || {
        backend_state(h, pid).await.is_none()
    })
    .await;
}

async fn vanished_client_leaves_no_backend(h: Harness) {
    let (pid, role, connection) = busy_session(&h, ENDLESS).await;
    connection.abort();
    wait_for_backend_gone(&h, pid, "the vanished client's backend ends").await;
    wait_until(GENEROUS, "the role is dropped", async || {
        !h.dynamic_roles().await.contains(&role)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_clients_backend_is_ended_with_the_built_in_source() {
    vanished_client_leaves_no_backend(Harness::start(Options::default()).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_clients_backend_is_ended_with_vault_even_if_revocation_only_drops_the_role() {
    // Vault's default revocation only drops the role: the cancel alone ends the loop.
    let vault = VaultOptions {
        terminate_on_revoke: false,
        ..VaultOptions::default()
    };
    vanished_client_leaves_no_backend(Harness::start(Options::vault(vault)).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_deaf_to_cancels_is_terminated_before_its_role_is_dropped() {
    let h = Harness::start(Options::default()).await;
    let (pid, role, connection) = busy_session(&h, DEAF).await;
    connection.abort();
    wait_for_backend_gone(&h, pid, "the built-in source terminates the backend").await;
    wait_until(GENEROUS, "the role is dropped", async || {
        !h.dynamic_roles().await.contains(&role)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_end_an_idle_timeout_and_a_shutdown_each_end_the_backend() {
    // The lease ends (a 4 s TTL that cannot be renewed past it) while the loop runs.
    let h = Harness::start(Options {
        ttl: "4s".into(),
        max_ttl: Some("4s".into()),
        ..Options::default()
    })
    .await;
    let (pid, _, _connection) = busy_session(&h, ENDLESS).await;
    wait_for_backend_gone(&h, pid, "the lease's end ends the backend").await;
    drop(h);

    // Nothing moves for the idle timeout while the loop runs.
    let h = Harness::start(Options {
        idle_timeout: Some("2s".into()),
        ..Options::default()
    })
    .await;
    let (pid, _, _connection) = busy_session(&h, ENDLESS).await;
    wait_for_backend_gone(&h, pid, "the idle timeout ends the backend").await;
    drop(h);

    let mut h = Harness::start(Options::default()).await;
    let (pid, _, _connection) = busy_session(&h, ENDLESS).await;
    assert_eq!(h.shutdown().await, 0, "every lease revoked");
    wait_for_backend_gone(&h, pid, "shutdown ends the backend").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_that_came_to_own_objects_in_the_routes_database_is_still_dropped() {
    let h = Harness::start(Options::default()).await;
    let client = h.connect().await;
    let role = session_user(&client).await;
    // Back to the login role, which then owns a large object and default
    // privileges in the route's database (not in the admin connection's).
    client
        .batch_execute(
            "SET ROLE NONE; SELECT lo_create(0); \
             ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO PUBLIC",
        )
        .await
        .unwrap();
    drop(client);
    wait_until(GENEROUS, "the role is dropped after all", async || {
        !h.dynamic_roles().await.contains(&role)
    })
    .await;
    wait_until(GENEROUS, "nothing is left to revoke", async || {
        h.pending_revocations() == 0
    })
    .await;
    // The large object was handed to the admin user, not lost.
    let owners: Vec<String> = h
        .direct()
        .query(
            "SELECT pg_get_userbyid(lomowner)::text FROM pg_largeobject_metadata",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(owners, vec![pgwarden::dev::ADMIN_ROLE.to_owned()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issuing_never_waits_behind_a_revocation_that_waits_on_a_lock() {
    // Shorter than the admin connection's lock_timeout (10 s): a CREATE ROLE
    // queued behind the blocked DROP ROLE would miss it.
    let h = Harness::start(Options {
        handshake_timeout: "8s".into(),
        ..Options::default()
    })
    .await;
    let client = h.connect().await;
    let role = session_user(&client).await;
    // Someone holds the role's catalog row: its DROP ROLE will wait.
    let blocker = h.cluster.connect("postgres").await.unwrap();
    blocker
        .batch_execute(&format!(
            "BEGIN; ALTER ROLE \"{role}\" VALID UNTIL 'infinity'"
        ))
        .await
        .unwrap();
    drop(client);
    wait_until(GENEROUS, "the role's DROP waits on the lock", async || {
        let n: i64 = h
            .direct()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND query LIKE 'DROP ROLE%'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n > 0
    })
    .await;
    // A new session gets its credential meanwhile.
    let other = h.connect().await;
    let fresh = session_user(&other).await;
    assert_ne!(fresh, role);
    drop(other);
    blocker.batch_execute("ROLLBACK").await.unwrap();
    wait_until(
        GENEROUS,
        "the blocked role is dropped in the end",
        async || !h.dynamic_roles().await.contains(&role),
    )
    .await;
}
