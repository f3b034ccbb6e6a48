//! From a startup message to a welcomed client with a live upstream backend.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant as StdInstant;

use bytes::BytesMut;
use tokio::time::Instant;

use crate::auth::AuthError;
use crate::cancel::{CancelTarget, Registration};
use crate::credentials::Issued;
use crate::credentials::lease::LeaseGuard;
use crate::handshake::send_fatal;
use crate::metrics::{self, RejectReason, UpstreamFailure};
use crate::net::ClientStream;
use crate::protocol::backend::{self, sqlstate};
use crate::protocol::frame::FramedStream;
use crate::protocol::startup::StartupMessage;
use crate::protocol::{ProtocolMinor, backend::negotiate_protocol_version};
use crate::route::{Route, RouteError};
use crate::state::State;
use crate::upstream::UpstreamSession;

/// A session ready to relay.
pub struct Established {
    pub client: ClientStream,
    /// Bytes the client sent after its last authentication message.
    pub client_leftover: BytesMut,
    pub upstream: UpstreamSession,
    /// Revokes the credential when dropped, whatever happens next.
    pub lease: LeaseGuard,
    /// Removes the cancel key when dropped.
    pub cancel_registration: Registration,
    pub route: Arc<Route>,
}

/// A refusal: what the client is told, and why (for the log).
struct Refusal {
    /// For `connection_rejected`; `None` for failures past authentication
    /// that are upstream or credential failures, logged on their own.
    reason: Option<RejectReason>,
    /// For `session_failed`: which step of reaching the database failed.
    failure: Option<UpstreamFailure>,
    code: &'static str,
    message: String,
    detail: String,
}

impl Refusal {
    fn new(
        reason: Option<RejectReason>,
        code: &'static str,
        message: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Refusal {
            reason,
            failure: None,
            code,
            message: message.into(),
            detail: detail.into(),
        }
    }

    fn failed_at(mut self, step: UpstreamFailure) -> Self {
        self.failure = Some(step);
        self
    }
}

/// Authenticates, routes, issues a credential, logs in upstream and welcomes
/// the client. `None` when the session ended (the client was told why).
pub async fn establish(
    state: &State,
    stream: ClientStream,
    startup: &StartupMessage,
    peer: SocketAddr,
    tls: bool,
    deadline: Instant,
) -> Option<Established> {
    let mut framed = FramedStream::new(stream);
    let result =
        tokio::time::timeout_at(deadline, login(state, &mut framed, startup, peer, tls)).await;
    let refusal = match result {
        Ok(Ok((upstream, lease, cancel_registration, route))) => {
            let (client, client_leftover) = framed.into_parts();
            return Some(Established {
                client,
                client_leftover,
                upstream,
                lease,
                cancel_registration,
                route,
            });
        }
        Ok(Err(r)) => r,
        Err(_) => Refusal::new(
            Some(RejectReason::HandshakeTimeout),
            sqlstate::QUERY_CANCELED,
            "canceling authentication due to timeout",
            "handshake deadline passed",
        ),
    };
    let (mut client, _) = framed.into_parts();
    if refusal.message.is_empty() {
        crate::net::goodbye(&mut client, &[]).await;
    } else {
        send_fatal(&mut client, refusal.code, &refusal.message).await;
    }
    match refusal.reason {
        Some(reason) => super::reject(state, reason, peer, &refusal.detail),
        None => {
            let reason = refusal.failure.map(UpstreamFailure::as_str);
            tracing::warn!(event = "session_failed", reason, detail = %refusal.detail, sqlstate = refusal.code)
        }
    }
    None
}

type Login = (UpstreamSession, LeaseGuard, Registration, Arc<Route>);

