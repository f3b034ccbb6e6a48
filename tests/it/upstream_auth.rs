//! What pgwarden accepts from the upstream server when logging in: SCRAM, and
//! cleartext, MD5 or trust only on a route that opts in with
//! `allow_insecure_auth` — for the session's own login and for the built-in
//! source's admin connection alike.

use crate::support::harness::{Harness, Options, server_error, session_user};
use pgwarden::dev::{ADMIN_ROLE, OWNER_ROLE};

/// pg_hba lines: the admin connection authenticates with `admin`, the issued
/// roles (members of the owner role) with `issued`.
fn hba(admin: &str, issued: &str) -> Vec<String> {
    vec![
        format!("hostssl all {ADMIN_ROLE} 127.0.0.1/32 {admin}"),
        format!("hostssl all +{OWNER_ROLE} 127.0.0.1/32 {issued}"),
        "hostssl all all 127.0.0.1/32 scram-sha-256".into(),
    ]
}

async fn refused(h: &Harness) -> (String, String) {
    let err = h
        .try_connect(&h.pg_config())
        .await
        .expect_err("the login is refused");
    server_error(&err)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_login_asked_for_a_cleartext_or_md5_password_is_refused() {
    // (`md5` in pg_hba.conf is SCRAM for a role whose password is stored as a
    // SCRAM verifier, as every role here is; so `password` stands for both.)
    let method = "password";
    let h = Harness::start(Options {
        cluster_hba: Some(hba("scram-sha-256", method)),
        ..Options::default()
    })
    .await;
    let (code, message) = refused(&h).await;
    assert_eq!(code, "08006", "{method}: {message}");
    assert!(
        h.logs
            .text()
            .contains("asked for a cleartext or MD5 password"),
        "{method}: the log says why"
    );
    // The credential issued for the refused login is dropped.
    h.wait_for_no_dynamic_roles().await;
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_login_without_a_password_is_refused() {
    let h = Harness::start(Options {
        cluster_hba: Some(hba("scram-sha-256", "trust")),
        ..Options::default()
    })
    .await;
    let (code, message) = refused(&h).await;
    assert_eq!(code, "08006", "{message}");
    assert!(
        h.logs.text().contains("without a password (trust)"),
        "the log says why"
    );
    h.wait_for_no_dynamic_roles().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_connection_refuses_a_cleartext_password_request() {
    // (`md5` in pg_hba.conf is SCRAM for a role whose password is stored as a
    // SCRAM verifier, as every role here is; so `password` stands for both.)
    let method = "password";
    let h = Harness::start(Options {
        cluster_hba: Some(hba(method, "scram-sha-256")),
        ..Options::default()
    })
    .await;
    let (code, message) = refused(&h).await;
    assert_eq!(code, "08006", "{method}: {message}");
    assert_eq!(message, "could not obtain database credentials", "{method}");
    assert!(
        h.logs.text().contains("channel binding"),
        "{method}: the log says why"
    );
    assert!(h.dynamic_roles().await.is_empty());
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_that_opts_in_accepts_insecure_upstream_authentication() {
    let h = Harness::start(Options {
        cluster_hba: Some(hba("password", "password")),
        allow_insecure_auth: true,
        ..Options::default()
    })
    .await;
    let c = h.connect().await;
    let user: String = c
        .query_one("SELECT session_user::text", &[])
        .await
        .unwrap()
        .get(0);
    assert!(user.starts_with("pgwarden_"), "{user}");
    drop(c);
    h.wait_for_no_dynamic_roles().await;
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_connection_dials_host_and_verifies_server_name() {
    // `host` resolves (localhost); `server_name` is only in the certificate and
    // resolves nowhere. Dialling the server name would fail for roles while
    // sessions, which dial the host, would work (issue 8, item 4).
    let h = Harness::start(Options {
        upstream_host: Some("localhost".into()),
        upstream_server_name: Some("pg.pgwarden.invalid".into()),
        ..Options::default()
    })
    .await;
    let client = h.connect().await;
    let user = crate::support::harness::session_user(&client).await;
    assert!(user.starts_with("pgwarden_"), "{user}");
}

/// The built-in source gives its roles verifiers of `scram_iterations` rounds (16 unless
/// set: PostgreSQL runs PBKDF2 at that count on every CREATE ROLE), and the session logs
/// in with them, whatever the count. (That the login then uses the keys made for the
/// verifier rather than deriving them again is `upstream::login`'s unit test.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_roles_have_verifiers_of_the_configured_iteration_count() {
    for (configured, expected) in [(None, 16), (Some(4096), 4096)] {
        let h = Harness::start(Options {
            scram_iterations: configured,
            ..Options::default()
        })
        .await;
        let c = h.connect().await;
        let user = session_user(&c).await;
        let verifier: String = h
            .direct()
            .query_one(
                "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
                &[&user],
            )
            .await
            .expect("the role's verifier")
            .get(0);
        // Only the method and count are shown: the rest is secret.
        let head = verifier.split(':').next().unwrap_or_default();
        assert_eq!(head, format!("SCRAM-SHA-256${expected}"));
        c.simple_query("SELECT 1").await.expect("the session works");
    }
}
