//! A welcomed session: relayed until it ends, then closed on both legs,
//! its lease handed over for revocation and its record written.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::GOODBYE_TIMEOUT;
use super::establish::Established;
use crate::credentials::lease::{EndOfLife, SessionEnd};
use crate::metrics::{self, GaugeGuard, Label};
use crate::net::UpstreamStream;
use crate::protocol::backend::{fatal, sqlstate};
use crate::relay::{
    Direction, RELAY_BYTES, RelayEnd, RelayOptions, RelayOutcome, Stop, StopSignal, relay,
};
use crate::state::{Snapshot, State};
use crate::upstream::UpstreamTarget;

/// After shutdown or its lease's expiry asked a session to stop at a boundary,
/// how long before it is cut.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// A deadline that never comes, for timers armed only later.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Why a session that reached the relay ended: the `close_reason` of the
/// session record and of `pgwarden_sessions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client sent Terminate: an orderly logout.
    ClientTerminated,
    /// The client closed its connection without Terminate.
    ClientClosed,
    /// The client connection failed.
    ClientError,
    /// The backend closed its connection (exit, `pg_terminate_backend`).
    UpstreamClosed,
    /// The upstream connection failed.
    UpstreamError,
    /// The upstream sent a message header no PostgreSQL server sends.
    UpstreamProtocol,
    /// Nothing moved for `[listen] idle_timeout`.
    IdleTimeout,
    /// pgwarden ended it at the end of its credential's lease.
    LeaseEnded,
    /// pgwarden ended it while shutting down.
    Shutdown,
}

impl Label for CloseReason {
    const ALL: &'static [Self] = &[
        CloseReason::ClientTerminated,
        CloseReason::ClientClosed,
        CloseReason::ClientError,
        CloseReason::UpstreamClosed,
        CloseReason::UpstreamError,
        CloseReason::UpstreamProtocol,
        CloseReason::IdleTimeout,
        CloseReason::LeaseEnded,
        CloseReason::Shutdown,
    ];

    fn as_str(self) -> &'static str {
        match self {
            CloseReason::ClientTerminated => "client_terminated",
            CloseReason::ClientClosed => "client_closed",
            CloseReason::ClientError => "client_error",
            CloseReason::UpstreamClosed => "upstream_closed",
            CloseReason::UpstreamError => "upstream_error",
            CloseReason::UpstreamProtocol => "upstream_protocol",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::LeaseEnded => "lease_ended",
            CloseReason::Shutdown => "shutdown",
        }
    }
}

pub static SESSIONS_ENDED: metrics::Counter<CloseReason> =
    metrics::Counter::new(metrics::name::SESSIONS, "close_reason");

impl CloseReason {
    /// The FATAL a client is told when pgwarden ends its session, if any.
    fn goodbye(self) -> Option<(&'static str, &'static str)> {
        match self {
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
        }
    }
}

/// The end of a lease's life reaches the relay as a stop request.
impl SessionEnd for StopSignal {
    fn end(&self, how: EndOfLife) {
        self.request(match how {
            EndOfLife::WhenIdle => Stop::WhenIdle,
            EndOfLife::AtBoundary => Stop::Now,
            EndOfLife::Now => Stop::Abort,
        });
    }
}

