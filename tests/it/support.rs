//! What the integration tests share: pgwarden in front of a real cluster, the Vault
//! double, a real OpenBao server, wire-level clients, psycopg scripts, a TLS record tap,
//! the shipped files and log capture.

pub mod backup;
pub mod forwarder;
pub mod harness;
pub mod hcl;
pub mod java;
pub mod logs;
pub mod openbao;
pub mod openbao_setup;
pub mod psycopg;
pub mod shipped;
pub mod tls_tap;
pub mod vault_double;
pub mod vault_setup;
pub mod venv;
pub mod wire;
