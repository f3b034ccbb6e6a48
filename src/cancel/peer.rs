//! The link between replicas, forwarding side: who the other replicas are,
//! and how a cancel for one of them reaches it.
//!
//! A forwarded cancel travels over TLS 1.3 with ALPN `pgwarden-peer`, both
//! ends showing a certificate from `[peering] ca_file` (the CA of the peer
//! link alone): the replica verifies the peer's name as a client verifies a
//! server, and presents its own certificate, which the peer requires. The
//! request is PostgreSQL's own CancelRequest packet; the peer answers one
//! byte saying what it did, then closes. Everything is bounded by
//! [`PEER_TIMEOUT`]. Built from the configuration, so a reload rebuilds it.

use std::collections::HashMap;
use std::io;
use std::time::Duration;

use ipnet::IpNet;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::CancelOutcome;
use crate::config::PeeringConfig;
use crate::protocol::startup::encode_cancel;
use crate::tls::TlsError;
use crate::tls::mtls::{peer_client_config, peer_server_config};

/// The most a forwarded cancel may take, connection to answer, on either side.
pub(crate) const PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// This replica among its peers.
pub(crate) struct Peering {
    /// This replica's id, in every key it issues.
    pub(crate) id: u8,
    peers: HashMap<u8, PeerTarget>,
    connector: TlsConnector,
    /// The peer listener's TLS (a peer certificate required).
    pub(crate) acceptor: TlsAcceptor,
    /// Who may connect to the peer listener, before a byte is read.
    pub(crate) allow: Vec<IpNet>,
}

/// Another replica.
pub(crate) struct PeerTarget {
    pub(crate) id: u8,
    host: String,
    port: u16,
    server_name: ServerName<'static>,
}

/// Why a cancel could not be handed to its replica.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PeerError {
    #[error("{host}:{port}: {source}")]
    Io {
        host: String,
        port: u16,
        source: io::Error,
    },
    #[error("no answer within {PEER_TIMEOUT:?}")]
    Timeout,
    #[error("unexpected answer")]
    Answer,
}

/// The byte a peer answers with: what it did with the cancel.
pub(crate) fn answer(outcome: CancelOutcome) -> u8 {
    match outcome {
        CancelOutcome::Forwarded => b'F',
        CancelOutcome::UnknownKey => b'U',
        _ => b'X',
    }
}

impl Peering {
    pub(crate) fn build(c: &PeeringConfig) -> Result<Peering, TlsError> {
        let client = peer_client_config(&c.tls.cert_file, &c.tls.key_file, &c.ca_file)?;
        let server = peer_server_config(&c.tls.cert_file, &c.tls.key_file, &c.ca_file)?;
        let mut peers = HashMap::new();
        for p in &c.peers {
            let server_name =
                ServerName::try_from(p.server_name.clone()).map_err(|e| TlsError::Invalid {
                    path: format!("[[peers]] id {}", p.id),
                    detail: e.to_string(),
                })?;
            peers.insert(
                p.id,
                PeerTarget {
                    id: p.id,
                    host: p.host.clone(),
                    port: p.port,
                    server_name,
                },
            );
        }
        Ok(Peering {
            id: c.id,
            peers,
            connector: TlsConnector::from(client),
            acceptor: TlsAcceptor::from(server),
            allow: c.allow.clone(),
        })
    }

    /// The other replica `key` names, if it is a configured peer.
    pub(crate) fn owner(&self, key: &[u8]) -> Option<&PeerTarget> {
        let id = super::key::replica(key)?;
        if id == self.id {
            return None;
        }
        self.peers.get(&id)
    }

    /// Hands the cancel to `peer`; `Ok` once it answered.
    pub(crate) async fn forward(
        &self,
        peer: &PeerTarget,
        pid: i32,
        key: &[u8],
    ) -> Result<(), PeerError> {
        match tokio::time::timeout(PEER_TIMEOUT, self.exchange(peer, pid, key)).await {
            Err(_) => Err(PeerError::Timeout),
            Ok(Err(source)) => Err(PeerError::Io {
                host: peer.host.clone(),
                port: peer.port,
                source,
            }),
            Ok(Ok(b'F' | b'U' | b'X')) => Ok(()),
            Ok(Ok(_)) => Err(PeerError::Answer),
        }
    }

    async fn exchange(&self, peer: &PeerTarget, pid: i32, key: &[u8]) -> io::Result<u8> {
        let tcp = TcpStream::connect((peer.host.as_str(), peer.port)).await?;
        tcp.set_nodelay(true)?;
        let mut tls = self
            .connector
            .connect(peer.server_name.clone(), tcp)
            .await?;
        tls.write_all(&encode_cancel(pid, key)).await?;
        tls.flush().await?;
        let mut answer = [0u8; 1];
        tls.read_exact(&mut answer).await?;
        let _ = tls.shutdown().await;
        tracing::debug!(peer_id = peer.id, answer = %char::from(answer[0]), "peer answered a forwarded cancel");
        Ok(answer[0])
    }
}
