//! Every negotiation path, in memory: a real rustls client over
//! `tokio::io::duplex`, no cluster, paused time for the deadline.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsConnector;

use super::*;
use crate::embedded::pki::Pki;
use crate::protocol::GSSENC_REQUEST_CODE;
use crate::protocol::startup::{encode_cancel, encode_ssl_request, encode_startup};

type Outcome = Step<DuplexStream, Negotiated<DuplexStream>>;

/// A negotiator (TLS configured unless `tls` is false) and a client trusting its CA.
fn setup(tls: bool, require_tls: bool) -> (Arc<Negotiator>, Arc<ClientConfig>, Arc<ClientConfig>) {
    let pki = Pki::new("handshake test CA").unwrap();
    let cert = pki.issue_server(&["localhost"]).unwrap();
    let certs = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()];
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.expose_secret().as_bytes()).unwrap();
    let server = crate::tls::server_config_from(certs, key).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(pki.ca_cert_pem().as_bytes()).unwrap())
        .unwrap();
    let roots = Arc::new(roots);
    let with_alpn =
        crate::tls::client_config(roots.clone(), crate::tls::Verification::Full).unwrap();
    let mut without = (*with_alpn).clone();
    without.alpn_protocols.clear();
    let negotiator = Negotiator {
        tls: acceptor(tls.then_some(server)),
        require_tls,
    };
    (Arc::new(negotiator), with_alpn, Arc::new(without))
}

/// Starts negotiating on the far end of a pipe; returns the near end.
fn start(negotiator: &Arc<Negotiator>) -> (DuplexStream, JoinHandle<Outcome>) {
    let (client, server) = tokio::io::duplex(64 * 1024);
    let negotiator = negotiator.clone();
    let deadline = Instant::now() + Duration::from_secs(60);
    let task = tokio::spawn(async move { negotiator.negotiate(server, None, deadline).await });
    (client, task)
}

fn startup() -> Vec<u8> {
    encode_startup(3, 0, &[("user", "keycloak"), ("database", "keycloak")])
}

fn gssenc_request() -> Vec<u8> {
    let mut p = 8i32.to_be_bytes().to_vec();
    p.extend_from_slice(&GSSENC_REQUEST_CODE.to_be_bytes());
    p
}

async fn read_byte(client: &mut DuplexStream) -> u8 {
    let mut b = [0u8; 1];
    client.read_exact(&mut b).await.unwrap();
    b[0]
}

async fn tls_client(
    config: &Arc<ClientConfig>,
    io: DuplexStream,
) -> tokio_rustls::client::TlsStream<DuplexStream> {
    TlsConnector::from(config.clone())
        .connect(ServerName::try_from("localhost").unwrap(), io)
        .await
        .expect("TLS handshake")
}

fn refused_with(outcome: Outcome) -> (Option<ClientStream<DuplexStream>>, NegotiateError) {
    match outcome {
        Err(Refused { stream, error }) => (stream, error),
        Ok(_) => panic!("negotiation was expected to fail"),
    }
}

fn started(outcome: Outcome) -> (ClientStream<DuplexStream>, StartupMessage, Option<TlsInfo>) {
    match outcome {
        Ok(Negotiated::Startup {
            stream,
            startup,
            tls,
        }) => (stream, startup, tls),
        Ok(Negotiated::Cancel { .. }) => panic!("a cancel, not a startup"),
        Err(r) => panic!("refused: {}", r.error),
    }
}

#[tokio::test]
async fn a_plaintext_startup_is_taken_when_tls_is_optional_and_refused_when_required() {
    let (optional, _, _) = setup(true, false);
    let (mut client, task) = start(&optional);
    client.write_all(&startup()).await.unwrap();
    let (stream, startup, tls) = started(task.await.unwrap());
    assert!(!stream.is_tls() && tls.is_none());
    assert_eq!(startup.param("user"), Some("keycloak"));

    let (required, _, _) = setup(true, true);
    let (mut client, task) = start(&required);
    client.write_all(&super::tests::startup()).await.unwrap();
    let (stream, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::TlsRequired));
    assert_eq!(error.reason(), RejectReason::TlsRequired);
    assert_eq!(error.sqlstate(), "28000");
    // The stream comes back, so the client can be told why.
    assert!(stream.is_some_and(|s| !s.is_tls()));
}

