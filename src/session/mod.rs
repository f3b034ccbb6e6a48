//! One client connection, from accept to close.
//!
//! ```text
//! accept ─▶ negotiate (TLS) ─▶ authenticate ─▶ route ─▶ issue credential
//!        ─▶ upstream login ─▶ welcome ─▶ relay ─▶ close (revoke, record)
//! ```
//! One deadline covers accept → welcome. Every step before the relay that
//! fails answers the client with a FATAL of PostgreSQL's own code and
//! client-safe text; the detail goes to the session's log line. The session
//! span is created empty at accept and filled in as the handshake learns
//! things; `session_start`/`session_end` records carry it all.

mod establish;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tracing::{Instrument, field::Empty};

use crate::handshake::{Negotiated, send_fatal};
use crate::metrics::{self, CloseReason, GaugeGuard, RejectReason};
use crate::net::GOODBYE_TIMEOUT;
use crate::protocol::backend::{fatal, sqlstate};
use crate::relay::{RelayEnd, RelayOptions, Stop, StopSignal, relay};
use crate::state::State;
pub use establish::Established;

/// After shutdown or its lease's expiry asked a session to stop at a boundary,
/// how long before it is cut.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A deadline that never comes, for timers armed only later.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Serves one accepted connection. `permit` is `None` when the connection is
/// over `max_connections`: it is then walked through negotiation only to be
/// told 53300 (or to deliver a cancel request, which needs no slot).
pub async fn run(
    state: Arc<State>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
) {
    let span = tracing::info_span!(
        "session",
        session_id = %new_session_id(),
        client_addr = %peer,
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
    serve(state, tcp, peer, permit).instrument(span).await
}

async fn serve(
    state: Arc<State>,
    tcp: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
) {
    let accepted = Instant::now();
    let deadline = accepted + state.config.listen.handshake_timeout;
    if let Err(e) = crate::net::tune(&tcp, state.config.listen.tcp_keepalive) {
        tracing::debug!(error = %e, "could not tune client socket");
    }
    let negotiated = match tokio::time::timeout_at(deadline, state.negotiator.negotiate(tcp)).await
    {
        Err(_) => {
            return reject(
                &state,
                RejectReason::HandshakeTimeout,
                peer,
                "no startup message before the handshake deadline",
            );
        }
        Ok(Err(e)) => return reject(&state, e.reason, peer, &e.detail),
        Ok(Ok(n)) => n,
    };
    let (stream, startup, tls) = match negotiated {
        Negotiated::Cancel {
            request: c,
            tls,
            mut stream,
        } => {
            let outcome = state.cancel.cancel(peer.ip(), c.pid, &c.key).await;
            // Closed once the cancel went on (as a backend exits after signalling),
            // with close_notify: libpq 17+'s cancel call waits for it.
            crate::net::goodbye(&mut stream, &[]).await;
            ::metrics::counter!(metrics::CANCEL_REQUESTS, "outcome" => outcome.as_str())
                .increment(1);
            tracing::info!(
                event = "cancel_request",
                pid = c.pid,
                tls,
                outcome = outcome.as_str()
            );
            return;
        }
        Negotiated::Startup {
            stream,
            startup,
            tls,
        } => (stream, startup, tls),
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
    let mut stream = stream;
    let Some(_permit) = permit else {
        send_fatal(
            &mut stream,
            sqlstate::TOO_MANY_CONNECTIONS,
            "sorry, too many clients already",
        )
        .await;
        return reject(
            &state,
            RejectReason::TooManyConnections,
            peer,
            "max_connections reached",
        );
    };
    let Some(est) =
        establish::establish(&state, stream, &startup, peer, tls.is_some(), deadline).await
    else {
        return;
    };
    let handshake = accepted.elapsed();
    ::metrics::histogram!(metrics::HANDSHAKE_DURATION).record(handshake.as_secs_f64());
    relay_and_close(&state, est, handshake).await;
}

/// Relays until the session ends, then says goodbye, revokes and records.
async fn relay_and_close(state: &State, est: Established, handshake: Duration) {
    let Established {
        mut client,
        client_leftover,
        upstream,
        mut lease,
        cancel_registration,
        route,
    } = est;
    let stop = Arc::new(StopSignal::default());
    lease.start_renewal(stop.clone(), STOP_GRACE);
    let _active = GaugeGuard::new(::metrics::gauge!(metrics::SESSIONS_ACTIVE));
    tracing::info!(
        event = "session_start",
        handshake_ms = handshake.as_millis() as u64
    );

    let started = Instant::now();
    let opts = RelayOptions {
        idle_timeout: state.config.listen.idle_timeout,
        client_to_upstream: ::metrics::counter!(metrics::RELAY_BYTES, "direction" => "client_to_upstream"),
        upstream_to_client: ::metrics::counter!(metrics::RELAY_BYTES, "direction" => "upstream_to_client"),
    };
    let mut upstream_stream = upstream.stream;
    let mut shutdown_asked = false;
    let outcome = {
        let relayed = relay(
            &mut client,
            &mut upstream_stream,
            client_leftover,
            upstream.leftover,
            &opts,
            &stop,
        );
        tokio::pin!(relayed);
        let cut = tokio::time::sleep(FOREVER);
        tokio::pin!(cut);
        loop {
            tokio::select! {
                out = &mut relayed => break out,
                _ = state.shutdown.end_sessions.cancelled(), if !shutdown_asked => {
                    shutdown_asked = true;
                    stop.request(Stop::Now);
                    cut.as_mut().reset(Instant::now() + STOP_GRACE);
                }
                _ = &mut cut => stop.request(Stop::Abort),
            }
        }
    };
    // The session is over: its lease no longer needs renewing or enforcing.
    lease.stop_renewal();

    let close_reason = close_reason(outcome.end, shutdown_asked);
    let goodbye = match close_reason {
        CloseReason::Shutdown => Some((
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection due to administrator command",
        )),
        CloseReason::LeaseEnded => Some((
            sqlstate::ADMIN_SHUTDOWN,
            "terminating connection because its database credential reached the end of its lease; reconnect to get a new one",
        )),
        CloseReason::IdleTimeout => Some((
            sqlstate::IDLE_SESSION_TIMEOUT,
            "terminating connection due to idle-session timeout",
        )),
        _ => None,
    };
    let last = match (goodbye, outcome.client_at_boundary) {
        (Some((code, msg)), true) => fatal(code, msg),
        _ => Default::default(),
    };
    crate::net::goodbye(&mut client, &last).await;
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        if outcome.end == RelayEnd::StoppedIdle {
            // The backend is idle: a Terminate message ends it cleanly.
            let _ = upstream_stream.write_all(&[b'X', 0, 0, 0, 4]).await;
        }
        let _ = upstream_stream.shutdown().await;
    })
    .await;
    drop(cancel_registration);
    drop(lease);

    let duration = started.elapsed();
    ::metrics::counter!(metrics::SESSIONS, "close_reason" => close_reason.as_str()).increment(1);
    ::metrics::histogram!(metrics::SESSION_DURATION).record(duration.as_secs_f64());
    tracing::info!(
        event = "session_end",
        route = %route.database,
        duration_ms = duration.as_millis() as u64,
        bytes_client_to_upstream = outcome.bytes_client_to_upstream,
        bytes_upstream_to_client = outcome.bytes_upstream_to_client,
        close_reason = close_reason.as_str(),
        error = outcome.error.as_deref(),
    );
}

