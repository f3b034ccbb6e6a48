//! Every way a connection can fail before its session relays, as one type.
//!
//! Each [`Error`] answers three questions: how it is counted and logged
//! ([`Error::kind`]: refused before a session began, or an authenticated
//! session that could not reach the database), which SQLSTATE the client gets,
//! and the text the client may read ([`Error::client_message`]). That text is
//! the only part that ever reaches a client: it never carries a Vault error, a
//! host name or a lease id. The error's `Display` is the detail for the log.
//! [`refuse`] is the one place that answers, closes and records a refusal.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::parameters::ParameterRefusal;
use crate::auth::AuthError;
use crate::credentials::CredentialError;
use crate::handshake::NegotiateError;
use crate::metrics::{self, Label};
use crate::protocol::backend::{fatal, sqlstate};
use crate::route::RouteError;
use crate::state::State;
use crate::upstream::{UpstreamError, UpstreamFailure};

/// How long pgwarden keeps writing a final message to a client that does not
/// read, and waits for its TLS close to go out.
pub(crate) const GOODBYE_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection was refused before its session began: the `reason` of
/// `pgwarden_connections_rejected_total` and of `connection_rejected` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    IpNotAllowed,
    TooManyConnections,
    TlsRequired,
    TlsHandshake,
    Protocol,
    HandshakeTimeout,
    AuthFailed,
    UnknownDatabase,
    ParameterNotAllowed,
    /// A PROXY header missing, malformed, or from a peer not trusted to send one.
    ProxyProtocol,
    /// The client's address had `max_handshakes_per_address` handshakes in progress.
    TooManyHandshakes,
}

impl Label for RejectReason {
    const ALL: &'static [Self] = &[
        RejectReason::IpNotAllowed,
        RejectReason::TooManyConnections,
        RejectReason::TlsRequired,
        RejectReason::TlsHandshake,
        RejectReason::Protocol,
        RejectReason::HandshakeTimeout,
        RejectReason::AuthFailed,
        RejectReason::UnknownDatabase,
        RejectReason::ParameterNotAllowed,
        RejectReason::ProxyProtocol,
        RejectReason::TooManyHandshakes,
    ];

    fn as_str(self) -> &'static str {
        match self {
            RejectReason::IpNotAllowed => "ip_not_allowed",
            RejectReason::TooManyConnections => "too_many_connections",
            RejectReason::TlsRequired => "tls_required",
            RejectReason::TlsHandshake => "tls_handshake",
            RejectReason::Protocol => "protocol",
            RejectReason::HandshakeTimeout => "handshake_timeout",
            RejectReason::AuthFailed => "auth_failed",
            RejectReason::UnknownDatabase => "unknown_database",
            RejectReason::ParameterNotAllowed => "parameter_not_allowed",
            RejectReason::ProxyProtocol => "proxy_protocol",
            RejectReason::TooManyHandshakes => "too_many_handshakes",
        }
    }
}

pub(crate) static REJECTIONS: metrics::Counter<RejectReason> =
    metrics::Counter::new(metrics::name::CONNECTIONS_REJECTED, "reason");

/// What the startup message asked for that pgwarden does not do.
#[derive(Debug, thiserror::Error)]
pub enum StartupRefusal {
    #[error("no user")]
    NoUser,
    #[error("replication requested")]
    Replication,
}

