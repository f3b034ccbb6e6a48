//! The upstream leg: from a fresh credential to a backend ready for queries.
//!
//! TCP → SSLRequest → exactly one byte → TLS (verify-full by default) →
//! StartupMessage with the issued user, the routed database and the client's
//! filtered parameters → SCRAM-SHA-256-PLUS when offered, else SCRAM-SHA-256 →
//! ParameterStatus, BackendKeyData, ReadyForQuery collected for the welcome.
//! Cleartext, MD5 and no-password logins are refused unless the route opts in.
//! Upstream error text goes to the log only; the client sees a generic message.

mod login;
pub(crate) mod scram;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::config::{UpstreamConfig, UpstreamTls};
use crate::credentials::Credential;
use crate::metrics::{self, Label};
use crate::net::{MaybeTls, UpstreamStream};
use crate::protocol::startup::{encode_cancel, encode_ssl_request};

/// Where and how to reach one upstream server; built once per route.
pub struct UpstreamTarget {
    pub config: UpstreamConfig,
    /// `None` when the route says `tls = "disable"`.
    tls: Option<(TlsConnector, ServerName<'static>)>,
    keepalive: Duration,
}

/// A backend that has accepted the login and is ready for queries.
pub struct UpstreamSession {
    pub stream: UpstreamStream,
    /// Bytes read past the ReadyForQuery (normally none).
    pub leftover: BytesMut,
    /// The backend's process id and cancel key.
    pub pid: i32,
    pub key: Vec<u8>,
    /// ParameterStatus and NoticeResponse frames, verbatim, in order.
    pub welcome: BytesMut,
    /// The ReadyForQuery frame, verbatim.
    pub ready: BytesMut,
    pub addr: SocketAddr,
    pub tls_version: Option<&'static str>,
}

/// Why the upstream could not be reached or logged in to. The detail is for
/// the log; clients get a generic message.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {detail}")]
pub struct UpstreamError {
    pub step: UpstreamFailure,
    pub detail: String,
    /// SQLSTATE of an upstream ErrorResponse, when there was one.
    pub sqlstate: Option<String>,
}

/// Which step of reaching the database failed: the `reason` of
/// `pgwarden_upstream_connect_failures_total` and of `session_failed` records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    Connect,
    Tls,
    Auth,
    Startup,
    /// The credential source gave no credential to log in with.
    Credentials,
}

impl Label for UpstreamFailure {
    const ALL: &'static [Self] = &[
        UpstreamFailure::Connect,
        UpstreamFailure::Tls,
        UpstreamFailure::Auth,
        UpstreamFailure::Startup,
        UpstreamFailure::Credentials,
    ];

    fn as_str(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "connect",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Auth => "auth",
            UpstreamFailure::Startup => "startup",
            UpstreamFailure::Credentials => "credentials",
        }
    }
}

pub(crate) static CONNECT_FAILURES: metrics::Counter<UpstreamFailure> =
    metrics::Counter::new(metrics::name::UPSTREAM_CONNECT_FAILURES, "reason");

/// Why an upstream target could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("server name {0:?} is neither a DNS name nor an IP address")]
    ServerName(String),
    #[error("TLS configuration missing")]
    TlsConfigMissing,
}

impl UpstreamError {
    pub(crate) fn new(step: UpstreamFailure, detail: impl Into<String>) -> Self {
        Self {
            step,
            detail: detail.into(),
            sqlstate: None,
        }
    }
}

impl std::fmt::Display for UpstreamFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl UpstreamTarget {
    pub fn new(
        config: UpstreamConfig,
        tls_config: Option<Arc<ClientConfig>>,
        keepalive: Duration,
    ) -> Result<Self, TargetError> {
        let tls = match (config.tls, tls_config) {
            (UpstreamTls::Disable, _) => None,
            (_, Some(c)) => {
                let name = config
                    .server_name
                    .clone()
                    .unwrap_or_else(|| config.host.clone());
                let name = ServerName::try_from(name.clone())
                    .map_err(|_| TargetError::ServerName(name))?;
                Some((TlsConnector::from(c), name))
            }
            (_, None) => return Err(TargetError::TlsConfigMissing),
        };
        Ok(Self {
            config,
            tls,
            keepalive,
        })
    }

    pub fn endpoint(&self) -> String {
        self.config.endpoint()
    }

    /// Connects and logs in with `credential`. `params` are the client's
    /// startup parameters already filtered; `session_role` is applied as a
    /// session default so objects created belong to it.
    pub async fn connect(
        &self,
        credential: &Credential,
        params: &[(String, String)],
        session_role: Option<&str>,
    ) -> Result<UpstreamSession, UpstreamError> {
        let (stream, addr) = self.open(None).await?;
        let tls_version = match &stream {
            MaybeTls::Tls(t) => t.get_ref().1.protocol_version().and_then(|v| v.as_str()),
            MaybeTls::Plain(_) => None,
        };
        let params = startup_params(
            &credential.username,
            &self.config.database,
            params,
            session_role,
        );
        let mut session =
            login::login(stream, &params, credential, self.config.allow_insecure_auth).await?;
        session.addr = addr;
        session.tls_version = tls_version;
        Ok(session)
    }

