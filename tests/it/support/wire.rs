//! A minimal PostgreSQL client speaking the wire protocol by hand, for what real clients
//! cannot be made to do: malformed or out-of-order packets, direct TLS, protocol 3.2 and
//! `_pq_.*` options, reading the raw welcome (every ParameterStatus, BackendKeyData), and
//! comparing exact ErrorResponse bytes.
//!
//! Every read has a deadline, so a test never hangs on a silent peer.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

// For the test binaries; one may use none of them.
#[allow(unused_imports)]
pub use pgwarden::protocol::startup::{encode_cancel, encode_ssl_request, encode_startup};

/// The longest any single read may take before the test fails.
pub const READ_DEADLINE: Duration = Duration::from_secs(60);

pub type Tls = tokio_rustls::client::TlsStream<TcpStream>;

/// One backend message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Message {
    /// The message as it was on the wire.
    pub fn raw(&self) -> Vec<u8> {
        let mut out = vec![self.tag];
        out.extend_from_slice(&((self.body.len() + 4) as i32).to_be_bytes());
        out.extend_from_slice(&self.body);
        out
    }

    /// Fields of an ErrorResponse or NoticeResponse.
    pub fn fields(&self) -> Vec<(u8, String)> {
        pgwarden::protocol::backend::parse_error_fields(&self.body)
    }

    pub fn field(&self, code: u8) -> Option<String> {
        self.fields()
            .into_iter()
            .find(|(c, _)| *c == code)
            .map(|(_, v)| v)
    }

    /// Asserts this is a FATAL ErrorResponse with `code` and `text`.
    pub fn assert_fatal(&self, code: &str, text: &str) {
        assert_eq!(self.tag, b'E', "expected an ErrorResponse, got {self:?}");
        assert_eq!(
            self.field(b'S').as_deref(),
            Some("FATAL"),
            "{:?}",
            self.fields()
        );
        assert_eq!(
            self.field(b'V').as_deref(),
            Some("FATAL"),
            "{:?}",
            self.fields()
        );
        assert_eq!(
            self.field(b'C').as_deref(),
            Some(code),
            "{:?}",
            self.fields()
        );
        assert_eq!(
            self.field(b'M').as_deref(),
            Some(text),
            "{:?}",
            self.fields()
        );
    }

    /// For an Authentication ('R') message: its code.
    pub fn auth_code(&self) -> Option<i32> {
        (self.tag == b'R' && self.body.len() >= 4)
            .then(|| i32::from_be_bytes(self.body[..4].try_into().unwrap()))
    }
}

pub fn gssenc_request() -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&8i32.to_be_bytes());
    out[4..].copy_from_slice(&80_877_104u32.to_be_bytes());
    out
}

/// A StartupMessage for protocol 3.`minor`.
pub fn startup(minor: u16, params: &[(&str, &str)]) -> Vec<u8> {
    encode_startup(3, minor, params)
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect to pgwarden")
}

/// A connection from a local address of our choosing (any of 127.0.0.0/8 works on Linux).
pub async fn connect_from(local: &str, addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind(SocketAddr::new(local.parse().unwrap(), 0))
        .unwrap_or_else(|e| panic!("bind to {local}: {e}"));
    socket.connect(addr).await.expect("connect to pgwarden")
}

/// Writes `bytes` in one call.
pub async fn send<S: AsyncWrite + Unpin>(s: &mut S, bytes: &[u8]) {
    s.write_all(bytes).await.expect("write");
    s.flush().await.expect("flush");
}

/// One byte (the answer to SSLRequest or GSSENCRequest); `None` at EOF.
pub async fn read_byte<S: AsyncRead + Unpin>(s: &mut S) -> Option<u8> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(READ_DEADLINE, s.read(&mut b)).await {
        Err(_) => panic!("no answer within {READ_DEADLINE:?}"),
        Ok(Ok(1)) => Some(b[0]),
        Ok(_) => None,
    }
}

