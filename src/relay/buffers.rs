//! The relay's buffers, lent to a direction only while its bytes are in flight.
//!
//! A direction needs a buffer from the moment it reads until everything it
//! read is written. An idle session — most of Keycloak's pooled connections,
//! most of the time — has nothing in flight, so it holds no buffer: each
//! direction takes one before it reads and gives it back as soon as its reader
//! has nothing more (the read that returned `Pending` wrote nothing into it).
//! Buffers given back wait here for the next reader, up to [`KEEP`] of them,
//! so a busy process reuses the same few buffers instead of allocating.
//!
//! A buffer holds what the last session that used it relayed until the next
//! read overwrites it; only the bytes a read just filled are ever written out,
//! so nothing of one session reaches another. Buffers are never shrunk or
//! resized here: the pool holds only [`RELAY_BUFFER`]-sized ones.

use std::sync::{Mutex, MutexGuard};

use super::RELAY_BUFFER;

/// How many free buffers the process keeps for reuse (4 MiB at most); more
/// than that many given back at once are freed. Under load, about one buffer
/// per runtime worker is in use at any moment: a pump holds one for the time
/// of a read and its write.
pub const KEEP: usize = 64;

/// Free buffers, all of `RELAY_BUFFER` bytes, initialized.
static FREE: Mutex<Vec<Box<[u8]>>> = Mutex::new(Vec::new());

fn free() -> MutexGuard<'static, Vec<Box<[u8]>>> {
    FREE.lock().unwrap_or_else(|p| p.into_inner())
}

/// A buffer of at least `len` bytes (at least `RELAY_BUFFER`).
pub fn take(len: usize) -> Box<[u8]> {
    if len <= RELAY_BUFFER
        && let Some(buf) = free().pop()
    {
        return buf;
    }
    vec![0u8; len.max(RELAY_BUFFER)].into_boxed_slice()
}

/// Gives a buffer back for reuse (or frees it, when enough are waiting or it
/// is not of the pooled size).
pub fn give(buf: Box<[u8]>) {
    if buf.len() != RELAY_BUFFER {
        return;
    }
    let mut free = free();
    if free.len() < KEEP {
        free.push(buf);
    }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;
    use std::pin::Pin;
    use std::task::Poll;

    use bytes::BytesMut;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, duplex};

    use super::super::pump::{Pump, PumpState};

    #[tokio::test]
    async fn a_direction_holds_a_buffer_only_while_bytes_are_in_flight() {
        let (mut source, mut reader) = duplex(1 << 16);
        // A writer that takes 16 bytes before the far end reads.
        let (mut writer, mut sink) = duplex(16);
        let mut pump = Pump::new(BytesMut::from(&b"left"[..]), ::metrics::Counter::noop());
        assert!(pump.buf.is_some(), "the leftover is in flight");
        source.write_all(&[7u8; 100]).await.unwrap();
        let polled = poll_fn(|cx| {
            Poll::Ready(pump.poll_pump(cx, Pin::new(&mut reader), Pin::new(&mut writer), |_| true))
        })
        .await;
        assert!(polled.is_pending(), "the writer is full");
        assert!(pump.buf.is_some(), "bytes in flight keep their buffer");
        let mut got = vec![0u8; 104];
        let drain = async { sink.read_exact(&mut got).await.unwrap() };
        let pumped = poll_fn(|cx| {
            pump.poll_pump(cx, Pin::new(&mut reader), Pin::new(&mut writer), |_| true)
        });
        let (_, state) = tokio::join!(drain, pumped);
        assert!(matches!(state, Ok(PumpState::Idle)));
        assert_eq!(&got[..4], b"left");
        assert!(got[4..].iter().all(|&b| b == 7));
        assert!(pump.buf.is_none(), "an idle direction gave its buffer back");
    }
}
