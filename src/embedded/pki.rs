//! A throwaway certificate authority for `pgwarden dev` and the tests.
//!
//! Everything here is ECDSA P-256 with SHA-256, generated in memory by rcgen. It exists so that
//! development and test setups can run TLS verify-full on every leg without files checked in.
//!
//! It must never issue certificates for production use (`pgwarden run` never calls it), and key
//! material must never reach `Debug`, `Display`, logs or error messages: private keys leave this
//! module only as [`SecretString`].

use std::fmt;
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use secrecy::SecretString;

/// How far back certificates are back-dated, so that small clock skew between processes does not
/// make a fresh certificate "not yet valid".
const BACKDATE: Duration = Duration::from_secs(60 * 60);
/// How long the CA and the certificates it issues stay valid.
const VALIDITY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("a server certificate needs at least one name")]
    NoNames,
    #[error("{name:?} is not a valid DNS name or IP address for a certificate: {source}")]
    InvalidName { name: String, source: rcgen::Error },
    #[error("certificate validity ends before it begins")]
    InvalidValidity,
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("not a PEM certificate")]
    NotACertificate,
}

/// The serial number of a PEM certificate.
fn serial(pem: &str) -> Result<Vec<u8>, PkiError> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|_| PkiError::NotACertificate)?;
    let cert = pem.parse_x509().map_err(|_| PkiError::NotACertificate)?;
    Ok(cert.raw_serial().to_vec())
}

/// A certificate and its private key, both PEM-encoded.
pub struct IssuedCert {
    /// The leaf certificate alone (the CA is available from [`Pki::ca_cert_pem`]).
    pub cert_pem: String,
    /// The PKCS#8 private key; a secret, so it is never printed.
    pub key_pem: SecretString,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[REDACTED]")
            .finish()
    }
}

