//! Typed messages after the startup packet: `tag:u8, len:i32, body`.
//!
//! [`FramedStream`] reads whole frames from a stream through a buffer it owns and
//! hands the unread remainder back when pgwarden switches to relaying, so no byte
//! is ever lost or reordered. [`FrameTracker`] follows message boundaries in a
//! relayed byte stream from headers alone (type + length), never decoding a body:
//! on the server→client stream the relay learns when the backend is idle between
//! transactions, on the client→server stream whether the client said Terminate.

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("invalid message length {len} for message type {tag:?}")]
    InvalidLength { tag: char, len: i64 },
    #[error("connection closed")]
    Closed,
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// One complete message: its type byte and the raw frame (header included).
#[derive(Clone)]
pub struct Frame {
    pub tag: u8,
    raw: Bytes,
}

impl Frame {
    /// The message body, after the 5-byte header.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
    /// The whole frame as it came off the wire, for forwarding verbatim.
    pub fn raw(&self) -> &Bytes {
        &self.raw
    }
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Bodies may carry SCRAM proofs or passwords: show only the shape.
        f.debug_struct("Frame")
            .field("tag", &(self.tag as char))
            .field("len", &self.raw.len())
            .finish()
    }
}

/// A stream read in whole frames through an owned buffer.
pub struct FramedStream<S> {
    stream: S,
    buf: BytesMut,
}

impl<S: AsyncRead + AsyncWrite + Unpin> FramedStream<S> {
    pub fn new(stream: S) -> Self {
        Self {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
        }
    }

    /// A stream whose first bytes, already read, are in `buf` (what
    /// [`FramedStream::into_parts`] handed back).
    pub fn from_parts(stream: S, buf: BytesMut) -> Self {
        Self { stream, buf }
    }

    /// Reads the next frame, refusing a length under 4 or over `max_len`
    /// before reading its body.
    pub async fn read_frame(&mut self, max_len: usize) -> Result<Frame, FrameError> {
        loop {
            if self.buf.len() >= 5 {
                let tag = self.buf[0];
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                if len < 4 || len as usize > max_len {
                    return Err(FrameError::InvalidLength {
                        tag: tag as char,
                        len: len.into(),
                    });
                }
                let total = 1 + len as usize;
                if self.buf.len() >= total {
                    let raw = self.buf.split_to(total).freeze();
                    return Ok(Frame { tag, raw });
                }
                self.buf.reserve(total - self.buf.len());
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(FrameError::Closed);
            }
        }
    }

    /// Writes all of `bytes` and flushes.
    pub async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The stream and whatever was read but not yet framed.
    pub fn into_parts(self) -> (S, BytesMut) {
        (self.stream, self.buf)
    }
}

/// Follows message boundaries of a typed-message byte stream from headers.
///
/// Fed every chunk the relay forwards, it reports whether the stream rests at a
/// message boundary, the type of the latest message, and (for a backend→frontend
/// stream) whether that was a ReadyForQuery and with which transaction status.
/// Work per chunk is proportional to the number of message headers in it.
#[derive(Debug, Default)]
pub struct FrameTracker {
    /// Header bytes of the current message seen so far (type + length).
    header: [u8; 5],
    header_len: usize,
    /// Body bytes of the current message still to skip.
    remaining: usize,
    /// The current message is a ReadyForQuery whose status byte is still to come.
    in_ready_for_query: bool,
    /// Status of the last ReadyForQuery, if nothing has followed it yet.
    idle_status: Option<u8>,
    /// Type byte of the latest message whose header was seen in full.
    last_tag: Option<u8>,
    /// Message types to count, and how many of them were seen.
    counted: &'static [u8],
    count: u64,
    /// Message types that neither count nor matter after a counted one.
    neutral: &'static [u8],
    /// A message of another type started after the last counted one.
    uncounted_since: bool,
}

/// The backend sent a message header no PostgreSQL server would.
#[derive(Debug, thiserror::Error)]
#[error("upstream sent an invalid message length {0}")]
pub struct TrackError(pub i64);

impl FrameTracker {
    /// A tracker that also counts the messages whose type is in `tags`, and
    /// notes whether a message of a type in neither `tags` nor `neutral` has
    /// started since the last counted one.
    pub fn counting(tags: &'static [u8], neutral: &'static [u8]) -> Self {
        FrameTracker {
            counted: tags,
            neutral,
            ..FrameTracker::default()
        }
    }

    /// A backend→frontend tracker for a stream that starts right after a
    /// ReadyForQuery with `status` (the one in the welcome), counting `tags`.
    pub fn after_ready_for_query(status: u8, tags: &'static [u8]) -> Self {
        FrameTracker {
            idle_status: Some(status),
            last_tag: Some(b'Z'),
            ..FrameTracker::counting(tags, &[])
        }
    }

    /// How many messages of the counted types have started so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Whether a message that is neither counted nor neutral started after
    /// the last counted one.
    pub fn uncounted_since(&self) -> bool {
        self.uncounted_since
    }

