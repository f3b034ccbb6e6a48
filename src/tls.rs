//! TLS for both legs: the listener's server config and the upstream client config.
//!
//! One crypto provider for the whole process (aws-lc-rs), passed explicitly to
//! every builder. TLS 1.2 and 1.3 only; ALPN `postgresql` offered on both legs.
//! Upstream verification is on unless a route says `tls = "disable"`; this module
//! has no "trust anything" mode and must never grow one.
//!
//! The listener never sends a TLS record carrying more than
//! [`CLIENT_RECORD_PLAINTEXT`] bytes: libpq's asynchronous API (psycopg 3,
//! ruby-pg, node's libpq binding) reads one record per call into a buffer that
//! may have only 8 KiB free; a libpq without the fix for it (15.18, say) leaves
//! the rest of a larger record inside OpenSSL and waits on an empty socket, forever.

pub mod channel_binding;
pub mod mtls;
pub mod pg_connector;
mod verify_ca;

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// The ALPN protocol name PostgreSQL uses (PostgreSQL 17 direct TLS).
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// The most plaintext one TLS record to a client may carry: what a PostgreSQL
/// backend's 8 KiB send buffer gives, and what libpq's input buffer always has
/// room for.
pub const CLIENT_RECORD_PLAINTEXT: usize = 8192;

/// rustls's `max_fragment_size` counts the 5-byte record header too
/// (rustls 0.23 `MessageFragmenter::set_max_fragment_size`: "This includes
/// overhead"; the plaintext limit it sets is the value minus 5).
const RECORD_HEADER: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} holds no PEM certificate")]
    NoCertificate { path: String },
    #[error("{path} holds no usable PEM private key")]
    NoKey { path: String },
    #[error("{path}: {detail}")]
    Invalid { path: String, detail: String },
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The process's crypto provider.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate in a PEM file, in order (leaf first for a chain).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.display().to_string(),
        });
    }
    Ok(certs)
}

pub(crate) fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    // The error of a failed key parse never quotes the file: it is a secret.
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| TlsError::NoKey {
        path: path.display().to_string(),
    })
}

/// A root store holding exactly the CA certificates in `path`.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The listener's TLS configuration: TLS ≥ 1.2, ALPN `postgresql`, records of
/// at most [`CLIENT_RECORD_PLAINTEXT`] bytes of plaintext.
pub fn server_config(cert_file: &Path, key_file: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_verifying(cert_file, key_file, None)
}

/// [`server_config`] that asks clients for a certificate and checks it with
/// `clients` (see [`mtls::client_verifier`]).
pub fn server_config_verifying(
    cert_file: &Path,
    key_file: &Path,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert_file)?;
    let key = load_key(key_file)?;
    server_config_with(certs, key, clients)
}

/// [`server_config`] for a chain and key already read.
pub fn server_config_from(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, TlsError> {
    server_config_with(certs, key, None)
}

pub(crate) fn server_config_with(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    clients: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match clients {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    config.max_fragment_size = Some(CLIENT_RECORD_PLAINTEXT + RECORD_HEADER);
    Ok(Arc::new(config))
}

/// How the upstream certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verification {
    /// Chain and host name.
    Full,
    /// Chain only.
    CaOnly,
}

/// The client configuration for upstream connections to a server whose CA is in `ca_file`.
pub fn upstream_config(
    ca_file: &Path,
    verification: Verification,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = Arc::new(load_roots(ca_file)?);
    client_config(roots, verification)
}

/// A client configuration trusting exactly `roots`.
pub fn client_config(
    roots: Arc<RootCertStore>,
    verification: Verification,
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut config = match verification {
        Verification::Full => builder.with_root_certificates(roots).with_no_client_auth(),
        Verification::CaOnly => builder
            .dangerous()
            .with_custom_certificate_verifier(verify_ca::ChainOnly::new(roots)?)
            .with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(Arc::new(config))
}

/// The `notAfter` of the first certificate in `path`, as Unix seconds.
pub fn certificate_not_after(path: &Path) -> Result<i64, TlsError> {
    let certs = load_certs(path)?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&certs[0]).map_err(|e| TlsError::Invalid {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    Ok(cert.validity().not_after.timestamp())
}
