//! The relay: after the welcome, bytes flow both ways untouched.
//!
//! One task polls both directions (no locks, no split streams). Each direction
//! is a [`Pump`] that reads into a buffer, writes everything it read, and
//! flushes whenever its reader has nothing more for now — so a request/response
//! round trip costs one read and one write per leg, and bulk transfers move in
//! large chunks. A direction holds its buffer only while bytes are in flight
//! ([`buffers`]): an idle session holds none.
//!
//! Both directions are followed by a header-only [`FrameTracker`] (type byte
//! and length; bodies are skipped, never decoded):
//! - server→client, so the session can stop only at a message boundary (and,
//!   when recycling, only when the backend is idle between transactions);
//! - client→server, so an orderly logout is told from a vanished client. A
//!   client that ends with Terminate (`X`, length 4) makes the backend exit,
//!   and the upstream's EOF then often arrives before the client's; whichever
//!   side closes first, a session whose client stream ends with a Terminate
//!   at a message boundary ended by the client's choice
//!   ([`RelayEnd::ClientTerminated`]). A client stream whose framing breaks
//!   (a length under 4) is no longer followed; it is still relayed untouched
//!   and the backend answers it as it would a direct client.
//!
//! Following headers costs a few comparisons per message, and nothing per
//! body byte, so bulk transfers (COPY, large rows) pay almost nothing.
//!
//! The relay never decodes, rewrites or logs message contents.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::metrics::{self, Label};
use crate::protocol::frame::FrameTracker;

mod buffers;
mod pump;

use pump::{Pump, PumpError, PumpState};

/// Which way bytes move: the `direction` of `pgwarden_relay_bytes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToUpstream,
    UpstreamToClient,
}

impl Label for Direction {
    const ALL: &'static [Self] = &[Direction::ClientToUpstream, Direction::UpstreamToClient];

    fn as_str(self) -> &'static str {
        match self {
            Direction::ClientToUpstream => "client_to_upstream",
            Direction::UpstreamToClient => "upstream_to_client",
        }
    }
}

pub static RELAY_BYTES: metrics::Counter<Direction> =
    metrics::Counter::new(metrics::name::RELAY_BYTES, "direction");

/// Size of the buffer a direction reads into; TLS records carry at most 16 KiB
/// (8 KiB towards the client, see `tls::CLIENT_RECORD_PLAINTEXT`), so this
/// takes several records per read on bulk transfers. Lent from [`buffers`]
/// while bytes are in flight.
pub const RELAY_BUFFER: usize = 64 * 1024;

/// Why the relay ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// The client sent Terminate as its last message, then either side closed
    /// or the connection failed while being torn down: an orderly logout.
    ClientTerminated,
    /// The client closed its side without a Terminate message.
    ClientClosed,
    /// The upstream closed its side (backend exit or termination).
    UpstreamClosed,
    /// The client connection failed (reset, keepalive timeout, TLS error).
    ClientError,
    /// The upstream connection failed.
    UpstreamError,
    /// The upstream sent a message header no PostgreSQL server sends.
    UpstreamProtocol,
    /// Stopped on request at a message boundary (`Stop::Now`).
    Stopped,
    /// Stopped on request when the backend reported idle (`Stop::WhenIdle`).
    StoppedIdle,
    /// Nothing moved for the configured idle timeout.
    IdleTimeout,
    /// Cut at once on request (`Stop::Abort`), possibly mid-message.
    Aborted,
}

/// A request to end the relay early.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stop {
    /// At the next point where the backend is idle outside a transaction.
    WhenIdle,
    /// At the next message boundary.
    Now,
    /// At once, even mid-message (a client that does not read, at shutdown).
    Abort,
}

/// Where the session (lease end of life, shutdown) asks the relay to stop.
/// Requests only ever strengthen: `WhenIdle` can become `Now`, never back.
#[derive(Default)]
pub struct StopSignal {
    level: AtomicU8,
    waker: AtomicWaker,
}

