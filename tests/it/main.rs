//! pgwarden's integration tests, one binary with a module per area.
//!
//! Every test drives the library in-process (or the built `pgwarden` binary)
//! against real PostgreSQL clusters and real clients; `support` holds the
//! harness they share. One binary links the support code once; nextest still
//! runs each test in a process of its own, in parallel.

mod support;

mod auth;
mod backup;
mod backup_deploy;
mod backup_reporting;
mod backup_vault;
mod cancel;
mod cli;
mod config;
mod conformance;
mod deploy_files;
mod embedded_cluster;
mod firewall;
mod handshake;
mod healthcheck;
mod lease_safety;
mod logs;
mod metrics;
mod observability;
mod observability_files;
mod pgjdbc;
mod postgres_logging;
mod session;
mod updates;
mod upstream_auth;
mod vault;
mod vault_config;
mod vault_double;
mod vault_login;
mod vault_setup_script;
