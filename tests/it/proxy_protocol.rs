//! The PROXY protocol end to end through the listener: real v1 and v2 headers from a trusted
//! balancer give the client's address to the allowlist, the session record and the cancel
//! budget; a header from an untrusted peer, a missing one (when required) and a client
//! outside the allowlist are refused; LOCAL (a health check) goes on as the balancer's own
//! connection; and psql behind a PROXY-speaking forwarder works as it does directly.

use std::net::SocketAddr;

use crate::support::forwarder::{Forwarder, Forwarding, proxy_v2};
use crate::support::harness::{GENEROUS, Harness, Options, wait_until};
use crate::support::wire;
use secrecy::ExposeSecret;
use serde_json::Value;

/// The balancer is 127.0.0.3 (trusted, not a client itself); clients may be 127.0.0.1,
/// 127.0.0.2 or in 203.0.113.0/24, the documentation network the headers speak for.
fn options() -> Options {
    Options {
        allow: vec![
            "127.0.0.1/32".into(),
            "127.0.0.2/32".into(),
            "203.0.113.0/24".into(),
        ],
        proxy_protocol: Some((vec!["127.0.0.3/32".into()], true)),
        ..Options::default()
    }
}

/// A connection from the balancer that has sent `header`, then SSLRequest and TLS.
async fn through_balancer(h: &Harness, header: &[u8]) -> wire::Tls {
    let mut tcp = wire::connect_from("127.0.0.3", h.proxy_addr).await;
    wire::send(&mut tcp, header).await;
    wire::send(&mut tcp, &wire::encode_ssl_request()).await;
    assert_eq!(wire::read_byte(&mut tcp).await, Some(b'S'));
    wire::tls(tcp, &h.ca_pem, true).await.expect("TLS")
}

/// Logs in as keycloak and runs one query.
async fn login_and_query(h: &Harness, tls: &mut wire::Tls) -> wire::Welcome {
    let binding = wire::channel_binding(tls);
    let params = [("user", "keycloak"), ("database", "keycloak")];
    wire::send(tls, &wire::startup(0, &params)).await;
    let welcome = wire::login(tls, h.client_password.expose_secret(), Some(binding))
        .await
        .expect("logged in");
    let rows = wire::query(tls, "SELECT 1").await.unwrap();
    assert_eq!(rows, [[Some("1".to_owned())]]);
    welcome
}

/// The newest `connection_rejected` record once there are `n`.
async fn rejection(h: &Harness, n: usize) -> Value {
    let all = h.logs.wait_for("connection_rejected", n).await;
    assert_eq!(all.len(), n, "{all:?}");
    all[n - 1].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_balancers_header_names_the_client_and_bad_ones_are_refused() {
    let h = Harness::start(options()).await;
    let proxy: SocketAddr = h.proxy_addr;

    // v2, IPv4: the session is the client's, seen through the balancer.
    let client: SocketAddr = "203.0.113.7:51234".parse().unwrap();
    let mut tls = through_balancer(&h, &proxy_v2(client, proxy)).await;
    login_and_query(&h, &mut tls).await;
    wire::terminate(&mut tls).await;
    let start = &h.logs.wait_for("session_start", 1).await[0];
    assert_eq!(start["span"]["client_addr"], "203.0.113.7:51234", "{start}");
    let balancer = start["span"]["proxied_by"].as_str().unwrap().to_owned();
    assert!(balancer.starts_with("127.0.0.3:"), "{start}");

    // v1, IPv6 client in a TCP6 line: not in the allowlist, refused after the header.
    let line = b"PROXY TCP6 2001:db8::9 ::1 40000 6432\r\n";
    let mut tcp = wire::connect_from("127.0.0.3", proxy).await;
    wire::send(&mut tcp, line).await;
    assert_eq!(wire::closed_without_a_byte(&mut tcp).await, Ok(()));
    let r = rejection(&h, 1).await;
    assert_eq!(r["reason"], "ip_not_allowed", "{r}");
    assert_eq!(r["client_addr"], "[2001:db8::9]:40000", "{r}");

    // required = true: the balancer must send a header.
    let mut tcp = wire::connect_from("127.0.0.3", proxy).await;
    wire::send(&mut tcp, &wire::encode_ssl_request()).await;
    assert_eq!(wire::closed_without_a_byte(&mut tcp).await, Ok(()));
    let r = rejection(&h, 2).await;
    assert_eq!(r["reason"], "proxy_protocol", "{r}");
    assert!(
        r["detail"].as_str().unwrap().contains("no PROXY header"),
        "{r}"
    );

    // A peer that is not trusted cannot claim to be someone else.
    let mut tcp = wire::connect_from("127.0.0.2", proxy).await;
    wire::send(&mut tcp, &proxy_v2(client, proxy)).await;
    assert_eq!(wire::closed_without_a_byte(&mut tcp).await, Ok(()));
    let r = rejection(&h, 3).await;
    assert_eq!(r["reason"], "proxy_protocol", "{r}");
    assert!(
        r["client_addr"].as_str().unwrap().starts_with("127.0.0.2:"),
        "{r}"
    );

    // A header past the limit, and a v1 line past 107 bytes.
    let mut oversized = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
    oversized.extend_from_slice(&5000u16.to_be_bytes());
    let mut long_line = b"PROXY TCP4 203.0.113.7 127.0.0.1 1 2".to_vec();
    long_line.resize(120, b' ');
    for bad in [oversized, long_line] {
        let mut tcp = wire::connect_from("127.0.0.3", proxy).await;
        wire::send(&mut tcp, &bad).await;
        assert_eq!(wire::closed_without_a_byte(&mut tcp).await, Ok(()));
    }
    let r = rejection(&h, 5).await;
    assert_eq!(r["reason"], "proxy_protocol", "{r}");
    assert_eq!(h.logs.events("session_start").len(), 1);
}

/// HAProxy's health checks send LOCAL: the connection is the balancer's own, and goes on
/// as one from the balancer's address — allowed only when that address is in `allow`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_header_is_the_balancers_own_connection() {
    let h = Harness::start(Options {
        allow: vec!["127.0.0.3/32".into()],
        proxy_protocol: Some((vec!["127.0.0.3/32".into()], false)),
        ..Options::default()
    })
    .await;
    let local = b"\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
    let mut tls = through_balancer(&h, local).await;
    login_and_query(&h, &mut tls).await;
    wire::terminate(&mut tls).await;
    // Not required: the balancer may also speak without a header.
    let mut tls = through_balancer(&h, b"").await;
    login_and_query(&h, &mut tls).await;
    wire::terminate(&mut tls).await;
    let starts = h.logs.wait_for("session_start", 2).await;
    for s in &starts {
        let addr = s["span"]["client_addr"].as_str().unwrap();
        assert!(addr.starts_with("127.0.0.3:"), "{s}");
    }
    assert!(starts[0]["span"]["proxied_by"].is_string());
    assert!(
        starts[1]["span"].get("proxied_by").is_none(),
        "{}",
        starts[1]
    );
}

