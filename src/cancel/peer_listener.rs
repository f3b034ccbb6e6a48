//! The link between replicas, receiving side: `[peering] address`.
//!
//! Only another replica may send a cancel here: the peer is checked against
//! `[peering] allow` before a byte is read, then must complete TLS 1.3 with
//! ALPN `pgwarden-peer` and a certificate from the peer CA (rustls refuses
//! the handshake otherwise). Such a cancel is not charged to a budget — its
//! first replica charged the client's — so this listener must never take one
//! from anyone else, and never forward one again. At most
//! [`PEER_CONNECTIONS`] are served at once, each within
//! [`super::peer::PEER_TIMEOUT`]; it runs until the process stops, through
//! the shutdown drain, so the sessions still draining can be cancelled.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::CANCELS;
use super::peer::{PEER_TIMEOUT, answer};
use crate::listener::allowed;
use crate::metrics::Label;
use crate::protocol::startup::{StartupPacket, read_packet};
use crate::state::{Snapshot, State};
use crate::tls::mtls::ALPN_PEER;

/// Forwarded cancels served at once; more are closed unread.
pub(crate) const PEER_CONNECTIONS: usize = 64;

/// Why a peer connection carried no cancel.
#[derive(Debug, thiserror::Error)]
enum PeerRefusal {
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("the peer did not negotiate ALPN pgwarden-peer")]
    Alpn,
    #[error("not a CancelRequest")]
    NotCancel,
    #[error("timed out")]
    Timeout,
    #[error("writing the answer: {0}")]
    Write(std::io::Error),
}

/// Accepts forwarded cancels until the task is aborted.
pub(crate) async fn serve(state: Arc<State>, listener: TcpListener) {
    let slots = Arc::new(Semaphore::new(PEER_CONNECTIONS));
    loop {
        let (tcp, addr) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "peer listener: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let snapshot = state.snapshot();
        let admitted = snapshot
            .peering
            .as_ref()
            .is_some_and(|p| allowed(&p.allow, addr.ip()));
        if !admitted {
            refused(&state, addr, "address not in [peering] allow");
            continue;
        }
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused(&state, addr, "too many peer connections");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let handled = tokio::time::timeout(PEER_TIMEOUT, handle(&state, &snapshot, tcp)).await;
            drop(slot);
            match handled.unwrap_or(Err(PeerRefusal::Timeout)) {
                Ok(()) => {}
                Err(e) => refused(&state, addr, &e.to_string()),
            }
        });
    }
}

async fn handle(state: &State, snapshot: &Snapshot, tcp: TcpStream) -> Result<(), PeerRefusal> {
    let Some(peering) = snapshot.peering.as_ref() else {
        return Ok(());
    };
    let _ = tcp.set_nodelay(true);
    let mut tls = peering
        .acceptor
        .accept(tcp)
        .await
        .map_err(PeerRefusal::Tls)?;
    if tls.get_ref().1.alpn_protocol() != Some(ALPN_PEER) {
        return Err(PeerRefusal::Alpn);
    }
    let Ok(StartupPacket::Cancel(request)) = read_packet(&mut tls).await else {
        return Err(PeerRefusal::NotCancel);
    };
    let outcome = state
        .cancel
        .cancel_forwarded(request.pid, &request.key)
        .await;
    CANCELS.increment(outcome);
    tracing::info!(
        event = "cancel_request",
        pid = request.pid,
        via = "peer",
        outcome = outcome.as_str()
    );
    tls.write_all(&[answer(outcome)])
        .await
        .map_err(PeerRefusal::Write)?;
    tls.flush().await.map_err(PeerRefusal::Write)?;
    let _ = tls.shutdown().await;
    Ok(())
}

/// Logs a refused peer connection, at a bounded rate.
fn refused(state: &State, addr: SocketAddr, detail: &str) {
    if let Some(suppressed) = state.reject_log.admit() {
        tracing::warn!(
            event = "peer_connection_refused",
            peer_addr = %addr,
            detail,
            suppressed_before = suppressed
        );
    }
}
