//! What an operator learns from pgwarden: the session record of a real session with every
//! field true (bytes counted on the client side, the issued role and backend pid as the
//! database itself reports them, the lease id only as its hash), one `connection_rejected`
//! record and exactly one counter increment for each rejection reason, a rejection flood
//! that cannot flood the log, and `/readyz` following Vault's health while `/healthz` stays
//! up. No secret reaches any log line of these tests.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use crate::support::harness::{GENEROUS, Harness, Options, VaultOptions, parse_metric, wait_until};
use crate::support::vault_double::Mode;
use crate::support::wire;
use secrecy::ExposeSecret;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const REASONS: [&str; 11] = [
    "ip_not_allowed",
    "too_many_connections",
    "tls_required",
    "tls_handshake",
    "protocol",
    "handshake_timeout",
    "auth_failed",
    "unknown_database",
    "parameter_not_allowed",
    "proxy_protocol",
    "too_many_handshakes",
];

/// A stream that counts what the client writes and reads, as the client sees it.
struct Counted<S> {
    inner: S,
    read: u64,
    written: u64,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        me.read += (buf.filled().len() - before) as u64;
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        let r = Pin::new(&mut me.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &r {
            me.written += *n as u64;
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn sha256_prefix(s: &str) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes());
    d.as_ref()[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// What the client saw of one session, to compare with pgwarden's records.
struct Seen {
    client_addr: SocketAddr,
    tls_version: String,
    tls_cipher: String,
    alpn: String,
    session_user: String,
    backend_pid: i64,
    welcome_pid: i32,
    sent: u64,
    received: u64,
    held: Duration,
}

/// One session by hand: TLS, SCRAM-SHA-256-PLUS, a few queries (one moving 200 kB), a pause
/// of at least `hold`, Terminate. Bytes after the welcome are counted on the client side.
/// `during` runs while the session is open (the lease is live).
async fn one_session(h: &Harness, hold: Duration, during: impl AsyncFnOnce(&str)) -> Seen {
    let tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
    let client_addr = tls.get_ref().0.local_addr().unwrap();
    let conn = tls.get_ref().1;
    let tls_version = conn
        .protocol_version()
        .unwrap()
        .as_str()
        .unwrap()
        .to_owned();
    let tls_cipher = conn
        .negotiated_cipher_suite()
        .unwrap()
        .suite()
        .as_str()
        .unwrap()
        .to_owned();
    let alpn = String::from_utf8(conn.alpn_protocol().unwrap().to_vec()).unwrap();
    let binding = wire::channel_binding(&tls);
    let mut s = Counted {
        inner: tls,
        read: 0,
        written: 0,
    };
    wire::send(
        &mut s,
        &wire::startup(
            0,
            &[
                ("user", "keycloak"),
                ("database", "keycloak"),
                ("application_name", "observability-test"),
            ],
        ),
    )
    .await;
    let welcome = wire::login(&mut s, h.client_password.expose_secret(), Some(binding))
        .await
        .expect("login");
    let (read0, written0) = (s.read, s.written);
    let rows = wire::query(&mut s, "SELECT session_user::text, pg_backend_pid()::text")
        .await
        .unwrap();
    let session_user = rows[0][0].clone().unwrap();
    let backend_pid: i64 = rows[0][1].clone().unwrap().parse().unwrap();
    let big = wire::query(&mut s, "SELECT repeat('x', 200000)")
        .await
        .unwrap();
    assert_eq!(big[0][0].as_ref().unwrap().len(), 200_000);
    during(&session_user).await;
    // Not a readiness wait: the session is held open so its duration has a known floor.
    tokio::time::sleep(hold).await;
    wire::query(&mut s, "SELECT 1").await.unwrap();
    wire::terminate(&mut s).await;
    // The floor of the session's duration: the hold lies wholly inside the
    // relay, whereas the client's own clock starts at the welcome, a moment
    // before pgwarden's relay (and its clock) starts.
    let held = hold;
    Seen {
        client_addr,
        tls_version,
        tls_cipher,
        alpn,
        session_user,
        backend_pid,
        welcome_pid: welcome.pid,
        sent: s.written - written0,
        received: s.read - read0,
        held,
    }
}

/// The session facts every record of the session carries (on its span).
fn check_span(e: &Value, h: &Harness, seen: &Seen) {
    let span = &e["span"];
    let f = |name: &str| {
        span[name]
            .as_str()
            .unwrap_or_else(|| panic!("no {name} in {e}"))
            .to_owned()
    };
    assert!(is_hex(&f("session_id"), 16), "{e}");
    assert_eq!(f("client_addr"), seen.client_addr.to_string(), "{e}");
    assert_eq!(f("tls_version"), seen.tls_version, "{e}");
    assert_eq!(f("tls_cipher"), seen.tls_cipher, "{e}");
    assert_eq!(f("alpn"), seen.alpn, "{e}");
    assert_eq!(f("user"), "keycloak", "{e}");
    assert_eq!(f("database"), "keycloak", "{e}");
    assert_eq!(f("route"), "keycloak", "{e}");
    assert_eq!(f("auth_method"), "SCRAM-SHA-256-PLUS", "{e}");
    assert_eq!(
        f("upstream_addr"),
        format!("127.0.0.1:{}", h.cluster.port()),
        "{e}"
    );
    assert_eq!(f("upstream_user"), seen.session_user, "{e}");
    assert_eq!(span["upstream_pid"].as_i64(), Some(seen.backend_pid), "{e}");
    assert_eq!(seen.welcome_pid as i64, seen.backend_pid);
    assert_eq!(f("credential_source"), "test", "{e}");
    let hash = f("lease_id_hash");
    assert!(is_hex(&hash, 12), "{e}");
}

/// Runs one session and checks both of its records; returns (lease_id_hash, record).
async fn session_records_are_true(h: &Harness, lease_id: impl AsyncFn(&str) -> Option<String>) {
    let outer = Instant::now();
    let mut live_lease = None;
    let seen = one_session(h, Duration::from_millis(300), async |user: &str| {
        live_lease = lease_id(user).await;
    })
    .await;
    let ends = h.logs.wait_for("session_end", 1).await;
    let outer = outer.elapsed();
    let starts = h.logs.events("session_start");
    assert_eq!((starts.len(), ends.len()), (1, 1), "{starts:?} {ends:?}");
    let (start, end) = (&starts[0], &ends[0]);
    check_span(start, h, &seen);
    check_span(end, h, &seen);
    assert_eq!(start["span"], end["span"], "one span, filled in once");
    assert!(start["handshake_ms"].as_u64().is_some(), "{start}");

    assert_eq!(
        end["bytes_client_to_upstream"].as_u64(),
        Some(seen.sent),
        "{end}"
    );
    assert_eq!(
        end["bytes_upstream_to_client"].as_u64(),
        Some(seen.received),
        "{end}"
    );
    assert!(seen.received > 200_000, "{}", seen.received);
    assert_eq!(end["close_reason"], "client_terminated", "{end}");
    let duration = end["duration_ms"].as_u64().unwrap();
    assert!(
        duration >= seen.held.as_millis() as u64 && duration <= outer.as_millis() as u64,
        "duration_ms {duration} outside [{:?}, {outer:?}]",
        seen.held
    );

    // The lease: only its hash is logged, the same in the session and revocation records.
    let hash = start["span"]["lease_id_hash"].as_str().unwrap().to_owned();
    if let Some(id) = &live_lease {
        assert_ne!(&hash, id);
        assert_eq!(hash, sha256_prefix(id), "the hash is of this lease's id");
        assert!(
            !h.logs.text().contains(id.as_str()),
            "the lease id itself is logged"
        );
    }
    let revoked = h.logs.wait_for("lease_revoked", 1).await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["lease_id_hash"], hash.as_str());
    assert_eq!(revoked[0]["upstream_user"], seen.session_user.as_str());
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vault_session_record_carries_every_field_with_true_values() {
    let h = Harness::start(Options {
        vault: Some(VaultOptions::default()),
        ..Options::default()
    })
    .await;
    session_records_are_true(&h, async |user: &str| {
        h.vault()
            .leases()
            .into_iter()
            .find(|l| l.username == user)
            .map(|l| l.lease_id)
    })
    .await;
    assert!(!h.logs.text().contains("database/creds/keycloak/"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_built_in_source_session_record_carries_every_field_with_true_values() {
    let h = Harness::start(Options::default()).await;
    session_records_are_true(&h, async |_: &str| None).await;
    let end = &h.logs.events("session_end")[0];
    let hash = end["span"]["lease_id_hash"].as_str().unwrap();
    let user = end["span"]["upstream_user"].as_str().unwrap();
    assert!(!hash.contains(user) && !user.contains(hash));
}

/// The rejection counters, from one scrape.
async fn rejections(h: &Harness) -> BTreeMap<&'static str, f64> {
    let (_, body) = h.admin_get("/metrics").await;
    REASONS
        .iter()
        .map(|r| {
            let series = format!("pgwarden_connections_rejected_total{{reason=\"{r}\"}}");
            let v = parse_metric(&body, &series)
                .unwrap_or_else(|| panic!("{series} is not exported (zeroed at start)"));
            (*r, v)
        })
        .collect()
}

/// Runs `action` and checks that it added exactly one rejection, with `reason`, to the
/// counters and one `connection_rejected` record from `from` (an address, or an IP prefix).
async fn rejects_once(h: &Harness, reason: &str, action: impl AsyncFnOnce() -> String) {
    let before = rejections(h).await;
    let records_before = h.logs.events("connection_rejected").len();
    let from = action().await;
    wait_until(GENEROUS, &format!("{reason} is counted"), async || {
        rejections(h).await[reason] > before[reason]
    })
    .await;
    let after = rejections(h).await;
    for r in REASONS {
        let want = before[r] + if r == reason { 1.0 } else { 0.0 };
        assert_eq!(after[r], want, "{reason}: counter for {r}");
    }
    let records = h
        .logs
        .wait_for("connection_rejected", records_before + 1)
        .await;
    let new = &records[records_before..];
    assert_eq!(new.len(), 1, "{reason}: {new:?}");
    assert_eq!(new[0]["reason"], reason, "{}", new[0]);
    let addr = new[0]["client_addr"].as_str().unwrap_or_else(|| {
        panic!(
            "no client_addr: {}",
            h.logs
                .text()
                .lines()
                .filter(|l| l.contains("rejected"))
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert!(addr.starts_with(&from), "{reason}: {addr} is not {from}");
    assert!(new[0]["detail"].as_str().is_some_and(|d| !d.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rejection_reason_is_recorded_and_counted_once() {
    let h = Harness::start(Options {
        allow: vec!["127.0.0.1/32".into()],
        max_connections: 1,
        admin: true,
        ..Options::default()
    })
    .await;
    let start = rejections(&h).await;
    assert!(start.values().all(|v| *v == 0.0), "{start:?}");

    rejects_once(&h, "ip_not_allowed", async || {
        let mut tcp = wire::connect_from("127.0.0.2", h.proxy_addr).await;
        let addr = tcp.local_addr().unwrap().to_string();
        assert_eq!(wire::closed_without_a_byte(&mut tcp).await, Ok(()));
        addr
    })
    .await;

    let held = h.connect().await;
    rejects_once(&h, "too_many_connections", async || {
        let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
        let addr = tls.get_ref().0.local_addr().unwrap().to_string();
        let binding = wire::channel_binding(&tls);
        wire::send(&mut tls, &wire::startup(0, &[("user", "keycloak")])).await;
        let refused = wire::login(&mut tls, h.client_password.expose_secret(), Some(binding))
            .await
            .expect_err("no session slot");
        refused.assert_fatal("53300", "sorry, too many clients already");
        addr
    })
    .await;
    drop(held);
    h.logs.wait_for("session_end", 1).await;

    rejects_once(&h, "tls_required", async || {
        let mut tcp = wire::connect(h.proxy_addr).await;
        let addr = tcp.local_addr().unwrap().to_string();
        wire::send(&mut tcp, &wire::startup(0, &[("user", "keycloak")])).await;
        let all = wire::read_until_closed(&mut tcp).await;
        assert_eq!(all[0].field(b'C').as_deref(), Some("28000"), "{all:?}");
        addr
    })
    .await;

    rejects_once(&h, "tls_handshake", async || {
        let mut tcp = wire::connect(h.proxy_addr).await;
        let addr = tcp.local_addr().unwrap().to_string();
        wire::send(&mut tcp, &wire::encode_ssl_request()).await;
        assert_eq!(wire::read_byte(&mut tcp).await, Some(b'S'));
        // A client that trusts another CA gives up on pgwarden's certificate.
        let other = pgwarden::embedded::pki::Pki::new("another CA").unwrap();
        assert!(wire::tls(tcp, other.ca_cert_pem(), true).await.is_err());
        addr
    })
    .await;

    rejects_once(&h, "protocol", async || {
        let mut tcp = wire::connect(h.proxy_addr).await;
        let addr = tcp.local_addr().unwrap().to_string();
        // A packet length of 2: shorter than its own length field.
        wire::send(&mut tcp, &[0, 0, 0, 2]).await;
        let all = wire::read_until_closed(&mut tcp).await;
        assert_eq!(all[0].field(b'C').as_deref(), Some("08P01"), "{all:?}");
        addr
    })
    .await;

    rejects_once(&h, "auth_failed", async || {
        let config = h.pg_config_as("keycloak", "not-the-password-0123456789", "keycloak");
        let err = h.try_connect(&config).await.err().unwrap();
        assert_eq!(err.as_db_error().unwrap().code().code(), "28P01");
        "127.0.0.1:".into()
    })
    .await;

    rejects_once(&h, "unknown_database", async || {
        let config = h.pg_config_as("keycloak", h.client_password.expose_secret(), "nosuchdb");
        let err = h.try_connect(&config).await.err().unwrap();
        assert_eq!(err.as_db_error().unwrap().code().code(), "3D000");
        "127.0.0.1:".into()
    })
    .await;

    rejects_once(&h, "parameter_not_allowed", async || {
        let mut config = h.pg_config();
        config.options("-c post_auth_delay=1");
        let err = h.try_connect(&config).await.err().unwrap();
        assert_eq!(err.as_db_error().unwrap().code().code(), "42501");
        "127.0.0.1:".into()
    })
    .await;

    // Nothing counted twice or late: every reason tried is at exactly one
    // (the timeout, the PROXY header and the handshake cap have tests of
    // their own).
    let end = rejections(&h).await;
    for r in REASONS {
        let untried = ["handshake_timeout", "proxy_protocol", "too_many_handshakes"];
        let want = if untried.contains(&r) { 0.0 } else { 1.0 };
        assert_eq!(end[r], want, "{r}");
    }
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeouts_are_recorded_and_counted_once_each() {
    let h = Harness::start(Options {
        handshake_timeout: "3s".into(),
        admin: true,
        ..Options::default()
    })
    .await;
    // Silent after connecting: closed at the deadline without a word.
    rejects_once(&h, "handshake_timeout", async || {
        let mut tcp = wire::connect(h.proxy_addr).await;
        let addr = tcp.local_addr().unwrap().to_string();
        assert_eq!(wire::closed_without_a_byte(&mut tcp).await, Ok(()));
        addr
    })
    .await;
    // Stalled in the middle of SCRAM: told 57014 at the deadline.
    rejects_once(&h, "handshake_timeout", async || {
        let mut tls = wire::ssl(h.proxy_addr, &h.ca_pem).await;
        let addr = tls.get_ref().0.local_addr().unwrap().to_string();
        wire::send(&mut tls, &wire::startup(0, &[("user", "keycloak")])).await;
        let all = wire::read_until_closed(&mut tls).await;
        assert_eq!(all[0].auth_code(), Some(10), "the SASL request: {all:?}");
        all[1].assert_fatal("57014", "canceling authentication due to timeout");
        addr
    })
    .await;
    let end = rejections(&h).await;
    for r in REASONS {
        let want = if r == "handshake_timeout" { 2.0 } else { 0.0 };
        assert_eq!(end[r], want, "{r}");
    }
    h.assert_no_secrets_logged();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejection_flood_is_counted_in_full_but_logged_at_a_bounded_rate() {
    const FLOOD: usize = 1000;
    const PER_SECOND: f64 = 20.0;
    let h = Harness::start(Options {
        allow: vec!["127.0.0.1/32".into()],
        admin: true,
        ..Options::default()
    })
    .await;
    let counter = "pgwarden_connections_rejected_total{reason=\"ip_not_allowed\"}";
    let from_flood = || {
        h.logs
            .events("connection_rejected")
            .into_iter()
            .filter(|e| e["client_addr"].as_str().unwrap().starts_with("127.0.0.2:"))
            .collect::<Vec<_>>()
    };
    // The client sockets stay open (closed by the server) so no port is used twice.
    let mut sockets = Vec::new();
    let mut ports = Vec::new();
    let started = Instant::now();
    for _ in 0..FLOOD {
        let tcp = wire::connect_from("127.0.0.2", h.proxy_addr).await;
        ports.push(tcp.local_addr().unwrap().port());
        sockets.push(tcp);
    }
    wait_until(
        GENEROUS,
        "every connection of the flood is counted",
        async || h.metric(counter).await == FLOOD as f64,
    )
    .await;
    let took = started.elapsed().as_secs_f64();
    let logged = from_flood().len();
    // One window a second, each admitting at most PER_SECOND records.
    let bound = (PER_SECOND * (took.ceil() + 2.0)) as usize;
    assert!(
        logged <= bound,
        "{logged} records for {FLOOD} rejections in {took:.1}s"
    );

    // Later rejections report how many records were left out before them. Probe until one
    // such record exists; then every connection up to it is accounted for exactly: logged
    // or counted in a `suppressed_before`.
    wait_until(GENEROUS, "a record reports suppressed ones", async || {
        let tcp = wire::connect_from("127.0.0.2", h.proxy_addr).await;
        ports.push(tcp.local_addr().unwrap().port());
        sockets.push(tcp);
        let made = ports.len() as f64;
        wait_until(GENEROUS, "the probe is counted", async || {
            h.metric(counter).await == made
        })
        .await;
        from_flood()
            .iter()
            .any(|e| e["suppressed_before"].as_u64().unwrap() > 0)
    })
    .await;
    let records = from_flood();
    let last = records
        .iter()
        .rposition(|e| e["suppressed_before"].as_u64().unwrap() > 0)
        .unwrap();
    let port: u16 = records[last]["client_addr"]
        .as_str()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let index = ports.iter().position(|p| *p == port).unwrap();
    let accounted: u64 = records[..=last]
        .iter()
        .map(|e| 1 + e["suppressed_before"].as_u64().unwrap())
        .sum();
    assert_eq!(accounted, index as u64 + 1, "records: {}", last + 1);
    // The service goes on.
    let client = h.connect().await;
    client.simple_query("SELECT 1").await.unwrap();
    h.assert_no_secrets_logged();
}

/// /readyz: status and parsed body.
async fn readyz(h: &Harness) -> (u16, Value) {
    let (status, body) = h.admin_get("/readyz").await;
    let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_vault_and_healthz_stays_up() {
    let h = Harness::start(Options {
        vault: Some(VaultOptions::default()),
        admin: true,
        ..Options::default()
    })
    .await;
    let up = "pgwarden_credential_source_up{name=\"test\"}";
    wait_until(GENEROUS, "ready at start", async || {
        readyz(&h).await.0 == 200
    })
    .await;
    let (_, body) = readyz(&h).await;
    assert_eq!(body["status"], "ready", "{body}");
    assert_eq!(body["checks"]["listener"], "ok", "{body}");
    assert_eq!(body["checks"]["credentials.test"], "ok", "{body}");
    assert_eq!(h.metric(up).await, 1.0);

    for (mode, words) in [(Mode::Down, "connection"), (Mode::Sealed, "sealed")] {
        h.vault().set_mode(mode);
        wait_until(GENEROUS, &format!("not ready while {mode:?}"), async || {
            readyz(&h).await.0 == 503
        })
        .await;
        let (_, body) = readyz(&h).await;
        assert_eq!(body["status"], "not_ready", "{body}");
        assert_eq!(body["checks"]["listener"], "ok", "{body}");
        let why = body["checks"]["credentials.test"]
            .as_str()
            .unwrap_or_else(|| panic!("{body}"));
        assert!(
            why.to_lowercase().contains(words),
            "{mode:?}: the failing check says why: {why}"
        );
        assert_eq!(h.admin_get("/healthz").await.0, 200, "{mode:?}");
        assert_eq!(h.metric(up).await, 0.0, "{mode:?}");

        h.vault().set_mode(Mode::Up);
        wait_until(
            GENEROUS,
            &format!("ready again after {mode:?}"),
            async || readyz(&h).await.0 == 200,
        )
        .await;
        assert_eq!(h.metric(up).await, 1.0);
        let client = h.connect().await;
        client.simple_query("SELECT 1").await.unwrap();
    }
    assert_eq!(h.admin_get("/healthz").await, (200, "ok\n".to_owned()));
    h.assert_no_secrets_logged();
}
