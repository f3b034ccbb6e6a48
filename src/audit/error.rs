//! Every way the audit falls short of running its checks, as types: a route
//! it could not connect to ([`SessionError`], with the probe's own
//! [`ProbeError`]), and what kept a whole run from completing ([`RunError`]).
//!
//! Their `Display` is the text the report and the log show. It never holds a
//! password, a DSN, a key or a value read from a table: credential and
//! upstream errors carry no secret (their modules' rule), query errors carry
//! a server message only for SQLSTATE class 42 (names), and DSN errors name
//! at most a parameter.

use std::sync::Arc;

use super::connection::OpenError;
use super::dsn::AccountError;
use crate::credentials::CredentialError;

/// A credential source gave no credential.
#[derive(Debug, thiserror::Error)]
#[error("[credentials.{source_name}] issued no credential: {error}")]
pub(crate) struct IssueError {
    pub(crate) source_name: String,
    #[source]
    pub(crate) error: CredentialError,
}

/// Why there is no probe: the route's own credential could not be had or used.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProbeError {
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("could not log in with the issued credential: {0}")]
    Login(#[source] OpenError),
}

/// Why the checks of a route have no database session.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    #[error("the route is not in pgwarden's routing table")]
    NotRouted,
    /// Auditing as the route, whose probe failed (the probe keeps the error too).
    #[error(transparent)]
    Probe(Arc<ProbeError>),
    /// The auditor's credential source gave no credential.
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("could not log in as the auditor: {0}")]
    AuditorLogin(#[source] OpenError),
    /// The `--as` account cannot reach this route's database.
    #[error("--as: {0}")]
    Account(#[source] AccountError),
    #[error("could not log in as {who}: {source}")]
    AccountLogin { who: String, source: OpenError },
}

/// What kept a whole audit run from completing.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RunError {
    #[error("cannot log in to Vault: {0}")]
    VaultLogin(#[source] CredentialError),
    /// Ctrl-C or SIGTERM.
    #[error("interrupted")]
    Interrupted,
    #[error(
        "{0} credential(s) issued for the audit could not be revoked; they expire at the end of their TTL"
    )]
    Unrevoked(usize),
}
