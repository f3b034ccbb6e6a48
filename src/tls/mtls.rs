//! Client certificates: the listener's verifier (a CA, optional CRLs,
//! certificates optional so SCRAM users need none), the names a verified
//! certificate carries, and the mutual TLS of the link between replicas.
//!
//! Verification is rustls' own (`WebPkiClientVerifier`): chain, validity,
//! the clientAuth usage, revocation against every CRL given (a certificate
//! whose status no CRL covers is refused, as PostgreSQL's `ssl_crl_file`
//! does). A certificate that fails ends the TLS handshake with an alert, as
//! in PostgreSQL; only a verified certificate's names ever reach
//! authentication. This module must never accept a certificate rustls has not
//! verified.

use std::path::Path;
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer};

use super::{TlsError, load_certs, load_key, load_roots, provider};

/// The ALPN protocol of the link between replicas: a peer connection can
/// never be mistaken for a PostgreSQL one, nor the other way round.
pub const ALPN_PEER: &[u8] = b"pgwarden-peer";

/// Every CRL in a PEM file (at least one).
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let crls: Vec<_> = CertificateRevocationListDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid {
            path: path.display().to_string(),
            detail: e.to_string(),
        })?;
    if crls.is_empty() {
        return Err(TlsError::Invalid {
            path: path.display().to_string(),
            detail: "holds no PEM X509 CRL".into(),
        });
    }
    Ok(crls)
}

/// Whether a client must present a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCerts {
    /// Checked when given; clients without one go on (to SCRAM).
    Optional,
    /// No certificate, no connection (the link between replicas).
    Required,
}

/// A verifier of client certificates signed by the CAs in `ca_file`,
/// checked against the CRLs in `crl_file` when given.
pub fn client_verifier(
    ca_file: &Path,
    crl_file: Option<&Path>,
    mode: ClientCerts,
) -> Result<Arc<dyn ClientCertVerifier>, TlsError> {
    let roots = Arc::new(load_roots(ca_file)?);
    let mut builder = WebPkiClientVerifier::builder_with_provider(roots, provider());
    if let Some(crl_file) = crl_file {
        builder = builder.with_crls(load_crls(crl_file)?);
    }
    if mode == ClientCerts::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| TlsError::Invalid {
        path: ca_file.display().to_string(),
        detail: e.to_string(),
    })
}

/// The listener of the link between replicas: this replica's certificate,
/// a peer certificate required, ALPN [`ALPN_PEER`] only.
pub fn peer_server_config(
    cert_file: &Path,
    key_file: &Path,
    ca_file: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = client_verifier(ca_file, None, ClientCerts::Required)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(load_certs(cert_file)?, load_key(key_file)?)?;
    config.alpn_protocols = vec![ALPN_PEER.to_vec()];
    Ok(Arc::new(config))
}

/// The client side of the link: trusts only `ca_file`, verifies the peer's
/// name, presents this replica's certificate.
pub fn peer_client_config(
    cert_file: &Path,
    key_file: &Path,
    ca_file: &Path,
) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = Arc::new(load_roots(ca_file)?);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(cert_file)?, load_key(key_file)?)?;
    config.alpn_protocols = vec![ALPN_PEER.to_vec()];
    Ok(Arc::new(config))
}

/// The names a (verified) client certificate gives its holder: every
/// subject common name, then every DNS, email and URI subject alternative
/// name. An unreadable certificate gives none.
pub fn certificate_names(cert: &CertificateDer<'_>) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(n) | GeneralName::RFC822Name(n) | GeneralName::URI(n) => {
                    names.push((*n).to_owned())
                }
                _ => {}
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::embedded::pki::Pki;

    #[test]
    fn a_client_certificate_is_named_by_its_common_name() {
        let pki = Pki::new("names CA").unwrap();
        let issued = pki.issue_client("alice").unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        assert_eq!(certificate_names(&der), ["alice"]);
        assert!(certificate_names(&CertificateDer::from(vec![1, 2, 3])).is_empty());
    }

    #[test]
    fn sans_name_a_certificate_too() {
        let pki = Pki::new("names CA").unwrap();
        let issued = pki.issue_peer(&["peer.example", "127.0.0.1"]).unwrap();
        let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
        // The IP SAN is not a name; the CN is the first name given.
        assert_eq!(certificate_names(&der), ["peer.example", "peer.example"]);
    }
}
