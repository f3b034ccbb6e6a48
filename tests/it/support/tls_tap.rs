//! A TCP relay between a real client and pgwarden that reads the TLS record layer of what
//! pgwarden sends: every record's content type and length, and the version and cipher suite
//! its ServerHello chose. It decrypts nothing and changes nothing; it also keeps the first
//! byte each client sent (0x16 for direct TLS, 0x00 for a length-prefixed SSLRequest).
//!
//! [`max_record_len`] is the longest record a connection may carry when pgwarden sends at
//! most 8192 bytes of plaintext per record: the bound that follows from the version and
//! the cipher, computed, not guessed.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// TLS record content types.
pub const HANDSHAKE: u8 = 22;
pub const APPLICATION_DATA: u8 = 23;

/// The plaintext limit under test: what a PostgreSQL backend's 8 KiB send buffer gives.
pub const PLAINTEXT_CAP: usize = 8192;

/// What one relayed connection showed.
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// The first byte the client sent.
    pub client_first_byte: Option<u8>,
    /// (content type, length field) of every record pgwarden sent, in order.
    pub records: Vec<(u8, usize)>,
    /// The version the ServerHello chose (0x0303 for TLS 1.2, 0x0304 for TLS 1.3).
    pub version: Option<u16>,
    pub cipher: Option<u16>,
}

impl Connection {
    /// The bound for this connection's records.
    pub fn bound(&self) -> usize {
        max_record_len(
            self.version.expect("a ServerHello was seen"),
            self.cipher.expect("a ServerHello was seen"),
        )
    }

    /// The longest application-data record.
    pub fn longest_application_data(&self) -> usize {
        self.records
            .iter()
            .filter(|(t, _)| *t == APPLICATION_DATA)
            .map(|(_, len)| *len)
            .max()
            .unwrap_or(0)
    }

    /// Fails the test if any record is longer than [`Connection::bound`].
    pub fn assert_within_bound(&self, what: &str) {
        let bound = self.bound();
        let over: Vec<_> = self.records.iter().filter(|(_, l)| *l > bound).collect();
        assert!(
            over.is_empty(),
            "{what}: {} of {} records longer than {bound} bytes (TLS version {:#06x}, cipher \
             {:#06x}), e.g. {:?}",
            over.len(),
            self.records.len(),
            self.version.unwrap(),
            self.cipher.unwrap(),
            &over[..over.len().min(5)]
        );
    }
}

/// The longest TLS record (its length field) that carries at most [`PLAINTEXT_CAP`] bytes
/// of plaintext with this version and cipher suite. Every AEAD rustls offers (AES-GCM,
/// ChaCha20-Poly1305) adds a 16-byte tag. TLS 1.3 adds one byte, the inner content type
/// (rustls adds no padding). TLS 1.2's AES-GCM sends its 8-byte explicit nonce in each
/// record; its ChaCha20-Poly1305 derives the nonce and sends none.
pub fn max_record_len(version: u16, cipher: u16) -> usize {
    const TAG: usize = 16;
    match version {
        0x0304 => match cipher {
            // TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256
            0x1301..=0x1303 => PLAINTEXT_CAP + 1 + TAG,
            other => panic!("unexpected TLS 1.3 cipher suite {other:#06x}"),
        },
        0x0303 => match cipher {
            // TLS_ECDHE_{ECDSA,RSA}_WITH_AES_{128,256}_GCM_SHA{256,384}
            0xC02B | 0xC02C | 0xC02F | 0xC030 => PLAINTEXT_CAP + 8 + TAG,
            // TLS_ECDHE_{RSA,ECDSA}_WITH_CHACHA20_POLY1305_SHA256
            0xCCA8 | 0xCCA9 => PLAINTEXT_CAP + TAG,
            other => panic!("unexpected TLS 1.2 cipher suite {other:#06x}"),
        },
        other => panic!("unexpected TLS version {other:#06x}"),
    }
}

/// The relay; it serves any number of connections until dropped.
pub struct Tap {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Arc<Mutex<Connection>>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tap {
    /// Starts relaying 127.0.0.1:<random> to `target`.
    pub async fn start(target: SocketAddr) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the tap");
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Arc<Mutex<Connection>>>>> = Arc::default();
        let all = seen.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let conn = Arc::new(Mutex::new(Connection::default()));
                all.lock().unwrap().push(conn.clone());
                tokio::spawn(relay(client, target, conn));
            }
        });
        Tap { addr, seen, task }
    }

    /// What each connection showed so far, in the order they came.
    pub fn connections(&self) -> Vec<Connection> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().clone())
            .collect()
    }
}

async fn relay(client: TcpStream, target: SocketAddr, seen: Arc<Mutex<Connection>>) {
    let Ok(server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let first = seen.clone();
    let up = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            first
                .lock()
                .unwrap()
                .client_first_byte
                .get_or_insert(buf[0]);
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let mut parser = RecordParser::default();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            parser.feed(&buf[..n], &mut seen.lock().unwrap());
            if cw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// Splits the server→client byte stream into records.
#[derive(Default)]
struct RecordParser {
    pending: Vec<u8>,
    /// Past the one-byte answer to SSLRequest (absent with direct TLS).
    in_tls: bool,
}

impl RecordParser {
    fn feed(&mut self, bytes: &[u8], conn: &mut Connection) {
        self.pending.extend_from_slice(bytes);
        if !self.in_tls {
            // `S` answers SSLRequest (and `N` a GSSENCRequest); a record starts with its
            // content type, never one of these.
            while let Some(&b) = self.pending.first() {
                if b == b'S' || b == b'N' {
                    self.pending.remove(0);
                } else {
                    self.in_tls = true;
                    break;
                }
            }
        }
        while self.pending.len() >= 5 {
            let len = u16::from_be_bytes([self.pending[3], self.pending[4]]) as usize;
            if self.pending.len() < 5 + len {
                break;
            }
            let typ = self.pending[0];
            if typ == HANDSHAKE && conn.version.is_none() {
                let (version, cipher) = server_hello(&self.pending[5..5 + len]);
                conn.version = Some(version);
                conn.cipher = Some(cipher);
            }
            conn.records.push((typ, len));
            self.pending.drain(..5 + len);
        }
    }
}

/// The version and cipher suite a ServerHello chose (the first handshake record holds it
/// whole: rustls sends it alone, and it is far below any fragment limit).
fn server_hello(record: &[u8]) -> (u16, u16) {
    assert_eq!(record[0], 2, "the first handshake record is a ServerHello");
    let body = &record[4..];
    let legacy_version = u16::from_be_bytes([body[0], body[1]]);
    let session_id_len = body[34] as usize;
    let mut at = 35 + session_id_len;
    let cipher = u16::from_be_bytes([body[at], body[at + 1]]);
    at += 3; // cipher suite, compression method
    let mut version = legacy_version;
    if at + 2 <= body.len() {
        let end = at + 2 + u16::from_be_bytes([body[at], body[at + 1]]) as usize;
        at += 2;
        while at + 4 <= end {
            let typ = u16::from_be_bytes([body[at], body[at + 1]]);
            let len = u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize;
            if typ == 43 {
                // supported_versions: the selected version.
                version = u16::from_be_bytes([body[at + 4], body[at + 5]]);
            }
            at += 4 + len;
        }
    }
    (version, cipher)
}
