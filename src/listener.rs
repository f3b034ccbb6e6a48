//! The accept loop and what happens before a session: a handshake slot, the
//! allowlist, the PROXY header, the per-address handshake cap.
//!
//! ```text
//! handshake slot (else wait: the backlog holds the connection)
//!   ─▶ accept ─▶ TCP peer in allow ∪ proxy_protocol.trusted? (before any byte)
//!   ─▶ trusted: PROXY header (exact lengths, handshake deadline)
//!   ─▶ the client's address (the header's, else the TCP peer's) in allow?
//!   ─▶ under max_handshakes_per_address? ─▶ session
//! ```
//! Refusals here are closed without an answer (a load balancer or a flood
//! cannot use one), counted and logged at a bounded rate. The session slot
//! (`max_connections`) is taken later, once the client authenticated.

mod budget;
pub(crate) mod proxy;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

pub(crate) use budget::{HandshakeBudget, HandshakeSlot};

use crate::metrics;
use crate::session::RejectReason;
use crate::state::{Snapshot, State};
use proxy::{Proxied, Start};

/// Whether `peer` is in `allow`.
pub fn allowed(allow: &[IpNet], peer: IpAddr) -> bool {
    // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
    let peer = peer.to_canonical();
    allow.iter().any(|net| net.contains(&peer))
}

/// A connection let through to its session.
pub(crate) struct Admitted {
    /// The client: the PROXY header's source, or the TCP peer.
    pub peer: SocketAddr,
    /// The load balancer that sent a PROXY header, if one did.
    pub proxied_by: Option<SocketAddr>,
    /// When it was accepted: the handshake deadline counts from here.
    pub accepted: Instant,
    /// The first byte of the PostgreSQL stream, when reading for a PROXY
    /// header took it.
    pub first: Option<u8>,
    /// Its place in the handshake budget, until it authenticates.
    pub slot: HandshakeSlot,
    /// The configuration it is served under, to its end.
    pub snapshot: Arc<Snapshot>,
}

/// Accepts connections until shutdown asks to stop.
pub async fn serve(state: Arc<State>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            a = accept(&state, &listener) => a,
            _ = state.shutdown.stop_accepting.cancelled() => break,
        };
        let (tcp, peer, slot) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let snapshot = state.snapshot();
        if !may_connect(&snapshot, peer.ip()) {
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
        let s = state.clone();
        state.sessions.spawn(async move {
            // Boxed, like the handshake: done before the session begins.
            let admitted = Box::pin(admit(&s, tcp, peer, slot, snapshot)).await;
            if let Some((tcp, admitted)) = admitted {
                crate::session::run(s, tcp, admitted).await;
            }
        });
    }
}

/// A handshake slot, then the next connection.
async fn accept(
    state: &State,
    listener: &TcpListener,
) -> std::io::Result<(TcpStream, SocketAddr, HandshakeSlot)> {
    let slot = state.handshakes.reserve().await;
    let (tcp, peer) = listener.accept().await?;
    Ok((tcp, peer, slot))
}

/// Before any byte is read: the TCP peer is allowed, or a load balancer
/// trusted to say who its client is.
fn may_connect(snapshot: &Snapshot, peer: IpAddr) -> bool {
    let listen = &snapshot.config.listen;
    allowed(&listen.allow, peer)
        || listen
            .proxy_protocol
            .as_ref()
            .is_some_and(|p| allowed(&p.trusted, peer))
}

/// The PROXY header from a trusted peer, the client's address against the
/// allowlist, and the client's handshake cap. `None`: refused and closed.
async fn admit(
    state: &State,
    mut tcp: TcpStream,
    tcp_peer: SocketAddr,
    slot: HandshakeSlot,
    snapshot: Arc<Snapshot>,
) -> Option<(TcpStream, Admitted)> {
    let accepted = Instant::now();
    let listen = &snapshot.config.listen;
    let deadline = accepted + listen.handshake_timeout;
    let (mut peer, mut proxied_by, mut first) = (tcp_peer, None, None);
    if let Some(pp) = listen.proxy_protocol.as_ref()
        && allowed(&pp.trusted, tcp_peer.ip())
    {
        match proxy::read_trusted(&mut tcp, pp.required, deadline).await {
            Err(e) => {
                let detail = e.to_string();
                crate::session::reject(state, RejectReason::ProxyProtocol, tcp_peer, &detail);
                return None;
            }
            Ok(Start::Stream(byte)) => first = Some(byte),
            Ok(Start::Header(Proxied::Balancer)) => proxied_by = Some(tcp_peer),
            Ok(Start::Header(Proxied::Client(client))) => {
                peer = client;
                proxied_by = Some(tcp_peer);
            }
        }
    }
    if !allowed(&listen.allow, peer.ip()) {
        let detail = match proxied_by {
            Some(_) if peer != tcp_peer => {
                "client address (from the PROXY header) not in [listen] allow"
            }
            _ => "address not in [listen] allow (a trusted load balancer's own connection)",
        };
        crate::session::reject(state, RejectReason::IpNotAllowed, peer, detail);
        return None;
    }
    let cap = listen.max_handshakes_per_address;
    let Ok(slot) = state.handshakes.count(slot, peer.ip(), cap) else {
        crate::session::reject(
            state,
            RejectReason::TooManyHandshakes,
            peer,
            "max_handshakes_per_address handshakes in progress from this address; closed unread",
        );
        return None;
    };
    let admitted = Admitted {
        peer,
        proxied_by,
        accepted,
        first,
        slot,
        snapshot,
    };
    Some((tcp, admitted))
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
