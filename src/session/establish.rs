//! From a startup message to a welcomed client with a live upstream backend:
//! identify → authenticate → take a session slot (giving the handshake slot
//! back) → route → issue a credential → log in upstream → register the
//! cancel key → welcome. Each step fails with a [`super::Error`];
//! none of them answers the client itself.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::error::{Error, StartupRefusal};
use super::parameters;
use crate::cancel::{CancelTarget, Registration};
use crate::credentials::Issued;
use crate::credentials::lease::LeaseGuard;
use crate::handshake::TlsInfo;
use crate::listener::HandshakeSlot;
use crate::metrics;
use crate::net::ClientStream;
use crate::protocol::ProtocolMinor;
use crate::protocol::backend;
use crate::protocol::backend::negotiate_protocol_version;
use crate::protocol::frame::FramedStream;
use crate::protocol::startup::StartupMessage;
use crate::route::Route;
use crate::state::{Snapshot, State};
use crate::upstream::UpstreamSession;

/// A session ready to relay.
pub struct Established<S> {
    pub client: ClientStream<S>,
    /// Bytes the client sent after its last authentication message.
    pub client_leftover: BytesMut,
    pub upstream: UpstreamSession,
    /// Revokes the credential when dropped, whatever happens next.
    pub lease: LeaseGuard,
    /// Removes the cancel key when dropped.
    pub cancel_registration: Registration,
    pub route: Arc<Route>,
    /// One of `max_connections`, for as long as the session lives.
    pub session_slot: OwnedSemaphorePermit,
}

/// A refused session: the client's stream, to be told why, and the error.
pub type Refused<S> = (ClientStream<S>, Error);

/// Authenticates, routes, issues a credential, logs in upstream and welcomes
/// the client, all before `deadline`.
pub async fn establish<S>(
    state: &State,
    snapshot: &Snapshot,
    stream: ClientStream<S>,
    startup: &StartupMessage,
    client: Client<'_>,
    deadline: Instant,
) -> Result<Established<S>, Refused<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut framed = FramedStream::new(stream);
    let result = tokio::time::timeout_at(
        deadline,
        login(state, snapshot, &mut framed, startup, client),
    )
    .await;
    let (client, client_leftover) = framed.into_parts();
    match result {
        Ok(Ok(Login {
            upstream,
            lease,
            cancel_registration,
            route,
            session_slot,
        })) => Ok(Established {
            client,
            client_leftover,
            upstream,
            lease,
            cancel_registration,
            route,
            session_slot,
        }),
        Ok(Err(error)) => Err((client, error)),
        Err(_) => Err((client, Error::Timeout)),
    }
}

struct Login {
    upstream: UpstreamSession,
    lease: LeaseGuard,
    cancel_registration: Registration,
    route: Arc<Route>,
    session_slot: OwnedSemaphorePermit,
}

/// Who is logging in: the client's address, its TLS, and its handshake slot.
pub struct Client<'a> {
    pub peer: SocketAddr,
    pub tls: Option<&'a TlsInfo>,
    pub handshake_slot: HandshakeSlot,
}

async fn login<S>(
    state: &State,
    snapshot: &Snapshot,
    framed: &mut FramedStream<ClientStream<S>>,
    startup: &StartupMessage,
    client: Client<'_>,
) -> Result<Login, Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let span = tracing::Span::current();
    let (minor, npv) = protocol_version(startup);
    let (user, database) = identify(startup)?;
    if let Some(npv) = npv {
        write(framed, &npv).await?;
    }
    let cert = client.tls.and_then(|t| t.client_cert.as_deref());
    let method = snapshot
        .authenticator
        .authenticate(
            framed,
            user,
            client.peer.ip().to_canonical(),
            client.tls.is_some(),
            cert,
        )
        .await?;
    span.record("auth_method", method.as_str());
    // Authenticated: from here on the client holds a session slot, not a
    // handshake slot.
    let session_slot = state
        .permits
        .clone()
        .try_acquire_owned()
        .map_err(|_| Error::TooManyConnections)?;
    drop(client.handshake_slot);

    let route = snapshot
        .routes
        .lookup(database, user)
        .map_err(|error| Error::Route {
            error,
            user: user.to_owned(),
            database: database.to_owned(),
        })?;
    span.record("route", route.database.as_str());
    span.record("credential_source", route.source.name.as_str());
    // Checked before a credential is issued for a connection that cannot use it.
    let params = parameters::forwarded(startup, &route.allowed_parameters)?;

    // Guarded from the moment the source answers, even if the deadline
    // passes while the request is in flight (the lease is then revoked).
    let Issued { credential, lease } =
        route
            .source
            .issue(&route.upstream.config)
            .await
            .map_err(|error| Error::Credential {
                source_name: route.source.name.clone(),
                error,
            })?;
    span.record("upstream_user", credential.username.as_str());
    span.record("lease_id_hash", credential.lease.id.hash().as_str());

    let connect_started = Instant::now();
    let upstream = route
        .upstream
        .connect(&credential, &params, route.session_role.as_deref())
        .await
        .map_err(|error| Error::Upstream {
            endpoint: route.upstream.endpoint(),
            error,
        })?;
    drop(credential);
    metrics::UPSTREAM_CONNECT_DURATION.record(connect_started.elapsed());
    span.record("upstream_addr", upstream.addr.to_string().as_str());
    span.record("upstream_pid", upstream.pid);

    let client_key = crate::cancel::key::issue(minor, snapshot.peering.as_ref().map(|p| p.id));
    let cancel_registration = state.cancel.register(
        client_key.clone(),
        CancelTarget {
            upstream: route.upstream.clone(),
            addr: upstream.addr,
            pid: upstream.pid,
            key: upstream.key.clone(),
        },
    );
    write(framed, &welcome(&upstream, &client_key)).await?;
    Ok(Login {
        upstream,
        lease,
        cancel_registration,
        route,
        session_slot,
    })
}

/// The user and database the client asks for; refuses what pgwarden does not do.
fn identify(startup: &StartupMessage) -> Result<(&str, &str), Error> {
    let user = startup
        .param("user")
        .filter(|u| !u.is_empty())
        .ok_or(StartupRefusal::NoUser)?;
    let database = startup
        .param("database")
        .filter(|d| !d.is_empty())
        .unwrap_or(user);
    let span = tracing::Span::current();
    span.record("user", user);
    span.record("database", database);
    if startup
        .param("replication")
        .is_some_and(|r| !matches!(r, "false" | "off" | "no" | "0"))
    {
        return Err(StartupRefusal::Replication.into());
    }
    Ok((user, database))
}

/// AuthenticationOk, the upstream's ParameterStatus verbatim, BackendKeyData
/// with the backend's real pid and pgwarden's key, the upstream's ReadyForQuery.
fn welcome(upstream: &UpstreamSession, client_key: &[u8]) -> BytesMut {
    let mut welcome = BytesMut::with_capacity(upstream.welcome.len() + 64);
    welcome.extend_from_slice(&backend::auth_ok());
    welcome.extend_from_slice(&upstream.welcome);
    welcome.extend_from_slice(&backend::backend_key_data(upstream.pid, client_key));
    welcome.extend_from_slice(&upstream.ready);
    welcome
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

async fn write<S>(framed: &mut FramedStream<ClientStream<S>>, bytes: &[u8]) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    framed.write_all(bytes).await.map_err(Error::ClientWrite)
}
