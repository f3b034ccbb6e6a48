//! The admin listener's bounds: who may connect, how many at once, and how
//! long one connection may last. The allowlist and the cap over loopback TCP;
//! the timeouts on an in-memory pipe with tokio's paused clock.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::*;

/// A generous bound for anything that happens over real sockets.
const GENEROUS: Duration = Duration::from_secs(60);

fn config(allow: &[&str], max_connections: usize) -> AdminConfig {
    AdminConfig {
        address: "127.0.0.1:0".parse().unwrap(),
        allow: allow.iter().map(|a| a.parse().unwrap()).collect(),
        max_connections,
        header_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(15),
    }
}

fn ok(_: Request<Incoming>) -> Response<Full<Bytes>> {
    Response::new(Full::new(Bytes::from_static(b"ok")))
}

/// A listener on 127.0.0.1 served with `config` and [`ok`].
async fn listening(config: AdminConfig) -> SocketAddr {
    let listener = TcpListener::bind(config.address).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(listener, config, ok));
    addr
}

/// Everything the server sends on `tcp` until it closes.
async fn answer(tcp: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(GENEROUS, tcp.read_to_end(&mut out)).await;
    read.expect("the server closes the connection").ok();
    out
}

async fn ask(addr: SocketAddr) -> Vec<u8> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let _ = tcp
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await;
    answer(&mut tcp).await
}

#[tokio::test]
async fn a_peer_outside_allow_is_closed_without_an_answer() {
    let outside = listening(config(&["10.0.0.0/8", "fd00::/8"], 4)).await;
    assert_eq!(
        ask(outside).await,
        b"",
        "an address outside allow was answered"
    );
    // Control: the same request from an allowed address is answered.
    let inside = listening(config(&["127.0.0.0/8"], 4)).await;
    let answered = ask(inside).await;
    assert!(answered.starts_with(b"HTTP/1.1 200"), "{answered:?}");
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_unanswered() {
    let addr = listening(config(&["127.0.0.0/8"], 1)).await;
    // The one slot, held by a client that has not finished its headers.
    let mut holder = TcpStream::connect(addr).await.unwrap();
    holder
        .write_all(b"GET /healthz HTTP/1.1\r\n")
        .await
        .unwrap();
    assert_eq!(
        ask(addr).await,
        b"",
        "a connection over the cap was answered"
    );
    // Once the holder finishes, its slot serves the next client.
    holder.write_all(b"host: x\r\n\r\n").await.unwrap();
    assert!(answer(&mut holder).await.starts_with(b"HTTP/1.1 200"));
    let deadline = Instant::now() + GENEROUS;
    loop {
        // The slot is free once the holder's connection has ended on the server's side too.
        if ask(addr).await.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the slot never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A client that never finishes its headers is cut at `header_timeout`.
#[tokio::test(start_paused = true)]
async fn a_client_slow_with_its_headers_is_cut() {
    let config = config(&["127.0.0.0/8"], 1);
    let (mut client, server) = tokio::io::duplex(4096);
    client
        .write_all(b"GET /metrics HTTP/1.1\r\nhost")
        .await
        .unwrap();
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(3600), one_request(server, &config, ok))
        .await
        .expect("the connection is cut");
    let took = started.elapsed();
    assert!(
        took >= config.header_timeout && took < config.header_timeout + Duration::from_secs(1),
        "cut after {took:?}"
    );
}

/// A client that asks and never reads the answer is cut at `request_timeout`.
#[tokio::test(start_paused = true)]
async fn a_client_that_does_not_read_is_cut() {
    let config = config(&["127.0.0.0/8"], 1);
    let (mut client, server) = tokio::io::duplex(64);
    let big = |_: Request<Incoming>| Response::new(Full::new(Bytes::from(vec![b'x'; 1 << 20])));
    let started = Instant::now();
    let connection = tokio::spawn(one_request(server, &config, big));
    client
        .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(3600), connection)
        .await
        .expect("the connection is cut")
        .unwrap();
    assert!(started.elapsed() >= config.request_timeout);
    drop(client);
}
