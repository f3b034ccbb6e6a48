//! The accept loop: allowlist first, then a connection slot, then a session task.
//!
//! A peer outside `[listen] allow` is closed before pgwarden reads a single
//! byte from it. The permit for `max_connections` is taken here and moved into
//! the session; a connection over the limit still gets a task, so that it can
//! be told 53300 (or deliver a cancel request), within a small bound.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::TcpListener;

use crate::metrics;
use crate::session::RejectReason;
use crate::state::{Snapshot, State};

/// Whether `peer` may talk to pgwarden at all.
pub fn allowed(allow: &[IpNet], peer: IpAddr) -> bool {
    // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
    let peer = peer.to_canonical();
    allow.iter().any(|net| net.contains(&peer))
}

/// Accepts connections until shutdown asks to stop.
pub async fn serve(state: Arc<State>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = state.shutdown.stop_accepting.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The configuration this connection is served under, to its end.
        let snapshot = state.snapshot();
        if !allowed(&snapshot.config.listen.allow, peer.ip()) {
            drop(tcp);
            crate::session::reject(
                &state,
                RejectReason::IpNotAllowed,
                peer,
                "address not in [listen] allow",
            );
            continue;
        }
        metrics::CONNECTIONS_ACCEPTED.increment();
        spawn_session(&state, snapshot, tcp, peer);
    }
}

fn spawn_session(
    state: &Arc<State>,
    snapshot: Arc<Snapshot>,
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let permit = state.permits.clone().try_acquire_owned().ok();
    if permit.is_none() {
        // Over the limit: keep a bounded number of such connections to answer.
        let Ok(slot) = state.rejection_slots.clone().try_acquire_owned() else {
            drop(tcp);
            crate::session::reject(
                state,
                RejectReason::TooManyConnections,
                peer,
                "max_connections reached; closed without answer",
            );
            return;
        };
        let state2 = state.clone();
        state.sessions.spawn(async move {
            crate::session::run(state2, snapshot, tcp, peer, None).await;
            drop(slot);
        });
        return;
    }
    state.sessions.spawn(crate::session::run(
        state.clone(),
        snapshot,
        tcp,
        peer,
        permit,
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowlist_matches_v4_v6_and_mapped_addresses() {
        let allow: Vec<IpNet> = vec!["10.0.5.0/24".parse().unwrap(), "::1/128".parse().unwrap()];
        assert!(allowed(&allow, "10.0.5.7".parse().unwrap()));
        assert!(allowed(&allow, "::ffff:10.0.5.7".parse().unwrap()));
        assert!(allowed(&allow, "::1".parse().unwrap()));
        assert!(!allowed(&allow, "10.0.6.1".parse().unwrap()));
        assert!(!allowed(&allow, "127.0.0.1".parse().unwrap()));
        assert!(!allowed(&[], "10.0.5.7".parse().unwrap()));
    }
}
