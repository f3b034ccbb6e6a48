//! Negotiation before authentication, packet by packet: TLS by SSLRequest and direct, the
//! GSSAPI refusal, protocol versions, and every refusal with PostgreSQL's own code and text.
//! After each misbehaving client the server must go on serving others.

use crate::support::harness::{Harness, ListenTls, Options};
use crate::support::wire::{self, Message};
use secrecy::ExposeSecret;

const PARAMS: &[(&str, &str)] = &[("user", "keycloak"), ("database", "keycloak")];

fn keycloak_startup() -> Vec<u8> {
    wire::startup(0, PARAMS)
}

/// Reads what the server says until it closes; it must be exactly one message.
async fn only_message<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Message {
    let all = wire::read_until_closed(s).await;
    assert_eq!(all.len(), 1, "expected exactly one message, got {all:?}");
    all.into_iter().next().unwrap()
}

/// A full login and a query through pgwarden still work.
async fn still_serving(h: &Harness) {
    let client = h.connect().await;
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_startup_is_refused_when_tls_is_required() {
    let h = Harness::start(Options::default()).await;
    let mut tcp = wire::connect(h.proxy_addr).await;
    wire::send(&mut tcp, &keycloak_startup()).await;
    only_message(&mut tcp).await.assert_fatal(
        "28000",
        "TLS is required: connect with sslmode=require or stricter",
    );
    // libpq shows the same to its user.
    let out = h
        .psql(
            &h.conninfo("")
                .replace("sslmode=verify-full", "sslmode=disable"),
            h.client_password.expose_secret(),
            "SELECT 1",
        )
        .await;
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("TLS is required: connect with sslmode=require or stricter"),
        "{}",
        out.stderr
    );
    still_serving(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_after_ssl_request_is_refused_without_an_authentication_exchange() {
    let h = Harness::start(Options::default()).await;
    // SSLRequest and StartupMessage in one write (CVE-2021-23214), and the StartupMessage
    // sent in plaintext after the `S`.
    for together in [true, false] {
        let mut tcp = wire::connect(h.proxy_addr).await;
        let mut bytes = wire::encode_ssl_request().to_vec();
        if together {
            bytes.extend(keycloak_startup());
            wire::send(&mut tcp, &bytes).await;
            assert_eq!(wire::read_byte(&mut tcp).await, Some(b'S'));
        } else {
            wire::send(&mut tcp, &bytes).await;
            assert_eq!(wire::read_byte(&mut tcp).await, Some(b'S'));
            wire::send(&mut tcp, &keycloak_startup()).await;
        }
        // In plaintext, the only answer is the refusal: no AuthenticationSASL ever comes.
        only_message(&mut tcp)
            .await
            .assert_fatal("08P01", "received unencrypted data after SSL request");
    }
    still_serving(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ssl_request_inside_tls_is_refused() {
    let h = Harness::start(Options::default()).await;
    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    wire::send(&mut tls, &wire::encode_ssl_request()).await;
    only_message(&mut tls)
        .await
        .assert_fatal("08P01", "duplicate SSL negotiation request");
    still_serving(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gssenc_request_is_answered_n_once_and_refused_twice() {
    let h = Harness::start(Options::default()).await;
    // `N`, then the client goes on with TLS and logs in.
    let mut tcp = wire::connect(h.proxy_addr).await;
    wire::send(&mut tcp, &wire::gssenc_request()).await;
    assert_eq!(wire::read_byte(&mut tcp).await, Some(b'N'));
    wire::send(&mut tcp, &wire::encode_ssl_request()).await;
    assert_eq!(wire::read_byte(&mut tcp).await, Some(b'S'));
    let mut tls = wire::tls(tcp, &h.ca_pem, true).await.unwrap();
    let binding = wire::channel_binding(&tls);
    wire::send(&mut tls, &keycloak_startup()).await;
    wire::login(&mut tls, h.client_password.expose_secret(), Some(binding))
        .await
        .expect("login after GSSENCRequest");
    wire::terminate(&mut tls).await;

    // A second GSSENCRequest, and one inside TLS, are protocol violations.
    let mut tcp = wire::connect(h.proxy_addr).await;
    wire::send(&mut tcp, &wire::gssenc_request()).await;
    assert_eq!(wire::read_byte(&mut tcp).await, Some(b'N'));
    wire::send(&mut tcp, &wire::gssenc_request()).await;
    let m = only_message(&mut tcp).await;
    m.assert_fatal("08P01", "unexpected GSSAPI encryption request");

    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    wire::send(&mut tls, &wire::gssenc_request()).await;
    let m = only_message(&mut tls).await;
    m.assert_fatal("08P01", "unexpected GSSAPI encryption request");
    still_serving(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_tls_needs_alpn_postgresql() {
    let h = Harness::start(Options::default()).await;
    // Without ALPN: the handshake completes, then a FATAL over TLS.
    let tcp = wire::connect(h.proxy_addr).await;
    let mut tls = wire::tls(tcp, &h.ca_pem, false)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), None);
    only_message(&mut tls).await.assert_fatal(
        "08P01",
        "direct SSL connection requires ALPN protocol \"postgresql\"",
    );

    // With ALPN `postgresql`: a full session, no SSLRequest needed.
    let tcp = wire::connect(h.proxy_addr).await;
    let mut tls = wire::tls(tcp, &h.ca_pem, true)
        .await
        .expect("TLS handshake");
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"postgresql"[..]));
    let binding = wire::channel_binding(&tls);
    wire::send(&mut tls, &keycloak_startup()).await;
    let welcome = wire::login(&mut tls, h.client_password.expose_secret(), Some(binding))
        .await
        .expect("login over direct TLS");
    assert_eq!(welcome.status, b'I');
    let rows = wire::query(&mut tls, "SELECT current_user").await.unwrap();
    assert_eq!(rows, vec![vec![Some("keycloak_owner".to_owned())]]);
    wire::terminate(&mut tls).await;
    h.wait_for_no_dynamic_roles().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_packet_lengths_outside_8_to_10000_are_refused() {
    let h = Harness::start(Options::default()).await;
    for len in [-1i32, 0, 4, 7, 10_001, 1 << 30] {
        let mut tcp = wire::connect(h.proxy_addr).await;
        let mut packet = len.to_be_bytes().to_vec();
        packet.extend_from_slice(&(3u32 << 16).to_be_bytes());
        wire::send(&mut tcp, &packet).await;
        only_message(&mut tcp).await.assert_fatal(
            "08P01",
            &format!("invalid length of startup packet ({len})"),
        );
    }
    // Inside TLS too.
    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let mut packet = 20_000i32.to_be_bytes().to_vec();
    packet.extend_from_slice(&(3u32 << 16).to_be_bytes());
    wire::send(&mut tls, &packet).await;
    only_message(&mut tls)
        .await
        .assert_fatal("08P01", "invalid length of startup packet (20000)");
    still_serving(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_or_malformed_packets_end_that_connection_only() {
    let h = Harness::start(Options::default()).await;
    let startup = keycloak_startup();
    // Cut inside the length, inside the code, inside the parameters; then EOF.
    for cut in [2, 6, startup.len() - 3] {
        let mut tcp = wire::connect(h.proxy_addr).await;
        wire::send(&mut tcp, &startup[..cut]).await;
        tokio::io::AsyncWriteExt::shutdown(&mut tcp).await.unwrap();
        assert_eq!(
            wire::closed_without_a_byte(&mut tcp).await,
            Ok(()),
            "cut at {cut}"
        );
    }
    // The same inside TLS, and a TLS handshake abandoned half-way.
    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    wire::send(&mut tls, &startup[..10]).await;
    tokio::io::AsyncWriteExt::shutdown(&mut tls).await.unwrap();
    assert_eq!(wire::closed_without_a_byte(&mut tls).await, Ok(()));
    let mut tcp = wire::connect(h.proxy_addr).await;
    wire::send(&mut tcp, &wire::encode_ssl_request()).await;
    assert_eq!(wire::read_byte(&mut tcp).await, Some(b'S'));
    wire::send(&mut tcp, &[0x16, 0x03, 0x01, 0x00, 0x50, 0x01]).await;
    drop(tcp);
    // A complete packet whose parameter list is not terminated.
    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let mut body = (3u32 << 16).to_be_bytes().to_vec();
    body.extend_from_slice(b"user\0keycloak\0");
    let mut packet = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend(body);
    wire::send(&mut tls, &packet).await;
    let m = only_message(&mut tls).await;
    assert_eq!(m.field(b'C').as_deref(), Some("08P01"), "{:?}", m.fields());
    assert_eq!(m.field(b'S').as_deref(), Some("FATAL"));
    still_serving(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_3_0_and_3_2_are_answered_as_asked() {
    let h = Harness::start(Options::default()).await;
    for (minor, key_len) in [(0u16, 4usize), (2, 32)] {
        let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
        let binding = wire::channel_binding(&tls);
        wire::send(&mut tls, &wire::startup(minor, PARAMS)).await;
        let welcome = wire::login(&mut tls, h.client_password.expose_secret(), Some(binding))
            .await
            .expect("login");
        assert!(welcome.negotiate.is_none(), "3.{minor}: {welcome:?}");
        assert_eq!(welcome.key.len(), key_len, "3.{minor}");
        let rows = wire::query(&mut tls, "SELECT pg_backend_pid()")
            .await
            .unwrap();
        assert_eq!(rows[0][0], Some(welcome.pid.to_string()), "3.{minor}");
        wire::terminate(&mut tls).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_minors_and_pq_options_are_negotiated_down() {
    let h = Harness::start(Options::default()).await;
    // (minor asked, options, newest minor offered, options listed, cancel key length)
    type Case = (
        u16,
        &'static [(&'static str, &'static str)],
        i32,
        &'static [&'static str],
        usize,
    );
    let cases: &[Case] = &[
        (1, &[], 0, &[], 4),
        (3, &[], 2, &[], 32),
        (0xffff, &[], 2, &[], 32),
        (2, &[("_pq_.frob", "on")], 2, &["_pq_.frob"], 32),
        (
            0,
            &[("_pq_.a", "1"), ("_pq_.b", "2")],
            0,
            &["_pq_.a", "_pq_.b"],
            4,
        ),
    ];
    for &(minor, options, newest, listed, key_len) in cases {
        let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
        let binding = wire::channel_binding(&tls);
        let params: Vec<(&str, &str)> = PARAMS.iter().chain(options).copied().collect();
        wire::send(&mut tls, &wire::startup(minor, &params)).await;
        let welcome = wire::login(&mut tls, h.client_password.expose_secret(), Some(binding))
            .await
            .unwrap_or_else(|e| panic!("3.{minor} {options:?}: {:?}", e.fields()));
        let listed: Vec<String> = listed.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            welcome.negotiated(),
            Some((newest, listed)),
            "3.{minor} {options:?}"
        );
        assert_eq!(welcome.key.len(), key_len, "3.{minor} {options:?}");
        // The options never reached the server: the session works.
        let rows = wire::query(&mut tls, "SELECT 1").await.unwrap();
        assert_eq!(rows, vec![vec![Some("1".to_owned())]]);
        wire::terminate(&mut tls).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_major_versions_and_replication_are_refused() {
    let h = Harness::start(Options::default()).await;
    for major in [2u16, 4] {
        let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
        wire::send(&mut tls, &wire::encode_startup(major, 0, PARAMS)).await;
        only_message(&mut tls).await.assert_fatal(
            "0A000",
            &format!("unsupported frontend protocol {major}.0: server supports 3.0 to 3.2"),
        );
    }
    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let params: Vec<_> = PARAMS
        .iter()
        .copied()
        .chain([("replication", "database")])
        .collect();
    wire::send(&mut tls, &wire::startup(0, &params)).await;
    only_message(&mut tls).await.assert_fatal(
        "0A000",
        "replication connections are not supported by pgwarden",
    );
    still_serving(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_deadline_ends_silent_and_stuck_clients() {
    let h = Harness::start(Options {
        handshake_timeout: "1s".into(),
        ..Options::default()
    })
    .await;
    // Connects and says nothing: closed, nothing sent.
    let mut silent = wire::connect(h.proxy_addr).await;
    assert_eq!(wire::closed_without_a_byte(&mut silent).await, Ok(()));
    // Stops half-way through the TLS negotiation: closed.
    let mut half = wire::connect(h.proxy_addr).await;
    wire::send(&mut half, &wire::encode_ssl_request()).await;
    assert_eq!(wire::read_byte(&mut half).await, Some(b'S'));
    assert_eq!(wire::closed_without_a_byte(&mut half).await, Ok(()));
    // Sends its startup, then never answers the SASL request: told why.
    let mut stuck = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    wire::send(&mut stuck, &keycloak_startup()).await;
    let sasl = wire::read_message(&mut stuck).await.expect("SASL request");
    assert_eq!(sasl.auth_code(), Some(10), "{sasl:?}");
    only_message(&mut stuck)
        .await
        .assert_fatal("57014", "canceling authentication due to timeout");
    let timeouts = h
        .logs
        .wait_for("connection_rejected", 3)
        .await
        .into_iter()
        .filter(|e| e["reason"] == "handshake_timeout")
        .count();
    assert_eq!(timeouts, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_without_tls_answers_n_once_and_offers_no_channel_binding() {
    let h = Harness::start(Options {
        tls: ListenTls::Off,
        ..Options::default()
    })
    .await;
    // One SSLRequest is answered `N`; a second is a protocol violation, as in PostgreSQL.
    let mut tcp = wire::connect(h.proxy_addr).await;
    wire::send(&mut tcp, &wire::encode_ssl_request()).await;
    assert_eq!(wire::read_byte(&mut tcp).await, Some(b'N'));
    wire::send(&mut tcp, &wire::encode_ssl_request()).await;
    only_message(&mut tcp)
        .await
        .assert_fatal("08P01", "duplicate SSL negotiation request");

    let mut tcp = wire::connect(h.proxy_addr).await;
    wire::send(&mut tcp, &wire::encode_ssl_request()).await;
    assert_eq!(wire::read_byte(&mut tcp).await, Some(b'N'));
    wire::send(&mut tcp, &keycloak_startup()).await;
    let welcome = wire::login(&mut tcp, h.client_password.expose_secret(), None)
        .await
        .expect("plaintext login");
    // AuthenticationSASL lists SCRAM-SHA-256 alone.
    assert_eq!(welcome.sasl.body, b"\0\0\0\x0aSCRAM-SHA-256\0\0");
    let rows = wire::query(&mut tcp, "SELECT current_user").await.unwrap();
    assert_eq!(rows, vec![vec![Some("keycloak_owner".to_owned())]]);
    wire::terminate(&mut tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_tls_serves_both_and_offers_plus_only_on_tls() {
    let h = Harness::start(Options {
        tls: ListenTls::Optional,
        ..Options::default()
    })
    .await;
    let mut tcp = wire::connect(h.proxy_addr).await;
    wire::send(&mut tcp, &keycloak_startup()).await;
    let welcome = wire::login(&mut tcp, h.client_password.expose_secret(), None)
        .await
        .expect("plaintext login");
    assert_eq!(welcome.sasl.body, b"\0\0\0\x0aSCRAM-SHA-256\0\0");
    wire::terminate(&mut tcp).await;

    let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let binding = wire::channel_binding(&tls);
    wire::send(&mut tls, &keycloak_startup()).await;
    let welcome = wire::login(&mut tls, h.client_password.expose_secret(), Some(binding))
        .await
        .expect("TLS login");
    assert_eq!(
        welcome.sasl.body,
        b"\0\0\0\x0aSCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"
    );
    wire::terminate(&mut tls).await;
}