/// The cancel budget is the client's, not the balancer's: cancels are charged to the
/// address the header names, so one client guessing keys through the balancer runs out of
/// budget while another's cancel right after still gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cancel_budget_belongs_to_the_client_behind_the_balancer() {
    let h = Harness::start(options()).await;
    let proxy = h.proxy_addr;
    let owner: SocketAddr = "203.0.113.7:5000".parse().unwrap();
    let mut tls = through_balancer(&h, &proxy_v2(owner, proxy)).await;
    let welcome = login_and_query(&h, &mut tls).await;
    wire::send_query(&mut tls, "SELECT pg_sleep(60)").await;
    wait_until(GENEROUS, "pg_sleep runs", async || {
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
    // A burst of 50 is allowed, then 10 a second: 150 guesses in a row run out.
    let guesser: SocketAddr = "203.0.113.66:5000".parse().unwrap();
    let mut wrong = welcome.key.clone();
    wrong[1] ^= 0x55;
    const GUESSES: usize = 150;
    for _ in 0..GUESSES {
        let mut tcp = wire::connect_from("127.0.0.3", proxy).await;
        wire::send(&mut tcp, &proxy_v2(guesser, proxy)).await;
        wire::send(&mut tcp, &wire::encode_cancel(welcome.pid, &wrong)).await;
        assert_eq!(wire::closed_without_a_byte(&mut tcp).await, Ok(()));
    }
    let mut tcp = wire::connect_from("127.0.0.3", proxy).await;
    wire::send(&mut tcp, &proxy_v2(owner, proxy)).await;
    wire::send(&mut tcp, &wire::encode_cancel(welcome.pid, &welcome.key)).await;
    let err = wire::read_result(&mut tls).await.expect_err("cancelled");
    assert_eq!(err.field(b'C').as_deref(), Some("57014"));
    let records = h.logs.wait_for("cancel_request", GUESSES + 1).await;
    let (guesses, last) = records.split_at(GUESSES);
    for g in guesses {
        assert_eq!(g["span"]["client_addr"], "203.0.113.66:5000", "{g}");
        assert_ne!(g["outcome"], "forwarded", "{g}");
    }
    assert!(
        guesses.iter().any(|g| g["outcome"] == "rate_limited"),
        "the guesser ran out of budget"
    );
    assert_eq!(last[0]["span"]["client_addr"], "203.0.113.7:5000");
    assert_eq!(last[0]["outcome"], "forwarded", "{}", last[0]);
}

/// psql, unchanged, behind a forwarder that speaks PROXY v2 from 127.0.0.3.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_works_behind_a_proxy_speaking_balancer() {
    let h = Harness::start(Options {
        allow: vec!["127.0.0.1/32".into()],
        proxy_protocol: Some((vec!["127.0.0.3/32".into()], true)),
        ..Options::default()
    })
    .await;
    let balancer = Forwarder::start(
        vec![h.proxy_addr],
        Forwarding {
            from: Some("127.0.0.3"),
            proxy_v2: true,
        },
    )
    .await;
    let conninfo = h.conninfo("").replace(
        &format!("port={}", h.port()),
        &format!("port={}", balancer.addr.port()),
    );
    let out = h
        .psql(
            &conninfo,
            h.client_password.expose_secret(),
            "SELECT inet_client_addr() IS NOT NULL",
        )
        .await;
    assert!(out.success, "{out:?}");
    let start = &h.logs.wait_for("session_start", 1).await[0];
    let client = start["span"]["client_addr"].as_str().unwrap();
    assert!(client.starts_with("127.0.0.1:"), "{start}");
    assert!(
        start["span"]["proxied_by"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.3:"),
        "{start}"
    );
}