impl StopSignal {
    pub fn request(&self, stop: Stop) {
        let level = match stop {
            Stop::WhenIdle => 1,
            Stop::Now => 2,
            Stop::Abort => 3,
        };
        self.level.fetch_max(level, Ordering::AcqRel);
        self.waker.wake();
    }

    /// The strongest stop requested so far.
    pub fn requested(&self) -> Option<Stop> {
        match self.level.load(Ordering::Acquire) {
            0 => None,
            1 => Some(Stop::WhenIdle),
            2 => Some(Stop::Now),
            _ => Some(Stop::Abort),
        }
    }

    fn poll_requested(&self, cx: &mut Context<'_>) -> Option<Stop> {
        self.waker.register(cx.waker());
        self.requested()
    }
}

/// What moved, and how it ended.
#[derive(Debug, Clone)]
pub struct RelayOutcome {
    pub end: RelayEnd,
    pub bytes_client_to_upstream: u64,
    pub bytes_upstream_to_client: u64,
    /// Whether the server→client stream rests at a message boundary, so a
    /// message of pgwarden's own can be sent to the client.
    pub client_at_boundary: bool,
    /// The I/O error that ended the relay, for the log.
    pub error: Option<String>,
}

/// How a relay runs, besides its streams.
pub struct RelayOptions {
    /// The status of the ReadyForQuery the client was welcomed with, so a
    /// session idle from the start can be recycled when idle.
    pub ready_status: Option<u8>,
    /// End the session when nothing moved for this long.
    pub idle_timeout: Option<Duration>,
    /// Where bytes read from the client are counted (default: nowhere).
    pub client_to_upstream: ::metrics::Counter,
    /// Where bytes read from the upstream are counted (default: nowhere).
    pub upstream_to_client: ::metrics::Counter,
}

impl Default for RelayOptions {
    /// No idle timeout, bytes counted nowhere.
    fn default() -> Self {
        RelayOptions {
            ready_status: None,
            idle_timeout: None,
            client_to_upstream: ::metrics::Counter::noop(),
            upstream_to_client: ::metrics::Counter::noop(),
        }
    }
}

/// Relays until one side closes, an error, or a requested stop.
///
/// `stop` is checked on every wake-up and wakes the relay when a stop is
/// requested. `client_leftover`/`upstream_leftover` are bytes already read from
/// each side during the handshake; they are forwarded first.
pub async fn relay<C, U>(
    client: &mut C,
    upstream: &mut U,
    client_leftover: BytesMut,
    upstream_leftover: BytesMut,
    opts: &RelayOptions,
    stop: &StopSignal,
) -> RelayOutcome
where
    C: AsyncRead + AsyncWrite + Unpin + ?Sized,
    U: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut c2u = Pump::new(client_leftover, opts.client_to_upstream.clone());
    let mut u2c = Pump::new(upstream_leftover, opts.upstream_to_client.clone());
    let mut tracker = match opts.ready_status {
        Some(status) => FrameTracker::after_ready_for_query(status, READY_FOR_QUERY),
        None => FrameTracker::counting(READY_FOR_QUERY, &[]),
    };
    if tracker.observe(u2c.pending()).is_err() {
        return outcome(RelayEnd::UpstreamProtocol, &c2u, &u2c, &tracker);
    }
    let mut client_frames = ClientFrames::default();
    client_frames.observe(c2u.pending());
    let mut idle = opts
        .idle_timeout
        .map(|d| (d, Box::pin(tokio::time::sleep(d))));
    let mut last_bytes = 0u64;

    let (end, error) = poll_fn(|cx| {
        if stop.poll_requested(cx) == Some(Stop::Abort) {
            return Poll::Ready((RelayEnd::Aborted, None));
        }
        let polled = c2u.poll_pump(
            cx,
            Pin::new(&mut *client),
            Pin::new(&mut *upstream),
            |chunk| client_frames.observe(chunk),
        );
        if let Err(end) = ended_by(polled, Side::Client) {
            return Poll::Ready(end);
        }
        let u2c_state = match ended_by(
            u2c.poll_pump(
                cx,
                Pin::new(&mut *upstream),
                Pin::new(&mut *client),
                |chunk| tracker.observe(chunk).is_ok(),
            ),
            Side::Upstream,
        ) {
            Ok(state) => state,
            Err(end) => return Poll::Ready(end),
        };
        // Both pumps are waiting. A stop is honoured only once everything the
        // upstream sent has reached the client, at a message boundary.
        let drained = matches!(u2c_state, Some(PumpState::Idle));
        match stop.poll_requested(cx) {
            Some(Stop::Now) if drained && tracker.at_boundary() => {
                return Poll::Ready((RelayEnd::Stopped, None));
            }
            Some(Stop::WhenIdle)
                if drained
                    && tracker.ready_status() == Some(b'I')
                    && client_frames.answered(tracker.count()) =>
            {
                return Poll::Ready((RelayEnd::StoppedIdle, None));
            }
            _ => {}
        }
        if let Some((limit, sleep)) = idle.as_mut() {
            let moved = c2u.bytes + u2c.bytes;
            if moved != last_bytes {
                last_bytes = moved;
                sleep.as_mut().reset(Instant::now() + *limit);
            }
            if sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready((RelayEnd::IdleTimeout, None));
            }
        }
        Poll::Pending
    })
    .await;
    let end = match end {
        RelayEnd::ClientClosed
        | RelayEnd::UpstreamClosed
        | RelayEnd::ClientError
        | RelayEnd::UpstreamError
            if client_frames.terminated() =>
        {
            RelayEnd::ClientTerminated
        }
        other => other,
    };
    let mut out = outcome(end, &c2u, &u2c, &tracker);
    out.error = error;
    out
}

