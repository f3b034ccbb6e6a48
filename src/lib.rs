//! pgwarden: a TLS-terminating PostgreSQL proxy that gives every session a fresh credential.
#![forbid(unsafe_code)]

pub mod embedded;
pub mod tls;
