//! Throwaway infrastructure for `pgwarden dev` and the integration tests: a certificate authority
//! ([`pki`]).
//!
//! This code exists so that development and tests run the real protocols end to end (TLS
//! verify-full) with no shared state and nothing to clean up by hand.
//!
//! It must never be used by `pgwarden run`: its certificates are for throwaway use only. It must
//! never log or print a private key.

pub mod pki;
