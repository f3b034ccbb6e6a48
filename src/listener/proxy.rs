//! The PROXY protocol header a trusted load balancer sends before the client's
//! bytes: HAProxy's v2 (binary) and v1 (one text line), as `proxy-protocol.txt`
//! specifies them (DESIGN §7).
//!
//! The header is read with exact lengths and nothing else: v2's 16 fixed bytes
//! then exactly the length they announce; v1 one byte at a time up to its
//! CRLF, at most 107 bytes. No byte of the PostgreSQL stream behind it is ever
//! read here, so none can be lost or smuggled; when a trusted peer sends no
//! header (and none is required), the one byte read to tell is handed back.
//! The bytes, once complete, are parsed by `ppp`. A PostgreSQL stream can
//! never start like a header (`\r` or `P` would announce a packet of over
//! 200 MB), so the first byte tells them apart. This module must never read
//! past the header, nor believe a header from a peer that is not trusted.

use std::io;
use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

/// v2's signature: `\r\n\r\n\0\r\nQUIT\n`.
pub(crate) const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// v2's fixed part: signature, version/command, family, length.
const V2_FIXED: usize = 16;
/// The most address-and-TLV bytes taken after v2's fixed part. Addresses
/// take at most 216 (UNIX); HAProxy's, AWS's and Google's TLVs fit with room
/// to spare. More is refused rather than buffered.
pub(crate) const V2_MAX_PAYLOAD: usize = 4096;
/// v1's longest line, CRLF included.
pub(crate) const V1_MAX: usize = 107;
const V1_PREFIX: &[u8] = b"PROXY ";

/// Whether `byte` can start a PROXY header (v2's `\r`, v1's `P`).
pub(crate) fn starts_header(byte: u8) -> bool {
    byte == V2_SIGNATURE[0] || byte == V1_PREFIX[0]
}

/// What the header says about the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Proxied {
    /// A connection relayed for this client.
    Client(SocketAddr),
    /// The balancer's own connection (v2 `LOCAL`: a health check), or one
    /// whose client it cannot name (v1 `UNKNOWN`, v2 `AF_UNSPEC`/`AF_UNIX`):
    /// the balancer's address stands for the client.
    Balancer,
}

/// What a trusted peer sent first.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Start {
    Header(Proxied),
    /// No header (allowed when not required): the first byte of the
    /// PostgreSQL stream, already read.
    Stream(u8),
}

/// Why a PROXY header was refused.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    #[error("no PROXY header before the handshake deadline")]
    Timeout,
    #[error("connection closed before or inside the PROXY header")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(io::Error),
    #[error("a trusted peer sent no PROXY header (proxy_protocol.required = true)")]
    Missing,
    #[error("PROXY v1 header longer than {V1_MAX} bytes")]
    TooLong,
    #[error(
        "PROXY v2 header announces {0} bytes of addresses and TLVs; at most {V2_MAX_PAYLOAD} are taken"
    )]
    Oversized(usize),
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("PROXY header for a datagram transport")]
    Datagram,
}

/// Reads what a trusted peer sends first, before `deadline`: a whole PROXY
/// header, or — when `required` is false and the stream does not start with
/// one — the first byte of the PostgreSQL stream.
pub(crate) async fn read_trusted<S: AsyncRead + Unpin>(
    io: &mut S,
    required: bool,
    deadline: Instant,
) -> Result<Start, ProxyError> {
    match tokio::time::timeout_at(deadline, read(io, required)).await {
        Err(_) => Err(ProxyError::Timeout),
        Ok(r) => r,
    }
}

async fn read<S: AsyncRead + Unpin>(io: &mut S, required: bool) -> Result<Start, ProxyError> {
    let first = byte(io).await?;
    if first == V2_SIGNATURE[0] {
        read_v2(io).await.map(Start::Header)
    } else if first == V1_PREFIX[0] {
        read_v1(io).await.map(Start::Header)
    } else if required {
        Err(ProxyError::Missing)
    } else {
        Ok(Start::Stream(first))
    }
}