#[tokio::test]
async fn an_ssl_request_is_answered_s_and_tls_follows_with_or_without_alpn() {
    let (negotiator, with_alpn, without_alpn) = setup(true, true);
    for (config, alpn) in [(&with_alpn, Some("postgresql")), (&without_alpn, None)] {
        let (mut client, task) = start(&negotiator);
        client.write_all(&encode_ssl_request()).await.unwrap();
        assert_eq!(read_byte(&mut client).await, b'S');
        let mut tls = tls_client(config, client).await;
        tls.write_all(&startup()).await.unwrap();
        tls.flush().await.unwrap();
        let (stream, startup, info) = started(task.await.unwrap());
        let info = info.expect("TLS info");
        assert!(stream.is_tls());
        assert_eq!(info.alpn.as_deref(), alpn);
        assert!(info.version.starts_with("TLSv1_"), "{}", info.version);
        assert_eq!(startup.param("database"), Some("keycloak"));
    }
}

#[tokio::test]
async fn plaintext_sent_behind_an_ssl_request_is_refused_before_it_is_parsed() {
    let (negotiator, _, _) = setup(true, true);
    let (mut client, task) = start(&negotiator);
    // The CVE-2021-23214 shape: an SSLRequest and a startup in one write.
    let mut smuggled = encode_ssl_request().to_vec();
    smuggled.extend(startup());
    client.write_all(&smuggled).await.unwrap();
    assert_eq!(read_byte(&mut client).await, b'S');
    let (stream, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::PlaintextAfterSslRequest));
    assert_eq!(error.sqlstate(), "08P01");
    assert_eq!(
        error.client_message().as_deref(),
        Some("received unencrypted data after SSL request")
    );
    assert!(stream.is_some_and(|s| !s.is_tls()));
}

#[tokio::test]
async fn without_tls_an_ssl_request_is_answered_n_once_and_refused_the_second_time() {
    let (negotiator, _, _) = setup(false, false);
    let (mut client, task) = start(&negotiator);
    client.write_all(&encode_ssl_request()).await.unwrap();
    assert_eq!(read_byte(&mut client).await, b'N');
    client.write_all(&startup()).await.unwrap();
    let (_, _, tls) = started(task.await.unwrap());
    assert!(tls.is_none());

    let (mut client, task) = start(&negotiator);
    client.write_all(&encode_ssl_request()).await.unwrap();
    assert_eq!(read_byte(&mut client).await, b'N');
    client.write_all(&encode_ssl_request()).await.unwrap();
    let (_, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::DuplicateSslRequest));
}

#[tokio::test]
async fn gssenc_is_answered_n_tls_may_follow_and_a_second_gssenc_is_refused() {
    let (negotiator, with_alpn, _) = setup(true, true);
    let (mut client, task) = start(&negotiator);
    client.write_all(&gssenc_request()).await.unwrap();
    assert_eq!(read_byte(&mut client).await, b'N');
    client.write_all(&encode_ssl_request()).await.unwrap();
    assert_eq!(read_byte(&mut client).await, b'S');
    let mut tls = tls_client(&with_alpn, client).await;
    tls.write_all(&startup()).await.unwrap();
    tls.flush().await.unwrap();
    let (_, _, info) = started(task.await.unwrap());
    assert!(info.is_some());

    let (mut client, task) = start(&negotiator);
    client.write_all(&gssenc_request()).await.unwrap();
    assert_eq!(read_byte(&mut client).await, b'N');
    client.write_all(&gssenc_request()).await.unwrap();
    let (_, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::DuplicateGssEncRequest));
}

#[tokio::test]
async fn direct_tls_needs_alpn_postgresql_and_a_configured_certificate() {
    let (negotiator, with_alpn, without_alpn) = setup(true, true);
    let (client, task) = start(&negotiator);
    let mut tls = tls_client(&with_alpn, client).await;
    tls.write_all(&startup()).await.unwrap();
    tls.flush().await.unwrap();
    let (_, _, info) = started(task.await.unwrap());
    let info = info.unwrap();
    assert_eq!(info.alpn.as_deref(), Some("postgresql"));

    // Without ALPN the handshake completes, then the client is refused over TLS.
    let (client, task) = start(&negotiator);
    let _tls = tls_client(&without_alpn, client).await;
    let (stream, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::AlpnRequired));
    assert_eq!(error.reason(), RejectReason::TlsHandshake);
    assert!(stream.is_some_and(|s| s.is_tls()));

    let (plain_only, _, _) = setup(false, false);
    let (client, task) = start(&plain_only);
    let handshake = tokio::spawn(async move {
        TlsConnector::from(with_alpn)
            .connect(ServerName::try_from("localhost").unwrap(), client)
            .await
    });
    let (_, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::DirectTlsNotConfigured));
    assert!(handshake.await.unwrap().is_err());
}