    /// Observes `data`, the next bytes of the stream.
    pub fn observe(&mut self, mut data: &[u8]) -> Result<(), TrackError> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                if self.in_ready_for_query && self.remaining == 1 {
                    self.idle_status = Some(data[0]);
                    self.in_ready_for_query = false;
                }
                self.remaining -= n;
                data.advance(n);
                continue;
            }
            let need = 5 - self.header_len;
            let n = need.min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data.advance(n);
            if self.header_len < 5 {
                // A message has started: the stream no longer rests after a ReadyForQuery.
                self.idle_status = None;
                continue;
            }
            self.header_len = 0;
            let tag = self.header[0];
            let len = i32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]);
            if len < 4 {
                return Err(TrackError(len.into()));
            }
            self.remaining = len as usize - 4;
            self.last_tag = Some(tag);
            if self.counted.contains(&tag) {
                self.count += 1;
                self.uncounted_since = false;
            } else if !self.neutral.contains(&tag) {
                self.uncounted_since = true;
            }
            self.idle_status = None;
            self.in_ready_for_query = tag == b'Z' && self.remaining == 1;
        }
        Ok(())
    }

    /// Whether the stream rests between two messages.
    pub fn at_boundary(&self) -> bool {
        self.remaining == 0 && self.header_len == 0
    }

    /// The type byte of the latest message whose header has been seen in full
    /// (its body may still be on the way).
    pub fn last_tag(&self) -> Option<u8> {
        self.last_tag
    }

    /// `Some(status)` when the last thing seen is a complete ReadyForQuery.
    /// Status `I` means idle outside a transaction.
    pub fn ready_status(&self) -> Option<u8> {
        if self.remaining == 0 && self.header_len == 0 {
            self.idle_status
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn tracker_sees_idle_after_ready_for_query_in_any_split() {
        let mut stream = msg(b'C', b"SELECT 1\0");
        stream.extend(msg(b'Z', b"T"));
        stream.extend(msg(b'D', &[0; 300]));
        stream.extend(msg(b'Z', b"I"));
        // Every way of cutting the stream in two gives the same answer.
        for cut in 0..=stream.len() {
            let mut t = FrameTracker::default();
            t.observe(&stream[..cut]).unwrap();
            t.observe(&stream[cut..]).unwrap();
            assert_eq!(t.ready_status(), Some(b'I'), "cut at {cut}");
        }
        // Byte by byte, the status is only reported at the right boundaries.
        let mut t = FrameTracker::default();
        let mut seen = Vec::new();
        for b in &stream {
            t.observe(std::slice::from_ref(b)).unwrap();
            if let Some(s) = t.ready_status() {
                seen.push(s);
            }
        }
        assert_eq!(seen, vec![b'T', b'I']);
    }

    #[test]
    fn tracker_not_idle_once_another_message_starts() {
        let mut t = FrameTracker::default();
        t.observe(&msg(b'Z', b"I")).unwrap();
        assert_eq!(t.ready_status(), Some(b'I'));
        t.observe(b"A").unwrap();
        assert_eq!(t.ready_status(), None);
    }

    #[test]
    fn tracker_reports_the_latest_message_type_in_any_split() {
        // What a client sends last: a query, then Terminate (a header with no body).
        let mut stream = msg(b'Q', b"SELECT 1\0");
        stream.extend(msg(b'X', b""));
        for cut in 0..=stream.len() {
            let mut t = FrameTracker::default();
            t.observe(&stream[..cut]).unwrap();
            let before = t.last_tag();
            t.observe(&stream[cut..]).unwrap();
            assert_eq!(t.last_tag(), Some(b'X'), "cut at {cut}");
            assert!(t.at_boundary(), "cut at {cut}");
            // Before the whole Terminate header arrived, it was not reported.
            let expected = match cut {
                0..5 => None,
                _ if cut < stream.len() => Some(b'Q'),
                _ => Some(b'X'),
            };
            assert_eq!(before, expected, "cut at {cut}");
        }
        // A Terminate inside a message body is just body bytes.
        let mut t = FrameTracker::default();
        t.observe(&msg(b'd', b"X\0\0\0\x04")).unwrap();
        assert_eq!(t.last_tag(), Some(b'd'));
    }

    #[test]
    fn tracker_rejects_short_lengths() {
        let mut t = FrameTracker::default();
        assert!(t.observe(&[b'Z', 0, 0, 0, 3]).is_err());
    }

    #[tokio::test]
    async fn framed_stream_keeps_leftover_bytes() {
        let (mut a, b) = tokio::io::duplex(1024);
        let mut data = msg(b'R', &[0, 0, 0, 0]);
        data.extend(msg(b'Q', b"x\0"));
        a.write_all(&data).await.unwrap();
        let mut f = FramedStream::new(b);
        let frame = f.read_frame(1024).await.unwrap();
        assert_eq!(frame.tag, b'R');
        assert_eq!(frame.body(), &[0, 0, 0, 0]);
        let (_, rest) = f.into_parts();
        assert_eq!(&rest[..], &msg(b'Q', b"x\0")[..]);
    }

    #[tokio::test]
    async fn framed_stream_refuses_oversized_frames_before_reading() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[b'p', 0x7f, 0xff, 0xff, 0xff]).await.unwrap();
        let mut f = FramedStream::new(b);
        assert!(matches!(
            f.read_frame(65_535).await,
            Err(FrameError::InvalidLength { .. })
        ));
    }
}