async fn byte<S: AsyncRead + Unpin>(io: &mut S) -> Result<u8, ProxyError> {
    let mut b = [0u8; 1];
    exact(io, &mut b).await?;
    Ok(b[0])
}

async fn exact<S: AsyncRead + Unpin>(io: &mut S, buf: &mut [u8]) -> Result<(), ProxyError> {
    match io.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(ProxyError::Closed),
        Err(e) => Err(ProxyError::Io(e)),
    }
}

/// The rest of a v2 header, its first byte read.
async fn read_v2<S: AsyncRead + Unpin>(io: &mut S) -> Result<Proxied, ProxyError> {
    let mut header = vec![0u8; V2_FIXED];
    header[0] = V2_SIGNATURE[0];
    exact(io, &mut header[1..]).await?;
    if header[..V2_SIGNATURE.len()] != V2_SIGNATURE {
        return Err(ProxyError::Malformed("not a PROXY v2 signature".into()));
    }
    let length = usize::from(u16::from_be_bytes([header[14], header[15]]));
    if length > V2_MAX_PAYLOAD {
        return Err(ProxyError::Oversized(length));
    }
    header.resize(V2_FIXED + length, 0);
    exact(io, &mut header[V2_FIXED..]).await?;
    parse_v2(&header)
}

/// A complete v2 header.
pub(crate) fn parse_v2(bytes: &[u8]) -> Result<Proxied, ProxyError> {
    use ppp::v2::{Addresses, Command, Header, Protocol};
    let header = Header::try_from(bytes).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if header.as_bytes().len() != bytes.len() {
        return Err(ProxyError::Malformed("bytes after the header".into()));
    }
    if let Some(Err(e)) = header.tlvs().find(Result::is_err) {
        return Err(ProxyError::Malformed(e.to_string()));
    }
    if header.command == Command::Local {
        return Ok(Proxied::Balancer);
    }
    if header.protocol == Protocol::Datagram {
        return Err(ProxyError::Datagram);
    }
    Ok(match header.addresses {
        Addresses::IPv4(a) => {
            Proxied::Client(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        Addresses::IPv6(a) => {
            Proxied::Client(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        Addresses::Unspecified | Addresses::Unix(_) => Proxied::Balancer,
    })
}

/// The rest of a v1 line, its first byte read: one byte at a time, so that
/// nothing after the CRLF is taken.
async fn read_v1<S: AsyncRead + Unpin>(io: &mut S) -> Result<Proxied, ProxyError> {
    let mut line = Vec::with_capacity(V1_MAX);
    line.push(V1_PREFIX[0]);
    while !line.ends_with(b"\r\n") {
        if line.len() == V1_MAX {
            return Err(ProxyError::TooLong);
        }
        line.push(byte(io).await?);
        let n = line.len().min(V1_PREFIX.len());
        if line[..n] != V1_PREFIX[..n] {
            return Err(ProxyError::Malformed("not a PROXY v1 line".into()));
        }
    }
    parse_v1(&line)
}

/// A complete v1 line, CRLF included.
pub(crate) fn parse_v1(line: &[u8]) -> Result<Proxied, ProxyError> {
    use ppp::v1::{Addresses, Header};
    let header = Header::try_from(line).map_err(|e| ProxyError::Malformed(e.to_string()))?;
    if header.header.len() != line.len() {
        return Err(ProxyError::Malformed("bytes after the line".into()));
    }
    Ok(match header.addresses {
        Addresses::Tcp4(a) => {
            Proxied::Client(SocketAddr::new(IpAddr::V4(a.source_address), a.source_port))
        }
        Addresses::Tcp6(a) => {
            Proxied::Client(SocketAddr::new(IpAddr::V6(a.source_address), a.source_port))
        }
        Addresses::Unknown => Proxied::Balancer,
    })
}

#[cfg(test)]
mod tests;
