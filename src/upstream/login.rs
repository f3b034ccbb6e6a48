//! Logging in to the upstream server with an issued credential.

use std::sync::Arc;

use bytes::BytesMut;
use postgres_protocol::authentication::sasl;
use postgres_protocol::message::frontend;
use secrecy::ExposeSecret;

use super::scram::{Binding, ScramClient, ServerFirst};

use super::UpstreamFailure;
use super::{UpstreamError, UpstreamSession};
use crate::auth::verifier::ScramKeys;
use crate::credentials::Credential;
use crate::net::{MaybeTls, UpstreamStream};
use crate::protocol::backend::parse_error_fields;
use crate::protocol::frame::{Frame, FramedStream};
use crate::protocol::startup::encode_startup;

/// Upper bound on any message during login (errors and notices are small).
const MAX_LOGIN_MESSAGE: usize = 1 << 20;

const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT: i32 = 3;
const AUTH_MD5: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

pub(super) async fn login(
    stream: UpstreamStream,
    params: &[(String, String)],
    credential: &Credential,
    allow_insecure_auth: bool,
) -> Result<UpstreamSession, UpstreamError> {
    let binding = channel_binding(&stream);
    let mut framed = FramedStream::new(stream);
    let refs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    send(
        &mut framed,
        &encode_startup(3, 0, &refs),
        UpstreamFailure::Startup,
    )
    .await?;

    authenticate(&mut framed, credential, binding, allow_insecure_auth).await?;

    let mut welcome = BytesMut::new();
    let mut key_data = None;
    loop {
        let frame = read(&mut framed, UpstreamFailure::Startup).await?;
        match frame.tag {
            b'S' | b'N' => welcome.extend_from_slice(frame.raw()),
            b'K' => {
                let body = frame.body();
                if body.len() < 8 || body.len() > 4 + 256 {
                    return Err(UpstreamError::new(
                        UpstreamFailure::Startup,
                        "malformed BackendKeyData",
                    ));
                }
                let pid = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                key_data = Some((pid, body[4..].to_vec()));
            }
            b'Z' => {
                let (pid, key) = key_data.ok_or_else(|| {
                    UpstreamError::new(
                        UpstreamFailure::Startup,
                        "no BackendKeyData before ReadyForQuery",
                    )
                })?;
                let ready = BytesMut::from(&frame.raw()[..]);
                let (stream, leftover) = framed.into_parts();
                return Ok(UpstreamSession {
                    stream,
                    leftover,
                    pid,
                    key,
                    welcome,
                    ready,
                    addr: ([0, 0, 0, 0], 0).into(),
                    tls_version: None,
                });
            }
            b'E' => return Err(error_response(UpstreamFailure::Startup, &frame)),
            // NegotiateProtocolVersion: we asked for 3.0 without options; nothing to adjust.
            b'v' => {}
            other => {
                return Err(UpstreamError::new(
                    UpstreamFailure::Startup,
                    format!("unexpected message {:?} during startup", other as char),
                ));
            }
        }
    }
}

