//! The client side of SCRAM-SHA-256 and SCRAM-SHA-256-PLUS for the upstream
//! login (RFC 5802, RFC 7677, as PostgreSQL speaks them).
//!
//! Its own rather than postgres-protocol's so that the proof can come from
//! [`ScramKeys`] the credential source already derived when it made the role's
//! verifier: the login then runs no PBKDF2 (4096 rounds of HMAC-SHA-256, the
//! largest single cost of a connection's set-up). Keys that do not fit the
//! salt and iteration count the server names are derived from the password, as
//! any client does. Nothing secret reaches an error: a refusal names the step.

use std::num::NonZeroU32;

use aws_lc_rs::{constant_time, digest};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

use crate::auth::verifier::{ScramKeys, hmac_sha256, random_bytes};

pub(super) use crate::auth::verifier::MAX_SCRAM_ITERATIONS;

/// Channel binding, as RFC 5802's GS2 header says it.
pub(crate) enum Binding {
    /// The leg has no TLS certificate to bind to (`n`).
    Unsupported,
    /// pgwarden could bind but the server does not offer -PLUS (`y`).
    Unrequested,
    /// SCRAM-SHA-256-PLUS with tls-server-end-point: the hash of the
    /// server's certificate (`p=tls-server-end-point`).
    TlsServerEndPoint(Vec<u8>),
}

/// Why an exchange failed; never carries key material.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum ScramError {
    #[error("invalid SCRAM server-first-message")]
    ServerFirst,
    #[error("SCRAM server-first-message has no usable iteration count")]
    Iterations,
    #[error("SCRAM server nonce does not extend the client's")]
    Nonce,
    #[error("invalid SCRAM server-final-message")]
    ServerFinal,
    #[error("SCRAM server refused the proof: {0}")]
    Refused(String),
    #[error("SCRAM server signature did not verify")]
    Signature,
    #[error("SCRAM message out of order")]
    OutOfOrder,
}

/// What the server's first message asks for.
pub(super) struct ServerFirst {
    raw: String,
    nonce: String,
    pub salt: Vec<u8>,
    pub iterations: NonZeroU32,
}

/// Where an exchange is: each server message is taken once, in order.
enum Step {
    /// client-first sent; waiting for the server-first.
    Started,
    /// server-first taken; the client-final is to be made.
    Challenged,
    /// client-final sent; the server-final must carry this signature.
    Proven([u8; 32]),
    /// The server-final was checked (or refused).
    Done,
}

/// One exchange: client-first, then client-final for the server-first, then
/// the server-final checked against the signature the keys predict.
pub(super) struct ScramClient {
    gs2_header: &'static str,
    cbind_data: Vec<u8>,
    nonce: String,
    /// `n=,r=<nonce>`: PostgreSQL takes the user from the startup packet.
    client_first_bare: String,
    step: Step,
}

impl ScramClient {
    /// A new exchange with an 18-byte random nonce (24 base64 characters,
    /// none of them a comma).
    pub(super) fn new(binding: Binding) -> ScramClient {
        ScramClient::with_nonce(binding, STANDARD.encode(random_bytes::<18>()))
    }

    fn with_nonce(binding: Binding, nonce: String) -> ScramClient {
        let (gs2_header, cbind_data) = match binding {
            Binding::Unsupported => ("n,,", Vec::new()),
            Binding::Unrequested => ("y,,", Vec::new()),
            Binding::TlsServerEndPoint(hash) => ("p=tls-server-end-point,,", hash),
        };
        ScramClient {
            gs2_header,
            cbind_data,
            client_first_bare: format!("n=,r={nonce}"),
            nonce,
            step: Step::Started,
        }
    }

    /// The client-first-message (the SASLInitialResponse's data).
    pub(super) fn client_first(&self) -> Vec<u8> {
        format!("{}{}", self.gs2_header, self.client_first_bare).into_bytes()
    }

