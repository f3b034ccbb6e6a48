//! A tokio-postgres TLS connector on tokio-rustls, with `tls-server-end-point` channel binding.
//!
//! tokio-postgres does the SSLRequest and the protocol; this module only wraps the socket in TLS
//! and reports the binding data of the server's leaf certificate, so that tokio-postgres can
//! authenticate with SCRAM-SHA-256-PLUS.
//!
//! It must never weaken verification: the rustls config decides the trust anchors, and
//! [`verify_full_client_config`] trusts exactly the CAs it is given and checks the host name (or
//! IP address) tokio-postgres connects to. It never relies on a process-wide crypto provider.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::{CertificateDer, InvalidDnsNameError, ServerName};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::TlsConnector;

use super::channel_binding::tls_server_end_point;

/// The ALPN protocol PostgreSQL 17+ expects; older servers ignore it.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why a client TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("CA bundle is not valid PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("CA bundle contains no certificate")]
    NoCertificates,
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client config that trusts only the CA certificates in `ca_pem`, speaks TLS 1.2 or 1.3 with
/// the aws-lc-rs provider, offers ALPN `postgresql` and presents no client certificate.
///
/// Host name verification is rustls's: DNS names against DNS SANs, IP addresses against IP SANs.
pub fn verify_full_client_config(ca_pem: &[u8]) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?)?;
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoCertificates);
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// Makes a TLS connector per connection for tokio-postgres.
#[derive(Clone)]
pub struct RustlsConnect {
    /// Shared by every connection; it decides trust anchors, versions and client certificates.
    config: Arc<ClientConfig>,
}

impl RustlsConnect {
    pub fn new(config: Arc<ClientConfig>) -> RustlsConnect {
        RustlsConnect { config }
    }
}

impl<S> MakeTlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsTlsConnect;
    type Error = InvalidDnsNameError;

    /// `domain` is the host tokio-postgres connects to: a DNS name or an IP address.
    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsTlsConnect, Self::Error> {
        Ok(RustlsTlsConnect {
            connector: TlsConnector::from(Arc::clone(&self.config)),
            server_name: ServerName::try_from(domain)?.to_owned(),
        })
    }
}

/// The TLS handshake for one connection.
pub struct RustlsTlsConnect {
    connector: TlsConnector,
    /// The name the server's certificate must carry.
    server_name: ServerName<'static>,
}

impl<S> TlsConnect<S> for RustlsTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<RustlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let tls = self.connector.connect(self.server_name, stream).await?;
            Ok(RustlsStream(tls))
        })
    }
}

/// A TLS stream that knows its channel binding.
pub struct RustlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> TlsStream for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn channel_binding(&self) -> ChannelBinding {
        let (_, conn) = self.0.get_ref();
        conn.peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| tls_server_end_point(leaf))
            .map_or_else(ChannelBinding::none, ChannelBinding::tls_server_end_point)
    }
}

impl<S> AsyncRead for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S> AsyncWrite for RustlsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_trusts_only_given_cas_and_offers_alpn() {
        let pki = crate::embedded::pki::Pki::new("connector test CA").unwrap();
        let config = verify_full_client_config(pki.ca_cert_pem().as_bytes()).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"postgresql".to_vec()]);
        assert!(matches!(
            verify_full_client_config(b""),
            Err(TlsConfigError::NoCertificates)
        ));
        assert!(verify_full_client_config(b"-----BEGIN CERTIFICATE-----\nnope\n").is_err());
    }

    #[test]
    fn ip_addresses_and_dns_names_are_server_names() {
        let mut make = RustlsConnect::new(
            verify_full_client_config(
                crate::embedded::pki::Pki::new("ca")
                    .unwrap()
                    .ca_cert_pem()
                    .as_bytes(),
            )
            .unwrap(),
        );
        for host in ["127.0.0.1", "::1", "localhost"] {
            let connect =
                MakeTlsConnect::<tokio::net::TcpStream>::make_tls_connect(&mut make, host).unwrap();
            assert!(matches!(
                (host, connect.server_name),
                ("localhost", ServerName::DnsName(_)) | (_, ServerName::IpAddress(_))
            ));
        }
    }
}
