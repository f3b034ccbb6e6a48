//! Helpers shared by pgwarden's fuzz targets: a runtime to drive pgwarden's
//! async readers, and an in-memory stream that hands out scripted bytes in
//! chosen chunk sizes and keeps what the code under test writes.
//!
//! Nothing here may hide a failure of the code under test: a future that does
//! not finish on a stream that is always ready is itself reported as a bug.
#![forbid(unsafe_code)]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Runs `fut` to completion on a current-thread runtime made once per thread
/// (with time, for readers that take a deadline).
pub fn block_on<F: Future>(fut: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime");
    }
    RT.with(|rt| rt.block_on(fut))
}

/// Where the next piece of a [`ScriptedStream`]'s input comes from.
pub trait Script {
    /// The bytes of piece `index`, given everything written to the stream so
    /// far; `None` when the peer has nothing more to say (end of stream).
    fn piece(&mut self, index: usize, written: &[u8]) -> Option<Vec<u8>>;
}

/// Pieces fixed in advance.
impl Script for Vec<Vec<u8>> {
    fn piece(&mut self, index: usize, _written: &[u8]) -> Option<Vec<u8>> {
        self.get(index).cloned()
    }
}

/// An in-memory duplex: reads return the script's pieces, at most `chunk`
/// bytes at a time (the last chunk of a piece may be shorter), then end of
/// stream; writes are kept in [`ScriptedStream::written`]. A piece is asked
/// for only once the previous one has been read in full, so it can answer
/// what was written before it (a nonce, say).
pub struct ScriptedStream<S> {
    script: S,
    next_piece: usize,
    current: Vec<u8>,
    pos: usize,
    chunk: usize,
    pub written: Vec<u8>,
    /// How many bytes the code under test has read.
    pub read_total: usize,
}

impl<S: Script> ScriptedStream<S> {
    pub fn new(script: S, chunk: usize) -> Self {
        Self {
            script,
            next_piece: 0,
            current: Vec::new(),
            pos: 0,
            chunk: chunk.max(1),
            written: Vec::new(),
            read_total: 0,
        }
    }

    /// The script, to ask it what it did.
    pub fn script_ref(&self) -> &S {
        &self.script
    }
}

impl<S: Script + Unpin> AsyncRead for ScriptedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pos == this.current.len() {
            match this.script.piece(this.next_piece, &this.written) {
                Some(piece) => {
                    this.next_piece += 1;
                    this.current = piece;
                    this.pos = 0;
                }
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this
            .chunk
            .min(this.current.len() - this.pos)
            .min(buf.remaining());
        buf.put_slice(&this.current[this.pos..this.pos + n]);
        this.pos += n;
        this.read_total += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: Unpin> AsyncWrite for ScriptedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().written.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The backend messages in `bytes`, as (tag, body); panics on a malformed
/// frame, since pgwarden wrote them.
pub fn backend_messages(mut bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 5, "pgwarden wrote a torn message header");
        let len = i32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
        assert!(len >= 4, "pgwarden wrote a message length of {len}");
        let total = 1 + len as usize;
        assert!(bytes.len() >= total, "pgwarden wrote a torn message");
        out.push((bytes[0], bytes[5..total].to_vec()));
        bytes = &bytes[total..];
    }
    out
}