/// A self-signed CA that issues server and client certificates.
pub struct Pki {
    /// The CA certificate handed to clients and servers as their trust anchor.
    ca_pem: String,
    /// The CA's subject name and signing key; the key never leaves this struct.
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // rcgen's Issuer omits its key from Debug; spell it out here anyway.
        f.debug_struct("Pki")
            .field("ca_cert_pem", &self.ca_pem)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// A new CA named `common_name`, valid from an hour ago for a year.
    pub fn new(common_name: &str) -> Result<Pki, PkiError> {
        let now = SystemTime::now();
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + VALIDITY).into();
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let ca_pem = params.self_signed(&key)?.pem();
        Ok(Pki {
            ca_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate, PEM-encoded.
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A server certificate for `names` (DNS names, or IP addresses as IP SANs), valid from an
    /// hour ago for a year. The first name is also the subject's common name.
    pub fn issue_server(&self, names: &[&str]) -> Result<IssuedCert, PkiError> {
        let now = SystemTime::now();
        self.issue_server_valid(names, now - BACKDATE, now + VALIDITY)
    }

    /// A server certificate with an explicit validity window, for expiry tests.
    pub fn issue_server_valid(
        &self,
        names: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, PkiError> {
        let first = names.first().ok_or(PkiError::NoNames)?;
        let mut params = leaf_params(first, not_before, not_after)?;
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate whose subject common name is `common_name` (PostgreSQL's `cert`
    /// authentication maps it to the user), valid from an hour ago for a year.
    pub fn issue_client(&self, common_name: &str) -> Result<IssuedCert, PkiError> {
        let now = SystemTime::now();
        let mut params = leaf_params(common_name, now - BACKDATE, now + VALIDITY)?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    /// A certificate for the link between pgwarden replicas: a server for
    /// `names` and a client too (both extended key usages), valid from an hour
    /// ago for a year.
    pub fn issue_peer(&self, names: &[&str]) -> Result<IssuedCert, PkiError> {
        let now = SystemTime::now();
        let first = names.first().ok_or(PkiError::NoNames)?;
        let mut params = leaf_params(first, now - BACKDATE, now + VALIDITY)?;
        params.subject_alt_names = names.iter().map(|n| san(n)).collect::<Result<_, _>>()?;
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.sign(params)
    }

    /// A certificate revocation list, PEM-encoded, that revokes the
    /// certificates in `revoked` (PEM; each one this CA issued). Valid from an
    /// hour ago for a year.
    pub fn crl(&self, revoked: &[&str]) -> Result<String, PkiError> {
        let now = SystemTime::now();
        let revoked_certs = revoked
            .iter()
            .map(|pem| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial(pem)?),
                    revocation_time: (now - BACKDATE).into(),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = CertificateRevocationListParams {
            this_update: (now - BACKDATE).into(),
            next_update: (now + VALIDITY).into(),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCert, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            key_pem: SecretString::from(key.serialize_pem()),
        })
    }
}

/// Parameters shared by every leaf: subject, validity, key usage, link to the CA's key.
fn leaf_params(
    common_name: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, PkiError> {
    if not_after <= not_before {
        return Err(PkiError::InvalidValidity);
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    Ok(params)
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn san(name: &str) -> Result<SanType, PkiError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = name.try_into().map_err(|source| PkiError::InvalidName {
        name: name.to_owned(),
        source,
    })?;
    Ok(SanType::DnsName(dns))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;
    use x509_parser::prelude::*;

    fn parse(pem: &str) -> Vec<u8> {
        let (_, pem) = parse_x509_pem(pem.as_bytes()).expect("PEM");
        pem.contents
    }

    #[test]
    fn server_certificate_has_dns_and_ip_names_and_server_auth() {
        let pki = Pki::new("test CA").unwrap();
        let issued = pki
            .issue_server(&["localhost", "127.0.0.1", "::1"])
            .unwrap();
        assert!(
            issued
                .key_pem
                .expose_secret()
                .starts_with("-----BEGIN PRIVATE KEY-----")
        );
        let der = parse(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        let names: Vec<String> = sans
            .value
            .general_names
            .iter()
            .map(|n| format!("{n}"))
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(names[0].contains("localhost"));
        assert!(
            matches!(sans.value.general_names[1], GeneralName::IPAddress(ip) if ip == [127, 0, 0, 1])
        );
        assert!(
            matches!(sans.value.general_names[2], GeneralName::IPAddress(ip) if ip.len() == 16)
        );
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.server_auth && !eku.value.client_auth);
        assert!(!cert.is_ca());
        let ca = parse(pki.ca_cert_pem());
        let (_, ca) = X509Certificate::from_der(&ca).unwrap();
        assert!(ca.is_ca());
        assert_eq!(cert.issuer(), ca.subject());
    }

    #[test]
    fn client_certificate_carries_the_user_as_common_name() {
        let pki = Pki::new("test CA").unwrap();
        let issued = pki.issue_client("alice").unwrap();
        let der = parse(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let cn = cert.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.as_str().unwrap(), "alice");
        let eku = cert.extended_key_usage().unwrap().unwrap();
        assert!(eku.value.client_auth && !eku.value.server_auth);
    }

    #[test]
    fn explicit_validity_is_honoured_and_checked() {
        let pki = Pki::new("test CA").unwrap();
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        let end = start + Duration::from_secs(3600);
        let issued = pki.issue_server_valid(&["localhost"], start, end).unwrap();
        let der = parse(&issued.cert_pem);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.validity().not_before.timestamp(), 1_000_000_000);
        assert_eq!(cert.validity().not_after.timestamp(), 1_000_003_600);
        assert!(matches!(
            pki.issue_server_valid(&["localhost"], end, start),
            Err(PkiError::InvalidValidity)
        ));
        assert!(matches!(pki.issue_server(&[]), Err(PkiError::NoNames)));
    }

    #[test]
    fn debug_never_shows_keys() {
        let pki = Pki::new("test CA").unwrap();
        let issued = pki.issue_client("bob").unwrap();
        let shown = format!("{pki:?} {issued:?}");
        assert!(!shown.contains("PRIVATE KEY"), "{shown}");
        assert!(shown.contains("[REDACTED]"));
    }
}