async fn login(
    state: &State,
    framed: &mut FramedStream<ClientStream>,
    startup: &StartupMessage,
    peer: SocketAddr,
    tls: bool,
) -> Result<Login, Refusal> {
    let span = tracing::Span::current();
    let (minor, npv) = protocol_version(startup);
    let user = startup
        .param("user")
        .filter(|u| !u.is_empty())
        .ok_or_else(|| {
            Refusal::new(
                Some(RejectReason::Protocol),
                sqlstate::INVALID_AUTHORIZATION,
                "no PostgreSQL user name specified in startup packet",
                "no user",
            )
        })?;
    let database = startup
        .param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(user);
    span.record("user", user);
    span.record("database", database);
    if startup
        .param("replication")
        .is_some_and(|r| !matches!(r, "false" | "off" | "no" | "0"))
    {
        return Err(Refusal::new(
            Some(RejectReason::Protocol),
            sqlstate::FEATURE_NOT_SUPPORTED,
            "replication connections are not supported by pgwarden",
            "replication requested",
        ));
    }
    if let Some(npv) = npv {
        write(framed, &npv).await?;
    }

    let method = state
        .authenticator
        .authenticate(framed, user, peer.ip().to_canonical(), tls)
        .await
        .map_err(|e| match e {
            AuthError::Failed { reason } => Refusal::new(
                Some(RejectReason::AuthFailed),
                sqlstate::INVALID_PASSWORD,
                format!("password authentication failed for user \"{user}\""),
                reason,
            ),
            AuthError::Protocol(what) => Refusal::new(
                Some(RejectReason::Protocol),
                sqlstate::PROTOCOL_VIOLATION,
                what,
                what,
            ),
            AuthError::Closed => Refusal::new(
                Some(RejectReason::Protocol),
                sqlstate::PROTOCOL_VIOLATION,
                "",
                "client went away during authentication",
            ),
        })?;
    span.record("auth_method", method.as_str());

    let route = state.routes.lookup(database, user).map_err(|e| match e {
        RouteError::UnknownDatabase => Refusal::new(
            Some(RejectReason::UnknownDatabase),
            sqlstate::INVALID_CATALOG_NAME,
            format!("database \"{database}\" does not exist"),
            "no route for this database",
        ),
        RouteError::NotPermitted => Refusal::new(
            Some(RejectReason::AuthFailed),
            sqlstate::INVALID_AUTHORIZATION,
            format!("user \"{user}\" is not allowed to connect to database \"{database}\""),
            "user not listed on the route",
        ),
    })?;
    span.record("route", route.database.as_str());
    span.record("credential_source", route.source.name.as_str());

    // Guarded from the moment the source answers, even if the deadline
    // passes while the request is in flight (the lease is then revoked).
    let Issued { credential, lease } = issue(&route).await?;
    span.record("upstream_user", credential.username.as_str());
    span.record("lease_id_hash", credential.lease.id.hash().as_str());

    let params = forwarded_params(startup);
    let connect_started = StdInstant::now();
    let upstream = route
        .upstream
        .connect(&credential, &params, route.session_role.as_deref())
        .await
        .map_err(|e| {
            metrics::upstream_failure(e.step);
            let (code, message) = match e.sqlstate.as_deref() {
                Some("53300") => (
                    sqlstate::TOO_MANY_CONNECTIONS,
                    "too many connections to the database server",
                ),
                _ => (
                    sqlstate::CONNECTION_FAILURE,
                    "could not connect to the database server",
                ),
            };
            Refusal::new(
                None,
                code,
                message,
                format!("upstream {}: {e}", route.upstream.endpoint()),
            )
            .failed_at(e.step)
        })?;
    ::metrics::histogram!(metrics::UPSTREAM_CONNECT_DURATION)
        .record(connect_started.elapsed().as_secs_f64());
    span.record("upstream_addr", upstream.addr.to_string().as_str());
    span.record("upstream_pid", upstream.pid);
    drop(credential);

    let client_key = match minor {
        ProtocolMinor::V0 => crate::auth::verifier::random_bytes::<4>().to_vec(),
        ProtocolMinor::V2 => crate::auth::verifier::random_bytes::<32>().to_vec(),
    };
    let registration = state.cancel.register(
        client_key.clone(),
        CancelTarget {
            upstream: route.upstream.clone(),
            addr: upstream.addr,
            pid: upstream.pid,
            key: upstream.key.clone(),
        },
    );
    let mut welcome = BytesMut::with_capacity(upstream.welcome.len() + 64);
    welcome.extend_from_slice(&backend::auth_ok());
    welcome.extend_from_slice(&upstream.welcome);
    welcome.extend_from_slice(&backend::backend_key_data(upstream.pid, &client_key));
    welcome.extend_from_slice(&upstream.ready);
    write(framed, &welcome).await?;
    Ok((upstream, lease, registration, route))
}

/// Asks the route's credential source for a fresh credential (the source
/// counts and times its own requests).
async fn issue(route: &Route) -> Result<Issued, Refusal> {
    let source = &route.source;
    source.issue(&route.upstream.config).await.map_err(|e| {
        metrics::upstream_failure(UpstreamFailure::Credentials);
        Refusal::new(
            None,
            sqlstate::CONNECTION_FAILURE,
            "could not obtain database credentials",
            format!("credential source {}: {e}", source.name),
        )
        .failed_at(UpstreamFailure::Credentials)
    })
}

/// 3.0 and 3.2 as asked; other minors and `_pq_.*` options answered with
/// NegotiateProtocolVersion (downgrade only).
fn protocol_version(startup: &StartupMessage) -> (ProtocolMinor, Option<BytesMut>) {
    let (minor, newest) = match startup.minor {
        0 | 1 => (ProtocolMinor::V0, 0),
        _ => (ProtocolMinor::V2, 2),
    };
    let options: Vec<String> = startup
        .params
        .iter()
        .filter(|(k, _)| k.starts_with("_pq_."))
        .map(|(k, _)| k.clone())
        .collect();
    let needed = !matches!(startup.minor, 0 | 2) || !options.is_empty();
    (
        minor,
        needed.then(|| negotiate_protocol_version(newest, &options)),
    )
}

/// The client's startup parameters minus those pgwarden controls or refuses.
fn forwarded_params(startup: &StartupMessage) -> Vec<(String, String)> {
    startup
        .params
        .iter()
        .filter(|(k, _)| {
            !matches!(k.as_str(), "user" | "database" | "replication") && !k.starts_with("_pq_.")
        })
        .cloned()
        .collect()
}

async fn write(framed: &mut FramedStream<ClientStream>, bytes: &[u8]) -> Result<(), Refusal> {
    framed.write_all(bytes).await.map_err(|e| {
        Refusal::new(
            Some(RejectReason::Protocol),
            sqlstate::PROTOCOL_VIOLATION,
            "",
            format!("client write failed: {e}"),
        )
    })
}