async fn authenticate(
    framed: &mut FramedStream<UpstreamStream>,
    credential: &Credential,
    binding: Option<Vec<u8>>,
    allow_insecure_auth: bool,
) -> Result<(), UpstreamError> {
    let auth_err = |d: &str| UpstreamError::new(UpstreamFailure::Auth, d.to_owned());
    let password = credential.password.expose_secret().as_bytes();
    let mut scram: Option<ScramClient> = None;
    let mut exchanged = false;
    loop {
        let frame = read(framed, UpstreamFailure::Auth).await?;
        match frame.tag {
            b'R' => {}
            b'E' => return Err(error_response(UpstreamFailure::Auth, &frame)),
            b'N' => continue,
            other => {
                return Err(auth_err(&format!(
                    "unexpected message {:?} during authentication",
                    other as char
                )));
            }
        }
        let body = frame.body();
        let (code, data) = body
            .split_first_chunk::<4>()
            .map(|(c, d)| (i32::from_be_bytes(*c), d))
            .ok_or_else(|| auth_err("malformed authentication request"))?;
        let mut out = BytesMut::new();
        match code {
            AUTH_OK if exchanged || allow_insecure_auth => return Ok(()),
            AUTH_OK => {
                return Err(auth_err(
                    "server accepted the login without a password (trust); refused: set allow_insecure_auth on the route to permit it",
                ));
            }
            AUTH_SASL => {
                let (mechanism, cb) = choose_mechanism(data, binding.as_ref())?;
                let s = ScramClient::new(cb);
                frontend::sasl_initial_response(mechanism, &s.client_first(), &mut out)
                    .map_err(|e| auth_err(&e.to_string()))?;
                scram = Some(s);
            }
            AUTH_SASL_CONTINUE => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| auth_err("SASLContinue before SASL"))?;
                // Refuses a second server-first before deriving anything for it.
                let first = s.server_first(data).map_err(|e| auth_err(&e.to_string()))?;
                let keys = keys_for(credential, &first).await?;
                let client_final = s
                    .client_final(&first, &keys)
                    .map_err(|e| auth_err(&e.to_string()))?;
                frontend::sasl_response(&client_final, &mut out)
                    .map_err(|e| auth_err(&e.to_string()))?;
            }
            AUTH_SASL_FINAL => {
                let mut s = scram
                    .take()
                    .ok_or_else(|| auth_err("SASLFinal before SASL"))?;
                // Verifies the server signature: the server knew our verifier.
                s.server_final(data).map_err(|e| auth_err(&e.to_string()))?;
                exchanged = true;
                continue;
            }
            AUTH_CLEARTEXT if allow_insecure_auth => {
                frontend::password_message(password, &mut out)
                    .map_err(|e| auth_err(&e.to_string()))?;
                exchanged = true;
            }
            AUTH_MD5 if allow_insecure_auth => {
                let salt: [u8; 4] = data
                    .try_into()
                    .map_err(|_| auth_err("malformed MD5 request"))?;
                let hash = postgres_protocol::authentication::md5_hash(
                    credential.username.as_bytes(),
                    password,
                    salt,
                );
                frontend::password_message(hash.as_bytes(), &mut out)
                    .map_err(|e| auth_err(&e.to_string()))?;
                exchanged = true;
            }
            AUTH_CLEARTEXT | AUTH_MD5 => {
                return Err(auth_err(
                    "server asked for a cleartext or MD5 password; refused: set allow_insecure_auth on the route to permit it",
                ));
            }
            other => {
                return Err(auth_err(&format!(
                    "unsupported authentication method {other}"
                )));
            }
        }
        send(framed, &out, UpstreamFailure::Auth).await?;
    }
}

/// SCRAM-SHA-256-PLUS when the server offers it and the leg is TLS with a
/// certificate that has a binding, else SCRAM-SHA-256.
fn choose_mechanism(
    offered: &[u8],
    binding: Option<&Vec<u8>>,
) -> Result<(&'static str, Binding), UpstreamError> {
    let mechanisms: Vec<&[u8]> = offered
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .collect();
    let plus = mechanisms.contains(&sasl::SCRAM_SHA_256_PLUS.as_bytes());
    let plain = mechanisms.contains(&sasl::SCRAM_SHA_256.as_bytes());
    match (binding, plus, plain) {
        (Some(hash), true, _) => Ok((
            sasl::SCRAM_SHA_256_PLUS,
            Binding::TlsServerEndPoint(hash.clone()),
        )),
        (Some(_), false, true) => Ok((sasl::SCRAM_SHA_256, Binding::Unrequested)),
        (None, _, true) => Ok((sasl::SCRAM_SHA_256, Binding::Unsupported)),
        _ => Err(UpstreamError::new(
            UpstreamFailure::Auth,
            "server offers no SASL mechanism pgwarden supports",
        )),
    }
}

/// The keys to prove the password with: the credential's own when its
/// source derived them for this salt and count (the built-in source does, when
/// it makes the role), else derived from the password. The derivation runs
/// PBKDF2 for the server's count (bounded by the server-first check), so it
/// runs on the blocking pool, never on a runtime worker that other sessions'
/// relays share.
async fn keys_for(
    credential: &Credential,
    first: &ServerFirst,
) -> Result<Arc<ScramKeys>, UpstreamError> {
    if let Some(keys) = credential
        .scram_keys
        .as_ref()
        .filter(|k| k.fit(&first.salt, first.iterations))
    {
        return Ok(keys.clone());
    }
    let password = credential.password.clone();
    let (salt, iterations) = (first.salt.clone(), first.iterations);
    tokio::task::spawn_blocking(move || {
        Arc::new(ScramKeys::derive(
            password.expose_secret().as_bytes(),
            &salt,
            iterations,
        ))
    })
    .await
    .map_err(|_| UpstreamError::new(UpstreamFailure::Auth, "SCRAM key derivation did not finish"))
}

/// The tls-server-end-point hash of the server's certificate, on TLS.
fn channel_binding(stream: &UpstreamStream) -> Option<Vec<u8>> {
    let MaybeTls::Tls(tls) = stream else {
        return None;
    };
    let cert = tls.get_ref().1.peer_certificates()?.first()?;
    crate::tls::channel_binding::tls_server_end_point(cert)
}

async fn send(
    framed: &mut FramedStream<UpstreamStream>,
    bytes: &[u8],
    step: UpstreamFailure,
) -> Result<(), UpstreamError> {
    framed
        .write_all(bytes)
        .await
        .map_err(|e| UpstreamError::new(step, format!("write: {e}")))
}

