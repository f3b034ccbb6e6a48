//! A TCP forwarder standing for a load balancer: each connection it accepts
//! goes to the next backend in turn (round robin, as a Kubernetes Service or
//! a network load balancer spreads them), optionally from a local address of
//! its own and behind a PROXY v2 header naming the real client, as HAProxy
//! with `send-proxy-v2` or an AWS NLB with proxy protocol v2 would.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// A PROXY v2 `PROXY` header (TCP over IPv4 or IPv6) for `client` → `server`.
pub fn proxy_v2(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21);
    let mut addresses = Vec::new();
    match (client, server) {
        (SocketAddr::V4(c), SocketAddr::V4(s)) => {
            h.push(0x11);
            addresses.extend_from_slice(&c.ip().octets());
            addresses.extend_from_slice(&s.ip().octets());
        }
        (c, s) => {
            h.push(0x21);
            let v6 = |a: SocketAddr| match a {
                SocketAddr::V4(v4) => v4.ip().to_ipv6_mapped().octets(),
                SocketAddr::V6(v6) => v6.ip().octets(),
            };
            addresses.extend_from_slice(&v6(c));
            addresses.extend_from_slice(&v6(s));
        }
    }
    addresses.extend_from_slice(&client.port().to_be_bytes());
    addresses.extend_from_slice(&server.port().to_be_bytes());
    h.extend_from_slice(&(addresses.len() as u16).to_be_bytes());
    h.extend_from_slice(&addresses);
    h
}

/// A running forwarder; stops when dropped.
pub struct Forwarder {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How the forwarder reaches its backends.
#[derive(Debug, Clone, Default)]
pub struct Forwarding {
    /// Connect to backends from this local address (`None`: any).
    pub from: Option<&'static str>,
    /// Send a PROXY v2 header naming the client first.
    pub proxy_v2: bool,
}

impl Forwarder {
    /// Listens on 127.0.0.1 and forwards each connection to the next of `backends`.
    pub async fn start(backends: Vec<SocketAddr>, how: Forwarding) -> Forwarder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let next = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            while let Ok((client, client_addr)) = listener.accept().await {
                let i = next.fetch_add(1, Ordering::Relaxed) % backends.len();
                let backend = backends[i];
                let how = how.clone();
                tokio::spawn(async move {
                    let _ = forward(client, client_addr, backend, &how).await;
                });
            }
        });
        Forwarder { addr, task }
    }
}

async fn forward(
    mut client: TcpStream,
    client_addr: SocketAddr,
    backend: SocketAddr,
    how: &Forwarding,
) -> std::io::Result<()> {
    let socket = TcpSocket::new_v4()?;
    if let Some(from) = how.from {
        socket.bind(SocketAddr::new(from.parse().unwrap(), 0))?;
    }
    let mut server = socket.connect(backend).await?;
    if how.proxy_v2 {
        server.write_all(&proxy_v2(client_addr, backend)).await?;
    }
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}
