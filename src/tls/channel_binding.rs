//! `tls-server-end-point` channel binding (RFC 5929 §4) for SCRAM-SHA-256-PLUS.
//!
//! The binding is a hash of the server's leaf certificate, so a client that authenticates with
//! SCRAM-PLUS proves that its TLS session ends at the server it meant. The hash is the one of the
//! certificate's signature algorithm, except that MD5 and SHA-1 are replaced by SHA-256.
//!
//! This module only computes the value. It must never guess: a certificate whose signature has no
//! single hash function (Ed25519, Ed448) or that does not parse yields `None`, and the caller
//! then offers no binding rather than a wrong one.

use aws_lc_rs::digest;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry::{
    OID_HASH_SHA1, OID_NIST_HASH_SHA256, OID_NIST_HASH_SHA384, OID_NIST_HASH_SHA512,
    OID_PKCS1_MD5WITHRSAENC, OID_PKCS1_RSASSAPSS, OID_PKCS1_SHA1WITHRSA, OID_PKCS1_SHA224WITHRSA,
    OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA, OID_PKCS1_SHA512WITHRSA,
    OID_SIG_DSA_WITH_SHA1, OID_SIG_ECDSA_WITH_SHA224, OID_SIG_ECDSA_WITH_SHA256,
    OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ECDSA_WITH_SHA512, Oid,
};
use x509_parser::prelude::FromDer;
use x509_parser::signature_algorithm::SignatureAlgorithm;
use x509_parser::x509::AlgorithmIdentifier;

/// `ecdsa-with-SHA1` (1.2.840.10045.4.1); not in oid-registry's tables.
const ECDSA_WITH_SHA1: &[u64] = &[1, 2, 840, 10045, 4, 1];
/// `dsa-with-sha224` and `dsa-with-sha256` (NIST, 2.16.840.1.101.3.4.3.1/2).
const DSA_WITH_SHA224: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 3, 1];
const DSA_WITH_SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 3, 2];
/// `id-sha224` (2.16.840.1.101.3.4.2.4), for RSASSA-PSS parameters.
const HASH_SHA224: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 4];

/// The `tls-server-end-point` channel binding data for the DER-encoded certificate `cert_der`.
///
/// Returns `None` when the certificate does not parse (or has trailing bytes) or when its
/// signature algorithm has no single hash function.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    let (rest, cert) = X509Certificate::from_der(cert_der).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let hash = binding_hash(&cert.signature_algorithm)?;
    Some(digest::digest(hash, cert_der).as_ref().to_vec())
}

/// The hash RFC 5929 prescribes for a certificate signed with `alg`.
fn binding_hash(alg: &AlgorithmIdentifier<'_>) -> Option<&'static digest::Algorithm> {
    let oid = &alg.algorithm;
    if *oid == OID_PKCS1_RSASSAPSS {
        // RSASSA-PSS names its hash in the parameters (SHA-1 when absent).
        return match SignatureAlgorithm::try_from(alg).ok()? {
            SignatureAlgorithm::RSASSA_PSS(params) => hash_by_oid(params.hash_algorithm_oid()),
            _ => None,
        };
    }
    let hash = if *oid == OID_PKCS1_MD5WITHRSAENC
        || *oid == OID_PKCS1_SHA1WITHRSA
        || *oid == OID_SIG_DSA_WITH_SHA1
        || oid_is(oid, ECDSA_WITH_SHA1)
    {
        // RFC 5929: MD5 and SHA-1 are upgraded to SHA-256.
        &digest::SHA256
    } else if *oid == OID_PKCS1_SHA224WITHRSA
        || *oid == OID_SIG_ECDSA_WITH_SHA224
        || oid_is(oid, DSA_WITH_SHA224)
    {
        &digest::SHA224
    } else if *oid == OID_PKCS1_SHA256WITHRSA
        || *oid == OID_SIG_ECDSA_WITH_SHA256
        || oid_is(oid, DSA_WITH_SHA256)
    {
        &digest::SHA256
    } else if *oid == OID_PKCS1_SHA384WITHRSA || *oid == OID_SIG_ECDSA_WITH_SHA384 {
        &digest::SHA384
    } else if *oid == OID_PKCS1_SHA512WITHRSA || *oid == OID_SIG_ECDSA_WITH_SHA512 {
        &digest::SHA512
    } else {
        // Ed25519, Ed448, GOST, anything unknown: no single hash, no binding.
        return None;
    };
    Some(hash)
}

/// A bare hash OID (as found in RSASSA-PSS parameters) mapped the same way.
fn hash_by_oid(oid: &Oid<'_>) -> Option<&'static digest::Algorithm> {
    if *oid == OID_HASH_SHA1 || *oid == OID_NIST_HASH_SHA256 {
        Some(&digest::SHA256)
    } else if oid_is(oid, HASH_SHA224) {
        Some(&digest::SHA224)
    } else if *oid == OID_NIST_HASH_SHA384 {
        Some(&digest::SHA384)
    } else if *oid == OID_NIST_HASH_SHA512 {
        Some(&digest::SHA512)
    } else {
        None
    }
}

fn oid_is(oid: &Oid<'_>, arcs: &[u64]) -> bool {
    oid.iter().is_some_and(|it| it.eq(arcs.iter().copied()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
        SignatureAlgorithm,
    };

    fn self_signed(alg: &'static SignatureAlgorithm) -> Vec<u8> {
        let key = KeyPair::generate_for(alg).unwrap();
        let params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn p256_sha256_is_hashed_with_sha256() {
        let der = self_signed(&PKCS_ECDSA_P256_SHA256);
        let expected = digest::digest(&digest::SHA256, &der);
        assert_eq!(tls_server_end_point(&der).unwrap(), expected.as_ref());
    }

    #[test]
    fn p384_sha384_is_hashed_with_sha384() {
        let der = self_signed(&PKCS_ECDSA_P384_SHA384);
        let binding = tls_server_end_point(&der).unwrap();
        assert_eq!(binding.len(), 48);
        assert_eq!(binding, digest::digest(&digest::SHA384, &der).as_ref());
    }

    #[test]
    fn ed25519_has_no_binding() {
        assert_eq!(tls_server_end_point(&self_signed(&PKCS_ED25519)), None);
    }

    #[test]
    fn garbage_and_trailing_bytes_have_no_binding() {
        assert_eq!(tls_server_end_point(b"not a certificate"), None);
        let mut der = self_signed(&PKCS_ECDSA_P256_SHA256);
        der.push(0);
        assert_eq!(tls_server_end_point(&der), None);
    }

    #[test]
    fn legacy_hashes_are_upgraded() {
        let by_sig = |oid: Oid<'static>| binding_hash(&AlgorithmIdentifier::new(oid, None));
        assert_eq!(hash_by_oid(&OID_HASH_SHA1), Some(&digest::SHA256));
        let sha224 = Oid::from(HASH_SHA224).unwrap();
        assert_eq!(hash_by_oid(&sha224), Some(&digest::SHA224));
        assert_eq!(by_sig(OID_PKCS1_MD5WITHRSAENC), Some(&digest::SHA256));
        assert_eq!(by_sig(OID_PKCS1_SHA1WITHRSA), Some(&digest::SHA256));
        let ecdsa_sha1 = Oid::from(ECDSA_WITH_SHA1).unwrap();
        assert_eq!(by_sig(ecdsa_sha1), Some(&digest::SHA256));
        assert_eq!(by_sig(OID_PKCS1_SHA512WITHRSA), Some(&digest::SHA512));
        let ed448 = Oid::from(&[1, 3, 101, 113]).unwrap();
        assert_eq!(by_sig(ed448), None);
    }
}
