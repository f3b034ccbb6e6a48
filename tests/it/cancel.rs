//! Query cancellation through pgwarden: inside TLS and in plaintext (as pgjdbc and libpq
//! before 17 send it), with 3.0 and 3.2 keys, even when every connection slot is taken; and
//! cancels with a wrong key, a wrong pid or from outside the allowlist that do nothing.

use crate::support::harness::{GENEROUS, Harness, Options, wait_until};
use crate::support::wire;
use secrecy::ExposeSecret;
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;

/// Waits until backend `pid` is sleeping in `pg_sleep`.
async fn wait_for_sleep(h: &Harness, pid: i32) {
    wait_until(GENEROUS, "pg_sleep runs upstream", async || {
        let n: i64 = h
            .direct()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE pid = $1 AND state = 'active' AND wait_event = 'PgSleep'",
                &[&pid],
            )
            .await
            .unwrap()
            .get(0);
        n == 1
    })
    .await;
}

async fn backend_pid(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0)
}

/// The outcomes of the cancel requests pgwarden logged, once there are `n` of them (a
/// cancel is logged only after its connection was closed).
async fn outcomes(h: &Harness, n: usize) -> Vec<String> {
    let logged = || {
        h.logs
            .events("cancel_request")
            .iter()
            .map(|e| e["outcome"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    wait_until(GENEROUS, "the cancel requests are logged", async || {
        logged().len() >= n
    })
    .await;
    logged()
}

/// Runs `pg_sleep(60)` on `client`, cancels it with `cancel` once it runs, and checks that
/// the query ends with 57014 and the session goes on.
async fn sleep_and_cancel<F: Future<Output = ()>>(
    h: &Harness,
    client: tokio_postgres::Client,
    cancel: impl FnOnce(tokio_postgres::CancelToken) -> F,
) {
    let pid = backend_pid(&client).await;
    let token = client.cancel_token();
    let client = std::sync::Arc::new(client);
    let sleeper = client.clone();
    let query = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(60)").await });
    wait_for_sleep(h, pid).await;
    cancel(token).await;
    let result = tokio::time::timeout(GENEROUS, query)
        .await
        .expect("the query ends soon after the cancel")
        .unwrap();
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.code(), Some(&SqlState::QUERY_CANCELED), "{err:?}");
    // The session goes on. PostgreSQL signals a cancelled backend and then its
    // process group, so on a loaded machine the second SIGINT can land after
    // the first was handled and cancel the next statement too; a second try
    // must then succeed.
    let one: i32 = match client.query_one("SELECT 1", &[]).await {
        Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) => {
            client.query_one("SELECT 1", &[]).await.unwrap().get(0)
        }
        other => other.unwrap().get(0),
    };
    assert_eq!(one, 1);
    assert_eq!(outcomes(h, 1).await, ["forwarded"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_inside_tls_cancels_the_query() {
    let h = Harness::start(Options::default()).await;
    let client = h.connect().await;
    let tls = h.tls();
    sleep_and_cancel(&h, client, async |token| {
        token.cancel_query(tls).await.expect("cancel sent over TLS");
    })
    .await;
    assert_eq!(h.logs.events("cancel_request")[0]["tls"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_cancel_cancels_a_tls_session_on_a_tls_only_listener() {
    let h = Harness::start(Options::default()).await;
    // sslmode=prefer: the session is TLS (the listener takes nothing else), and
    // tokio-postgres then sends its cancel without TLS when given no TLS connector -- the
    // way pgjdbc always does.
    let mut config = h.pg_config();
    config.ssl_mode(SslMode::Prefer);
    let client = h.try_connect(&config).await.unwrap();
    sleep_and_cancel(&h, client, async |token| {
        token
            .cancel_query(tokio_postgres::NoTls)
            .await
            .expect("cancel sent in plaintext");
    })
    .await;
    assert_eq!(h.logs.events("cancel_request")[0]["tls"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_cancel_with_a_protocol_3_2_key_works() {
    let h = Harness::start(Options::default()).await;
    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let binding = wire::channel_binding(&tls);
    let params = [("user", "keycloak"), ("database", "keycloak")];
    wire::send(&mut tls, &wire::startup(2, &params)).await;
    let welcome = wire::login(&mut tls, h.client_password.expose_secret(), Some(binding))
        .await
        .unwrap();
    assert_eq!(welcome.key.len(), 32);
    wire::send_query(&mut tls, "SELECT pg_sleep(60)").await;
    wait_for_sleep(&h, welcome.pid).await;
    let mut tcp = wire::connect(h.proxy_addr).await;
    wire::send(&mut tcp, &wire::encode_cancel(welcome.pid, &welcome.key)).await;
    assert_eq!(wire::closed_without_a_byte(&mut tcp).await, Ok(()));
    let err = wire::read_result(&mut tls).await.expect_err("cancelled");
    assert_eq!(
        err.field(b'C').as_deref(),
        Some("57014"),
        "{:?}",
        err.fields()
    );
    assert_eq!(
        err.field(b'M').as_deref(),
        Some("canceling statement due to user request")
    );
    assert_eq!(outcomes(&h, 1).await, ["forwarded"]);
    wire::terminate(&mut tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_with_a_wrong_key_or_pid_or_from_outside_the_allowlist_do_nothing() {
    let h = Harness::start(Options {
        allow: vec!["127.0.0.1/32".into()],
        ..Options::default()
    })
    .await;
    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let binding = wire::channel_binding(&tls);
    let params = [("user", "keycloak"), ("database", "keycloak")];
    wire::send(&mut tls, &wire::startup(0, &params)).await;
    let welcome = wire::login(&mut tls, h.client_password.expose_secret(), Some(binding))
        .await
        .unwrap();
    wire::send_query(&mut tls, "SELECT pg_sleep(60)").await;
    wait_for_sleep(&h, welcome.pid).await;

    let mut wrong_key = welcome.key.clone();
    wrong_key[0] ^= 1;
    for (pid, key) in [
        (welcome.pid, wrong_key),
        (welcome.pid + 1, welcome.key.clone()),
    ] {
        let mut tcp = wire::connect(h.proxy_addr).await;
        wire::send(&mut tcp, &wire::encode_cancel(pid, &key)).await;
        // pgwarden closes once it has dealt with the request.
        assert_eq!(wire::closed_without_a_byte(&mut tcp).await, Ok(()));
    }
    let mut outside = wire::connect_from("127.0.0.2", h.proxy_addr).await;
    let cancel = wire::encode_cancel(welcome.pid, &welcome.key);
    let _ = tokio::io::AsyncWriteExt::write_all(&mut outside, &cancel).await;
    assert_eq!(wire::closed_without_a_byte(&mut outside).await, Ok(()));
    assert_eq!(outcomes(&h, 2).await, ["unknown_key", "unknown_key"]);
    let rejected = h.logs.wait_for("connection_rejected", 1).await;
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["reason"], "ip_not_allowed");

    // The query is still running; the right cancel from an allowed address ends it.
    wait_for_sleep(&h, welcome.pid).await;
    let mut tcp = wire::connect(h.proxy_addr).await;
    wire::send(&mut tcp, &cancel).await;
    let err = wire::read_result(&mut tls).await.expect_err("cancelled");
    assert_eq!(err.field(b'C').as_deref(), Some("57014"));
    assert_eq!(
        outcomes(&h, 3).await,
        ["unknown_key", "unknown_key", "forwarded"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_gets_through_when_every_slot_is_taken() {
    let h = Harness::start(Options {
        max_connections: 1,
        ..Options::default()
    })
    .await;
    let mut config = h.pg_config();
    config.ssl_mode(SslMode::Prefer);
    let client = h.try_connect(&config).await.unwrap();
    let err = h.try_connect(&h.pg_config()).await.expect_err("full");
    assert_eq!(err.code(), Some(&SqlState::TOO_MANY_CONNECTIONS));
    sleep_and_cancel(&h, client, async |token| {
        token.cancel_query(tokio_postgres::NoTls).await.unwrap();
    })
    .await;
}