/// Why a connection ended before its session could relay.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// TLS or the startup packet.
    #[error(transparent)]
    Negotiate(#[from] NegotiateError),
    /// `max_connections` sessions are live (checked once the client authenticated).
    #[error("max_connections reached")]
    TooManyConnections,
    /// The handshake deadline passed after the startup message.
    #[error("handshake deadline passed")]
    Timeout,
    /// The startup message asked for something pgwarden does not do.
    #[error(transparent)]
    Startup(#[from] StartupRefusal),
    /// The client did not prove who it is.
    #[error(transparent)]
    Authenticate(#[from] AuthError),
    /// The client may not use the database it asked for.
    #[error("{error}")]
    Route {
        error: RouteError,
        user: String,
        database: String,
    },
    /// The client asked for a setting its route does not let through.
    #[error(transparent)]
    Parameter(#[from] ParameterRefusal),
    /// The route's credential source gave no credential.
    #[error("credential source {source_name}: {error}")]
    Credential {
        source_name: String,
        error: CredentialError,
    },
    /// The database could not be reached or refused the issued credential.
    #[error("upstream {endpoint}: {error}")]
    Upstream {
        endpoint: String,
        error: UpstreamError,
    },
    /// The client's side failed while pgwarden wrote to it.
    #[error("client write failed: {0}")]
    ClientWrite(io::Error),
}

/// How an [`Error`] is counted and logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Refused before a session began: `pgwarden_connections_rejected_total`
    /// and a rate-limited `connection_rejected` record.
    Rejected(RejectReason),
    /// Authenticated, but the database could not be reached:
    /// `pgwarden_upstream_connect_failures_total` and a `session_failed` record.
    Failed(UpstreamFailure),
}

impl Error {
    pub fn kind(&self) -> Kind {
        match self {
            Error::Negotiate(e) => Kind::Rejected(e.reason()),
            Error::TooManyConnections => Kind::Rejected(RejectReason::TooManyConnections),
            Error::Timeout => Kind::Rejected(RejectReason::HandshakeTimeout),
            Error::Startup(_) | Error::ClientWrite(_) => Kind::Rejected(RejectReason::Protocol),
            Error::Authenticate(
                AuthError::Failed { .. }
                | AuthError::CertificateRequired
                | AuthError::CertificateMismatch { .. },
            ) => Kind::Rejected(RejectReason::AuthFailed),
            Error::Authenticate(_) => Kind::Rejected(RejectReason::Protocol),
            Error::Route {
                error: RouteError::UnknownDatabase,
                ..
            } => Kind::Rejected(RejectReason::UnknownDatabase),
            Error::Route { .. } => Kind::Rejected(RejectReason::AuthFailed),
            Error::Parameter(ParameterRefusal::Malformed(_)) => {
                Kind::Rejected(RejectReason::Protocol)
            }
            Error::Parameter(_) => Kind::Rejected(RejectReason::ParameterNotAllowed),
            Error::Credential { .. } => Kind::Failed(UpstreamFailure::Credentials),
            Error::Upstream { error, .. } => Kind::Failed(error.step),
        }
    }

    /// The SQLSTATE the client gets.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            Error::Negotiate(e) => e.sqlstate(),
            Error::TooManyConnections => sqlstate::TOO_MANY_CONNECTIONS,
            Error::Timeout => sqlstate::QUERY_CANCELED,
            Error::Startup(StartupRefusal::NoUser) => sqlstate::INVALID_AUTHORIZATION,
            Error::Startup(StartupRefusal::Replication) => sqlstate::FEATURE_NOT_SUPPORTED,
            Error::Authenticate(AuthError::Failed { .. }) => sqlstate::INVALID_PASSWORD,
            // PostgreSQL's clientcert=verify-full and `cert` answer 28000.
            Error::Authenticate(
                AuthError::CertificateRequired | AuthError::CertificateMismatch { .. },
            ) => sqlstate::INVALID_AUTHORIZATION,
            Error::Authenticate(_) | Error::ClientWrite(_) => sqlstate::PROTOCOL_VIOLATION,
            Error::Route {
                error: RouteError::UnknownDatabase,
                ..
            } => sqlstate::INVALID_CATALOG_NAME,
            Error::Route { .. } => sqlstate::INVALID_AUTHORIZATION,
            // PostgreSQL's own codes: 42501 is what it answers a setting the
            // user may not change ("permission denied to set parameter"),
            // which is what a setting the route does not allow is; 42601 is
            // its answer to a `-c` without a value.
            Error::Parameter(ParameterRefusal::Malformed(_)) => sqlstate::SYNTAX_ERROR,
            Error::Parameter(_) => sqlstate::INSUFFICIENT_PRIVILEGE,
            Error::Credential { .. } => sqlstate::CONNECTION_FAILURE,
            Error::Upstream { error, .. } if error.sqlstate.as_deref() == Some("53300") => {
                sqlstate::TOO_MANY_CONNECTIONS
            }
            Error::Upstream { .. } => sqlstate::CONNECTION_FAILURE,
        }
    }

    /// The text the client is told, PostgreSQL's own where it has one; `None`
    /// when the client cannot or need not be told anything.
    pub fn client_message(&self) -> Option<String> {
        Some(match self {
            Error::Negotiate(e) => return e.client_message(),
            Error::TooManyConnections => "sorry, too many clients already".into(),
            Error::Timeout => "canceling authentication due to timeout".into(),
            Error::Startup(StartupRefusal::NoUser) => {
                "no PostgreSQL user name specified in startup packet".into()
            }
            Error::Startup(StartupRefusal::Replication) => {
                "replication connections are not supported by pgwarden".into()
            }
            Error::Authenticate(AuthError::Failed { user, .. }) => {
                format!("password authentication failed for user \"{user}\"")
            }
            Error::Authenticate(AuthError::Protocol(what)) => (*what).into(),
            Error::Authenticate(AuthError::CertificateRequired) => {
                "connection requires a valid client certificate".into()
            }
            Error::Authenticate(AuthError::CertificateMismatch { user }) => {
                format!("certificate authentication failed for user \"{user}\"")
            }
            Error::Authenticate(AuthError::Closed) | Error::ClientWrite(_) => return None,
            Error::Route {
                error: RouteError::UnknownDatabase,
                database,
                ..
            } => format!("database \"{database}\" does not exist"),
            Error::Route { user, database, .. } => {
                format!("user \"{user}\" is not allowed to connect to database \"{database}\"")
            }
            Error::Parameter(ParameterRefusal::NotAllowed(name)) => format!(
                "permission denied to set parameter \"{name}\": pgwarden forwards only the settings this route allows"
            ),
            Error::Parameter(ParameterRefusal::Switch(switch)) => format!(
                "command-line option \"{switch}\" is not allowed in options: pgwarden forwards only -c name=value settings"
            ),
            Error::Parameter(ParameterRefusal::Malformed(what)) => {
                format!("invalid options: {what}")
            }
            Error::Credential { .. } => "could not obtain database credentials".into(),
            Error::Upstream { error, .. } if error.sqlstate.as_deref() == Some("53300") => {
                "too many connections to the database server".into()
            }
            Error::Upstream { .. } => "could not connect to the database server".into(),
        })
    }
}

