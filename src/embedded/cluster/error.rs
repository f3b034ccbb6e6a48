//! What can go wrong with an embedded cluster. No variant carries a password.

use std::io;
use std::path::PathBuf;

use super::super::pki::PkiError;
use crate::tls::pg_connector::TlsConfigError;

/// What went wrong, with the tail of the failing program's output or the server log. Never
/// carries a password.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("PostgreSQL binaries not found: {0}")]
    Binaries(String),
    #[error("no unprivileged user to run PostgreSQL as: {0}")]
    NoDbUser(String),
    #[error("invalid cluster option: {0}")]
    InvalidOption(String),
    #[error("initdb template cache {path} is unsafe to use: {reason}; remove it")]
    UnsafeCache { path: PathBuf, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("{program} failed ({status}):\n{output}")]
    Command {
        program: String,
        status: std::process::ExitStatus,
        output: String,
    },
    #[error(
        "PostgreSQL did not start: {reason}\n--- pg_ctl ---\n{pg_ctl}\n--- server log ---\n{log}"
    )]
    Start {
        reason: String,
        pg_ctl: String,
        log: String,
    },
    #[error("server certificate: {0}")]
    Pki(#[from] PkiError),
    #[error("TLS client configuration: {0}")]
    Tls(#[from] TlsConfigError),
    // tokio-postgres prints only "db error" for server errors; the chain has the message.
    #[error("connecting to the cluster on port {port}: {}", crate::error_text::with_causes(.error))]
    Connect {
        port: u16,
        error: tokio_postgres::Error,
    },
    #[error("replacing the template's superuser password: {}", crate::error_text::with_causes(.0))]
    SetPassword(tokio_postgres::Error),
    #[error("the operating system's random generator failed: {0}")]
    Random(String),
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl ClusterError {
    /// An adapter for `map_err` that says what we were doing.
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
        let what = what.into();
        move |source| ClusterError::Io { what, source }
    }
}
