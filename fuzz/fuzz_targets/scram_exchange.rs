//! Client authentication as pgwarden runs it: `Authenticator::authenticate`
//! (pgwarden's framing, `parse_sasl_initial`, and pgwire's SCRAM server
//! parsing the client-first and client-final messages) over an in-memory
//! stream that plays the client.
//!
//! Input: a flags byte, then either raw client bytes (any frames at all), or
//! three lines: the SASL mechanism, the client-first-message and the
//! client-final-message. In the last, `@N` becomes the nonce the server chose,
//! `@C` the right channel-binding value for the gs2 header sent, and `@P` the
//! right proof for the password (computed here, as a client would), so the
//! fuzzer reaches the paths behind the nonce and proof checks.
//!
//! Checked: no panic; pgwarden writes only whole Authentication messages;
//! it accepts only `alice` (the one SCRAM user) with the right proof, a
//! SCRAM-SHA-256-PLUS login only over TLS, never a "y" (client thinks the
//! server cannot bind) over TLS where -PLUS is offered, and an unknown user
//! or a trust user from outside its network never; a raw-mode client, which
//! cannot know the server's nonce, never succeeds. `FUZZ_TRACE=1` prints
//! each input's outcome.
#![no_main]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::OnceLock;

use aws_lc_rs::{digest, hmac, pbkdf2};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use pgwarden::auth::{AuthMethod, Authenticator, ScramServer, ScramVerifier, UserAuth};
use pgwarden::protocol::frame::FramedStream;
use pgwarden_fuzz::{Script, ScriptedStream, backend_messages, block_on};

const PASSWORD: &[u8] = b"pencil and paper";
const SALT: &[u8] = b"fuzzing-salt-16b";
const ITERATIONS: u32 = 4096;
const USERS: [&str; 4] = ["alice", "ghost", "sidecar", "alice"];
const CHUNKS: [usize; 8] = [1, 2, 3, 5, 8, 13, 64, 4096];

struct Setup {
    auth: Authenticator,
    /// HMAC(SaltedPassword, "Client Key") and its hash, StoredKey.
    client_key: Vec<u8>,
    stored_key: Vec<u8>,
    /// SHA-256 of the listener certificate (tls-server-end-point).
    cert_hash: Vec<u8>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            ITERATIONS.try_into().unwrap(),
            SALT,
            PASSWORD,
            &mut salted,
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&key, b"Client Key").as_ref().to_vec();
        let server_key = hmac::sign(&key, b"Server Key").as_ref().to_vec();
        let stored_key = digest::digest(&digest::SHA256, &client_key)
            .as_ref()
            .to_vec();
        let verifier: ScramVerifier = format!(
            "SCRAM-SHA-256${ITERATIONS}:{}${}:{}",
            STANDARD.encode(SALT),
            STANDARD.encode(&stored_key),
            STANDARD.encode(&server_key)
        )
        .parse()
        .expect("a verifier");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_hash = digest::digest(&digest::SHA256, cert.cert.der())
            .as_ref()
            .to_vec();
        let mut users = HashMap::new();
        users.insert("alice".to_owned(), UserAuth::Scram(verifier));
        users.insert(
            "sidecar".to_owned(),
            UserAuth::Trust {
                from: vec!["127.0.0.1/32".parse().unwrap()],
            },
        );
        let server = ScramServer::new(Some(cert.cert.pem().as_bytes()));
        assert!(server.offers_channel_binding());
        Setup {
            auth: Authenticator::new(users, server),
            client_key,
            stored_key,
            cert_hash,
        }
    })
}

/// The scripted client of template mode.
struct Client {
    mechanism: Vec<u8>,
    first: Vec<u8>,
    final_template: Vec<u8>,
    /// The proof `@P` stood for, once the final message was made.
    proof: Option<String>,
}

impl Script for Client {
    fn piece(&mut self, index: usize, written: &[u8]) -> Option<Vec<u8>> {
        match index {
            0 => {
                let mut body = self.mechanism.clone();
                body.push(0);
                body.extend_from_slice(&(self.first.len() as i32).to_be_bytes());
                body.extend_from_slice(&self.first);
                Some(frame(b'p', &body))
            }
            1 => {
                let final_message = self.render_final(written);
                Some(frame(b'p', &final_message))
            }
            _ => None,
        }
    }
}

