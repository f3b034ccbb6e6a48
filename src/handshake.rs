//! Negotiation before authentication: TLS, GSSAPI refusal, cancel or startup.
//!
//! One loop over SSLRequest | GSSENCRequest | CancelRequest | StartupMessage,
//! with direct TLS (first byte 0x16, ALPN `postgresql` required) handled before
//! it. It works on any transport (`AsyncRead + AsyncWrite`): the first byte is
//! read, not peeked, and handed back through [`Prefixed`]. Pre-TLS packets are
//! read exactly, never buffered ahead; after answering `S`, exactly one byte is
//! read and must open a TLS record, or the client is refused with 08P01 —
//! plaintext smuggled after an SSLRequest never reaches a parser
//! (CVE-2021-23214). A first byte that opens a PROXY header (`\r`, `P`) is
//! refused here: a header is read only from trusted peers, by the listener,
//! before negotiation begins. Each request may come once. Negotiation answers nothing
//! itself when it fails: it returns the error with the stream, when the stream
//! can still carry an answer, for `session::refuse` to send.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::net::{ClientStream, MaybeTls, Prefixed};
use crate::protocol::backend::sqlstate;
use crate::protocol::startup::{self, CancelRequest, StartupError, StartupMessage, StartupPacket};
use crate::protocol::{TLS_HANDSHAKE_RECORD, tls_alpn_ok};
use crate::session::RejectReason;
use crate::tls::ALPN_POSTGRESQL;

/// What the client wants, once negotiation is over.
pub enum Negotiated<S> {
    Startup {
        stream: ClientStream<S>,
        startup: StartupMessage,
        tls: Option<TlsInfo>,
    },
    Cancel {
        /// Closed (cleanly, for TLS) once the cancel was handled.
        stream: ClientStream<S>,
        request: CancelRequest,
        /// Whether it came inside TLS (pgjdbc and libpq before 17 send it in plaintext).
        tls: bool,
    },
}

/// The TLS parameters of a client connection, for the session record.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: &'static str,
    pub cipher: &'static str,
    pub alpn: Option<String>,
    /// The names in the client certificate rustls verified, if one was given.
    pub client_cert: Option<Vec<String>>,
}

/// Negotiation failed: why, and the stream when it can still carry the answer.
pub struct Refused<S> {
    pub stream: Option<ClientStream<S>>,
    pub error: NegotiateError,
}

/// Why negotiation ended without a startup or a cancel.
#[derive(Debug, thiserror::Error)]
pub enum NegotiateError {
    #[error("closed before sending anything")]
    ClosedEarly,
    #[error("connection closed during startup")]
    Closed,
    #[error("closed after SSLRequest")]
    ClosedAfterSslRequest,
    #[error("{0}")]
    Packet(StartupError),
    #[error("duplicate SSL negotiation request")]
    DuplicateSslRequest,
    #[error("unexpected GSSAPI encryption request")]
    DuplicateGssEncRequest,
    #[error("received unencrypted data after SSL request")]
    PlaintextAfterSslRequest,
    #[error("TLS is required: connect with sslmode=require or stricter")]
    TlsRequired,
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2")]
    UnsupportedVersion { major: u16, minor: u16 },
    #[error("direct TLS attempted but TLS is not configured")]
    DirectTlsNotConfigured,
    #[error("TLS handshake failed: {0}")]
    TlsHandshake(io::Error),
    #[error("direct SSL connection requires ALPN protocol \"postgresql\"")]
    AlpnRequired,
    #[error("unexpected ALPN protocol")]
    UnexpectedAlpn,
    #[error("{0}")]
    Io(io::Error),
    #[error("no startup message before the handshake deadline")]
    Timeout,
    #[error("PROXY header from a peer not in [listen] proxy_protocol.trusted")]
    UntrustedProxyHeader,
}

impl NegotiateError {
    /// The `reason` it is counted and logged under.
    pub fn reason(&self) -> RejectReason {
        use NegotiateError::*;
        match self {
            TlsRequired => RejectReason::TlsRequired,
            ClosedAfterSslRequest
            | DirectTlsNotConfigured
            | TlsHandshake(_)
            | AlpnRequired
            | UnexpectedAlpn => RejectReason::TlsHandshake,
            Timeout => RejectReason::HandshakeTimeout,
            UntrustedProxyHeader => RejectReason::ProxyProtocol,
            ClosedEarly
            | Closed
            | Packet(_)
            | DuplicateSslRequest
            | DuplicateGssEncRequest
            | PlaintextAfterSslRequest
            | UnsupportedVersion { .. }
            | Io(_) => RejectReason::Protocol,
        }
    }