    /// Forwards a cancel request for `pid`/`key` to the server at `addr` (the
    /// address the session's connection reached, not the host name resolved
    /// anew, which may name several servers), over the same kind of channel a
    /// session uses.
    pub async fn cancel(
        &self,
        addr: SocketAddr,
        pid: i32,
        key: &[u8],
    ) -> Result<(), UpstreamError> {
        let (mut stream, _) = self.open(Some(addr)).await?;
        let packet = encode_cancel(pid, key);
        let write = async {
            stream.write_all(&packet).await?;
            stream.flush().await?;
            stream.shutdown().await
        };
        write.await.map_err(|e| {
            UpstreamError::new(UpstreamFailure::Connect, format!("sending cancel: {e}"))
        })
    }

    /// TCP to `addr`, or to the configured host, then TLS unless disabled.
    /// Either way the certificate is verified against the configured name.
    async fn open(
        &self,
        addr: Option<SocketAddr>,
    ) -> Result<(UpstreamStream, SocketAddr), UpstreamError> {
        let connect_timeout = self.config.connect_timeout;
        let connect = async {
            match addr {
                Some(addr) => TcpStream::connect(addr).await,
                None => TcpStream::connect((self.config.host.as_str(), self.config.port)).await,
            }
        };
        let tcp = tokio::time::timeout(connect_timeout, connect)
            .await
            .map_err(|_| {
                UpstreamError::new(
                    UpstreamFailure::Connect,
                    format!("timed out after {connect_timeout:?}"),
                )
            })?
            .map_err(|e| UpstreamError::new(UpstreamFailure::Connect, e.to_string()))?;
        let addr = tcp
            .peer_addr()
            .map_err(|e| UpstreamError::new(UpstreamFailure::Connect, e.to_string()))?;
        crate::net::tune(&tcp, self.keepalive)
            .map_err(|e| UpstreamError::new(UpstreamFailure::Connect, e.to_string()))?;
        let Some((connector, name)) = &self.tls else {
            return Ok((MaybeTls::Plain(tcp), addr));
        };
        let tls = tokio::time::timeout(connect_timeout, start_tls(tcp, connector, name.clone()))
            .await
            .map_err(|_| UpstreamError::new(UpstreamFailure::Tls, "TLS negotiation timed out"))??;
        Ok((MaybeTls::Tls(Box::new(tls)), addr))
    }
}

/// SSLRequest, then exactly one byte of answer, then the TLS handshake.
async fn start_tls(
    mut tcp: TcpStream,
    connector: &TlsConnector,
    name: ServerName<'static>,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, UpstreamError> {
    let tls_err = |d: String| UpstreamError::new(UpstreamFailure::Tls, d);
    tcp.write_all(&encode_ssl_request())
        .await
        .map_err(|e| tls_err(format!("sending SSLRequest: {e}")))?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(|e| tls_err(format!("reading SSLRequest answer: {e}")))?;
    match answer[0] {
        b'S' => {}
        b'N' => return Err(tls_err("server does not accept TLS".into())),
        other => {
            return Err(tls_err(format!(
                "unexpected answer {other:#04x} to SSLRequest"
            )));
        }
    }
    connector
        .connect(name, tcp)
        .await
        .map_err(|e| tls_err(format!("handshake: {e}")))
}

/// The StartupMessage parameters: issued user and routed database first, then
/// the client's own, with `-c role=…` appended to `options` for `session_role`.
fn startup_params(
    user: &str,
    database: &str,
    client: &[(String, String)],
    session_role: Option<&str>,
) -> Vec<(String, String)> {
    let mut out = vec![
        ("user".to_owned(), user.to_owned()),
        ("database".to_owned(), database.to_owned()),
    ];
    let mut options: Option<String> = None;
    for (k, v) in client {
        if k == "options" {
            options = Some(v.clone());
        } else {
            out.push((k.clone(), v.clone()));
        }
    }
    if let Some(role) = session_role {
        let ours = format!("-c role={}", crate::protocol::options::escape(role));
        options = Some(match options {
            Some(theirs) if !theirs.trim().is_empty() => format!("{theirs} {ours}"),
            _ => ours,
        });
    }
    if let Some(o) = options {
        out.push(("options".to_owned(), o));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_role_goes_last_in_options() {
        let p = startup_params(
            "u",
            "d",
            &[
                ("options".into(), "-c statement_timeout=5s".into()),
                ("application_name".into(), "app".into()),
            ],
            Some("owner role"),
        );
        assert_eq!(p[0], ("user".into(), "u".into()));
        assert_eq!(p[1], ("database".into(), "d".into()));
        assert!(p.contains(&("application_name".into(), "app".into())));
        assert_eq!(
            p.last().unwrap(),
            &(
                "options".into(),
                "-c statement_timeout=5s -c role=owner\\ role".into()
            )
        );
    }
}
