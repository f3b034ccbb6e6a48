//! pgwarden's integration tests, one binary with a module per area.
//!
//! Every test drives the library in-process (or the built `pgwarden` binary)
//! against real PostgreSQL clusters and real clients; `support` holds the
//! harness they share. One binary links the support code once; nextest still
//! runs each test in a process of its own, in parallel.

// Tests bound their waits in real time (the harness's generous deadlines);
// pgwarden's own timed logic uses tokio's Instant.
#![allow(clippy::disallowed_types)]

mod support;

mod audit;
mod auth;
mod backends;
mod backup;
mod backup_deploy;
mod backup_reporting;
mod backup_safety;
mod backup_vault;
mod cancel;
mod cli;
mod client_certs;
mod config;
mod config_edge;
mod conformance;
mod dependency_policy;
mod deploy_files;
mod deps;
mod embedded_cluster;
mod firewall;
mod handshake;
mod handshake_flood;
mod healthcheck;
mod kubernetes;
mod lease_safety;
mod logs;
mod metrics;
mod observability;
mod observability_files;
mod openbao;
mod pgjdbc;
mod postgres_logging;
mod postgres_prefetch;
mod proxy_protocol;
mod psycopg;
mod reload;
mod replicas;
mod roles;
mod session;
mod session_parameters;
mod systemd_notify;
mod tls_close;
mod tls_records;
mod updates;
mod upstream_auth;
mod vault;
mod vault_config;
mod vault_double;
mod vault_login;
mod vault_setup_script;
