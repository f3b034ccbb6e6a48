//! What the integration tests share: pgwarden in front of a real cluster, the Vault
//! double, wire-level clients, the shipped files and log capture.

pub mod backup;
pub mod harness;
pub mod hcl;
pub mod java;
pub mod logs;
pub mod shipped;
pub mod vault_double;
pub mod vault_setup;
pub mod venv;
pub mod wire;