/// Which side a pump reads from.
#[derive(Clone, Copy)]
enum Side {
    Client,
    Upstream,
}

/// Whether a pump's answer ends the relay (`Err`, with how and the error
/// for the log), or it goes on (`Ok`, with the pump's state if it has one).
fn ended_by(
    polled: Poll<Result<PumpState, PumpError>>,
    reads: Side,
) -> Result<Option<PumpState>, (RelayEnd, Option<String>)> {
    let (read_failed, write_failed, closed) = match reads {
        Side::Client => (
            RelayEnd::ClientError,
            RelayEnd::UpstreamError,
            RelayEnd::ClientClosed,
        ),
        Side::Upstream => (
            RelayEnd::UpstreamError,
            RelayEnd::ClientError,
            RelayEnd::UpstreamClosed,
        ),
    };
    match polled {
        Poll::Pending => Ok(None),
        Poll::Ready(Ok(PumpState::Done)) => Err((closed, None)),
        Poll::Ready(Ok(state)) => Ok(Some(state)),
        Poll::Ready(Err(PumpError::Read(e))) => Err((read_failed, Some(e.to_string()))),
        Poll::Ready(Err(PumpError::Write(e))) => Err((write_failed, Some(e.to_string()))),
        Poll::Ready(Err(PumpError::Protocol)) => Err((RelayEnd::UpstreamProtocol, None)),
    }
}

/// Client messages that each end in exactly one ReadyForQuery: Query, Sync
/// and FunctionCall.
const CLIENT_SYNC_POINTS: &[u8] = b"QSF";
/// Client messages that belong to the sync point before them (the data of a
/// COPY FROM STDIN started by a Query): they leave the backend nothing to do
/// once it answered that sync point.
const CLIENT_COPY: &[u8] = b"dcf";
/// ReadyForQuery.
const READY_FOR_QUERY: &[u8] = b"Z";

/// The client→server stream, followed from headers to see a Terminate and
/// to count what the backend still owes a ReadyForQuery for.
struct ClientFrames {
    tracker: FrameTracker,
    /// The framing broke (a length under 4); nothing more is concluded.
    lost: bool,
}

impl Default for ClientFrames {
    fn default() -> Self {
        ClientFrames {
            tracker: FrameTracker::counting(CLIENT_SYNC_POINTS, CLIENT_COPY),
            lost: false,
        }
    }
}

