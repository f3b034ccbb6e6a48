//! The PROXY protocol header reader (`listener::proxy::read_trusted`) on a
//! stream cut into chunks.
//!
//! Input: one control byte (bits 0–3: the read chunk size; bit 4: a header is
//! required; bit 5: build a well-formed header from the next bytes first),
//! then the bytes the trusted peer sends. Checked, against a model written
//! from `proxy-protocol.txt` here: no panic; exactly the header's bytes are
//! read and not one byte of the PostgreSQL stream behind it (v2: 16 bytes,
//! then the announced length unless it is over the cap; v1: up to the first
//! CRLF, at most 107 bytes, stopping at the first byte that cannot start
//! `PROXY `); no header without `\r` or `P` first; an address is believed only
//! from a PROXY command over a stream transport, and is the one the header's
//! bytes carry; and a well-formed TCP header is always accepted.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use libfuzzer_sys::fuzz_target;
use pgwarden::fuzzing::{ProxyRefusal, ProxyStart, read_proxy_header};
use pgwarden_fuzz::{ScriptedStream, block_on};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
const V2_MAX_PAYLOAD: usize = 4096;
const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(control & 0x0f) + 1;
    let required = control & 0x10 != 0;
    let (stream, built) = if control & 0x20 != 0 {
        match well_formed(rest) {
            Some((header, addr, tail)) => {
                let mut s = header.clone();
                s.extend_from_slice(tail);
                (s, Some((header.len(), addr)))
            }
            None => return,
        }
    } else {
        (rest.to_vec(), None)
    };

    let mut s = ScriptedStream::new(vec![stream.clone()], chunk);
    let result = block_on(read_proxy_header(&mut s, required));
    let (read, expected) = model(&stream, required);
    assert_eq!(s.read_total, read, "read other than the header: {result:?}");
    match expected {
        Expect::Exactly(want) => assert_eq!(result, want),
        Expect::Header(header) => check_header(header, &result),
    }
    if let Some((len, addr)) = built {
        assert_eq!(read, len);
        assert_eq!(result, Ok(addr), "a well-formed header refused");
    }
});

/// What the reader must do with `stream`: how many bytes it reads, and the
/// outcome, or the complete header whose parse `check_header` judges.
enum Expect<'a> {
    Exactly(Result<ProxyStart, ProxyRefusal>),
    Header(&'a [u8]),
}

fn model(stream: &[u8], required: bool) -> (usize, Expect<'_>) {
    use Expect::Exactly;
    match stream.first() {
        None => (0, Exactly(Err(ProxyRefusal::Closed))),
        Some(&b'\r') => model_v2(stream),
        Some(&b'P') => model_v1(stream),
        Some(_) if required => (1, Exactly(Err(ProxyRefusal::Missing))),
        Some(&b) => (1, Exactly(Ok(ProxyStart::Stream(b)))),
    }
}

fn model_v2(stream: &[u8]) -> (usize, Expect<'_>) {
    use Expect::Exactly;
    if stream.len() < 16 {
        return (stream.len(), Exactly(Err(ProxyRefusal::Closed)));
    }
    if &stream[..12] != V2_SIGNATURE {
        return (16, Exactly(Err(ProxyRefusal::Malformed)));
    }
    let length = usize::from(u16::from_be_bytes([stream[14], stream[15]]));
    if length > V2_MAX_PAYLOAD {
        return (16, Exactly(Err(ProxyRefusal::Oversized(length))));
    }
    if stream.len() < 16 + length {
        return (stream.len(), Exactly(Err(ProxyRefusal::Closed)));
    }
    (16 + length, Expect::Header(&stream[..16 + length]))
}

fn model_v1(stream: &[u8]) -> (usize, Expect<'_>) {
    use Expect::Exactly;
    let mut n = 1;
    loop {
        if stream[..n].ends_with(b"\r\n") {
            return (n, Expect::Header(&stream[..n]));
        }
        if n == V1_MAX {
            return (n, Exactly(Err(ProxyRefusal::TooLong)));
        }
        if n == stream.len() {
            return (n, Exactly(Err(ProxyRefusal::Closed)));
        }
        n += 1;
        let k = n.min(V1_PREFIX.len());
        if stream[..k] != V1_PREFIX[..k] {
            return (n, Exactly(Err(ProxyRefusal::Malformed)));
        }
    }
}

