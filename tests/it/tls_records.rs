//! The TLS records pgwarden sends to clients carry at most 8 KiB of plaintext, as a
//! PostgreSQL backend's do: libpq's asynchronous API reads one record per call into a
//! buffer with as little as 8 KiB free, and a libpq without the fix for it (Debian's 15.18
//! here; the 18.6 psycopg bundles has it) then leaves the rest of a larger record inside
//! OpenSSL while the client waits on an empty socket (see `psycopg.rs` for that stall).
//!
//! A [`Tap`] between a real client and pgwarden reads the record headers of everything
//! pgwarden sends (and, for comparison, between psql and PostgreSQL itself); the bound on
//! each record's length follows from the negotiated version and cipher
//! (`tls_tap::max_record_len`). Each check also asks that the longest record be exactly
//! that bound: full 8 KiB records, so bulk transfers are not cut finer than they must be,
//! and a bound that no record reaches could not tell a cap from a loose guess.

use std::net::SocketAddr;
use std::sync::Arc;

use pgwarden::dev::{CLIENT_USER, DATABASE};
use rustls::crypto::aws_lc_rs::cipher_suite;
use rustls::{ClientConfig, RootCertStore, SupportedCipherSuite};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use secrecy::ExposeSecret;

use crate::support::harness::{Harness, Options};
use crate::support::tls_tap::{APPLICATION_DATA, Tap};
use crate::support::wire;

/// What psql runs, what it must print, and how long that is.
const PSQL_RUNS: [(&str, &str, usize); 3] = [
    // One 3 MB DataRow: PostgreSQL writes it in large chunks.
    ("a large row", "SELECT repeat('x', 3000000)", 3_000_000),
    // 400 rows of 5000 bytes: PostgreSQL's 8 KiB flushes, coalesced by the relay.
    (
        "many rows",
        "SELECT repeat('y', 5000) FROM generate_series(1, 400)",
        400 * 5001 - 1,
    ),
    (
        "COPY out",
        "COPY (SELECT repeat('z', 200) FROM generate_series(1, 20000)) TO STDOUT",
        20000 * 201 - 1,
    ),
];

/// Runs [`PSQL_RUNS`] with `conninfo` (which must lead through `tap`) and checks the
/// records of each connection: TLS 1.3, within the bound, and full records for bulk data.
async fn psql_records(h: &Harness, tap: &Tap, conninfo: &str, password: &str, whose: &str) {
    for (what, sql, len) in PSQL_RUNS {
        let out = h.psql(conninfo, password, sql).await;
        assert!(out.success, "{whose}, {what}: {}", out.stderr);
        assert_eq!(out.stdout.len(), len, "{whose}, {what}: what psql printed");
    }
    let conns = tap.connections();
    assert_eq!(conns.len(), PSQL_RUNS.len(), "one connection per psql run");
    for (conn, (what, _, _)) in conns.iter().zip(PSQL_RUNS) {
        let what = format!("{whose}, {what}");
        // psql (libpq 15, OpenSSL) agrees on TLS 1.3 with pgwarden and with PostgreSQL.
        assert_eq!(conn.version, Some(0x0304), "{what}");
        assert_eq!(
            conn.client_first_byte,
            Some(0),
            "{what}: an SSLRequest first"
        );
        conn.assert_within_bound(&what);
        assert_eq!(
            conn.longest_application_data(),
            conn.bound(),
            "{what}: full 8 KiB records for bulk data"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_large_results_and_copy_out_come_in_records_of_at_most_8_kib() {
    let h = Harness::start(Options::default()).await;
    let tap = Tap::start(h.proxy_addr).await;
    // libpq takes the last value of a repeated keyword: psql goes through the tap.
    let conninfo = h.conninfo(&format!("port={}", tap.addr.port()));
    let password = h.client_password.expose_secret();
    psql_records(&h, &tap, &conninfo, password, "through pgwarden").await;

    // PostgreSQL's own records, for comparison: the same bound, reached the same way.
    let cluster = SocketAddr::new([127, 0, 0, 1].into(), h.cluster.port());
    let tap = Tap::start(cluster).await;
    let conninfo = format!(
        "host=127.0.0.1 port={} user={} dbname={DATABASE} sslmode=verify-full sslrootcert={}",
        tap.addr.port(),
        h.cluster.superuser(),
        h.cluster.ca_cert_path().display()
    );
    let password = h.cluster.superuser_password().expose_secret();
    psql_records(&h, &tap, &conninfo, password, "straight to PostgreSQL").await;
}

/// A TLS 1.2 client configuration offering only `suites`, trusting the test CA.
fn tls12_only(ca_pem: &str, suites: &[SupportedCipherSuite]) -> Arc<ClientConfig> {
    let mut provider = (*pgwarden::tls::provider()).clone();
    provider.cipher_suites = suites.to_vec();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Arc::new(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_1_2_records_from_the_handshake_on_carry_at_most_8_kib() {
    let h = Harness::start(Options::default()).await;
    let tap = Tap::start(h.proxy_addr).await;
    // Both key types, so the suite is the AEAD asked for whatever key the certificate has.
    let families: [(&str, [SupportedCipherSuite; 2], usize); 2] = [
        (
            "AES-128-GCM",
            [
                cipher_suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            ],
            8192 + 8 + 16,
        ),
        (
            "ChaCha20-Poly1305",
            [
                cipher_suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ],
            8192 + 16,
        ),
    ];
    for (i, (what, suites, bound)) in families.into_iter().enumerate() {
        let mut tcp = wire::connect(tap.addr).await;
        wire::send(&mut tcp, &wire::encode_ssl_request()).await;
        assert_eq!(wire::read_byte(&mut tcp).await, Some(b'S'));
        let connector = tokio_rustls::TlsConnector::from(tls12_only(&h.ca_pem, &suites));
        let name = ServerName::try_from("127.0.0.1").unwrap();
        let mut s = connector.connect(name, tcp).await.expect("TLS 1.2");
        let binding = wire::channel_binding(&s);
        let params = [("user", CLIENT_USER), ("database", DATABASE)];
        wire::send(&mut s, &wire::startup(0, &params)).await;
        wire::login(&mut s, h.client_password.expose_secret(), Some(binding))
            .await
            .expect("login over TLS 1.2");

        // The handshake and the welcome.
        let welcome = &tap.connections()[i];
        assert_eq!(welcome.version, Some(0x0303), "{what}");
        assert_eq!(welcome.bound(), bound, "{what}: the bound for this suite");
        assert!(
            welcome.records.iter().any(|(t, _)| *t == APPLICATION_DATA),
            "{what}: the welcome came as application data"
        );
        welcome.assert_within_bound(&format!("{what}: handshake and welcome"));

        // A large result on the same connection.
        let rows = wire::query(&mut s, "SELECT repeat('x', 200000)")
            .await
            .unwrap();
        assert_eq!(rows[0][0].as_deref().map(str::len), Some(200_000));
        let conn = &tap.connections()[i];
        conn.assert_within_bound(what);
        assert_eq!(conn.longest_application_data(), bound, "{what}");
        wire::terminate(&mut s).await;
    }
}
