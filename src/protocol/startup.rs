//! Pre-startup packets: `len:i32, code:i32, ...`, read exactly, never buffered ahead.
//!
//! Reading exactly the packet's length matters for security: a byte read past an
//! SSLRequest would be plaintext the TLS layer never sees (CVE-2021-23214). This
//! module must never read more than the length field announces.

use tokio::io::{AsyncRead, AsyncReadExt};

use super::{
    CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, MAX_STARTUP_PACKET_LEN, MIN_STARTUP_PACKET_LEN,
    SSL_REQUEST_CODE,
};

/// One pre-startup packet, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    SslRequest,
    GssEncRequest,
    Cancel(CancelRequest),
    Startup(StartupMessage),
}

/// A CancelRequest: the backend pid and the key the client was given.
#[derive(PartialEq, Eq)]
pub struct CancelRequest {
    pub pid: i32,
    pub key: Vec<u8>,
}

impl std::fmt::Debug for CancelRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a bearer secret for cancelling someone's query.
        f.debug_struct("CancelRequest")
            .field("pid", &self.pid)
            .field("key_len", &self.key.len())
            .finish()
    }
}

/// A StartupMessage: protocol version and the `name=value` parameters in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    pub major: u16,
    pub minor: u16,
    pub params: Vec<(String, String)>,
}

impl StartupMessage {
    /// The last value given for `name` (PostgreSQL keeps the last one too).
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Why a pre-startup packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    #[error("invalid length of startup packet ({0})")]
    InvalidLength(i64),
    #[error("invalid startup packet layout: {0}")]
    Layout(&'static str),
    #[error("invalid cancel request length ({0})")]
    CancelLength(usize),
    #[error("connection closed during startup")]
    Closed,
}

/// Reads one pre-startup packet: exactly 4 + `len - 4` bytes.
pub async fn read_packet<R: AsyncRead + Unpin>(r: &mut R) -> Result<StartupPacket, StartupError> {
    let mut len_buf = [0u8; 4];
    r.read_exact(&mut len_buf)
        .await
        .map_err(|_| StartupError::Closed)?;
    let len = i32::from_be_bytes(len_buf);
    if len < MIN_STARTUP_PACKET_LEN as i32 || len > MAX_STARTUP_PACKET_LEN as i32 {
        return Err(StartupError::InvalidLength(len as i64));
    }
    let mut body = vec![0u8; len as usize - 4];
    r.read_exact(&mut body)
        .await
        .map_err(|_| StartupError::Closed)?;
    parse_body(&body)
}

/// Decodes the body of a pre-startup packet (everything after the length).
pub fn parse_body(body: &[u8]) -> Result<StartupPacket, StartupError> {
    let (code, rest) = body
        .split_first_chunk::<4>()
        .ok_or(StartupError::Layout("missing code"))?;
    let code = u32::from_be_bytes(*code);
    match code {
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE if !rest.is_empty() => {
            Err(StartupError::Layout("request with trailing data"))
        }
        SSL_REQUEST_CODE => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            // pid (4) and a key of 4..=256 bytes (3.0 keys are 4 bytes).
            if rest.len() < 8 || rest.len() > 4 + 256 {
                return Err(StartupError::CancelLength(rest.len() + 8));
            }
            let pid = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
            Ok(StartupPacket::Cancel(CancelRequest {
                pid,
                key: rest[4..].to_vec(),
            }))
        }
        version => {
            let major = (version >> 16) as u16;
            let minor = (version & 0xffff) as u16;
            let params = parse_params(rest)?;
            Ok(StartupPacket::Startup(StartupMessage {
                major,
                minor,
                params,
            }))
        }
    }
}

/// `name\0value\0 ... \0`: the list ends with an empty name.
fn parse_params(mut rest: &[u8]) -> Result<Vec<(String, String)>, StartupError> {
    let mut params = Vec::new();
    loop {
        let (name, after) = take_cstr(rest)?;
        if name.is_empty() {
            if !after.is_empty() {
                return Err(StartupError::Layout("data after the parameter list"));
            }
            return Ok(params);
        }
        let (value, after) = take_cstr(after)?;
        params.push((name.to_owned(), value.to_owned()));
        rest = after;
    }
}

