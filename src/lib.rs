//! pgwarden: a TLS-terminating PostgreSQL proxy that gives every session a fresh credential.
#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backup;
pub mod cancel;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod dev;
pub mod embedded;
pub mod error_text;
pub mod handshake;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod net;
pub mod protocol;
pub mod relay;
pub mod route;
pub mod server;
pub mod session;
pub mod state;
pub mod tls;
pub mod upstream;
