//! Every path on which pgwarden ends a TLS client connection ends it the way a PostgreSQL
//! backend does: its last message, then a TLS close_notify, then FIN. libpq 17+ reports a
//! TLS connection closed without close_notify as an error ("SSL error: unexpected eof while
//! reading"), and its cancel API fails on exactly that.
//!
//! Each test drives a raw tokio-rustls client and checks with one helper,
//! [`wire::expect_close_notify`]: rustls reads 0 bytes after a close_notify and reports
//! `UnexpectedEof` when the TCP connection ends without one.

use pgwarden::dev::{CLIENT_USER, DATABASE};
use secrecy::ExposeSecret;

use crate::support::harness::{GENEROUS, Harness, Options, wait_until};
use crate::support::wire::{self, Tls, Welcome};

const PARAMS: &[(&str, &str)] = &[("user", CLIENT_USER), ("database", DATABASE)];

async fn session(h: &Harness) -> (Tls, Welcome) {
    let (s, welcome) = wire::open(
        h.proxy_addr,
        &h.ca_pem,
        PARAMS,
        h.client_password.expose_secret(),
    )
    .await;
    (s, welcome.expect("login through pgwarden"))
}

/// The only message before the close is a FATAL with `code`.
fn assert_only_fatal(messages: &[wire::Message], code: &str) {
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].tag, b'E', "{messages:?}");
    assert_eq!(messages[0].field(b'S').as_deref(), Some("FATAL"));
    assert_eq!(
        messages[0].field(b'C').as_deref(),
        Some(code),
        "{messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_request_inside_tls_is_answered_with_close_notify() {
    let h = Harness::start(Options::default()).await;
    let (mut s, welcome) = session(&h).await;
    wire::send_query(&mut s, "SELECT pg_sleep(60)").await;
    wait_until(GENEROUS, "pg_sleep runs upstream", async || {
        let n: i64 = h
            .direct()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event = 'PgSleep'",
                &[&welcome.pid],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;

    let mut cancel = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    wire::send(&mut cancel, &wire::encode_cancel(welcome.pid, &welcome.key)).await;
    let said = wire::expect_close_notify(&mut cancel, "a forwarded cancel").await;
    assert!(
        said.is_empty(),
        "a cancel is answered with nothing: {said:?}"
    );
    let err = wire::read_result(&mut s)
        .await
        .expect_err("the query was cancelled");
    assert_eq!(err.field(b'C').as_deref(), Some("57014"), "{err:?}");

    // A key nobody holds: nothing happens, and the close is just as clean.
    let mut cancel = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    wire::send(
        &mut cancel,
        &wire::encode_cancel(welcome.pid, &[0, 1, 2, 3]),
    )
    .await;
    let said = wire::expect_close_notify(&mut cancel, "a cancel with an unknown key").await;
    assert!(said.is_empty(), "{said:?}");
    wire::terminate(&mut s).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_inside_tls_ends_with_close_notify() {
    let h = Harness::start(Options::default()).await;
    let password = h.client_password.expose_secret();

    // Wrong password: 28P01 after the SASL exchange.
    let (mut s, refused) = wire::open(h.proxy_addr, &h.ca_pem, PARAMS, "not the password").await;
    let fatal = refused.expect_err("a wrong password is refused");
    fatal.assert_fatal(
        "28P01",
        "password authentication failed for user \"keycloak\"",
    );
    let rest = wire::expect_close_notify(&mut s, "28P01").await;
    assert!(rest.is_empty(), "{rest:?}");

    // A database no route serves: 3D000 after authentication.
    let params = [("user", CLIENT_USER), ("database", "nowhere")];
    let (mut s, refused) = wire::open(h.proxy_addr, &h.ca_pem, &params, password).await;
    refused
        .expect_err("an unknown database is refused")
        .assert_fatal("3D000", "database \"nowhere\" does not exist");
    let rest = wire::expect_close_notify(&mut s, "3D000").await;
    assert!(rest.is_empty(), "{rest:?}");

    // During negotiation, inside TLS: an unsupported protocol version and a replication
    // connection.
    let mut s = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    wire::send(&mut s, &wire::encode_startup(4, 0, PARAMS)).await;
    assert_only_fatal(
        &wire::expect_close_notify(&mut s, "protocol 4.0").await,
        "0A000",
    );
    let mut s = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let params = [
        ("user", CLIENT_USER),
        ("database", DATABASE),
        ("replication", "true"),
    ];
    wire::send(&mut s, &wire::startup(0, &params)).await;
    assert_only_fatal(
        &wire::expect_close_notify(&mut s, "replication").await,
        "0A000",
    );

    // Direct TLS without ALPN: 08P01 once the handshake is done.
    let tcp = wire::connect(h.proxy_addr).await;
    let mut s = wire::tls(tcp, &h.ca_pem, false)
        .await
        .expect("TLS handshake without ALPN");
    assert_only_fatal(&wire::expect_close_notify(&mut s, "no ALPN").await, "08P01");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authentication_timeout_ends_with_close_notify() {
    let h = Harness::start(Options {
        handshake_timeout: "5s".into(),
        ..Options::default()
    })
    .await;
    let mut s = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    wire::send(&mut s, &wire::startup(0, PARAMS)).await;
    let sasl = wire::read_message(&mut s).await.expect("a SASL request");
    assert_eq!(sasl.auth_code(), Some(10), "{sasl:?}");
    // The client never answers.
    let said = wire::expect_close_notify(&mut s, "authentication timeout").await;
    assert_only_fatal(&said, "57014");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_connections_ends_with_close_notify() {
    let h = Harness::start(Options {
        max_connections: 1,
        ..Options::default()
    })
    .await;
    let (mut first, _) = session(&h).await;
    // Told once authenticated (a session slot is taken then).
    let mut s = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let binding = wire::channel_binding(&s);
    wire::send(&mut s, &wire::startup(0, PARAMS)).await;
    let refused = wire::login(&mut s, h.client_password.expose_secret(), Some(binding))
        .await
        .expect_err("no session slot");
    assert_only_fatal(&[refused], "53300");
    let rest = wire::expect_close_notify(&mut s, "53300").await;
    assert!(rest.is_empty(), "{rest:?}");
    wire::terminate(&mut first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_sessions_with_close_notify() {
    let mut h = Harness::start(Options::default()).await;
    let (mut s, _) = session(&h).await;
    let (said, unrevoked) =
        tokio::join!(wire::expect_close_notify(&mut s, "shutdown"), h.shutdown());
    assert_only_fatal(&said, "57P01");
    assert_eq!(unrevoked, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_end_recycling_ends_the_session_with_close_notify() {
    // The first renewal finds the max TTL (nearly) reached: the session is recycled as
    // soon as it is idle, which it is.
    let h = Harness::start(Options {
        ttl: "3s".into(),
        max_ttl: Some("3s".into()),
        ..Options::default()
    })
    .await;
    let (mut s, _) = session(&h).await;
    let said = wire::expect_close_notify(&mut s, "lease end").await;
    assert_only_fatal(&said, "57P01");
    assert!(
        said[0].field(b'M').unwrap().contains("lease"),
        "{:?}",
        said[0].fields()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idle_timeout_ends_the_session_with_close_notify() {
    let h = Harness::start(Options {
        idle_timeout: Some("2s".into()),
        ..Options::default()
    })
    .await;
    let (mut s, _) = session(&h).await;
    let said = wire::expect_close_notify(&mut s, "idle timeout").await;
    assert_only_fatal(&said, "57P05");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_that_ends_ends_the_client_connection_with_close_notify() {
    let h = Harness::start(Options::default()).await;
    let (mut s, welcome) = session(&h).await;
    let ended: bool = h
        .direct()
        .query_one("SELECT pg_terminate_backend($1)", &[&welcome.pid])
        .await
        .unwrap()
        .get(0);
    assert!(ended);
    // PostgreSQL's own FATAL, relayed, then pgwarden's close.
    let said = wire::expect_close_notify(&mut s, "backend terminated").await;
    assert_only_fatal(&said, "57P01");
}