impl Client {
    fn render_final(&mut self, written: &[u8]) -> Vec<u8> {
        let server_first = backend_messages(written)
            .into_iter()
            .find(|(tag, body)| *tag == b'R' && body.starts_with(&11i32.to_be_bytes()))
            .map(|(_, body)| body[4..].to_vec())
            .unwrap_or_default();
        let nonce = server_first
            .split(|&b| b == b',')
            .next()
            .and_then(|r| r.strip_prefix(b"r="))
            .unwrap_or_default();
        // gs2 header: up to and including the second comma of client-first.
        let mut commas = self.first.iter().enumerate().filter(|(_, b)| **b == b',');
        let (gs2, bare) = match (commas.next(), commas.next()) {
            (Some(_), Some((i, _))) => (&self.first[..=i], &self.first[i + 1..]),
            _ => (&self.first[..], &[][..]),
        };
        let mut cbind = gs2.to_vec();
        if gs2.starts_with(b"p=") {
            cbind.extend_from_slice(&setup().cert_hash);
        }
        let mut msg = replace(&self.final_template, b"@N", nonce);
        msg = replace(&msg, b"@C", STANDARD.encode(&cbind).as_bytes());
        if let Some(at) = find_last(&msg, b",p=") {
            let mut auth_message = bare.to_vec();
            auth_message.push(b',');
            auth_message.extend_from_slice(&server_first);
            auth_message.push(b',');
            auth_message.extend_from_slice(&msg[..at]);
            let key = hmac::Key::new(hmac::HMAC_SHA256, &setup().stored_key);
            let signature = hmac::sign(&key, &auth_message);
            let proof: Vec<u8> = setup()
                .client_key
                .iter()
                .zip(signature.as_ref())
                .map(|(a, b)| a ^ b)
                .collect();
            let proof = STANDARD.encode(proof);
            if find_last(&msg, b"@P").is_some_and(|p| p > at) {
                self.proof = Some(proof.clone());
            }
            msg = replace(&msg, b"@P", proof.as_bytes());
        }
        msg
    }
}

fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn find_last(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

fn replace(hay: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(hay.len());
    let mut i = 0;
    while i < hay.len() {
        if hay[i..].starts_with(from) {
            out.extend_from_slice(to);
            i += from.len();
        } else {
            out.push(hay[i]);
            i += 1;
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let tls = flags & 1 != 0;
    let user = USERS[usize::from(flags >> 1) & 3];
    let peer: IpAddr = if flags & 8 != 0 {
        "127.0.0.1".parse().unwrap()
    } else {
        "10.0.0.1".parse().unwrap()
    };
    let raw = flags & 16 != 0;
    let chunk = CHUNKS[usize::from(flags >> 5)];
    let auth = &setup().auth;

    let (result, written, first, proof) = if raw {
        let mut framed = FramedStream::new(ScriptedStream::new(vec![rest.to_vec()], chunk));
        let result = block_on(auth.authenticate(&mut framed, user, peer, tls, None));
        let (s, _) = framed.into_parts();
        (result, s.written, Vec::new(), None)
    } else {
        let mut lines = rest.splitn(3, |&b| b == b'\n');
        let client = Client {
            mechanism: lines.next().unwrap_or_default().to_vec(),
            first: lines.next().unwrap_or_default().to_vec(),
            final_template: lines.next().unwrap_or_default().to_vec(),
            proof: None,
        };
        let first = client.first.clone();
        let mut framed = FramedStream::new(ScriptedStream::new(client, chunk));
        let result = block_on(auth.authenticate(&mut framed, user, peer, tls, None));
        let (s, _) = framed.into_parts();
        let proof = s.script_ref().proof.clone();
        (result, s.written, first, proof)
    };

    static TRACE: OnceLock<bool> = OnceLock::new();
    if *TRACE.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some()) {
        // To see where a seed leads: FUZZ_TRACE=1 <binary> <seed files>.
        eprintln!("user {user}, tls {tls}, raw {raw}: {result:?}");
    }
    let messages = backend_messages(&written);
    assert!(
        messages.iter().all(|(tag, _)| *tag == b'R'),
        "wrote a non-authentication message"
    );
    let Ok(method) = result else {
        return;
    };
    if method == AuthMethod::Trust {
        assert!(
            user == "sidecar" && peer.is_loopback(),
            "trust for {user} from {peer}"
        );
        assert!(messages.is_empty());
        return;
    }
    assert_eq!(
        user, "alice",
        "SCRAM login succeeded for a user with no verifier"
    );
    assert!(!raw, "a client that cannot know the nonce logged in");
    assert!(proof.is_some(), "logged in without the right proof");
    assert!(
        tls || method != AuthMethod::ScramSha256Plus,
        "-PLUS without TLS"
    );
    assert!(
        !(tls && first.starts_with(b"y,")),
        "channel binding downgrade accepted"
    );
    let last = messages.last().expect("a SASLFinal");
    assert!(
        last.1.starts_with(&12i32.to_be_bytes()),
        "success without SASLFinal"
    );
});
