//! PROXY headers as HAProxy, AWS's and Google's balancers send them, in
//! memory: each followed by the client's first PostgreSQL bytes, which must
//! still be there, untouched, once the header was read.

use std::time::Duration;

use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::protocol::startup::encode_ssl_request;

fn far() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// Sends `bytes` (then closes) and reads what a trusted peer sent first;
/// returns that and every byte left after it.
async fn read_from(bytes: &[u8], required: bool) -> (Result<Start, ProxyError>, Vec<u8>) {
    let (mut client, mut server) = tokio::io::duplex(64 * 1024);
    client.write_all(bytes).await.unwrap();
    drop(client);
    let start = read_trusted(&mut server, required, far()).await;
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).await.unwrap();
    (start, rest)
}

/// A v2 header: version/command, family/transport, then `payload`.
fn v2(command: u8, family: u8, payload: &[u8]) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.push(command);
    h.push(family);
    h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
    h.extend_from_slice(payload);
    h
}

fn v4_addresses() -> Vec<u8> {
    let mut p = vec![203, 0, 113, 7, 10, 0, 0, 5];
    p.extend_from_slice(&51234u16.to_be_bytes());
    p.extend_from_slice(&6432u16.to_be_bytes());
    p
}

fn tlv(kind: u8, value: &[u8]) -> Vec<u8> {
    let mut t = vec![kind];
    t.extend_from_slice(&(value.len() as u16).to_be_bytes());
    t.extend_from_slice(value);
    t
}

fn client(addr: &str) -> Result<Start, ProxyError> {
    Ok(Start::Header(Proxied::Client(addr.parse().unwrap())))
}

fn assert_ok(got: Result<Start, ProxyError>, want: Result<Start, ProxyError>) {
    assert_eq!(format!("{got:?}"), format!("{want:?}"));
}

#[tokio::test]
async fn v2_ipv4_gives_the_client_and_leaves_the_stream_alone() {
    let ssl = encode_ssl_request();
    let mut bytes = v2(0x21, 0x11, &v4_addresses());
    bytes.extend_from_slice(&ssl);
    let (start, rest) = read_from(&bytes, true).await;
    assert_ok(start, client("203.0.113.7:51234"));
    assert_eq!(rest, ssl);
}

#[tokio::test]
async fn v2_ipv6_with_tlvs() {
    let src: std::net::Ipv6Addr = "2001:db8::7".parse().unwrap();
    let dst: std::net::Ipv6Addr = "2001:db8::1".parse().unwrap();
    let mut payload = src.octets().to_vec();
    payload.extend_from_slice(&dst.octets());
    payload.extend_from_slice(&40000u16.to_be_bytes());
    payload.extend_from_slice(&6432u16.to_be_bytes());
    // ALPN, authority, AWS's VPC endpoint id (0xEA, a subtype byte then
    // the id), Google's PSC connection id (0xE0), and padding.
    payload.extend(tlv(0x01, b"postgresql"));
    payload.extend(tlv(0x02, b"db.example.com"));
    payload.extend(tlv(0xEA, b"\x01vpce-08d2bf15fac5001c9"));
    payload.extend(tlv(0xE0, &[0, 0, 0, 0, 0, 0, 0, 42]));
    payload.extend(tlv(0x04, &[0; 5]));
    let mut bytes = v2(0x21, 0x21, &payload);
    bytes.extend_from_slice(b"\x00\x00\x00\x08");
    let (start, rest) = read_from(&bytes, true).await;
    assert_ok(start, client("[2001:db8::7]:40000"));
    assert_eq!(rest, b"\x00\x00\x00\x08");
}

#[tokio::test]
async fn v2_local_and_unspecified_stand_for_the_balancer() {
    // HAProxy's health check: LOCAL, AF_UNSPEC, no addresses.
    let (start, rest) = read_from(&v2(0x20, 0x00, &[]), true).await;
    assert_ok(start, Ok(Start::Header(Proxied::Balancer)));
    assert!(rest.is_empty());
    // LOCAL may still carry addresses; they are ignored.
    let (start, _) = read_from(&v2(0x20, 0x11, &v4_addresses()), true).await;
    assert_ok(start, Ok(Start::Header(Proxied::Balancer)));
    let (start, _) = read_from(&v2(0x21, 0x00, &[]), true).await;
    assert_ok(start, Ok(Start::Header(Proxied::Balancer)));
    // A datagram is not a PostgreSQL connection.
    let (start, _) = read_from(&v2(0x21, 0x12, &v4_addresses()), true).await;
    assert!(matches!(start, Err(ProxyError::Datagram)), "{start:?}");
}

#[tokio::test]
async fn v1_lines_as_haproxy_writes_them() {
    let cases = [
        (
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 6432\r\n"[..],
            client("192.168.0.1:56324"),
        ),
        (
            b"PROXY TCP6 2001:db8::1 2001:db8::2 56324 6432\r\n",
            client("[2001:db8::1]:56324"),
        ),
        (b"PROXY UNKNOWN\r\n", Ok(Start::Header(Proxied::Balancer))),
    ];
    for (line, want) in cases {
        let mut bytes = line.to_vec();
        bytes.extend_from_slice(&encode_ssl_request());
        let (start, rest) = read_from(&bytes, false).await;
        assert_ok(start, want);
        assert_eq!(rest, encode_ssl_request());
    }
}

