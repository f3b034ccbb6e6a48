//! One client connection, from accept to close.
//!
//! ```text
//! accept ─▶ negotiate (TLS) ─▶ authenticate ─▶ route ─▶ issue credential
//!        ─▶ upstream login ─▶ welcome ─▶ relay ─▶ close (revoke, record)
//! ```
//! One deadline covers accept → welcome. Every step before the relay that
//! fails yields an [`Error`], and [`error::refuse`] alone answers the client
//! (a FATAL of PostgreSQL's own code and client-safe text), closes its side
//! cleanly and records why; the detail goes to the log only. The session span
//! is created empty at accept and filled in as the handshake learns things;
//! `session_start`/`session_end` records carry it all.

mod close;
mod error;
mod establish;
mod parameters;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{Instrument, field::Empty};

use crate::handshake::{Negotiated, Refused};
use crate::listener::Admitted;
use crate::metrics::{self, Label};
use crate::net::ClientStream;
use crate::protocol::startup::CancelRequest;
use crate::state::{Snapshot, State};
pub use close::{CloseReason, SESSIONS_ENDED};
pub(crate) use error::REJECTIONS;
pub use error::{Error, Kind, RejectReason, StartupRefusal};
pub(crate) use error::{GOODBYE_TIMEOUT, refuse};
pub use establish::Established;
pub use parameters::ParameterRefusal;
/// For [`crate::fuzzing`] only.
pub(crate) use parameters::forwarded;

/// Serves one admitted connection: its handshake slot is given back once the
/// client authenticated and took one of `max_connections` session slots (or
/// when it ends before that: a cancel request needs no session slot).
pub(crate) async fn run(state: Arc<State>, tcp: TcpStream, admitted: Admitted) {
    let span = tracing::info_span!(
        "session",
        session_id = %new_session_id(),
        client_addr = %admitted.peer,
        proxied_by = Empty,
        tls_version = Empty,
        tls_cipher = Empty,
        alpn = Empty,
        user = Empty,
        database = Empty,
        route = Empty,
        auth_method = Empty,
        upstream_addr = Empty,
        upstream_user = Empty,
        upstream_pid = Empty,
        credential_source = Empty,
        lease_id_hash = Empty,
    );
    if let Some(balancer) = admitted.proxied_by {
        span.record("proxied_by", balancer.to_string().as_str());
    }
    if let Err(e) = crate::net::tune(&tcp, admitted.snapshot.config.listen.tcp_keepalive) {
        tracing::debug!(parent: &span, error = %e, "could not tune client socket");
    }
    serve(state, tcp, admitted).instrument(span).await
}

/// A session over any transport (a TCP socket, or an in-memory pipe in tests).
pub(crate) async fn serve<S>(state: Arc<State>, io: S, admitted: Admitted)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Admitted {
        peer,
        accepted,
        first,
        slot,
        snapshot,
        ..
    } = admitted;
    let deadline = accepted + snapshot.config.listen.handshake_timeout;
    // The handshake's and the login's state machines are boxed: they are done
    // once the relay starts, and a session's task would otherwise keep room
    // for the largest of them for as long as the session lives.
    let negotiated = Box::pin(snapshot.negotiator.negotiate(io, first, deadline)).await;
    let (stream, startup, tls) = match negotiated {
        Err(Refused { stream, error }) => {
            return refuse(&state, peer, stream, &Error::Negotiate(error)).await;
        }
        Ok(Negotiated::Cancel {
            stream,
            request,
            tls,
        }) => return cancel(&state, &snapshot, peer, stream, request, tls).await,
        Ok(Negotiated::Startup {
            stream,
            startup,
            tls,
        }) => (stream, startup, tls),
    };
    let span = tracing::Span::current();
    match &tls {
        Some(t) => {
            span.record("tls_version", t.version);
            span.record("tls_cipher", t.cipher);
            if let Some(a) = &t.alpn {
                span.record("alpn", a.as_str());
            }
        }
        None => {
            span.record("tls_version", "none");
        }
    }
    let client = establish::Client {
        peer,
        tls: tls.as_ref(),
        handshake_slot: slot,
    };
    let established = Box::pin(establish::establish(
        &state, &snapshot, stream, &startup, client, deadline,
    ))
    .await;
    match established {
        Ok(est) => {
            let handshake = accepted.elapsed();
            metrics::HANDSHAKE_DURATION.record(handshake);
            close::relay_and_close(&state, &snapshot, est, handshake).await;
        }
        Err((stream, error)) => refuse(&state, peer, Some(stream), &error).await,
    }
}

/// Forwards a cancel request, then closes the connection as PostgreSQL does:
/// cleanly (libpq 17+ waits for the close, and over TLS for a close_notify).
async fn cancel<S>(
    state: &State,
    snapshot: &Snapshot,
    peer: SocketAddr,
    mut stream: ClientStream<S>,
    request: CancelRequest,
    tls: bool,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let outcome = state
        .cancel
        .cancel(
            peer.ip(),
            request.pid,
            &request.key,
            snapshot.peering.as_ref(),
        )
        .await;
    crate::cancel::CANCELS.increment(outcome);
    tracing::info!(
        event = "cancel_request",
        pid = request.pid,
        tls,
        outcome = outcome.as_str()
    );
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, stream.shutdown()).await;
}

/// Counts and logs a connection refused before its session began. The
/// record is rate-limited (`suppressed_before` says how many were left out
/// since the last one); the counter never is. Used inside a session span and
/// outside one (the allowlist, the limit), so `client_addr` is always a
/// field of the record itself.
pub(crate) fn reject(state: &State, reason: RejectReason, peer: SocketAddr, detail: &str) {
    REJECTIONS.increment(reason);
    if let Some(suppressed) = state.reject_log.admit() {
        tracing::warn!(
            event = "connection_rejected",
            client_addr = %peer,
            reason = reason.as_str(),
            detail,
            suppressed_before = suppressed
        );
    }
}

fn new_session_id() -> String {
    let b: [u8; 8] = crate::auth::verifier::random_bytes();
    b.iter().map(|x| format!("{x:02x}")).collect()
}