impl ClientFrames {
    /// Observes a chunk; never refuses one (the backend judges client bytes).
    fn observe(&mut self, chunk: &[u8]) -> bool {
        if !self.lost && self.tracker.observe(chunk).is_err() {
            self.lost = true;
        }
        true
    }

    /// Whether the backend has nothing left to run of what the client sent:
    /// every Query, Sync and FunctionCall has had its ReadyForQuery
    /// (`ready_for_queries` seen from the server; a pipelined query may
    /// still be in flight), nothing but COPY data followed the last of them
    /// (an Execute runs before its Sync comes), and the client is between
    /// messages.
    fn answered(&self, ready_for_queries: u64) -> bool {
        !self.lost
            && self.tracker.at_boundary()
            && !self.tracker.uncounted_since()
            && self.tracker.count() <= ready_for_queries
    }

    /// The client's last message was a complete Terminate.
    fn terminated(&self) -> bool {
        !self.lost && self.tracker.at_boundary() && self.tracker.last_tag() == Some(b'X')
    }
}

fn outcome(end: RelayEnd, c2u: &Pump, u2c: &Pump, tracker: &FrameTracker) -> RelayOutcome {
    RelayOutcome {
        end,
        error: None,
        bytes_client_to_upstream: c2u.bytes,
        bytes_upstream_to_client: u2c.bytes,
        client_at_boundary: u2c.pos == u2c.cap && tracker.at_boundary(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[tokio::test]
    async fn forwards_leftovers_first_and_counts_bytes() {
        let (mut client_far, mut client) = duplex(1 << 16);
        let (mut upstream_far, mut upstream) = duplex(1 << 16);
        let task = tokio::spawn(async move {
            relay(
                &mut client,
                &mut upstream,
                BytesMut::from(&b"early"[..]),
                BytesMut::from(&msg(b'N', b"x\0")[..]),
                &RelayOptions::default(),
                &StopSignal::default(),
            )
            .await
        });
        client_far.write_all(b"-late").await.unwrap();
        let mut got = [0u8; 10];
        upstream_far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"early-late");
        let mut got = vec![0u8; 7];
        client_far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, msg(b'N', b"x\0"));
        drop(client_far);
        let out = task.await.unwrap();
        assert_eq!(out.end, RelayEnd::ClientClosed);
        assert_eq!(out.bytes_client_to_upstream, 10);
        assert_eq!(out.bytes_upstream_to_client, 7);
    }

    #[tokio::test]
    async fn stop_when_idle_waits_for_ready_for_query_idle() {
        let (mut client_far, mut client) = duplex(1 << 16);
        let (mut upstream_far, mut upstream) = duplex(1 << 16);
        let task = tokio::spawn(async move {
            let stop = StopSignal::default();
            stop.request(Stop::WhenIdle);
            relay(
                &mut client,
                &mut upstream,
                BytesMut::new(),
                BytesMut::new(),
                &RelayOptions::default(),
                &stop,
            )
            .await
        });
        // In a transaction: not idle, keeps relaying.
        let mut in_tx = msg(b'C', b"BEGIN\0");
        in_tx.extend(msg(b'Z', b"T"));
        upstream_far.write_all(&in_tx).await.unwrap();
        let mut got = vec![0u8; in_tx.len()];
        client_far.read_exact(&mut got).await.unwrap();
        assert!(!task.is_finished());
        // Idle: the relay stops, after the client has the ReadyForQuery.
        let mut done = msg(b'C', b"COMMIT\0");
        done.extend(msg(b'Z', b"I"));
        upstream_far.write_all(&done).await.unwrap();
        let mut got = vec![0u8; done.len()];
        client_far.read_exact(&mut got).await.unwrap();
        let out = task.await.unwrap();
        assert_eq!(out.end, RelayEnd::StoppedIdle);
        assert!(out.client_at_boundary);
    }

    /// A relay asked to stop when idle, and its far ends.
    fn recycling() -> (
        tokio::io::DuplexStream,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<RelayOutcome>,
    ) {
        let (client_far, mut client) = duplex(1 << 16);
        let (upstream_far, mut upstream) = duplex(1 << 16);
        let task = tokio::spawn(async move {
            let stop = StopSignal::default();
            stop.request(Stop::WhenIdle);
            relay(
                &mut client,
                &mut upstream,
                BytesMut::new(),
                BytesMut::new(),
                &RelayOptions::default(),
                &stop,
            )
            .await
        });
        (client_far, upstream_far, task)
    }

    async fn pass(
        from: &mut tokio::io::DuplexStream,
        to: &mut tokio::io::DuplexStream,
        bytes: &[u8],
    ) {
        from.write_all(bytes).await.unwrap();
        let mut got = vec![0u8; bytes.len()];
        to.read_exact(&mut got).await.unwrap();
        assert_eq!(got, bytes);
        tokio::task::yield_now().await;
    }

    #[tokio::test]
    async fn stop_when_idle_waits_for_pipelined_queries_still_in_flight() {
        let (mut client_far, mut upstream_far, task) = recycling();
        // Two queries pipelined: both reach the backend before it answers the first.
        let mut queries = msg(b'Q', b"SELECT 1\0");
        queries.extend(msg(b'Q', b"INSERT INTO t VALUES (1)\0"));
        pass(&mut client_far, &mut upstream_far, &queries).await;
        let mut first = msg(b'C', b"SELECT 1\0");
        first.extend(msg(b'Z', b"I"));
        pass(&mut upstream_far, &mut client_far, &first).await;
        // Idle by the status byte, but the INSERT is still to run: no stop,
        // or the client would be told 57P01 about an INSERT that commits.
        assert!(!task.is_finished());
        let mut second = msg(b'C', b"INSERT 0 1\0");
        second.extend(msg(b'Z', b"I"));
        pass(&mut upstream_far, &mut client_far, &second).await;
        assert_eq!(task.await.unwrap().end, RelayEnd::StoppedIdle);
    }

    #[tokio::test]
    async fn stop_when_idle_waits_for_an_execute_sent_after_the_ready_for_query() {
        let (mut client_far, mut upstream_far, task) = recycling();
        pass(
            &mut client_far,
            &mut upstream_far,
            &msg(b'Q', b"SELECT 1\0"),
        )
        .await;
        let mut answer = msg(b'C', b"SELECT 1\0");
        answer.extend(msg(b'Z', b"I"));
        // The answer reaches pgwarden, but the client already sent Bind and
        // Execute (an Execute runs before its Sync comes).
        upstream_far.write_all(&answer).await.unwrap();
        let mut execute = msg(b'B', b"\0\0\0\0\0\0\0");
        execute.extend(msg(b'E', b"\0\0\0\0\0"));
        client_far.write_all(&execute).await.unwrap();
        let mut got = vec![0u8; execute.len()];
        upstream_far.read_exact(&mut got).await.unwrap();
        let mut got = vec![0u8; answer.len()];
        client_far.read_exact(&mut got).await.unwrap();
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        pass(&mut client_far, &mut upstream_far, &msg(b'S', b"")).await;
        assert!(!task.is_finished());
        let mut done = msg(b'C', b"SELECT 1\0");
        done.extend(msg(b'Z', b"I"));
        pass(&mut upstream_far, &mut client_far, &done).await;
        assert_eq!(task.await.unwrap().end, RelayEnd::StoppedIdle);
    }

    #[tokio::test]
    async fn a_session_idle_since_its_welcome_is_recycled_at_once() {
        let (_client_far, mut client) = duplex(1 << 16);
        let (_upstream_far, mut upstream) = duplex(1 << 16);
        let stop = StopSignal::default();
        stop.request(Stop::WhenIdle);
        let opts = RelayOptions {
            ready_status: Some(b'I'),
            ..RelayOptions::default()
        };
        let out = relay(
            &mut client,
            &mut upstream,
            BytesMut::new(),
            BytesMut::new(),
            &opts,
            &stop,
        )
        .await;
        assert_eq!(out.end, RelayEnd::StoppedIdle);
    }

    #[tokio::test]
    async fn upstream_close_ends_relay() {
        let (_client_far, mut client) = duplex(1024);
        let (upstream_far, mut upstream) = duplex(1024);
        drop(upstream_far);
        let out = relay(
            &mut client,
            &mut upstream,
            BytesMut::new(),
            BytesMut::new(),
            &RelayOptions::default(),
            &StopSignal::default(),
        )
        .await;
        assert_eq!(out.end, RelayEnd::UpstreamClosed);
    }

    /// Relays `client_sends` (in pieces of `piece` bytes) to a far upstream that
    /// reads it all; then `upstream_closes_first` decides which side hangs up.
    async fn end_after(
        client_sends: Vec<u8>,
        piece: usize,
        upstream_closes_first: bool,
    ) -> RelayOutcome {
        let (mut client_far, mut client) = duplex(1 << 16);
        let (mut upstream_far, mut upstream) = duplex(1 << 16);
        let task = tokio::spawn(async move {
            relay(
                &mut client,
                &mut upstream,
                BytesMut::new(),
                BytesMut::new(),
                &RelayOptions::default(),
                &StopSignal::default(),
            )
            .await
        });
        for chunk in client_sends.chunks(piece) {
            client_far.write_all(chunk).await.unwrap();
            client_far.flush().await.unwrap();
        }
        let mut got = vec![0u8; client_sends.len()];
        upstream_far.read_exact(&mut got).await.unwrap();
        assert_eq!(got, client_sends, "relayed untouched");
        if upstream_closes_first {
            // As a backend does on Terminate: exit, closing the socket.
            drop(upstream_far);
            let out = task.await.unwrap();
            drop(client_far);
            out
        } else {
            drop(client_far);
            let out = task.await.unwrap();
            drop(upstream_far);
            out
        }
    }

    #[tokio::test]
    async fn a_terminate_is_an_orderly_client_close_whichever_side_closes_first() {
        let mut session = msg(b'Q', b"SELECT 1\0");
        session.extend(msg(b'X', b""));
        for piece in [1, 3, session.len()] {
            for upstream_first in [true, false] {
                let out = end_after(session.clone(), piece, upstream_first).await;
                assert_eq!(
                    out.end,
                    RelayEnd::ClientTerminated,
                    "pieces of {piece}, upstream first: {upstream_first}"
                );
                assert_eq!(out.bytes_client_to_upstream, session.len() as u64);
            }
        }
    }

    #[tokio::test]
    async fn without_a_terminate_the_side_that_closed_is_reported() {
        // `X` bytes inside a CopyData body are not a Terminate.
        let mut session = msg(b'd', &[b'X', 0, 0, 0, 4]);
        session.extend(msg(b'c', b""));
        let out = end_after(session.clone(), 2, false).await;
        assert_eq!(out.end, RelayEnd::ClientClosed);
        let out = end_after(session, 2, true).await;
        assert_eq!(out.end, RelayEnd::UpstreamClosed);
        // A Terminate followed by the start of another message is no Terminate
        // as the last word.
        let mut session = msg(b'X', b"");
        session.push(b'Q');
        let out = end_after(session, 1, false).await;
        assert_eq!(out.end, RelayEnd::ClientClosed);
    }

    #[tokio::test]
    async fn broken_client_framing_is_relayed_and_not_taken_for_a_terminate() {
        // A length under 4 breaks the framing; a later `X` header cannot be trusted.
        let mut session = vec![b'Q', 0, 0, 0, 2];
        session.extend(msg(b'X', b""));
        let out = end_after(session, 4, true).await;
        assert_eq!(out.end, RelayEnd::UpstreamClosed);
    }

    #[tokio::test]
    async fn bad_upstream_header_ends_relay() {
        let (_client_far, mut client) = duplex(1024);
        let (mut upstream_far, mut upstream) = duplex(1024);
        upstream_far.write_all(&[b'D', 0, 0, 0, 1]).await.unwrap();
        let out = relay(
            &mut client,
            &mut upstream,
            BytesMut::new(),
            BytesMut::new(),
            &RelayOptions::default(),
            &StopSignal::default(),
        )
        .await;
        assert_eq!(out.end, RelayEnd::UpstreamProtocol);
    }
}
