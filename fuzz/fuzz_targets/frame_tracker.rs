//! The relay's header-only message tracker (`FrameTracker::observe`) and the
//! framed reader (`FramedStream::read_frame`), on the same byte stream cut
//! into arbitrary chunks, both checked against a reference model written here
//! from the protocol's definition (a message is a type byte, a big-endian i32
//! length that counts itself, and length − 4 body bytes).
//!
//! Input: [tracker kind, max frame length choice, chunk pattern length k,
//! k chunk sizes, stream...].
//!
//! Checked after every chunk: `at_boundary`, `last_tag`, `ready_status`,
//! `count` and `uncounted_since` equal the model's at that offset; an error
//! comes exactly in the chunk that completes a header with a length under 4,
//! and never otherwise. For `read_frame`: the frames, the error (invalid length
//! or closed) and the bytes handed back by `into_parts` equal the model's, so
//! no byte is lost, duplicated or reordered.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden::protocol::frame::{FrameError, FrameTracker, FramedStream};
use pgwarden_fuzz::{ScriptedStream, block_on};

/// Counted and neutral message types (what the relay uses them for: counting
/// ReadyForQuery on the server→client stream; the type set does not matter to
/// the tracker's logic, so the model reads the same sets).
const COUNTED: &[u8] = b"ZC";
const NEUTRAL: &[u8] = b"NS";
const MAX_LENS: [usize; 6] = [4, 5, 16, 300, 65_535, 1 << 20];

/// One message header in the stream, as the model reads it.
struct Header {
    start: usize,
    tag: u8,
    len: i32,
}

fuzz_target!(|data: &[u8]| {
    let [kind, max_sel, k, rest @ ..] = data else {
        return;
    };
    let k = usize::from(*k % 8) + 1;
    if rest.len() < k {
        return;
    }
    let (pattern, stream) = rest.split_at(k);
    let chunks = chunk_bounds(pattern, stream.len());
    let headers = model_headers(stream);

    let (mut tracker, initial) = match kind % 3 {
        0 => (FrameTracker::default(), None),
        1 => (FrameTracker::counting(COUNTED, NEUTRAL), None),
        _ => (
            FrameTracker::after_ready_for_query(b'I', COUNTED),
            Some(b'I'),
        ),
    };
    let neutral: &[u8] = if kind % 3 == 1 { NEUTRAL } else { &[] };
    let counted: &[u8] = if kind % 3 == 0 { &[] } else { COUNTED };
    check_tracker(
        &mut tracker,
        stream,
        &chunks,
        &headers,
        initial,
        counted,
        neutral,
    );

    let max_len = MAX_LENS[usize::from(*max_sel) % MAX_LENS.len()];
    check_framed(stream, &chunks, max_len);
});

/// Chunk boundaries: sizes cycle through `pattern` (0 is an empty chunk).
fn chunk_bounds(pattern: &[u8], len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < len {
        let size = usize::from(pattern[i % pattern.len()] % 64);
        let end = (at + size).min(len);
        out.push((at, end));
        at = end;
        i += 1;
        // A pattern of zeros only would never get anywhere.
        if i % pattern.len() == 0 && pattern.iter().all(|&p| p % 64 == 0) {
            out.push((at, len));
            at = len;
        }
    }
    out
}

/// The message headers that begin in `stream`, complete or not, up to and
/// including the first with an invalid length.
fn model_headers(stream: &[u8]) -> Vec<Header> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < stream.len() {
        let tag = stream[at];
        let Some(len) = stream.get(at + 1..at + 5) else {
            out.push(Header {
                start: at,
                tag,
                len: -1,
            });
            return out;
        };
        let len = i32::from_be_bytes(len.try_into().unwrap());
        out.push(Header {
            start: at,
            tag,
            len,
        });
        if len < 4 {
            return out;
        }
        at += 1 + len as usize;
    }
    out
}

/// What the tracker must report after `offset` bytes.
#[derive(Debug, PartialEq)]
struct Expected {
    at_boundary: bool,
    last_tag: Option<u8>,
    ready_status: Option<u8>,
    count: u64,
    uncounted_since: bool,
}

/// The model's walk through the stream: the headers completed so far, in order.
struct Model<'a> {
    stream: &'a [u8],
    headers: &'a [Header],
    /// Headers before this index are complete at the current offset.
    next: usize,
    initial: Option<u8>,
    counted: &'a [u8],
    neutral: &'a [u8],
    last_tag: Option<u8>,
    count: u64,
    uncounted_since: bool,
}

