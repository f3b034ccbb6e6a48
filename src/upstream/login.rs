//! Logging in to the upstream server with an issued credential.

use bytes::BytesMut;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::frontend;
use secrecy::ExposeSecret;

use super::UpstreamFailure;
use super::{UpstreamError, UpstreamSession};
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
    let mut scram: Option<ScramSha256> = None;
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
                let s = ScramSha256::new(password, cb);
                frontend::sasl_initial_response(mechanism, s.message(), &mut out)
                    .map_err(|e| auth_err(&e.to_string()))?;
                scram = Some(s);
            }
            AUTH_SASL_CONTINUE => {
                let s = scram
                    .take()
                    .ok_or_else(|| auth_err("SASLContinue before SASL"))?;
                let s = server_first(s, data.to_vec()).await?;
                frontend::sasl_response(s.message(), &mut out)
                    .map_err(|e| auth_err(&e.to_string()))?;
                scram = Some(s);
            }
            AUTH_SASL_FINAL => {
                let s = scram
                    .as_mut()
                    .ok_or_else(|| auth_err("SASLFinal before SASL"))?;
                // Verifies the server signature: the server knew our verifier.
                s.finish(data)
                    .map_err(|_| auth_err("SCRAM server signature did not verify"))?;
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
) -> Result<(&'static str, ChannelBinding), UpstreamError> {
    let mechanisms: Vec<&[u8]> = offered
        .split(|&b| b == 0)
        .filter(|m| !m.is_empty())
        .collect();
    let plus = mechanisms.contains(&sasl::SCRAM_SHA_256_PLUS.as_bytes());
    let plain = mechanisms.contains(&sasl::SCRAM_SHA_256.as_bytes());
    match (binding, plus, plain) {
        (Some(hash), true, _) => Ok((
            sasl::SCRAM_SHA_256_PLUS,
            ChannelBinding::tls_server_end_point(hash.clone()),
        )),
        (Some(_), false, true) => Ok((sasl::SCRAM_SHA_256, ChannelBinding::unrequested())),
        (None, _, true) => Ok((sasl::SCRAM_SHA_256, ChannelBinding::unsupported())),
        _ => Err(UpstreamError::new(
            UpstreamFailure::Auth,
            "server offers no SASL mechanism pgwarden supports",
        )),
    }
}

/// Takes the server-first-message, refusing an iteration count no sane
/// server uses. The key derivation runs that many rounds of PBKDF2 (up to
/// [`MAX_SCRAM_ITERATIONS`]), so it runs on the blocking pool, never on a
/// runtime worker that other sessions' relays share.
async fn server_first(mut scram: ScramSha256, data: Vec<u8>) -> Result<ScramSha256, UpstreamError> {
    let auth_err = |d: &str| UpstreamError::new(UpstreamFailure::Auth, d.to_owned());
    if iterations(&data).is_none_or(|i| i > MAX_SCRAM_ITERATIONS) {
        return Err(auth_err(
            "SCRAM server-first-message has no usable iteration count",
        ));
    }
    tokio::task::spawn_blocking(move || scram.update(&data).map(|()| scram))
        .await
        .map_err(|_| auth_err("SCRAM key derivation did not finish"))?
        .map_err(|_| auth_err("invalid SCRAM server-first-message"))
}

/// The most SCRAM iterations pgwarden computes for an upstream login
/// (PostgreSQL's default is 4096; `scram_iterations` may raise it). It is
/// postgres-protocol's own limit too: past it the library refuses the message.
const MAX_SCRAM_ITERATIONS: u32 = 100_000;

/// The `i=` attribute of a SCRAM server-first-message.
fn iterations(server_first: &[u8]) -> Option<u32> {
    std::str::from_utf8(server_first)
        .ok()?
        .split(',')
        .find_map(|attr| attr.strip_prefix("i="))?
        .parse()
        .ok()
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
    use super::*;

    /// While an upstream login derives its SCRAM key, other tasks on the same
    /// runtime thread keep running (issue 8, item 9).
    #[tokio::test(flavor = "current_thread")]
    async fn scram_key_derivation_leaves_the_runtime_thread_free() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

        let scram = ScramSha256::new(b"password", ChannelBinding::unsupported());
        let first = String::from_utf8(scram.message().to_vec()).unwrap();
        let nonce = first.rsplit("r=").next().unwrap().to_owned();
        let server_first_message = format!("r={nonce}server,s=c2FsdHNhbHQ=,i=100000");

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
        let done = server_first(scram, server_first_message.into_bytes()).await;
        hashing.store(false, Ordering::SeqCst);
        ticker.abort();
        assert!(done.is_ok(), "{:?}", done.err());
        assert!(
            ticks.load(Ordering::SeqCst) > 0,
            "the runtime thread ran nothing else while hashing"
        );
    }

    #[test]
    fn the_iteration_count_is_read_from_the_server_first_message() {
        assert_eq!(iterations(b"r=abc,s=c2FsdA==,i=4096"), Some(4096));
        assert_eq!(iterations(b"r=abc,s=c2FsdA==,i=1000001"), Some(1_000_001));
        assert_eq!(iterations(b"r=abc,s=c2FsdA=="), None);
        assert_eq!(iterations(b"r=abc,s=c2FsdA==,i=-1"), None);
        assert_eq!(iterations(b"r=abc,s=c2FsdA==,i=99999999999"), None);
        assert_eq!(iterations(b"\xff"), None);
    }
}