/// Relays until the session ends, then says goodbye, revokes and records.
pub(super) async fn relay_and_close<S>(
    state: &State,
    snapshot: &Snapshot,
    est: Established<S>,
    handshake: Duration,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Established {
        mut client,
        client_leftover,
        upstream,
        mut lease,
        cancel_registration,
        route,
        session_slot: _session_slot,
    } = est;
    let stop = Arc::new(StopSignal::default());
    lease.start_renewal(stop.clone(), STOP_GRACE);
    let _active = GaugeGuard::new(&metrics::SESSIONS_ACTIVE);
    tracing::info!(
        event = "session_start",
        handshake_ms = handshake.as_millis() as u64
    );

    let started = Instant::now();
    let opts = RelayOptions {
        ready_status: upstream.ready.last().copied(),
        idle_timeout: snapshot.config.listen.idle_timeout,
        client_to_upstream: RELAY_BYTES.handle(Direction::ClientToUpstream),
        upstream_to_client: RELAY_BYTES.handle(Direction::UpstreamToClient),
    };
    let mut upstream_stream = upstream.stream;
    let relayed = relay(
        &mut client,
        &mut upstream_stream,
        client_leftover,
        upstream.leftover,
        &opts,
        &stop,
    );
    let (outcome, shutdown_asked) = until_shutdown(state, relayed, &stop).await;
    // The session is over: its lease no longer needs renewing or enforcing.
    lease.stop_renewal();

    let close_reason = close_reason(outcome.end, shutdown_asked);
    say_goodbye(&mut client, close_reason, outcome.client_at_boundary).await;
    let backend = Backend {
        upstream: &route.upstream,
        addr: upstream.addr,
        pid: upstream.pid,
        key: &upstream.key,
    };
    end_backend(upstream_stream, backend, outcome.end).await;
    drop(cancel_registration);
    drop(lease);

    let duration = started.elapsed();
    SESSIONS_ENDED.increment(close_reason);
    metrics::SESSION_DURATION.record(duration);
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

/// Runs `relayed` to its end; when shutdown asks live sessions to end, asks
/// it to stop at a boundary and cuts it `STOP_GRACE` later. Also says
/// whether shutdown asked.
async fn until_shutdown(
    state: &State,
    relayed: impl Future<Output = RelayOutcome>,
    stop: &StopSignal,
) -> (RelayOutcome, bool) {
    tokio::pin!(relayed);
    let cut = tokio::time::sleep(FOREVER);
    tokio::pin!(cut);
    let mut shutdown_asked = false;
    loop {
        tokio::select! {
            out = &mut relayed => return (out, shutdown_asked),
            _ = state.shutdown.end_sessions.cancelled(), if !shutdown_asked => {
                shutdown_asked = true;
                stop.request(Stop::Now);
                cut.as_mut().reset(Instant::now() + STOP_GRACE);
            }
            _ = &mut cut => stop.request(Stop::Abort),
        }
    }
}

/// Tells the client why pgwarden ended its session, if it did and the
/// client's stream rests at a message boundary, then closes its side as a
/// backend does (close_notify on TLS), within a bound.
async fn say_goodbye<C>(client: &mut C, reason: CloseReason, at_boundary: bool)
where
    C: AsyncWrite + Unpin,
{
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        if let (Some((code, msg)), true) = (reason.goodbye(), at_boundary) {
            let _ = client.write_all(&fatal(code, msg)).await;
        }
        let _ = client.shutdown().await;
    })
    .await;
}

/// The session's backend, as far as ending it needs.
struct Backend<'a> {
    upstream: &'a UpstreamTarget,
    addr: std::net::SocketAddr,
    pid: i32,
    key: &'a [u8],
}

/// Closes the upstream leg — with a Terminate when the backend is idle — and,
/// when the backend may still be running, cancels what it runs.
async fn end_backend(mut stream: UpstreamStream, backend: Backend<'_>, end: RelayEnd) {
    let _ = tokio::time::timeout(GOODBYE_TIMEOUT, async {
        if end == RelayEnd::StoppedIdle {
            // The backend is idle: a Terminate message ends it cleanly.
            let _ = stream.write_all(&[b'X', 0, 0, 0, 4]).await;
        }
        let _ = stream.shutdown().await;
    })
    .await;
    drop(stream);
    if !backend_may_run_on(end) {
        return;
    }
    // A backend busy with a query does not notice its socket closed until it
    // next talks to it: a cancel (which needs no privilege, only its key)
    // ends the query, and the backend then finds the socket gone and exits.
    // The credential's revocation ends whatever still runs (a loop that
    // catches query_canceled).
    let Backend {
        upstream,
        addr,
        pid,
        key,
    } = backend;
    match tokio::time::timeout(GOODBYE_TIMEOUT, upstream.cancel(addr, pid, key)).await {
        Ok(Ok(())) => tracing::debug!(event = "backend_cancelled", pid),
        Ok(Err(e)) => tracing::warn!(event = "backend_cancel_failed", pid, error = %e),
        Err(_) => tracing::warn!(
            event = "backend_cancel_failed",
            pid,
            error = "no answer in time"
        ),
    }
}

/// Whether the backend may still be running when the relay ended this way:
/// every end but an orderly one (the client's Terminate, pgwarden's at an
/// idle moment) or the backend's own exit.
fn backend_may_run_on(end: RelayEnd) -> bool {
    !matches!(
        end,
        RelayEnd::ClientTerminated | RelayEnd::StoppedIdle | RelayEnd::UpstreamClosed
    )
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
