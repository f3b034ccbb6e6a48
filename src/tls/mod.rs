//! TLS for pgwarden's PostgreSQL legs: channel binding and the upstream-side connector.
//!
//! Nothing here may skip certificate verification or rely on a process-wide crypto provider.

pub mod channel_binding;
pub mod pg_connector;