#[tokio::test]
async fn a_second_ssl_request_inside_tls_is_refused() {
    let (negotiator, with_alpn, _) = setup(true, true);
    let (mut client, task) = start(&negotiator);
    client.write_all(&encode_ssl_request()).await.unwrap();
    assert_eq!(read_byte(&mut client).await, b'S');
    let mut tls = tls_client(&with_alpn, client).await;
    tls.write_all(&encode_ssl_request()).await.unwrap();
    tls.flush().await.unwrap();
    let (stream, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::DuplicateSslRequest));
    assert!(stream.is_some_and(|s| s.is_tls()));
}

#[tokio::test]
async fn cancel_requests_come_through_in_plaintext_and_inside_tls() {
    let (negotiator, with_alpn, _) = setup(true, true);
    let (mut client, task) = start(&negotiator);
    client
        .write_all(&encode_cancel(4242, &[1, 2, 3, 4]))
        .await
        .unwrap();
    match task.await.unwrap() {
        Ok(Negotiated::Cancel { request, tls, .. }) => {
            assert_eq!(
                (request.pid, request.key, tls),
                (4242, vec![1, 2, 3, 4], false)
            );
        }
        _ => panic!("a plaintext cancel request"),
    }

    let (mut client, task) = start(&negotiator);
    client.write_all(&encode_ssl_request()).await.unwrap();
    assert_eq!(read_byte(&mut client).await, b'S');
    let mut tls = tls_client(&with_alpn, client).await;
    tls.write_all(&encode_cancel(7, &[9; 32])).await.unwrap();
    tls.flush().await.unwrap();
    match task.await.unwrap() {
        Ok(Negotiated::Cancel {
            request,
            tls,
            stream,
        }) => {
            assert_eq!((request.pid, request.key.len(), tls), (7, 32, true));
            assert!(stream.is_tls());
        }
        _ => panic!("a cancel request inside TLS"),
    }
}

#[tokio::test]
async fn closed_truncated_and_malformed_packets_end_negotiation() {
    let (negotiator, _, _) = setup(true, false);
    let (client, task) = start(&negotiator);
    drop(client);
    let (stream, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::ClosedEarly) && stream.is_none());

    let (mut client, task) = start(&negotiator);
    client.write_all(&startup()[..6]).await.unwrap();
    drop(client);
    let (_, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::Closed));
    assert_eq!(error.client_message(), None);

    let (mut client, task) = start(&negotiator);
    client.write_all(&[0, 0, 0, 4, 0, 0, 0, 0]).await.unwrap();
    let (stream, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::Packet(_)));
    assert_eq!(error.sqlstate(), "08P01");
    assert!(stream.is_some());

    let (mut client, task) = start(&negotiator);
    client
        .write_all(&encode_startup(2, 0, &[("user", "u")]))
        .await
        .unwrap();
    let (_, error) = refused_with(task.await.unwrap());
    assert!(matches!(
        error,
        NegotiateError::UnsupportedVersion { major: 2, minor: 0 }
    ));
    assert_eq!(error.sqlstate(), "0A000");

    let (mut client, task) = start(&negotiator);
    client.write_all(&encode_ssl_request()).await.unwrap();
    assert_eq!(read_byte(&mut client).await, b'S');
    drop(client);
    let (_, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::ClosedAfterSslRequest));
}

#[tokio::test(start_paused = true)]
async fn a_silent_client_is_refused_at_the_deadline_at_every_step() {
    let (negotiator, _, _) = setup(true, true);
    // Silent from the start.
    let (_client, task) = start(&negotiator);
    let started = Instant::now();
    let (_, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::Timeout));
    assert_eq!(error.reason(), RejectReason::HandshakeTimeout);
    assert_eq!(started.elapsed(), Duration::from_secs(60));
    // Silent after being answered `S`.
    let (mut client, task) = start(&negotiator);
    client.write_all(&encode_ssl_request()).await.unwrap();
    assert_eq!(read_byte(&mut client).await, b'S');
    let (_, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::Timeout));
    // Half a startup packet, then nothing: the stream comes back (plaintext,
    // TLS optional) but the client is told nothing.
    let (optional, _, _) = setup(true, false);
    let (mut client, task) = start(&optional);
    client.write_all(&startup()[..10]).await.unwrap();
    let (stream, error) = refused_with(task.await.unwrap());
    assert!(matches!(error, NegotiateError::Timeout));
    assert!(stream.is_some());
    assert_eq!(error.client_message(), None);
}