/// Whether the peer closes the connection (EOF or reset) without sending another byte.
pub async fn closed_without_a_byte<S: AsyncRead + Unpin>(s: &mut S) -> Result<(), Vec<u8>> {
    let mut buf = [0u8; 256];
    match tokio::time::timeout(READ_DEADLINE, s.read(&mut buf)).await {
        Err(_) => panic!("connection still open after {READ_DEADLINE:?}"),
        Ok(Ok(0)) | Ok(Err(_)) => Ok(()),
        Ok(Ok(n)) => Err(buf[..n].to_vec()),
    }
}

/// A client TLS configuration trusting `ca_pem`, offering ALPN `postgresql` or none.
pub fn tls_config(ca_pem: &str, alpn: bool) -> Arc<rustls::ClientConfig> {
    let config = pgwarden::tls::pg_connector::verify_full_client_config(ca_pem.as_bytes())
        .expect("client TLS configuration");
    if alpn {
        return config;
    }
    let mut config = (*config).clone();
    config.alpn_protocols.clear();
    Arc::new(config)
}

/// A TLS handshake (verify-full for 127.0.0.1) on `tcp`.
pub async fn tls(tcp: TcpStream, ca_pem: &str, alpn: bool) -> io::Result<Tls> {
    let connector = tokio_rustls::TlsConnector::from(tls_config(ca_pem, alpn));
    let name = ServerName::try_from("127.0.0.1").unwrap();
    tokio::time::timeout(READ_DEADLINE, connector.connect(name, tcp))
        .await
        .unwrap_or_else(|_| panic!("TLS handshake took more than {READ_DEADLINE:?}"))
}

/// SSLRequest, `S`, TLS: the way libpq starts.
pub async fn ssl(addr: SocketAddr, ca_pem: &str) -> Tls {
    let mut tcp = connect(addr).await;
    send(&mut tcp, &encode_ssl_request()).await;
    assert_eq!(read_byte(&mut tcp).await, Some(b'S'), "SSLRequest answer");
    tls(tcp, ca_pem, true).await.expect("TLS handshake")
}

/// The `tls-server-end-point` channel binding data of a TLS connection.
pub fn channel_binding(tls: &Tls) -> Vec<u8> {
    let cert = &tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("server certificate")[0];
    pgwarden::tls::channel_binding::tls_server_end_point(cert).expect("binding data")
}

/// The next message; `None` at EOF or on a connection reset.
pub async fn read_message<S: AsyncRead + Unpin>(s: &mut S) -> Option<Message> {
    let read = async {
        let mut header = [0u8; 5];
        s.read_exact(&mut header).await.ok()?;
        let len = i32::from_be_bytes(header[1..].try_into().unwrap());
        assert!(
            (4..1 << 30).contains(&len),
            "bad length {len} for {:?}",
            header[0] as char
        );
        let mut body = vec![0u8; len as usize - 4];
        s.read_exact(&mut body).await.ok()?;
        Some(Message {
            tag: header[0],
            body,
        })
    };
    tokio::time::timeout(READ_DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("no message within {READ_DEADLINE:?}"))
}

/// Every message until the peer closes.
pub async fn read_until_closed<S: AsyncRead + Unpin>(s: &mut S) -> Vec<Message> {
    let mut out = Vec::new();
    while let Some(m) = read_message(s).await {
        out.push(m);
    }
    out
}

/// What a successful login brought.
#[derive(Debug)]
pub struct Welcome {
    /// The AuthenticationSASL message, verbatim.
    pub sasl: Message,
    /// NegotiateProtocolVersion, if one came.
    pub negotiate: Option<Message>,
    /// Every ParameterStatus, in order.
    pub params: Vec<(String, String)>,
    pub pid: i32,
    pub key: Vec<u8>,
    /// The ReadyForQuery status.
    pub status: u8,
}

