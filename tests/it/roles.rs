//! Where a session differs from one that logs in as a shared database user: each pgwarden
//! session is a login role of its own acting as the route's session role
//! (`keycloak_owner`), so
//! - signalling another backend (`pg_cancel_backend`, `pg_terminate_backend`) needs the
//!   target's *login* role's privileges or `pg_signal_backend`: without the grant
//!   `pgwarden dev` (and so the harness) gives the owner role, a session cannot signal a
//!   sibling, nor even its own backend, where two sessions of one shared user can;
//! - `RESET ROLE` returns to the session role, and `SET ROLE NONE` to the login role.

use pgwarden::dev::{DATABASE, OWNER_ROLE};
use tokio_postgres::config::SslMode;

use crate::support::harness::{GENEROUS, Harness, Options, ended_with, wait_until};

async fn backend_pid(c: &tokio_postgres::Client) -> i32 {
    c.query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

async fn current_user(c: &tokio_postgres::Client) -> String {
    c.query_one("SELECT current_user::text", &[])
        .await
        .unwrap()
        .get(0)
}

/// Waits until backend `pid` is sleeping in `pg_sleep` (seen as the superuser).
async fn wait_for_sleep(h: &Harness, pid: i32) {
    wait_until(GENEROUS, "pg_sleep runs", async || {
        let n: i64 = h
            .direct()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
}

/// `SELECT <function>(pid)`: its result, or the SQLSTATE it failed with.
async fn signal(c: &tokio_postgres::Client, function: &str, pid: i32) -> Result<bool, String> {
    c.query_one(&format!("SELECT {function}($1)"), &[&pid])
        .await
        .map(|r| r.get(0))
        .map_err(|e| e.code().map(|c| c.code().to_owned()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_pg_signal_backend_a_session_cancels_and_terminates_a_sibling() {
    let h = Harness::start(Options::default()).await;
    let a = h.connect().await;
    let (b, b_conn) = h.connect_parts(&h.pg_config()).await.unwrap();
    let b_conn = tokio::spawn(b_conn);
    let b_pid = backend_pid(&b).await;
    let b = std::sync::Arc::new(b);
    let sleeper = b.clone();
    let query = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(60)").await });
    wait_for_sleep(&h, b_pid).await;

    assert_eq!(signal(&a, "pg_cancel_backend", b_pid).await, Ok(true));
    let err = query
        .await
        .unwrap()
        .expect_err("the sibling's query was cancelled");
    assert_eq!(err.code().map(|c| c.code()), Some("57014"), "{err}");

    assert_eq!(signal(&a, "pg_terminate_backend", b_pid).await, Ok(true));
    let (code, message) = ended_with(b_conn).await;
    assert_eq!(code, "57P01", "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_pg_signal_backend_sessions_cannot_signal_each_other_where_a_shared_user_can() {
    let h = Harness::start(Options {
        cluster_sql: vec![
            format!("REVOKE pg_signal_backend FROM {OWNER_ROLE}"),
            // One login role for several connections, the usual application setup.
            format!("CREATE ROLE shared_login LOGIN IN ROLE {OWNER_ROLE}"),
        ],
        // It logs in without a password (loopback, test only); everyone else as before.
        cluster_hba: Some(vec![
            "hostssl all shared_login 127.0.0.1/32 trust".into(),
            "hostssl all all 127.0.0.1/32 scram-sha-256".into(),
        ]),
        ..Options::default()
    })
    .await;
    let a = h.connect().await;
    let b = h.connect().await;
    let (a_pid, b_pid) = (backend_pid(&a).await, backend_pid(&b).await);
    for function in ["pg_cancel_backend", "pg_terminate_backend"] {
        assert_eq!(
            signal(&a, function, b_pid).await,
            Err("42501".into()),
            "{function} on a sibling session"
        );
    }
    // Not even its own backend: the backend belongs to the session's login role, and the
    // session acts as the owner role.
    assert_eq!(
        signal(&a, "pg_cancel_backend", a_pid).await,
        Err("42501".into()),
        "pg_cancel_backend on its own backend"
    );

    // Two connections of one shared login role, straight to the cluster: allowed.
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(h.cluster.port())
        .user("shared_login")
        .dbname(DATABASE)
        .ssl_mode(SslMode::Require)
        .connect_timeout(GENEROUS);
    let first = h.try_connect(&config).await.expect("shared login");
    let second = h.try_connect(&config).await.expect("shared login");
    let second_pid = backend_pid(&second).await;
    assert_eq!(
        signal(&first, "pg_cancel_backend", second_pid).await,
        Ok(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_role_returns_to_the_session_role_and_set_role_none_to_the_login_role() {
    let h = Harness::start(Options::default()).await;
    let c = h.connect().await;
    let login: String = c
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(login.starts_with(&h.role_prefix), "{login}");
    assert_eq!(current_user(&c).await, OWNER_ROLE);

    c.batch_execute("SET ROLE NONE").await.unwrap();
    assert_eq!(
        current_user(&c).await,
        login,
        "SET ROLE NONE: the login role"
    );
    c.batch_execute("RESET ROLE").await.unwrap();
    assert_eq!(
        current_user(&c).await,
        OWNER_ROLE,
        "RESET ROLE: the session role, not the login role"
    );
}