fn take_cstr(buf: &[u8]) -> Result<(&str, &[u8]), StartupError> {
    let nul = buf
        .iter()
        .position(|&b| b == 0)
        .ok_or(StartupError::Layout("unterminated string"))?;
    let s = std::str::from_utf8(&buf[..nul]).map_err(|_| StartupError::Layout("not UTF-8"))?;
    Ok((s, &buf[nul + 1..]))
}

/// Encodes a StartupMessage (used on the upstream leg).
pub fn encode_startup(major: u16, minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    let mut body = Vec::with_capacity(256);
    body.extend_from_slice(&((u32::from(major) << 16) | u32::from(minor)).to_be_bytes());
    for (k, v) in params {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    with_length(&body)
}

/// Encodes an SSLRequest.
pub fn encode_ssl_request() -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&8i32.to_be_bytes());
    out[4..].copy_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
    out
}

/// Encodes a CancelRequest for `pid` with `key`.
pub fn encode_cancel(pid: i32, key: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(8 + key.len());
    body.extend_from_slice(&CANCEL_REQUEST_CODE.to_be_bytes());
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(key);
    with_length(&body)
}

fn with_length(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> Result<StartupPacket, StartupError> {
        let mut r = bytes;
        read_packet(&mut r).await
    }

    #[tokio::test]
    async fn decodes_each_request_kind() {
        assert_eq!(
            read(&encode_ssl_request()).await,
            Ok(StartupPacket::SslRequest)
        );
        let mut gss = 8i32.to_be_bytes().to_vec();
        gss.extend_from_slice(&GSSENC_REQUEST_CODE.to_be_bytes());
        assert_eq!(read(&gss).await, Ok(StartupPacket::GssEncRequest));
        let cancel = encode_cancel(42, &[1, 2, 3, 4]);
        match read(&cancel).await.unwrap() {
            StartupPacket::Cancel(c) => assert_eq!((c.pid, c.key), (42, vec![1, 2, 3, 4])),
            other => panic!("unexpected {other:?}"),
        }
        let startup = encode_startup(3, 0, &[("user", "u"), ("database", "d")]);
        match read(&startup).await.unwrap() {
            StartupPacket::Startup(s) => {
                assert_eq!((s.major, s.minor), (3, 0));
                assert_eq!(s.param("user"), Some("u"));
                assert_eq!(s.param("database"), Some("d"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn refuses_bad_lengths_without_reading_on() {
        for len in [-1i32, 0, 4, 7, 10_001, i32::MAX] {
            let mut pkt = len.to_be_bytes().to_vec();
            pkt.extend_from_slice(&SSL_REQUEST_CODE.to_be_bytes());
            assert_eq!(
                read(&pkt).await,
                Err(StartupError::InvalidLength(len as i64))
            );
        }
    }

    #[tokio::test]
    async fn truncated_packets_are_closed_not_panics() {
        let startup = encode_startup(3, 0, &[("user", "u")]);
        for cut in 0..startup.len() {
            assert!(read(&startup[..cut]).await.is_err());
        }
    }

    #[test]
    fn layout_errors() {
        // unterminated list, non-UTF-8, trailing data after the terminator
        let mut body = (3u32 << 16).to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0u\0");
        assert!(parse_body(&body).is_err());
        let mut body = (3u32 << 16).to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0\xff\0\0");
        assert!(parse_body(&body).is_err());
        let mut body = (3u32 << 16).to_be_bytes().to_vec();
        body.extend_from_slice(b"user\0u\0\0x");
        assert!(parse_body(&body).is_err());
        let mut body = SSL_REQUEST_CODE.to_be_bytes().to_vec();
        body.push(0);
        assert!(parse_body(&body).is_err());
        // cancel keys are 4..=256 bytes
        let mut body = CANCEL_REQUEST_CODE.to_be_bytes().to_vec();
        body.extend_from_slice(&[0; 7]);
        assert!(parse_body(&body).is_err());
    }

    #[test]
    fn arbitrary_bodies_never_panic() {
        // A cheap exhaustive sweep over short bodies with interesting bytes.
        let alphabet = [0u8, 1, 3, 0x04, 0xd2, 0x16, 0x2f, b'a', 0xff];
        let mut body = Vec::new();
        fn sweep(body: &mut Vec<u8>, alphabet: &[u8], depth: usize) {
            let _ = parse_body(body);
            if depth == 0 {
                return;
            }
            for &b in alphabet {
                body.push(b);
                sweep(body, alphabet, depth - 1);
                body.pop();
            }
        }
        sweep(&mut body, &alphabet, 6);
    }
}