    /// Reads the server-first-message, once: exactly `r=<nonce>,s=<salt>,i=<count>`
    /// as PostgreSQL sends it (libpq refuses anything after the count too), the
    /// nonce extending ours, a salt, a count of plain digits from 1 to
    /// [`MAX_SCRAM_ITERATIONS`]. A second one is refused before anything is
    /// derived for it.
    pub(super) fn server_first(&mut self, message: &[u8]) -> Result<ServerFirst, ScramError> {
        if !matches!(self.step, Step::Started) {
            return Err(ScramError::OutOfOrder);
        }
        self.step = Step::Done;
        let raw = std::str::from_utf8(message).map_err(|_| ScramError::ServerFirst)?;
        let mut attrs = raw.split(',');
        let mut next = |name: &str| {
            attrs
                .next()
                .and_then(|a| a.strip_prefix(name))
                .ok_or(ScramError::ServerFirst)
        };
        let nonce = next("r=")?;
        let salt = next("s=")?;
        let iterations = next("i=")?;
        if attrs.next().is_some() {
            return Err(ScramError::ServerFirst);
        }
        if nonce.len() <= self.nonce.len() || !nonce.starts_with(&self.nonce) {
            return Err(ScramError::Nonce);
        }
        if !nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
        {
            return Err(ScramError::ServerFirst);
        }
        let salt = STANDARD
            .decode(salt)
            .ok()
            .filter(|s| !s.is_empty())
            .ok_or(ScramError::ServerFirst)?;
        let iterations = Some(iterations)
            .filter(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|i| i.parse::<u32>().ok())
            .filter(|i| *i <= MAX_SCRAM_ITERATIONS)
            .and_then(NonZeroU32::new)
            .ok_or(ScramError::Iterations)?;
        self.step = Step::Challenged;
        Ok(ServerFirst {
            raw: raw.to_owned(),
            nonce: nonce.to_owned(),
            salt,
            iterations,
        })
    }

    /// The client-final-message for `first`, proven with `keys` (which must
    /// fit `first`'s salt and count); remembers the server signature to expect.
    pub(super) fn client_final(
        &mut self,
        first: &ServerFirst,
        keys: &ScramKeys,
    ) -> Result<Vec<u8>, ScramError> {
        if !matches!(self.step, Step::Challenged) {
            return Err(ScramError::OutOfOrder);
        }
        debug_assert!(keys.fit(&first.salt, first.iterations));
        let mut binding = self.gs2_header.as_bytes().to_vec();
        binding.extend_from_slice(&self.cbind_data);
        let without_proof = format!("c={},r={}", STANDARD.encode(&binding), first.nonce);
        let auth_message = format!("{},{},{}", self.client_first_bare, first.raw, without_proof);
        // StoredKey and the ClientSignature each give back ClientKey with the
        // proof, which goes on the wire: wiped once used.
        let stored_key = Zeroizing::new(
            <[u8; 32]>::try_from(digest::digest(&digest::SHA256, keys.client_key()).as_ref())
                .expect("SHA-256 is 32 bytes"),
        );
        let client_signature =
            Zeroizing::new(hmac_sha256(&stored_key[..], auth_message.as_bytes()));
        let mut proof = *keys.client_key();
        for (p, s) in proof.iter_mut().zip(client_signature.iter()) {
            *p ^= s;
        }
        self.step = Step::Proven(hmac_sha256(keys.server_key(), auth_message.as_bytes()));
        Ok(format!("{without_proof},p={}", STANDARD.encode(proof)).into_bytes())
    }

    /// Checks the server-final-message, once: exactly `v=<signature>` (libpq
    /// refuses anything after it too) matching what the keys predict (the
    /// server knew the verifier), or `e=<error>` (which PostgreSQL never sends:
    /// it answers a bad proof with an ErrorResponse).
    pub(super) fn server_final(&mut self, message: &[u8]) -> Result<(), ScramError> {
        let Step::Proven(expected) = std::mem::replace(&mut self.step, Step::Done) else {
            return Err(ScramError::OutOfOrder);
        };
        if let Some(error) = message.strip_prefix(b"e=") {
            // RFC 5802's server-error-value names (`invalid-proof`, …) only: any
            // other text from the server is not repeated into pgwarden's log.
            let error = error.split(|&b| b == b',').next().unwrap_or_default();
            let named = !error.is_empty()
                && error.len() <= 64
                && error.iter().all(|&b| b.is_ascii_lowercase() || b == b'-');
            let error = match std::str::from_utf8(error) {
                Ok(name) if named => name,
                _ => "<not an RFC 5802 error name>",
            };
            return Err(ScramError::Refused(error.to_owned()));
        }
        let signature = message
            .strip_prefix(b"v=")
            .and_then(|v| STANDARD.decode(v).ok())
            .ok_or(ScramError::ServerFinal)?;
        constant_time::verify_slices_are_equal(&signature, &expected)
            .map_err(|_| ScramError::Signature)
    }
}

