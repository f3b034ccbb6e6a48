//! Negotiation before authentication: TLS, GSSAPI refusal, cancel or startup.
//!
//! One loop over SSLRequest | GSSENCRequest | CancelRequest | StartupMessage,
//! with direct TLS (first byte 0x16, ALPN `postgresql` required) handled before
//! it. Pre-TLS packets are read exactly, never buffered ahead; after answering
//! `S`, the next byte must open a TLS record or the client is refused with
//! 08P01 — plaintext smuggled after an SSLRequest never reaches a parser
//! (CVE-2021-23214). Each request may come once. Every refusal that can be
//! answered is answered with a FATAL ErrorResponse of PostgreSQL's own code.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::metrics::RejectReason;
use crate::net::{ClientStream, MaybeTls};
use crate::protocol::backend::{fatal, sqlstate};
use crate::protocol::startup::{self, CancelRequest, StartupError, StartupMessage, StartupPacket};
use crate::protocol::{TLS_HANDSHAKE_RECORD, tls_alpn_ok};
use crate::tls::ALPN_POSTGRESQL;

/// What the client wants, once negotiation is over.
pub enum Negotiated {
    Startup {
        stream: ClientStream,
        startup: StartupMessage,
        tls: Option<TlsInfo>,
    },
    Cancel {
        request: CancelRequest,
        /// Whether it came inside TLS (pgjdbc and libpq before 17 send it in plaintext).
        tls: bool,
        /// The connection it came on: to be closed with close_notify once the
        /// cancel is handled, as PostgreSQL does (libpq 17+ waits for that).
        stream: ClientStream,
    },
}

/// The TLS parameters of a client connection, for the session record.
#[derive(Debug, Clone)]
pub struct TlsInfo {
    pub version: &'static str,
    pub cipher: &'static str,
    pub alpn: Option<String>,
    /// Direct TLS (no SSLRequest first).
    pub direct: bool,
}

/// Why negotiation ended without a startup or cancel. The client has already
/// been told, where that was possible.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct HandshakeError {
    pub reason: RejectReason,
    pub detail: String,
}

fn refused(reason: RejectReason, detail: impl Into<String>) -> HandshakeError {
    HandshakeError {
        reason,
        detail: detail.into(),
    }
}

/// The listener side of negotiation.
pub struct Negotiator {
    pub tls: Option<TlsAcceptor>,
    pub require_tls: bool,
}

impl Negotiator {
    pub async fn negotiate(&self, tcp: TcpStream) -> Result<Negotiated, HandshakeError> {
        let mut first = [0u8; 1];
        let n = tcp
            .peek(&mut first)
            .await
            .map_err(|e| refused(RejectReason::Protocol, e.to_string()))?;
        if n == 0 {
            return Err(refused(
                RejectReason::Protocol,
                "closed before sending anything",
            ));
        }
        let mut stream = ClientStream::Plain(tcp);
        let mut tls_info = None;
        if first[0] == TLS_HANDSHAKE_RECORD {
            let (s, info) = self.direct_tls(stream).await?;
            stream = s;
            tls_info = Some(info);
        }
        // PostgreSQL allows one SSLRequest and one GSSENCRequest per connection,
        // whether it was answered `S` or `N`.
        let mut tried_ssl = false;
        let mut tried_gss = false;
        loop {
            let packet = match startup::read_packet(&mut stream).await {
                Ok(p) => p,
                Err(StartupError::Closed) => {
                    return Err(refused(
                        RejectReason::Protocol,
                        "connection closed during startup",
                    ));
                }
                Err(e) => {
                    let msg = e.to_string();
                    send_fatal(&mut stream, sqlstate::PROTOCOL_VIOLATION, &msg).await;
                    return Err(refused(RejectReason::Protocol, msg));
                }
            };
            match packet {
                StartupPacket::SslRequest if tried_ssl || tls_info.is_some() => {
                    return Err(fatal_and_refuse(
                        &mut stream,
                        RejectReason::Protocol,
                        sqlstate::PROTOCOL_VIOLATION,
                        "duplicate SSL negotiation request",
                    )
                    .await);
                }
                StartupPacket::SslRequest => match &self.tls {
                    None => {
                        tried_ssl = true;
                        write_raw(&mut stream, b"N").await?;
                    }
                    Some(_) => {
                        let (s, info) = self.ssl_request(stream).await?;
                        stream = s;
                        tls_info = Some(info);
                    }
                },
                StartupPacket::GssEncRequest if tried_gss || tls_info.is_some() => {
                    return Err(fatal_and_refuse(
                        &mut stream,
                        RejectReason::Protocol,
                        sqlstate::PROTOCOL_VIOLATION,
                        "unexpected GSSAPI encryption request",
                    )
                    .await);
                }
                StartupPacket::GssEncRequest => {
                    tried_gss = true;
                    write_raw(&mut stream, b"N").await?;
                }
                StartupPacket::Cancel(request) => {
                    return Ok(Negotiated::Cancel {
                        request,
                        tls: tls_info.is_some(),
                        stream,
                    });
                }
                StartupPacket::Startup(s) => {
                    if tls_info.is_none() && self.require_tls {
                        return Err(fatal_and_refuse(
                            &mut stream,
                            RejectReason::TlsRequired,
                            sqlstate::INVALID_AUTHORIZATION,
                            "TLS is required: connect with sslmode=require or stricter",
                        )
                        .await);
                    }
                    if s.major != 3 {
                        let msg = format!(
                            "unsupported frontend protocol {}.{}: server supports 3.0 to 3.2",
                            s.major, s.minor
                        );
                        return Err(fatal_and_refuse(
                            &mut stream,
                            RejectReason::Protocol,
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            &msg,
                        )
                        .await);
                    }
                    return Ok(Negotiated::Startup {
                        stream,
                        startup: s,
                        tls: tls_info,
                    });
                }
            }
        }
    }