impl Welcome {
    /// NegotiateProtocolVersion's newest minor and the options it lists.
    pub fn negotiated(&self) -> Option<(i32, Vec<String>)> {
        let m = self.negotiate.as_ref()?;
        let minor = i32::from_be_bytes(m.body[..4].try_into().unwrap());
        let count = i32::from_be_bytes(m.body[4..8].try_into().unwrap());
        let options: Vec<String> = m.body[8..]
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8(s.to_vec()).unwrap())
            .collect();
        assert_eq!(options.len(), count as usize, "option count in {m:?}");
        Some((minor, options))
    }
}

/// SCRAM-SHA-256 login after the StartupMessage was sent; -PLUS when `binding` is given.
/// `Err` carries the ErrorResponse that ended it.
pub async fn login<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    password: &str,
    binding: Option<Vec<u8>>,
) -> Result<Welcome, Message> {
    let mut negotiate = None;
    let sasl_request = loop {
        let m = read_message(s).await.expect("an authentication request");
        match m.tag {
            b'v' => negotiate = Some(m),
            b'E' => return Err(m),
            b'R' if m.auth_code() == Some(10) => break m,
            _ => panic!("unexpected {m:?} before the SASL request"),
        }
    };
    let (mechanism, cb) = match binding {
        Some(b) => (
            sasl::SCRAM_SHA_256_PLUS,
            ChannelBinding::tls_server_end_point(b),
        ),
        None => (sasl::SCRAM_SHA_256, ChannelBinding::unrequested()),
    };
    let mut scram = ScramSha256::new(password.as_bytes(), cb);
    let mut out = BytesMut::new();
    frontend::sasl_initial_response(mechanism, scram.message(), &mut out).unwrap();
    send(s, &out).await;
    let m = read_message(s).await.expect("SASLContinue");
    if m.tag == b'E' {
        return Err(m);
    }
    assert_eq!(m.auth_code(), Some(11), "{m:?}");
    scram.update(&m.body[4..]).expect("server-first-message");
    out.clear();
    frontend::sasl_response(scram.message(), &mut out).unwrap();
    send(s, &out).await;
    let m = read_message(s).await.expect("SASLFinal");
    if m.tag == b'E' {
        return Err(m);
    }
    assert_eq!(m.auth_code(), Some(12), "{m:?}");
    scram
        .finish(&m.body[4..])
        .expect("server signature verifies");

    let mut params = Vec::new();
    let mut key_data = None;
    loop {
        let m = read_message(s).await.expect("the welcome");
        match m.tag {
            b'R' => assert_eq!(m.auth_code(), Some(0), "{m:?}"),
            b'S' => {
                let mut parts = m.body.split(|&b| b == 0);
                let name = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
                let value = String::from_utf8(parts.next().unwrap().to_vec()).unwrap();
                params.push((name, value));
            }
            b'K' => {
                let pid = i32::from_be_bytes(m.body[..4].try_into().unwrap());
                key_data = Some((pid, m.body[4..].to_vec()));
            }
            b'N' => {}
            b'E' => return Err(m),
            b'Z' => {
                let (pid, key) = key_data.expect("BackendKeyData before ReadyForQuery");
                return Ok(Welcome {
                    sasl: sasl_request,
                    negotiate,
                    params,
                    pid,
                    key,
                    status: m.body[0],
                });
            }
            _ => panic!("unexpected {m:?} in the welcome"),
        }
    }
}

/// A simple query; the rows of its (last) result as text, or the ErrorResponse.
pub async fn query<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    sql: &str,
) -> Result<Vec<Vec<Option<String>>>, Message> {
    send_query(s, sql).await;
    read_result(s).await
}

/// Sends a simple query without waiting for its result.
pub async fn send_query<S: AsyncWrite + Unpin>(s: &mut S, sql: &str) {
    let mut out = BytesMut::new();
    frontend::query(sql, &mut out).unwrap();
    send(s, &out).await;
}

