//! The pre-startup packet reader: `read_packet` on a stream cut into chunks,
//! and `parse_body` on its own.
//!
//! Input: one byte choosing the read chunk size, then the bytes the client
//! sends. Checked: no panic; a length outside 8..=10000 is refused after
//! reading the 4 length bytes and nothing more; otherwise exactly the
//! announced length is read, never a byte past it (a byte read past an
//! SSLRequest would be plaintext TLS never sees); and whatever parses encodes
//! back to the very bytes it came from, so the parser neither drops nor
//! invents anything.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pgwarden::protocol::startup::{
    StartupError, StartupPacket, encode_cancel, encode_ssl_request, encode_startup, parse_body,
    read_packet,
};
use pgwarden::protocol::{GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET_LEN, MIN_STARTUP_PACKET_LEN};
use pgwarden_fuzz::{ScriptedStream, block_on};

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let mut s = ScriptedStream::new(vec![stream.to_vec()], usize::from(chunk % 16) + 1);
    let result = block_on(read_packet(&mut s));

    let Some(len) = stream.first_chunk::<4>().map(|l| i32::from_be_bytes(*l)) else {
        assert_eq!(result, Err(StartupError::Closed));
        return;
    };
    if len < MIN_STARTUP_PACKET_LEN as i32 || len > MAX_STARTUP_PACKET_LEN as i32 {
        assert_eq!(result, Err(StartupError::InvalidLength(len.into())));
        assert_eq!(s.read_total, 4, "read past a refused length");
        return;
    }
    let len = len as usize;
    assert_eq!(
        s.read_total,
        len.min(stream.len()),
        "read other than the announced length"
    );
    if stream.len() < len {
        assert_eq!(result, Err(StartupError::Closed));
        return;
    }
    let packet = &stream[..len];
    let body = &packet[4..];
    assert_eq!(result, parse_body(body));
    check_round_trip(packet, body);
});

/// What `parse_body` accepts encodes back to the same bytes.
fn check_round_trip(packet: &[u8], body: &[u8]) {
    match parse_body(body) {
        Ok(StartupPacket::SslRequest) => assert_eq!(packet, encode_ssl_request()),
        Ok(StartupPacket::GssEncRequest) => {
            let mut expected = 8i32.to_be_bytes().to_vec();
            expected.extend_from_slice(&GSSENC_REQUEST_CODE.to_be_bytes());
            assert_eq!(packet, expected);
        }
        Ok(StartupPacket::Cancel(c)) => {
            assert!((4..=256).contains(&c.key.len()));
            assert_eq!(packet, encode_cancel(c.pid, &c.key));
        }
        Ok(StartupPacket::Startup(m)) => {
            let params: Vec<(&str, &str)> = m
                .params
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert!(params.iter().all(|(k, _)| !k.is_empty()));
            assert_eq!(packet, encode_startup(m.major, m.minor, &params));
        }
        Err(_) => {}
    }
}