    /// Answers `S`, checks that what follows is TLS, and runs the handshake.
    async fn ssl_request(
        &self,
        stream: ClientStream,
    ) -> Result<(ClientStream, TlsInfo), HandshakeError> {
        let MaybeTls::Plain(mut tcp) = stream else {
            return Err(refused(RejectReason::Protocol, "SSLRequest inside TLS"));
        };
        tcp.write_all(b"S")
            .await
            .map_err(|e| refused(RejectReason::Protocol, e.to_string()))?;
        let mut next = [0u8; 1];
        let n = tcp
            .peek(&mut next)
            .await
            .map_err(|e| refused(RejectReason::TlsHandshake, e.to_string()))?;
        if n == 0 {
            return Err(refused(
                RejectReason::TlsHandshake,
                "closed after SSLRequest",
            ));
        }
        if next[0] != TLS_HANDSHAKE_RECORD {
            let mut plain = ClientStream::Plain(tcp);
            return Err(fatal_and_refuse(
                &mut plain,
                RejectReason::Protocol,
                sqlstate::PROTOCOL_VIOLATION,
                "received unencrypted data after SSL request",
            )
            .await);
        }
        self.accept(tcp, false).await
    }

    async fn direct_tls(
        &self,
        stream: ClientStream,
    ) -> Result<(ClientStream, TlsInfo), HandshakeError> {
        let MaybeTls::Plain(tcp) = stream else {
            return Err(refused(RejectReason::Protocol, "direct TLS inside TLS"));
        };
        if self.tls.is_none() {
            return Err(refused(
                RejectReason::TlsHandshake,
                "direct TLS attempted but TLS is not configured",
            ));
        }
        let (mut s, info) = self.accept(tcp, true).await?;
        if info.alpn.as_deref().map(str::as_bytes) != Some(ALPN_POSTGRESQL) {
            return Err(fatal_and_refuse(
                &mut s,
                RejectReason::TlsHandshake,
                sqlstate::PROTOCOL_VIOLATION,
                "direct SSL connection requires ALPN protocol \"postgresql\"",
            )
            .await);
        }
        Ok((s, info))
    }

    async fn accept(
        &self,
        tcp: TcpStream,
        direct: bool,
    ) -> Result<(ClientStream, TlsInfo), HandshakeError> {
        let acceptor: &TlsAcceptor = self
            .tls
            .as_ref()
            .ok_or_else(|| refused(RejectReason::TlsHandshake, "TLS is not configured"))?;
        let tls = acceptor.accept(tcp).await.map_err(|e| {
            refused(
                RejectReason::TlsHandshake,
                format!("TLS handshake failed: {e}"),
            )
        })?;
        let conn = tls.get_ref().1;
        let alpn = conn
            .alpn_protocol()
            .map(|a| String::from_utf8_lossy(a).into_owned());
        if !tls_alpn_ok(conn.alpn_protocol()) {
            return Err(refused(
                RejectReason::TlsHandshake,
                "unexpected ALPN protocol",
            ));
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
            alpn,
            direct,
        };
        Ok((MaybeTls::Tls(Box::new(tls)), info))
    }
}

async fn write_raw(stream: &mut ClientStream, bytes: &[u8]) -> Result<(), HandshakeError> {
    let r = async {
        stream.write_all(bytes).await?;
        stream.flush().await
    };
    r.await
        .map_err(|e| refused(RejectReason::Protocol, e.to_string()))
}

/// A FATAL, then the close: close_notify on TLS, FIN (bounded; best effort,
/// the client may already be gone).
pub async fn send_fatal(stream: &mut ClientStream, code: &str, message: &str) {
    crate::net::goodbye(stream, &fatal(code, message)).await;
}

async fn fatal_and_refuse(
    stream: &mut ClientStream,
    reason: RejectReason,
    code: &str,
    message: &str,
) -> HandshakeError {
    send_fatal(stream, code, message).await;
    refused(reason, message)
}

/// Shared by the listener: the server config behind a negotiator.
pub fn acceptor(config: Option<Arc<rustls::ServerConfig>>) -> Option<TlsAcceptor> {
    config.map(TlsAcceptor::from)
}
