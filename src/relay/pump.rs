//! One direction of the relay: read into a buffer, write everything read,
//! flush when the reader has nothing more. The buffer is borrowed from
//! [`super::buffers`] only while bytes are in flight. It never decodes what it
//! moves: the `observe` callback given to [`Pump::poll_pump`] sees each chunk.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::{RELAY_BUFFER, buffers};

/// One direction: read into the buffer, write it all out, flush when idle.
pub(super) struct Pump {
    /// Held only while bytes are in flight (see [`buffers`]).
    pub(super) buf: Option<Box<[u8]>>,
    /// `buf[pos..cap]` is read and not yet written.
    pub(super) pos: usize,
    pub(super) cap: usize,
    /// The reader reached EOF.
    eof: bool,
    /// Bytes written but not yet flushed.
    unflushed: bool,
    pub(super) bytes: u64,
    /// The metric this direction's bytes are added to as they are read, so it
    /// moves while a session lives (Keycloak's pooled sessions last hours).
    counter: ::metrics::Counter,
}

pub(super) enum PumpState {
    /// Everything read has been written and flushed; waiting on the reader.
    Idle,
    /// The reader reached EOF and everything was written.
    Done,
}

impl Pump {
    pub(super) fn new(leftover: BytesMut, counter: ::metrics::Counter) -> Self {
        let buf = (!leftover.is_empty()).then(|| {
            let mut buf = buffers::take(leftover.len());
            buf[..leftover.len()].copy_from_slice(&leftover);
            buf
        });
        counter.increment(leftover.len() as u64);
        Pump {
            buf,
            pos: 0,
            cap: leftover.len(),
            eof: false,
            unflushed: false,
            bytes: leftover.len() as u64,
            counter,
        }
    }

    /// Moves bytes until the reader has nothing more (`Ready(Idle)` means it
    /// returned Pending with everything flushed) or reaches EOF (`Ready(Done)`).
    /// `observe` sees every chunk read, before it is written.
    pub(super) fn poll_pump<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        mut reader: Pin<&mut R>,
        mut writer: Pin<&mut W>,
        mut observe: impl FnMut(&[u8]) -> bool,
    ) -> Poll<Result<PumpState, PumpError>>
    where
        R: AsyncRead + ?Sized,
        W: AsyncWrite + ?Sized,
    {
        loop {
            while self.pos < self.cap {
                let n = ready!(writer.as_mut().poll_write(cx, &self.pending()[self.pos..]))
                    .map_err(PumpError::Write)?;
                if n == 0 {
                    return Poll::Ready(Err(PumpError::Write(io::ErrorKind::WriteZero.into())));
                }
                self.pos += n;
                self.unflushed = true;
            }
            if self.eof {
                if self.unflushed {
                    ready!(writer.as_mut().poll_flush(cx)).map_err(PumpError::Write)?;
                    self.unflushed = false;
                }
                return Poll::Ready(Ok(PumpState::Done));
            }
            let buf = self.buf.get_or_insert_with(|| buffers::take(RELAY_BUFFER));
            let mut rb = ReadBuf::new(buf);
            match reader.as_mut().poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    self.pos = 0;
                    self.cap = n;
                    if n == 0 {
                        self.eof = true;
                        self.release();
                    } else {
                        self.bytes += n as u64;
                        self.counter.increment(n as u64);
                        if !observe(&buf[..n]) {
                            return Poll::Ready(Err(PumpError::Protocol));
                        }
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(PumpError::Read(e))),
                Poll::Pending => {
                    // Everything read is written: the buffer holds nothing
                    // more, and an idle direction holds no buffer.
                    self.release();
                    if self.unflushed {
                        ready!(writer.as_mut().poll_flush(cx)).map_err(PumpError::Write)?;
                        self.unflushed = false;
                    }
                    return Poll::Ready(Ok(PumpState::Idle));
                }
            }
        }
    }
}

impl Pump {
    /// What was read and not yet written, from the start of the buffer.
    pub(super) fn pending(&self) -> &[u8] {
        self.buf.as_deref().map_or(&[], |b| &b[..self.cap])
    }

    /// Gives the buffer back once everything in it is written.
    fn release(&mut self) {
        debug_assert_eq!(self.pos, self.cap, "released with bytes in flight");
        self.pos = 0;
        self.cap = 0;
        if let Some(buf) = self.buf.take() {
            buffers::give(buf);
        }
    }
}

impl Drop for Pump {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            buffers::give(buf);
        }
    }
}

pub(super) enum PumpError {
    Read(io::Error),
    Write(io::Error),
    Protocol,
}