/// Reads a query's result up to ReadyForQuery.
pub async fn read_result<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<Vec<Vec<Option<String>>>, Message> {
    let mut rows = Vec::new();
    let mut error = None;
    loop {
        let m = read_message(s).await.expect("query response");
        match m.tag {
            b'D' => rows.push(data_row(&m.body)),
            b'E' => error = Some(m),
            b'Z' => return error.map_or(Ok(rows), Err),
            _ => {}
        }
    }
}

fn data_row(body: &[u8]) -> Vec<Option<String>> {
    let n = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut rest = &body[2..];
    let mut row = Vec::with_capacity(n);
    for _ in 0..n {
        let len = i32::from_be_bytes(rest[..4].try_into().unwrap());
        rest = &rest[4..];
        if len < 0 {
            row.push(None);
        } else {
            let (v, after) = rest.split_at(len as usize);
            row.push(Some(String::from_utf8(v.to_vec()).unwrap()));
            rest = after;
        }
    }
    row
}

/// Sends Terminate and closes.
pub async fn terminate<S: AsyncWrite + Unpin>(s: &mut S) {
    let _ = s.write_all(&[b'X', 0, 0, 0, 4]).await;
    let _ = s.shutdown().await;
}

/// SSLRequest, TLS, a protocol 3.0 StartupMessage with `params` and a SCRAM-SHA-256-PLUS
/// login: how libpq with `channel_binding=require` logs in, to pgwarden or straight to a
/// cluster. The stream, with the welcome or the ErrorResponse that refused the login.
pub async fn open(
    addr: SocketAddr,
    ca_pem: &str,
    params: &[(&str, &str)],
    password: &str,
) -> (Tls, Result<Welcome, Message>) {
    let mut s = ssl(addr, ca_pem).await;
    let binding = channel_binding(&s);
    send(&mut s, &startup(0, params)).await;
    let welcome = login(&mut s, password, Some(binding)).await;
    (s, welcome)
}

/// Every message up to and including the next ReadyForQuery.
pub async fn read_until_ready<S: AsyncRead + Unpin>(s: &mut S) -> Vec<Message> {
    let mut out = Vec::new();
    loop {
        let m = read_message(s)
            .await
            .expect("the connection closed before ReadyForQuery");
        let done = m.tag == b'Z';
        out.push(m);
        if done {
            return out;
        }
    }
}

impl Welcome {
    /// The value of one ParameterStatus.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How the server ended a TLS session.
#[derive(Debug)]
pub enum TlsEnd {
    /// With a close_notify alert: rustls then reads 0 bytes.
    CloseNotify,
    /// Without one (rustls: `UnexpectedEof`), or with a reset or another error.
    Unclean(io::Error),
}

/// Reads until the server ends the TLS session; the plaintext read and how it ended.
pub async fn read_to_tls_end(s: &mut Tls) -> (Vec<u8>, TlsEnd) {
    let read = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => return (out, TlsEnd::CloseNotify),
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) => return (out, TlsEnd::Unclean(e)),
            }
        }
    };
    tokio::time::timeout(READ_DEADLINE, read)
        .await
        .unwrap_or_else(|_| panic!("the server did not end the session within {READ_DEADLINE:?}"))
}

/// Reads until the server ends the TLS session and fails the test unless it ended with
/// close_notify, as a PostgreSQL backend does; the messages read before the end.
pub async fn expect_close_notify(s: &mut Tls, what: &str) -> Vec<Message> {
    let (bytes, end) = read_to_tls_end(s).await;
    let mut rest = &bytes[..];
    let mut messages = Vec::new();
    while !rest.is_empty() {
        messages.push(read_message(&mut rest).await.expect("whole messages"));
    }
    match end {
        TlsEnd::CloseNotify => messages,
        TlsEnd::Unclean(e) => panic!(
            "{what}: the TLS session ended without close_notify ({:?}: {e}) after {messages:?}",
            e.kind()
        ),
    }
}