/// Why the session ended, from how the relay ended; a stop pgwarden asked for
/// is a shutdown if shutdown was under way, else the lease's end.
fn close_reason(end: RelayEnd, shutdown_asked: bool) -> CloseReason {
    match end {
        RelayEnd::ClientTerminated => CloseReason::ClientTerminated,
        RelayEnd::ClientClosed => CloseReason::ClientClosed,
        RelayEnd::ClientError => CloseReason::ClientError,
        RelayEnd::UpstreamClosed => CloseReason::UpstreamClosed,
        RelayEnd::UpstreamError => CloseReason::UpstreamError,
        RelayEnd::UpstreamProtocol => CloseReason::UpstreamProtocol,
        RelayEnd::IdleTimeout => CloseReason::IdleTimeout,
        RelayEnd::Stopped | RelayEnd::StoppedIdle | RelayEnd::Aborted if shutdown_asked => {
            CloseReason::Shutdown
        }
        RelayEnd::Stopped | RelayEnd::StoppedIdle | RelayEnd::Aborted => CloseReason::LeaseEnded,
    }
}

/// Counts and logs a connection refused before its session began. The
/// record is rate-limited (`suppressed_before` says how many were left out
/// since the last one); the counter never is. Used inside a session span and
/// outside one (the allowlist, the limit), so `client_addr` is always a
/// field of the record itself.
pub(crate) fn reject(state: &State, reason: RejectReason, peer: SocketAddr, detail: &str) {
    metrics::rejected(reason);
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