    /// The SQLSTATE of the answer, PostgreSQL's own for the same refusal.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            NegotiateError::TlsRequired => sqlstate::INVALID_AUTHORIZATION,
            NegotiateError::UnsupportedVersion { .. } => sqlstate::FEATURE_NOT_SUPPORTED,
            _ => sqlstate::PROTOCOL_VIOLATION,
        }
    }

    /// What the client is told, if it can be told anything: nothing when it
    /// left, when TLS failed (it cannot read a plaintext answer), or when the
    /// deadline passed before it spoke the protocol.
    pub fn client_message(&self) -> Option<String> {
        use NegotiateError::*;
        match self {
            Packet(_)
            | DuplicateSslRequest
            | DuplicateGssEncRequest
            | PlaintextAfterSslRequest
            | TlsRequired
            | UnsupportedVersion { .. }
            | AlpnRequired => Some(self.to_string()),
            ClosedEarly
            | Closed
            | ClosedAfterSslRequest
            | DirectTlsNotConfigured
            | TlsHandshake(_)
            | UnexpectedAlpn
            | Io(_)
            | Timeout
            | UntrustedProxyHeader => None,
        }
    }
}

/// The listener side of negotiation.
pub struct Negotiator {
    pub tls: Option<TlsAcceptor>,
    pub require_tls: bool,
}

type Step<S, T> = Result<T, Refused<S>>;

fn refused<S>(stream: Option<ClientStream<S>>, error: NegotiateError) -> Refused<S> {
    Refused { stream, error }
}

