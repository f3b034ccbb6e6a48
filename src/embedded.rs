//! Throwaway infrastructure for `pgwarden dev` and the integration tests: a certificate authority
//! ([`pki`]) and a real PostgreSQL cluster in a temporary directory ([`cluster`]).
//!
//! This code exists so that development and tests run the real protocols end to end (TLS
//! verify-full, SCRAM-SHA-256-PLUS) with no shared state and nothing to clean up by hand.
//!
//! It must never be used by `pgwarden run`: its certificates, its settings (`fsync = off`) and its
//! lifetime (data deleted on drop) are for throwaway use only. It must never log or print a
//! password or a private key.

pub mod cluster;
pub mod pki;