/// A complete header (v2 or v1) and what the reader made of it.
fn check_header(header: &[u8], result: &Result<ProxyStart, ProxyRefusal>) {
    match result {
        Ok(ProxyStart::Stream(_)) => panic!("a header taken for the stream"),
        Err(ProxyRefusal::Malformed | ProxyRefusal::Datagram) => {}
        Err(e) => panic!("a complete header refused as {e:?}"),
        Ok(start) if header[0] == b'\r' => check_v2(header, *start),
        Ok(start) => check_v1(header, *start),
    }
}

fn check_v2(h: &[u8], start: ProxyStart) {
    let (command, family, transport) = (h[12], h[13] >> 4, h[13] & 0x0f);
    let payload = &h[16..];
    assert!(
        command == 0x20 || command == 0x21,
        "version/command {command:#x} accepted"
    );
    match start {
        ProxyStart::Balancer => assert!(
            command == 0x20 || family == 0 || family == 3,
            "a PROXY command over family {family} taken for the balancer"
        ),
        ProxyStart::Client(addr) => {
            assert_eq!(command, 0x21, "an address believed from LOCAL");
            assert_ne!(transport, 2, "an address believed for a datagram");
            let want = match family {
                1 => {
                    assert!(payload.len() >= 12, "a short IPv4 address block accepted");
                    let ip: [u8; 4] = payload[..4].try_into().unwrap();
                    let port = u16::from_be_bytes([payload[8], payload[9]]);
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port)
                }
                2 => {
                    assert!(payload.len() >= 36, "a short IPv6 address block accepted");
                    let ip: [u8; 16] = payload[..16].try_into().unwrap();
                    let port = u16::from_be_bytes([payload[32], payload[33]]);
                    SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port)
                }
                _ => panic!("an address believed from family {family}"),
            };
            assert_eq!(addr, want, "not the header's source address");
        }
        ProxyStart::Stream(_) => unreachable!(),
    }
}

fn check_v1(line: &[u8], start: ProxyStart) {
    let text = std::str::from_utf8(line).expect("a non-UTF-8 v1 line accepted");
    let fields: Vec<&str> = text.trim_end_matches("\r\n").split(' ').collect();
    match start {
        ProxyStart::Balancer => assert_eq!(fields.get(1), Some(&"UNKNOWN")),
        ProxyStart::Client(addr) => {
            assert_eq!(fields.len(), 6, "{text:?} accepted");
            let ip: IpAddr = fields[2].parse().expect("an unparsable source accepted");
            let port: u16 = fields[4].parse().expect("an unparsable port accepted");
            assert_eq!(addr, SocketAddr::new(ip, port), "not the line's source");
            match fields[1] {
                "TCP4" => assert!(ip.is_ipv4()),
                "TCP6" => assert!(ip.is_ipv6()),
                other => panic!("protocol {other:?} accepted"),
            }
        }
        ProxyStart::Stream(_) => unreachable!(),
    }
}

/// A well-formed TCP header (v1 or v2, IPv4 or IPv6) with addresses from
/// `bytes`, the address it carries, and the bytes after those used.
fn well_formed(bytes: &[u8]) -> Option<(Vec<u8>, ProxyStart, &[u8])> {
    let (&kind, bytes) = bytes.split_first()?;
    let v6 = kind & 1 != 0;
    let n = if v6 { 36 } else { 12 };
    let (raw, tail) = bytes.split_at_checked(n)?;
    let (src, dst, ports) = if v6 {
        let s: [u8; 16] = raw[..16].try_into().unwrap();
        let d: [u8; 16] = raw[16..32].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d), &raw[32..])
    } else {
        let s: [u8; 4] = raw[..4].try_into().unwrap();
        let d: [u8; 4] = raw[4..8].try_into().unwrap();
        (IpAddr::from(s), IpAddr::from(d), &raw[8..])
    };
    let sport = u16::from_be_bytes([ports[0], ports[1]]);
    let dport = u16::from_be_bytes([ports[2], ports[3]]);
    let header = if kind & 2 != 0 {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x21);
        h.push(if v6 { 0x21 } else { 0x11 });
        h.extend_from_slice(&(n as u16).to_be_bytes());
        h.extend_from_slice(raw);
        h
    } else {
        let proto = if v6 { "TCP6" } else { "TCP4" };
        format!("PROXY {proto} {src} {dst} {sport} {dport}\r\n").into_bytes()
    };
    Some((
        header,
        ProxyStart::Client(SocketAddr::new(src, sport)),
        tail,
    ))
}