/// Refuses a connection: tells the client why (when it can be told), closes
/// its side cleanly — a TLS close_notify, as PostgreSQL sends — within a
/// bound, and counts and logs the refusal.
pub(crate) async fn refuse<S>(state: &State, peer: SocketAddr, stream: Option<S>, error: &Error)
where
    S: AsyncWrite + Unpin,
{
    if let Some(mut stream) = stream {
        let message = error.client_message();
        let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
            if let Some(message) = message {
                let _ = stream.write_all(&fatal(error.sqlstate(), &message)).await;
                let _ = stream.flush().await;
            }
            let _ = stream.shutdown().await;
        })
        .await;
    }
    record(state, peer, error);
}

/// Counts and logs a refusal.
pub(crate) fn record(state: &State, peer: SocketAddr, error: &Error) {
    match error.kind() {
        Kind::Rejected(reason) => super::reject(state, reason, peer, &error.to_string()),
        Kind::Failed(step) => {
            crate::upstream::CONNECT_FAILURES.increment(step);
            tracing::warn!(
                event = "session_failed",
                reason = step.as_str(),
                detail = %error,
                sqlstate = error.sqlstate()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::ErrorKind;

    #[test]
    fn client_text_never_carries_internal_detail() {
        let secretish = "lease database/creds/keycloak/abc on vault.internal:8200";
        let errors = [
            Error::Credential {
                source_name: "vault".into(),
                error: CredentialError::new(ErrorKind::Unavailable, secretish),
            },
            Error::Upstream {
                endpoint: "db.internal:5432".into(),
                error: UpstreamError::new(UpstreamFailure::Auth, secretish),
            },
        ];
        for e in &errors {
            let text = e.client_message().expect("told");
            assert!(!text.contains("vault.internal"), "{text}");
            assert!(!text.contains("db.internal"), "{text}");
            assert!(!text.contains("lease"), "{text}");
            // The log keeps the detail.
            assert!(e.to_string().contains(secretish));
            assert_eq!(e.sqlstate(), sqlstate::CONNECTION_FAILURE);
            assert!(matches!(e.kind(), Kind::Failed(_)));
        }
    }

    #[test]
    fn an_upstream_out_of_connections_is_passed_on_as_53300() {
        let mut error = UpstreamError::new(UpstreamFailure::Startup, "server said: FATAL …");
        error.sqlstate = Some("53300".into());
        let e = Error::Upstream {
            endpoint: "db:5432".into(),
            error,
        };
        assert_eq!(e.sqlstate(), sqlstate::TOO_MANY_CONNECTIONS);
        assert_eq!(
            e.client_message().as_deref(),
            Some("too many connections to the database server")
        );
    }

    #[test]
    fn a_wrong_password_and_an_unknown_user_read_the_same() {
        let wrong = Error::Authenticate(AuthError::Failed {
            user: "kc".into(),
            reason: "wrong password",
        });
        let unknown = Error::Authenticate(AuthError::Failed {
            user: "kc".into(),
            reason: "unknown user",
        });
        assert_eq!(wrong.client_message(), unknown.client_message());
        assert_eq!(wrong.sqlstate(), unknown.sqlstate());
        assert_eq!(wrong.kind(), Kind::Rejected(RejectReason::AuthFailed));
        // The log tells them apart.
        assert_ne!(wrong.to_string(), unknown.to_string());
    }
}