/// One exchange as [`crate::fuzzing::scram_client`] drives it: the server-first
/// (and a second one, which must be refused), keys for `password` when the count
/// is at most `max_iterations`, then the server-final.
pub(crate) fn fuzz_run(
    binding: Binding,
    nonce: &str,
    password: &[u8],
    server_first: &[u8],
    server_final: &[u8],
    max_iterations: u32,
) -> crate::fuzzing::ScramRun {
    let mut client = ScramClient::with_nonce(binding, nonce.to_owned());
    let first = client.server_first(server_first);
    let mut run = crate::fuzzing::ScramRun {
        first: None,
        second_refused: client.server_first(server_first).err() == Some(ScramError::OutOfOrder),
        client_final: None,
        accepted: None,
    };
    let Ok(first) = first else {
        return run;
    };
    run.first = Some((first.salt.clone(), first.iterations.get()));
    if first.iterations.get() > max_iterations {
        return run;
    }
    let keys = ScramKeys::derive(password, &first.salt, first.iterations);
    run.client_final = client.client_final(&first, &keys).ok();
    run.accepted = Some(client.server_final(server_final).is_ok());
    run
}

#[cfg(test)]
mod tests {
    use super::*;
    use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

    /// RFC 7677 §3: user "user", password "pencil". PostgreSQL's client-first
    /// names no user, so the RFC's exchange is replayed through a
    /// client-first-bare that does.
    #[test]
    fn rfc_7677_example() {
        let rfc = || {
            let mut client =
                ScramClient::with_nonce(Binding::Unsupported, "rOprNGfwEbeRWgbNEkqO".into());
            client.client_first_bare = "n=user,r=rOprNGfwEbeRWgbNEkqO".into();
            let server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
            let first = client.server_first(server_first).unwrap();
            let keys = ScramKeys::derive(b"pencil", &first.salt, first.iterations);
            let fin = client.client_final(&first, &keys).unwrap();
            (client, fin)
        };
        let (mut client, fin) = rfc();
        assert_eq!(
            std::str::from_utf8(&fin).unwrap(),
            "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        );
        client
            .server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
            .unwrap();
        // Each server-final is taken once.
        assert_eq!(
            client.server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::OutOfOrder)
        );
        let (mut client, _) = rfc();
        assert_eq!(
            client.server_final(b"v=AAAATRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
            Err(ScramError::Signature)
        );
        let (mut client, _) = rfc();
        assert_eq!(
            client.server_final(b"e=invalid-proof"),
            Err(ScramError::Refused("invalid-proof".into()))
        );
        // Nothing may follow the signature (a fuzzing find: the check had looked at
        // the first attribute only).
        let (mut client, _) = rfc();
        assert_eq!(
            client.server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,s=c2\xff"),
            Err(ScramError::ServerFinal)
        );
        // Anything but an RFC 5802 error name is not repeated.
        let (mut client, _) = rfc();
        assert_eq!(
            client.server_final(b"e=line\nbreak"),
            Err(ScramError::Refused("<not an RFC 5802 error name>".into()))
        );
    }

    /// For the same nonce, binding and server-first, our client-first and
    /// client-final are byte for byte postgres-protocol's, and both accept the
    /// same server-final; for every binding libpq knows.
    #[test]
    fn agrees_with_postgres_protocol() {
        let salt = b"0123456789abcdef";
        let bindings = || {
            [
                (Binding::Unsupported, ChannelBinding::unsupported()),
                (Binding::Unrequested, ChannelBinding::unrequested()),
                (
                    Binding::TlsServerEndPoint(vec![9; 32]),
                    ChannelBinding::tls_server_end_point(vec![9; 32]),
                ),
            ]
        };
        for (ours, theirs) in bindings() {
            let mut theirs = ScramSha256::new(b"hunter2", theirs);
            // Take postgres-protocol's random nonce for ours.
            let their_first = std::str::from_utf8(theirs.message()).unwrap().to_owned();
            let nonce = their_first.rsplit("r=").next().unwrap().to_owned();
            let mut client = ScramClient::with_nonce(ours, nonce.clone());
            assert_eq!(client.client_first(), their_first.as_bytes());
            let server_first = format!("r={nonce}SERVERPART,s={},i=4096", STANDARD.encode(salt));
            theirs.update(server_first.as_bytes()).unwrap();
            let first = client.server_first(server_first.as_bytes()).unwrap();
            let keys = ScramKeys::derive(b"hunter2", &first.salt, first.iterations);
            let ours_final = client.client_final(&first, &keys).unwrap();
            assert_eq!(ours_final, theirs.message());
            // The signature a server that knows the verifier sends.
            let verifier = keys.verifier();
            let without_proof = std::str::from_utf8(&ours_final)
                .unwrap()
                .rsplit_once(",p=")
                .unwrap()
                .0
                .to_owned();
            let auth_message = format!(
                "{},{server_first},{without_proof}",
                client.client_first_bare
            );
            let signature = hmac_sha256(&verifier.server_key, auth_message.as_bytes());
            let server_final = format!("v={}", STANDARD.encode(signature));
            theirs.finish(server_final.as_bytes()).unwrap();
            client.server_final(server_final.as_bytes()).unwrap();
        }
    }

    #[test]
    fn refuses_bad_server_first_messages() {
        let cases: [(&[u8], ScramError); 15] = [
            (b"r=abcd,s=c2FsdA==", ScramError::ServerFirst),
            (b"s=c2FsdA==,r=abcd,i=4096", ScramError::ServerFirst),
            (b"m=ext,r=abcd,s=c2FsdA==,i=4096", ScramError::ServerFirst),
            (
                b"r=abcd,s=c2FsdA==,i=4096,x=extension",
                ScramError::ServerFirst,
            ),
            (b"r=abc,s=c2FsdA==,i=4096", ScramError::Nonce),
            (b"r=xbcd,s=c2FsdA==,i=4096", ScramError::Nonce),
            (b"r=abc\x01,s=c2FsdA==,i=4096", ScramError::ServerFirst),
            (b"r=abcd,s=,i=4096", ScramError::ServerFirst),
            (b"r=abcd,s=not*base64,i=4096", ScramError::ServerFirst),
            (b"r=abcd,s=c2FsdA==,i=0", ScramError::Iterations),
            (b"r=abcd,s=c2FsdA==,i=1000001", ScramError::Iterations),
            (b"r=abcd,s=c2FsdA==,i=-1", ScramError::Iterations),
            (b"r=abcd,s=c2FsdA==,i=+16", ScramError::Iterations),
            (b"r=abcd,s=c2FsdA==,i=", ScramError::Iterations),
            (b"r=ab\xffcd,s=c2FsdA==,i=16", ScramError::ServerFirst),
        ];
        for (message, error) in cases {
            let mut client = ScramClient::with_nonce(Binding::Unsupported, "abc".into());
            assert_eq!(
                client.server_first(message).err(),
                Some(error),
                "{}",
                String::from_utf8_lossy(message)
            );
            // A refused server-first ends the exchange.
            assert_eq!(
                client.server_first(b"r=abcd,s=c2FsdA==,i=16").err(),
                Some(ScramError::OutOfOrder)
            );
        }
        let mut client = ScramClient::with_nonce(Binding::Unsupported, "abc".into());
        assert!(client.server_first(b"r=abcd,s=c2FsdA==,i=1000000").is_ok());
    }

    /// Each message in its turn, once: a second server-first is refused before
    /// anything is derived for it, and a server-final proves nothing before a
    /// client-final was made.
    #[test]
    fn messages_out_of_order_are_refused() {
        let mut client = ScramClient::with_nonce(Binding::Unsupported, "abc".into());
        assert_eq!(client.server_final(b"v=AAAA"), Err(ScramError::OutOfOrder));
        let mut client = ScramClient::with_nonce(Binding::Unsupported, "abc".into());
        let first = client.server_first(b"r=abcd,s=c2FsdA==,i=16").unwrap();
        assert_eq!(
            client.server_first(b"r=abcd,s=c2FsdA==,i=1000000").err(),
            Some(ScramError::OutOfOrder)
        );
        let keys = ScramKeys::derive(b"pw", &first.salt, first.iterations);
        assert!(client.client_final(&first, &keys).is_ok());
        assert_eq!(
            client.client_final(&first, &keys).err(),
            Some(ScramError::OutOfOrder)
        );
    }
}
