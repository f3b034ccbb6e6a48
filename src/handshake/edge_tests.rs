//! Negotiation at the network edge, in memory: a PROXY header from a peer
//! not trusted to send one, a first byte the listener already read, and
//! client certificates (verified, absent, from another CA, revoked).

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use super::*;
use crate::embedded::pki::{IssuedCert, Pki};
use crate::protocol::startup::{encode_ssl_request, encode_startup};
use crate::tls::mtls::{ClientCerts, client_verifier};

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

fn plain_negotiator() -> Arc<Negotiator> {
    Arc::new(Negotiator {
        tls: None,
        require_tls: false,
    })
}

#[tokio::test]
async fn a_proxy_header_from_an_untrusted_peer_is_refused_unanswered() {
    for header in [
        &b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\r\n"[..],
        &crate::listener::proxy::V2_SIGNATURE[..],
    ] {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(header).await.unwrap();
        let outcome = plain_negotiator().negotiate(server, None, far()).await;
        let Err(Refused { stream, error }) = outcome else {
            panic!("a PROXY header was taken from an untrusted peer");
        };
        assert!(matches!(error, NegotiateError::UntrustedProxyHeader));
        assert_eq!(error.reason(), RejectReason::ProxyProtocol);
        assert!(stream.is_none() && error.client_message().is_none());
    }
}

/// The listener read the first byte looking for a PROXY header: negotiation
/// goes on from the second.
#[tokio::test]
async fn negotiation_goes_on_from_a_byte_already_read() {
    let (mut client, server) = tokio::io::duplex(1024);
    let packet = encode_startup(3, 0, &[("user", "keycloak")]);
    client.write_all(&packet[1..]).await.unwrap();
    let outcome = plain_negotiator()
        .negotiate(server, Some(packet[0]), far())
        .await;
    let Ok(Negotiated::Startup { startup, .. }) = outcome else {
        panic!("no startup");
    };
    assert_eq!(startup.param("user"), Some("keycloak"));
}

struct Pkis {
    negotiator: Arc<Negotiator>,
    roots: Arc<rustls::RootCertStore>,
    ca: Pki,
    _dir: tempfile::TempDir,
}

/// A negotiator asking for client certificates from `ca` (CRL revoking `revoked`).
fn with_client_certs(ca: Pki, revoked: &[&IssuedCert]) -> Pkis {
    let server_cert = ca.issue_server(&["localhost"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, ca.ca_cert_pem()).unwrap();
    let crl_file = dir.path().join("ca.crl");
    let revoked: Vec<&str> = revoked.iter().map(|c| c.cert_pem.as_str()).collect();
    std::fs::write(&crl_file, ca.crl(&revoked).unwrap()).unwrap();
    let verifier = client_verifier(&ca_file, Some(&crl_file), ClientCerts::Optional).unwrap();
    let certs = vec![CertificateDer::from_pem_slice(server_cert.cert_pem.as_bytes()).unwrap()];
    let key =
        PrivateKeyDer::from_pem_slice(server_cert.key_pem.expose_secret().as_bytes()).unwrap();
    let server = crate::tls::server_config_with(certs, key, Some(verifier)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.ca_cert_pem().as_bytes()).unwrap())
        .unwrap();
    Pkis {
        negotiator: Arc::new(Negotiator {
            tls: acceptor(Some(server)),
            require_tls: true,
        }),
        roots: Arc::new(roots),
        ca,
        _dir: dir,
    }
}

fn client_config(
    roots: &Arc<rustls::RootCertStore>,
    cert: Option<&IssuedCert>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone());
    let config = match cert {
        Some(c) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(c.cert_pem.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(c.key_pem.expose_secret().as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// SSLRequest, TLS with `config`, a startup: the names of the client
/// certificate negotiation verified, or why it refused.
async fn negotiate_tls(
    negotiator: &Arc<Negotiator>,
    config: Arc<ClientConfig>,
) -> Result<Option<Vec<String>>, NegotiateError> {
    let (mut client, server) = tokio::io::duplex(64 * 1024);
    let n = negotiator.clone();
    let task = tokio::spawn(async move { n.negotiate(server, None, far()).await });
    client.write_all(&encode_ssl_request()).await.unwrap();
    let mut s = [0u8; 1];
    client.read_exact(&mut s).await.unwrap();
    assert_eq!(s[0], b'S');
    let client_side = tokio::spawn(async move {
        let name = ServerName::try_from("localhost").unwrap();
        // In TLS 1.3 a client learns that its certificate was refused only
        // after its side of the handshake: the server decides.
        if let Ok(mut tls) = TlsConnector::from(config).connect(name, client).await {
            let _ = tls
                .write_all(&encode_startup(3, 0, &[("user", "alice")]))
                .await;
            let _ = tls.flush().await;
            let mut sink = Vec::new();
            let _ = tls.read_to_end(&mut sink).await;
        }
    });
    let outcome = tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .unwrap()
        .unwrap();
    client_side.abort();
    match outcome {
        Ok(Negotiated::Startup { tls, .. }) => Ok(tls.and_then(|t| t.client_cert)),
        Ok(Negotiated::Cancel { .. }) => panic!("a cancel"),
        Err(r) => Err(r.error),
    }
}

#[tokio::test]
async fn a_verified_client_certificate_is_named_and_none_is_fine() {
    let p = with_client_certs(Pki::new("client CA").unwrap(), &[]);
    let alice = p.ca.issue_client("alice").unwrap();
    let names = negotiate_tls(&p.negotiator, client_config(&p.roots, Some(&alice))).await;
    assert_eq!(names.unwrap(), Some(vec!["alice".to_owned()]));
    // No certificate: TLS goes on, for SCRAM users.
    let names = negotiate_tls(&p.negotiator, client_config(&p.roots, None)).await;
    assert_eq!(names.unwrap(), None);
}

#[tokio::test]
async fn a_certificate_from_another_ca_or_revoked_ends_the_tls_handshake() {
    let other = Pki::new("another CA").unwrap();
    let stranger = other.issue_client("alice").unwrap();
    let p = with_client_certs(Pki::new("client CA").unwrap(), &[]);
    let refused = negotiate_tls(&p.negotiator, client_config(&p.roots, Some(&stranger))).await;
    assert!(
        matches!(refused, Err(NegotiateError::TlsHandshake(_))),
        "{refused:?}"
    );

    // The CRL revokes one of the CA's own certificates, not the others.
    let ca = Pki::new("client CA").unwrap();
    let revoked = ca.issue_client("mallory").unwrap();
    let kept = ca.issue_client("alice").unwrap();
    let p = with_client_certs(ca, &[&revoked]);
    let refused = negotiate_tls(&p.negotiator, client_config(&p.roots, Some(&revoked))).await;
    assert!(
        matches!(refused, Err(NegotiateError::TlsHandshake(_))),
        "{refused:?}"
    );
    let names = negotiate_tls(&p.negotiator, client_config(&p.roots, Some(&kept))).await;
    assert_eq!(names.unwrap(), Some(vec!["alice".to_owned()]));
}