impl Model<'_> {
    /// What the tracker must report after `offset` bytes (offsets only grow).
    fn at(&mut self, offset: usize) -> Expected {
        while let Some(h) = self
            .headers
            .get(self.next)
            .filter(|h| h.start + 5 <= offset)
        {
            self.last_tag = Some(h.tag);
            if self.counted.contains(&h.tag) {
                self.count += 1;
                self.uncounted_since = false;
            } else if !self.neutral.contains(&h.tag) {
                self.uncounted_since = true;
            }
            self.next += 1;
        }
        // Only the latest complete header's message can end exactly here: an
        // earlier one ended where a later header began.
        let ended_here = self
            .next
            .checked_sub(1)
            .map(|i| &self.headers[i])
            .filter(|h| h.start + 1 + h.len as usize == offset);
        let (at_boundary, ready_status) = match ended_here {
            _ if offset == 0 => (true, self.initial),
            Some(h) if h.tag == b'Z' && h.len == 5 => (true, Some(self.stream[offset - 1])),
            Some(_) => (true, None),
            None => (false, None),
        };
        Expected {
            at_boundary,
            last_tag: self.last_tag,
            ready_status,
            count: self.count,
            uncounted_since: self.uncounted_since,
        }
    }
}

fn check_tracker(
    tracker: &mut FrameTracker,
    stream: &[u8],
    chunks: &[(usize, usize)],
    headers: &[Header],
    initial: Option<u8>,
    counted: &[u8],
    neutral: &[u8],
) {
    // The offset at which an invalid length becomes known, if any.
    let error_at = headers
        .last()
        .filter(|h| h.len < 4 && h.start + 5 <= stream.len())
        .map(|h| h.start + 5);
    let mut model = Model {
        stream,
        headers,
        next: 0,
        initial,
        counted,
        neutral,
        last_tag: initial.map(|_| b'Z'),
        count: 0,
        uncounted_since: false,
    };
    for &(from, to) in chunks {
        let result = tracker.observe(&stream[from..to]);
        match error_at {
            Some(e) if from < e && e <= to => {
                let err = result.expect_err("an invalid length went unnoticed");
                assert_eq!(err.0, i64::from(headers.last().unwrap().len));
                return;
            }
            _ => assert!(result.is_ok(), "error at {from}..{to} without cause"),
        }
        let seen = Expected {
            at_boundary: tracker.at_boundary(),
            last_tag: tracker.last_tag(),
            ready_status: tracker.ready_status(),
            count: tracker.count(),
            uncounted_since: tracker.uncounted_since(),
        };
        assert_eq!(seen, model.at(to), "after {to} bytes");
    }
}

/// What `read_frame` must return for each message in turn.
#[derive(Debug, PartialEq)]
enum ModelFrame {
    Frame(u8, Vec<u8>),
    InvalidLength(char, i64),
    Closed,
}

fn check_framed(stream: &[u8], chunks: &[(usize, usize)], max_len: usize) {
    let pieces: Vec<Vec<u8>> = chunks.iter().map(|&(a, b)| stream[a..b].to_vec()).collect();
    let mut framed = FramedStream::new(ScriptedStream::new(pieces, 1 << 16));
    let mut at = 0;
    loop {
        let seen = match block_on(framed.read_frame(max_len)) {
            Ok(f) => ModelFrame::Frame(f.tag, f.raw().to_vec()),
            Err(FrameError::InvalidLength { tag, len }) => ModelFrame::InvalidLength(tag, len),
            Err(FrameError::Closed) => ModelFrame::Closed,
            Err(FrameError::Io(e)) => panic!("in-memory stream failed: {e}"),
        };
        let expected = match stream.get(at + 1..at + 5) {
            None => ModelFrame::Closed,
            Some(l) => {
                let len = i32::from_be_bytes(l.try_into().unwrap());
                if len < 4 || len as usize > max_len {
                    ModelFrame::InvalidLength(stream[at] as char, len.into())
                } else if stream.len() < at + 1 + len as usize {
                    ModelFrame::Closed
                } else {
                    ModelFrame::Frame(stream[at], stream[at..at + 1 + len as usize].to_vec())
                }
            }
        };
        assert_eq!(seen, expected, "frame at {at}");
        match seen {
            ModelFrame::Frame(_, raw) => at += raw.len(),
            _ => break,
        }
    }
    // Nothing lost or reordered: what was read but not framed is handed back.
    let (s, leftover) = framed.into_parts();
    assert_eq!(&leftover[..], &stream[at..s.read_total]);
}
