//! pgwarden: a TLS-terminating PostgreSQL proxy that gives every session a fresh credential.
#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod audit;
pub mod auth;
pub mod backup;
pub(crate) mod cancel;
pub mod cli;
pub mod config;
pub(crate) mod credentials;
pub mod daemon;
pub mod dev;
pub mod embedded;
pub(crate) mod error_text;
pub(crate) mod handshake;
pub(crate) mod listener;
pub mod logging;
pub mod metrics;
pub(crate) mod net;
pub mod protocol;
pub mod relay;
pub mod reload;
pub(crate) mod route;
pub mod server;
pub mod session;
pub(crate) mod state;
pub mod systemd;
pub mod tls;
pub(crate) mod upstream;

/// What the fuzz targets in `fuzz/` call that is not otherwise public. Not an
/// API: it exists so that the crate's modules can stay `pub(crate)`.
#[doc(hidden)]
pub mod fuzzing {
    use crate::protocol::startup::StartupMessage;
    use crate::session::ParameterRefusal;

    /// `session::parameters::forwarded`: the startup parameters a route lets
    /// through to the database, with `options` rewritten.
    pub fn forwarded(
        startup: &StartupMessage,
        allowed: &[String],
    ) -> Result<Vec<(String, String)>, ParameterRefusal> {
        crate::session::forwarded(startup, allowed)
    }
}