#[tokio::test]
async fn v1_at_its_longest_and_one_byte_past_it() {
    // The specification's worst case: 107 bytes, CRLF included.
    let longest = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(longest.len(), V1_MAX);
    let (start, _) = read_from(longest, true).await;
    assert_ok(start, Ok(Start::Header(Proxied::Balancer)));
    let mut too_long = longest[..V1_MAX - 2].to_vec();
    too_long.extend_from_slice(b"5\r\n");
    let (start, rest) = read_from(&too_long, true).await;
    assert!(matches!(start, Err(ProxyError::TooLong)), "{start:?}");
    // It stopped at 107 bytes: the rest was not read.
    assert_eq!(rest, b"\n");
}

#[tokio::test]
async fn v2_past_the_limit_is_refused_before_its_payload_is_read() {
    let mut bytes = V2_SIGNATURE.to_vec();
    bytes.extend_from_slice(&[0x21, 0x11]);
    bytes.extend_from_slice(&((V2_MAX_PAYLOAD + 1) as u16).to_be_bytes());
    bytes.extend_from_slice(&[7; 32]);
    let (start, rest) = read_from(&bytes, true).await;
    assert!(
        matches!(start, Err(ProxyError::Oversized(n)) if n == V2_MAX_PAYLOAD + 1),
        "{start:?}"
    );
    assert_eq!(rest, [7; 32]);
}

#[tokio::test]
async fn every_truncation_is_a_clean_error() {
    let mut v2_tlv = v4_addresses();
    v2_tlv.extend(tlv(0x02, b"db.example.com"));
    let headers = [
        v2(0x21, 0x11, &v4_addresses()),
        v2(0x21, 0x11, &v2_tlv),
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 6432\r\n".to_vec(),
    ];
    for header in headers {
        for cut in 1..header.len() {
            let (start, rest) = read_from(&header[..cut], true).await;
            assert!(
                matches!(start, Err(ProxyError::Closed | ProxyError::Malformed(_))),
                "cut at {cut}: {start:?}"
            );
            assert!(rest.is_empty());
        }
    }
}

#[tokio::test]
async fn malformed_headers_are_refused() {
    let mut bad_tlv = v4_addresses();
    bad_tlv.extend_from_slice(&[0x02, 0x00, 0x09, b'x']);
    let cases: Vec<Vec<u8>> = vec![
        // Signature off by one byte.
        {
            let mut h = v2(0x21, 0x11, &v4_addresses());
            h[6] = b'X';
            h
        },
        v2(0x11, 0x11, &v4_addresses()), // version 1 in a v2 header
        v2(0x22, 0x11, &v4_addresses()), // command 2
        v2(0x21, 0x41, &v4_addresses()), // family 4
        v2(0x21, 0x11, &v4_addresses()[..8]), // too short for IPv4
        v2(0x21, 0x11, &bad_tlv),        // a TLV past the end
        b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\n".to_vec(),
        b"PROXY TCP4 10.0.0.1 10.0.0.2 65536 2\r\n".to_vec(),
        b"PROXY TCP5 10.0.0.1 10.0.0.2 1 2\r\n".to_vec(),
        b"PROXX TCP4 10.0.0.1 10.0.0.2 1 2\r\n".to_vec(),
        b"PROXY TCP4 10.0.0.1 10.0.0.2 1 2\n\r\n".to_vec(),
    ];
    for bytes in cases {
        let (start, _) = read_from(&bytes, true).await;
        assert!(
            matches!(start, Err(ProxyError::Malformed(_))),
            "{:?}: {start:?}",
            String::from_utf8_lossy(&bytes)
        );
    }
}

#[tokio::test]
async fn without_a_header_the_first_byte_is_handed_back_unless_one_is_required() {
    let ssl = encode_ssl_request();
    let (start, rest) = read_from(&ssl, false).await;
    assert_ok(start, Ok(Start::Stream(ssl[0])));
    assert_eq!(rest, ssl[1..]);
    let (start, rest) = read_from(&ssl, true).await;
    assert!(matches!(start, Err(ProxyError::Missing)), "{start:?}");
    assert_eq!(rest, ssl[1..]);
    let (start, _) = read_from(&[], false).await;
    assert!(matches!(start, Err(ProxyError::Closed)), "{start:?}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_or_slow_balancer_meets_the_deadline() {
    let (mut client, mut server) = tokio::io::duplex(1024);
    let deadline = Instant::now() + Duration::from_secs(15);
    let reading = tokio::spawn(async move { read_trusted(&mut server, true, deadline).await });
    // Half a header, then nothing.
    client.write_all(&V2_SIGNATURE[..7]).await.unwrap();
    let start = reading.await.unwrap();
    assert!(matches!(start, Err(ProxyError::Timeout)), "{start:?}");
    drop(client);
}

/// Random bytes after a header's first byte: an error or a header, never a
/// panic, and never a read past what a header may hold.
#[tokio::test]
async fn random_input_never_panics() {
    let mut rng = rand::rng();
    for _ in 0..2000 {
        let len = rng.random_range(0..64);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let first = if rng.random() { b'\r' } else { b'P' };
        bytes.insert(0, first);
        if first == b'\r' && rng.random() {
            // A real signature, random version, family and length.
            bytes.splice(..1, V2_SIGNATURE);
        }
        let (start, rest) = read_from(&bytes, true).await;
        if start.is_ok() {
            assert!(bytes.len() - rest.len() <= V2_FIXED + V2_MAX_PAYLOAD);
        }
    }
    for _ in 0..2000 {
        let len = rng.random_range(0..300);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        let _ = parse_v2(&bytes);
        let _ = parse_v1(&bytes);
    }
}