impl Negotiator {
    /// Negotiates on `io` until the client asks for a session or a cancel, or
    /// `deadline` passes. `first` is the stream's first byte when the listener
    /// already read it (looking for a PROXY header).
    pub async fn negotiate<S>(
        &self,
        mut io: S,
        first: Option<u8>,
        deadline: Instant,
    ) -> Step<S, Negotiated<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let first = match first {
            Some(b) => b,
            None => {
                let mut first = [0u8; 1];
                let n = match tokio::time::timeout_at(deadline, io.read(&mut first)).await {
                    Err(_) => return Err(refused(None, NegotiateError::Timeout)),
                    Ok(Err(e)) => return Err(refused(None, NegotiateError::Io(e))),
                    Ok(Ok(n)) => n,
                };
                if n == 0 {
                    return Err(refused(None, NegotiateError::ClosedEarly));
                }
                if crate::listener::proxy::starts_header(first[0]) {
                    return Err(refused(None, NegotiateError::UntrustedProxyHeader));
                }
                first[0]
            }
        };
        let mut stream = ClientStream::Plain(Prefixed::new(Some(first), io));
        let mut tls_info = None;
        if first == TLS_HANDSHAKE_RECORD {
            let (s, info) = self.direct_tls(stream, deadline).await?;
            stream = s;
            tls_info = Some(info);
        }
        // PostgreSQL allows one SSLRequest and one GSSENCRequest per connection,
        // whether it was answered `S` or `N`.
        let mut tried_ssl = false;
        let mut tried_gss = false;
        loop {
            let packet =
                match tokio::time::timeout_at(deadline, startup::read_packet(&mut stream)).await {
                    Err(_) => return Err(refused(Some(stream), NegotiateError::Timeout)),
                    Ok(Err(StartupError::Closed)) => {
                        return Err(refused(Some(stream), NegotiateError::Closed));
                    }
                    Ok(Err(e)) => return Err(refused(Some(stream), NegotiateError::Packet(e))),
                    Ok(Ok(p)) => p,
                };
            match packet {
                StartupPacket::SslRequest if tried_ssl || tls_info.is_some() => {
                    return Err(refused(Some(stream), NegotiateError::DuplicateSslRequest));
                }
                StartupPacket::SslRequest => {
                    tried_ssl = true;
                    match (&self.tls, stream) {
                        (Some(_), MaybeTls::Plain(plain)) => {
                            let (s, info) = self.ssl_request(plain, deadline).await?;
                            stream = s;
                            tls_info = Some(info);
                        }
                        (_, s) => {
                            stream = s;
                            stream = answer(stream, b"N", deadline).await?;
                        }
                    }
                }
                StartupPacket::GssEncRequest if tried_gss || tls_info.is_some() => {
                    return Err(refused(
                        Some(stream),
                        NegotiateError::DuplicateGssEncRequest,
                    ));
                }
                StartupPacket::GssEncRequest => {
                    tried_gss = true;
                    stream = answer(stream, b"N", deadline).await?;
                }
                StartupPacket::Cancel(request) => {
                    return Ok(Negotiated::Cancel {
                        stream,
                        request,
                        tls: tls_info.is_some(),
                    });
                }
                StartupPacket::Startup(_) if tls_info.is_none() && self.require_tls => {
                    return Err(refused(Some(stream), NegotiateError::TlsRequired));
                }
                StartupPacket::Startup(s) if s.major != 3 => {
                    let (major, minor) = (s.major, s.minor);
                    return Err(refused(
                        Some(stream),
                        NegotiateError::UnsupportedVersion { major, minor },
                    ));
                }
                StartupPacket::Startup(startup) => {
                    return Ok(Negotiated::Startup {
                        stream,
                        startup,
                        tls: tls_info,
                    });
                }
            }
        }
    }

    /// Answers `S`, reads exactly one byte, which must open a TLS record, and
    /// runs the handshake.
    async fn ssl_request<S>(
        &self,
        plain: Prefixed<S>,
        deadline: Instant,
    ) -> Step<S, (ClientStream<S>, TlsInfo)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let mut stream = answer(MaybeTls::Plain(plain), b"S", deadline).await?;
        let mut next = [0u8; 1];
        let n = match tokio::time::timeout_at(deadline, stream.read(&mut next)).await {
            Err(_) => return Err(refused(Some(stream), NegotiateError::Timeout)),
            Ok(Err(e)) => return Err(refused(None, NegotiateError::Io(e))),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            return Err(refused(None, NegotiateError::ClosedAfterSslRequest));
        }
        let MaybeTls::Plain(mut plain) = stream else {
            unreachable!("an SSLRequest is only answered on a plaintext stream")
        };
        if next[0] != TLS_HANDSHAKE_RECORD {
            return Err(refused(
                Some(MaybeTls::Plain(plain)),
                NegotiateError::PlaintextAfterSslRequest,
            ));
        }
        plain.push_back(next[0]);
        self.accept(plain, deadline).await
    }

    async fn direct_tls<S>(
        &self,
        stream: ClientStream<S>,
        deadline: Instant,
    ) -> Step<S, (ClientStream<S>, TlsInfo)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let MaybeTls::Plain(plain) = stream else {
            unreachable!("direct TLS is tried on the first byte, before any TLS")
        };
        let (s, info) = self.accept(plain, deadline).await?;
        if info.alpn.as_deref().map(str::as_bytes) != Some(ALPN_POSTGRESQL) {
            return Err(refused(Some(s), NegotiateError::AlpnRequired));
        }
        Ok((s, info))
    }

    async fn accept<S>(
        &self,
        plain: Prefixed<S>,
        deadline: Instant,
    ) -> Step<S, (ClientStream<S>, TlsInfo)>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(acceptor) = self.tls.as_ref() else {
            return Err(refused(None, NegotiateError::DirectTlsNotConfigured));
        };
        let tls = match tokio::time::timeout_at(deadline, acceptor.accept(plain)).await {
            Err(_) => return Err(refused(None, NegotiateError::Timeout)),
            Ok(Err(e)) => return Err(refused(None, NegotiateError::TlsHandshake(e))),
            Ok(Ok(tls)) => tls,
        };
        let conn = tls.get_ref().1;
        if !tls_alpn_ok(conn.alpn_protocol()) {
            return Err(refused(None, NegotiateError::UnexpectedAlpn));
        }
        let info = TlsInfo {
            version: conn
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("unknown"),
            cipher: conn
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("unknown"),
            alpn: conn
                .alpn_protocol()
                .map(|a| String::from_utf8_lossy(a).into_owned()),
            client_cert: conn
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(crate::tls::mtls::certificate_names),
        };
        Ok((MaybeTls::Tls(Box::new(tls)), info))
    }
}

/// Writes a one-byte answer (`S` or `N`) and flushes.
async fn answer<S>(
    mut stream: ClientStream<S>,
    byte: &[u8],
    deadline: Instant,
) -> Step<S, ClientStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let written = tokio::time::timeout_at(deadline, async {
        stream.write_all(byte).await?;
        stream.flush().await
    })
    .await;
    match written {
        Err(_) => Err(refused(Some(stream), NegotiateError::Timeout)),
        Ok(Err(e)) => Err(refused(None, NegotiateError::Io(e))),
        Ok(Ok(())) => Ok(stream),
    }
}

/// Shared by the listener: the server config behind a negotiator.
pub fn acceptor(config: Option<Arc<rustls::ServerConfig>>) -> Option<TlsAcceptor> {
    config.map(TlsAcceptor::from)
}

#[cfg(test)]
mod edge_tests;
#[cfg(test)]
mod tests;