async fn read(
    framed: &mut FramedStream<UpstreamStream>,
    step: UpstreamFailure,
) -> Result<Frame, UpstreamError> {
    framed
        .read_frame(MAX_LOGIN_MESSAGE)
        .await
        .map_err(|e| UpstreamError::new(step, format!("read: {e}")))
}

fn error_response(step: UpstreamFailure, frame: &Frame) -> UpstreamError {
    let fields = parse_error_fields(frame.body());
    let get = |c: u8| fields.iter().find(|(k, _)| *k == c).map(|(_, v)| v.clone());
    let code = get(b'C');
    // 28P01 / 28000 during login mean the issued credential was refused.
    let step = match code.as_deref() {
        Some(c) if c.starts_with("28") => UpstreamFailure::Auth,
        _ => step,
    };
    UpstreamError {
        step,
        detail: format!(
            "server said: {} {} ({})",
            get(b'S').unwrap_or_default(),
            get(b'M').unwrap_or_default(),
            code.clone().unwrap_or_default()
        ),
        sqlstate: code,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use secrecy::SecretString;
    use tokio::time::Instant;

    use super::*;
    use crate::credentials::{Lease, LeaseId};

    fn credential(scram_keys: Option<Arc<ScramKeys>>) -> Credential {
        Credential {
            username: "u".into(),
            password: SecretString::from("password".to_owned()),
            scram_keys,
            lease: Lease {
                id: LeaseId::new("l".to_owned()),
                username: "u".into(),
                endpoint: "db:5432".into(),
                issuer: String::new(),
                duration: Duration::ZERO,
                renewable: false,
                issued_at: Instant::now(),
            },
        }
    }

    fn server_first(salt: &[u8], iterations: u32) -> (ScramClient, ServerFirst) {
        let mut client = ScramClient::new(Binding::Unsupported);
        let nonce = String::from_utf8(client.client_first()).unwrap();
        let nonce = nonce.rsplit("r=").next().unwrap().to_owned();
        let message = format!("r={nonce}server,s={},i={iterations}", STANDARD.encode(salt));
        let first = client.server_first(message.as_bytes()).unwrap();
        (client, first)
    }

    /// The credential's keys serve when they fit the server's salt and count;
    /// otherwise the password's keys are derived for what the server asks.
    #[tokio::test]
    async fn keys_that_fit_are_used_and_others_derived() {
        let n4096 = std::num::NonZeroU32::new(4096).unwrap();
        let own = Arc::new(ScramKeys::derive(b"password", b"salt-of-the-role", n4096));
        let (_, first) = server_first(b"salt-of-the-role", 4096);
        let got = keys_for(&credential(Some(own.clone())), &first)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&got, &own));
        // Another salt (the role's password was changed behind pgwarden's back).
        let (_, first) = server_first(b"another salt", 4096);
        let got = keys_for(&credential(Some(own.clone())), &first)
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&got, &own));
        assert_eq!(
            got.verifier(),
            ScramKeys::derive(b"password", b"another salt", n4096).verifier()
        );
        // No keys of its own (Vault's credentials).
        let (_, first) = server_first(b"salt-of-the-role", 4096);
        let got = keys_for(&credential(None), &first).await.unwrap();
        assert_eq!(got.verifier(), own.verifier());
    }

    /// While an upstream login derives its SCRAM key, other tasks on the same
    /// runtime thread keep running (issue 8, item 9).
    #[tokio::test(flavor = "current_thread")]
    async fn scram_key_derivation_leaves_the_runtime_thread_free() {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        let (_, first) = server_first(b"saltsalt", 100_000);
        let hashing = Arc::new(AtomicBool::new(false));
        let ticks = Arc::new(AtomicU64::new(0));
        let ticker = {
            let (hashing, ticks) = (hashing.clone(), ticks.clone());
            tokio::spawn(async move {
                loop {
                    if hashing.load(Ordering::SeqCst) {
                        ticks.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                }
            })
        };
        hashing.store(true, Ordering::SeqCst);
        let done = keys_for(&credential(None), &first).await;
        hashing.store(false, Ordering::SeqCst);
        ticker.abort();
        assert!(done.is_ok(), "{:?}", done.err());
        assert!(
            ticks.load(Ordering::SeqCst) > 0,
            "the runtime thread ran nothing else while hashing"
        );
    }

    /// How the fake server below deviates from PostgreSQL.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Server {
        Honest,
        WrongSignature,
        /// AuthenticationOk right after the client-final, without SASLFinal.
        OkWithoutFinal,
        /// A second server-first instead of the SASLFinal.
        ChallengesTwice,
        /// `e=invalid-proof` in the SASLFinal.
        RefusesProof,
    }

    /// Plays a PostgreSQL server's side of a SCRAM-SHA-256 login (16 rounds, the
    /// role's verifier made from `password`) on `tcp`, as `server` says.
    async fn fake_server(mut tcp: tokio::net::TcpStream, password: &'static [u8], server: Server) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        async fn auth(tcp: &mut tokio::net::TcpStream, code: i32, data: &[u8]) {
            let mut m = vec![b'R'];
            m.extend_from_slice(&((8 + data.len()) as i32).to_be_bytes());
            m.extend_from_slice(&code.to_be_bytes());
            m.extend_from_slice(data);
            tcp.write_all(&m).await.unwrap();
        }
        async fn read_p(tcp: &mut tokio::net::TcpStream) -> Vec<u8> {
            let tag = tcp.read_u8().await.unwrap();
            assert_eq!(tag, b'p');
            let len = tcp.read_i32().await.unwrap() as usize;
            let mut body = vec![0; len - 4];
            tcp.read_exact(&mut body).await.unwrap();
            body
        }
        let sign = |key: &[u8], text: &[u8]| {
            use aws_lc_rs::hmac;
            hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), text)
                .as_ref()
                .to_vec()
        };
        let verifier = ScramKeys::derive(
            password,
            b"role-salt",
            std::num::NonZeroU32::new(16).unwrap(),
        )
        .verifier();
        auth(&mut tcp, AUTH_SASL, b"SCRAM-SHA-256\0\0").await;
        let initial = read_p(&mut tcp).await;
        let client_first = String::from_utf8(initial[14 + 4..].to_vec()).unwrap();
        let bare = client_first.strip_prefix("n,,").unwrap().to_owned();
        let nonce = format!("{}SERVER", bare.strip_prefix("n=,r=").unwrap());
        let server_first = format!("r={nonce},s={},i=16", STANDARD.encode(b"role-salt"));
        auth(&mut tcp, AUTH_SASL_CONTINUE, server_first.as_bytes()).await;
        let client_final = String::from_utf8(read_p(&mut tcp).await).unwrap();
        let (without_proof, proof) = client_final.rsplit_once(",p=").unwrap();
        let auth_message = format!("{bare},{server_first},{without_proof}");
        // The proof must show the password: ClientKey = proof XOR ClientSignature,
        // whose hash is the StoredKey.
        let client_signature = sign(&verifier.stored_key, auth_message.as_bytes());
        let client_key: Vec<u8> = STANDARD
            .decode(proof)
            .unwrap()
            .iter()
            .zip(&client_signature)
            .map(|(p, s)| p ^ s)
            .collect();
        let proven = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &client_key).as_ref()
            == verifier.stored_key.as_slice();
        assert!(proven, "the client's proof does not verify");
        let mut signature = sign(&verifier.server_key, auth_message.as_bytes());
        match server {
            Server::Honest | Server::WrongSignature => {
                if server == Server::WrongSignature {
                    signature[0] ^= 1;
                }
                let v = format!("v={}", STANDARD.encode(&signature));
                auth(&mut tcp, AUTH_SASL_FINAL, v.as_bytes()).await;
                auth(&mut tcp, AUTH_OK, b"").await;
            }
            Server::OkWithoutFinal => auth(&mut tcp, AUTH_OK, b"").await,
            Server::ChallengesTwice => {
                let again = format!("r={nonce},s={},i=1000000", STANDARD.encode(b"other-salt"));
                auth(&mut tcp, AUTH_SASL_CONTINUE, again.as_bytes()).await;
            }
            Server::RefusesProof => auth(&mut tcp, AUTH_SASL_FINAL, b"e=invalid-proof").await,
        }
        // The server is done: pgwarden must have concluded from what it got.
    }

    /// `authenticate` against a server that plays by the rules and against ones that
    /// do not: only the honest one, proving it holds the verifier, lets it through.
    #[tokio::test]
    async fn authenticate_accepts_only_a_server_that_proves_itself() {
        for (server, expect) in [
            (Server::Honest, None),
            (Server::WrongSignature, Some("signature did not verify")),
            (Server::OkWithoutFinal, Some("without a password")),
            (Server::ChallengesTwice, Some("out of order")),
            (Server::RefusesProof, Some("invalid-proof")),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let fake = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.unwrap();
                fake_server(tcp, b"password", server).await;
            });
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut framed = FramedStream::new(MaybeTls::Plain(tcp));
            let got = authenticate(&mut framed, &credential(None), None, false).await;
            drop(framed);
            fake.await.expect("the fake server saw a valid proof");
            match (expect, got) {
                (None, Ok(())) => {}
                (Some(text), Err(e)) => {
                    assert!(e.detail.contains(text), "{server:?}: {}", e.detail)
                }
                (expect, got) => panic!("{server:?}: expected {expect:?}, got {:?}", got.err()),
            }
        }
    }
}
