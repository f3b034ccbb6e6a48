//! SCRAM-SHA-256 verifiers in PostgreSQL's format, and passwords to make them from.
//!
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 fields), as
//! stored in `pg_authid.rolpassword`. A verifier lets pgwarden check a client
//! without ever holding its password. Key material never reaches `Debug`.

use std::fmt;
use std::num::NonZeroU32;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::rngs::OsRng;
use rand::{RngCore, TryRngCore};
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

/// Length of passwords pgwarden generates.
pub const GENERATED_PASSWORD_LEN: usize = 40;
/// The SCRAM iteration count of the verifiers the built-in source gives the
/// roles it creates (its `scram_iterations`). Iterations slow down guessing a
/// password from a stolen verifier; a generated password has 238 bits of
/// entropy (40 characters of 62), beyond guessing at any count, so they buy
/// nothing here. They cost: PostgreSQL runs PBKDF2 at this count on every
/// `CREATE ROLE … PASSWORD '<verifier>'` (it checks the verifier is not the
/// empty password's), and pgwarden once per credential — 4096 rounds, the
/// default for passwords people choose, took ~6 ms of server CPU per role on
/// the bench machine, more than the rest of a connection's set-up there.
pub const GENERATED_PASSWORD_SCRAM_ITERATIONS: u32 = 16;
/// Characters of generated passwords: letters and digits only, so they need no
/// quoting in URIs, shells or SQL.
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/// A parsed SCRAM-SHA-256 verifier.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramVerifier {
    pub iterations: u32,
    pub salt: Vec<u8>,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl fmt::Debug for ScramVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramVerifier")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// Why a verifier string was refused. Never echoes the string itself.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifierError {
    #[error(
        "not a SCRAM-SHA-256 verifier (expected SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)"
    )]
    Format,
    #[error("SCRAM verifier has an invalid iteration count")]
    Iterations,
    #[error("SCRAM verifier has a field that is not valid base64 or has the wrong length")]
    Field,
}

impl FromStr for ScramVerifier {
    type Err = VerifierError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let rest = s
            .trim()
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or(VerifierError::Format)?;
        let (params, keys) = rest.split_once('$').ok_or(VerifierError::Format)?;
        let (iterations, salt) = params.split_once(':').ok_or(VerifierError::Format)?;
        let (stored_key, server_key) = keys.split_once(':').ok_or(VerifierError::Format)?;
        let iterations: u32 = iterations.parse().map_err(|_| VerifierError::Iterations)?;
        if iterations == 0 {
            return Err(VerifierError::Iterations);
        }
        let decode = |f: &str| STANDARD.decode(f).map_err(|_| VerifierError::Field);
        let salt = decode(salt)?;
        let stored_key = decode(stored_key)?;
        let server_key = decode(server_key)?;
        if salt.is_empty() || stored_key.len() != 32 || server_key.len() != 32 {
            return Err(VerifierError::Field);
        }
        Ok(ScramVerifier {
            iterations,
            salt,
            stored_key,
            server_key,
        })
    }
}

impl ScramVerifier {
    /// The verifier of `password` with a fresh random salt and 4096 iterations,
    /// computed the way PostgreSQL does (SASLprep when the password allows it).
    pub fn from_password(password: &SecretString) -> ScramVerifier {
        ScramKeys::for_new_password(password, SCRAM_ITERATIONS).verifier()
    }

    /// The verifier in PostgreSQL's text form (it reveals no password, but it is
    /// still a secret: whoever holds it can impersonate the server side).
    pub fn to_text(&self) -> SecretString {
        SecretString::from(format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(&self.stored_key),
            STANDARD.encode(&self.server_key)
        ))
    }
}

/// What a SCRAM-SHA-256 client derives from a password for one salt and
/// iteration count: ClientKey and ServerKey (RFC 5802). They prove the password
/// to the server and check the server's signature, and they are what a verifier
/// is made of — so a source that made a role's verifier from them can hand them
/// to the upstream login, which then runs no PBKDF2 of its own. They are as
/// secret as the password: zeroed on drop, never in `Debug`.
#[derive(Clone)]
pub struct ScramKeys {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    client_key: [u8; 32],
    server_key: [u8; 32],
}

/// PostgreSQL's default iteration count (`scram_iterations`).
pub const SCRAM_ITERATIONS: NonZeroU32 = NonZeroU32::new(4096).expect("not zero");

/// The most SCRAM iterations pgwarden computes, for an upstream login
/// (PostgreSQL's `scram_iterations` may raise the count: OWASP's 600 000
/// fits) or a verifier it makes. It bounds the PBKDF2 a server can make
/// pgwarden run, on the blocking pool.
pub const MAX_SCRAM_ITERATIONS: u32 = 1_000_000;

impl ScramKeys {
    /// The keys of `password` for `salt` and `iterations`: PBKDF2-HMAC-SHA-256 over
    /// the password after SASLprep (or its raw bytes when SASLprep refuses it, as
    /// libpq and the server do).
    pub fn derive(password: &[u8], salt: &[u8], iterations: NonZeroU32) -> ScramKeys {
        let prepared = std::str::from_utf8(password)
            .ok()
            .and_then(|p| stringprep::saslprep(p).ok())
            .map(|p| Zeroizing::new(p.into_owned()));
        let password = prepared.as_deref().map_or(password, |p| p.as_bytes());
        let mut salted = Zeroizing::new([0u8; 32]);
        aws_lc_rs::pbkdf2::derive(
            aws_lc_rs::pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            salt,
            password,
            &mut salted[..],
        );
        ScramKeys {
            iterations,
            salt: salt.to_vec(),
            client_key: hmac_sha256(&salted[..], b"Client Key"),
            server_key: hmac_sha256(&salted[..], b"Server Key"),
        }
    }

    /// Fresh keys for a generated password: a random 16-byte salt (as PostgreSQL
    /// makes) and `iterations`.
    pub fn for_new_password(password: &SecretString, iterations: NonZeroU32) -> ScramKeys {
        ScramKeys::derive(
            password.expose_secret().as_bytes(),
            &random_bytes::<16>(),
            iterations,
        )
    }

    /// The verifier a server stores for these keys.
    pub fn verifier(&self) -> ScramVerifier {
        let stored = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.client_key);
        ScramVerifier {
            iterations: self.iterations.get(),
            salt: self.salt.clone(),
            stored_key: stored.as_ref().to_vec(),
            server_key: self.server_key.to_vec(),
        }
    }

    pub fn iterations(&self) -> NonZeroU32 {
        self.iterations
    }

    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    pub fn client_key(&self) -> &[u8; 32] {
        &self.client_key
    }

    pub fn server_key(&self) -> &[u8; 32] {
        &self.server_key
    }

    /// Whether these keys answer a server that asks for `salt` and `iterations`.
    pub fn fit(&self, salt: &[u8], iterations: NonZeroU32) -> bool {
        self.iterations == iterations && self.salt == salt
    }
}

impl Drop for ScramKeys {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.client_key.zeroize();
        self.server_key.zeroize();
    }
}

impl fmt::Debug for ScramKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScramKeys")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA-256 of `text` under `key`, as SCRAM uses it.
pub(crate) fn hmac_sha256(key: &[u8], text: &[u8]) -> [u8; 32] {
    use aws_lc_rs::hmac;
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), text);
    tag.as_ref().try_into().expect("HMAC-SHA-256 is 32 bytes")
}

/// A random password of `len` letters and digits from the operating system's CSPRNG.
pub fn generate_password(len: usize) -> SecretString {
    let mut rng = OsRng.unwrap_err();
    let mut out = String::with_capacity(len);
    // Rejection sampling keeps every character equally likely.
    let limit = 256 - (256 % PASSWORD_ALPHABET.len());
    let mut byte = [0u8; 1];
    while out.len() < len {
        rng.fill_bytes(&mut byte);
        let b = byte[0] as usize;
        if b < limit {
            out.push(PASSWORD_ALPHABET[b % PASSWORD_ALPHABET.len()] as char);
        }
    }
    SecretString::from(out)
}

/// `n` random bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    OsRng.unwrap_err().fill_bytes(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[test]
    fn round_trips_postgres_format() {
        let pw = generate_password(GENERATED_PASSWORD_LEN);
        let v = ScramVerifier::from_password(&pw);
        let text = v.to_text();
        assert!(text.expose_secret().starts_with("SCRAM-SHA-256$4096:"));
        assert_eq!(text.expose_secret().parse::<ScramVerifier>().unwrap(), v);
    }

    #[test]
    fn refusals_do_not_echo_input() {
        for bad in [
            "",
            "md5abc",
            "SCRAM-SHA-256$x:c2FsdA==$a:b",
            "SCRAM-SHA-256$4096:c2FsdA==$notbase64!:b",
            "SCRAM-SHA-256$0:c2FsdA==$AAAA:AAAA",
        ] {
            let err = bad.parse::<ScramVerifier>().unwrap_err().to_string();
            assert!(!err.contains("c2FsdA"), "{err}");
        }
    }

    fn n(i: u32) -> NonZeroU32 {
        NonZeroU32::new(i).unwrap()
    }

    /// The verifier of exactly these password bytes, computed step by step.
    fn verifier_of_bytes(password: &[u8], salt: &[u8], iterations: u32) -> ScramVerifier {
        use aws_lc_rs::{digest, hmac, pbkdf2};
        let mut salted = [0u8; 32];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            n(iterations),
            salt,
            password,
            &mut salted,
        );
        let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
        let client_key = hmac::sign(&key, b"Client Key");
        ScramVerifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: digest::digest(&digest::SHA256, client_key.as_ref())
                .as_ref()
                .to_vec(),
            server_key: hmac::sign(&key, b"Server Key").as_ref().to_vec(),
        }
    }

    #[test]
    fn keys_make_the_verifier_postgres_protocol_makes() {
        // postgres-protocol (libpq's algorithm) picks a salt; the same password, salt
        // and count must give the same StoredKey and ServerKey through our derivation.
        // Among them passwords SASLprep maps (U+00AD maps to nothing) and valid UTF-8
        // it refuses (a control character; a bidi-rule violation), where libpq and
        // PostgreSQL use the raw bytes.
        for pw in [
            "pencil",
            "pen\u{00AD}cil",
            "Ångström",
            "x",
            "pen\u{7}cil",
            "\u{627}1",
        ] {
            // postgres-protocol's verifier: made independently of ours.
            let theirs: ScramVerifier = postgres_protocol::password::scram_sha_256(pw.as_bytes())
                .parse()
                .unwrap();
            let count = n(theirs.iterations);
            let ours = ScramKeys::derive(pw.as_bytes(), &theirs.salt, count);
            assert_eq!(ours.verifier(), theirs, "{pw:?}");
            assert!(ours.fit(&theirs.salt, count));
            assert!(!ours.fit(&theirs.salt, n(theirs.iterations + 1)));
            assert!(!ours.fit(b"another salt", count));
        }
    }

    #[test]
    fn saslprep_applies_as_in_postgres() {
        let salt = [7u8; 16];
        // U+00AD (soft hyphen) maps to nothing under SASLprep.
        let mapped = ScramKeys::derive("pen\u{00AD}cil".as_bytes(), &salt, n(16)).verifier();
        assert_eq!(mapped, verifier_of_bytes(b"pencil", &salt, 16));
        // Not UTF-8, or refused by SASLprep: the raw bytes are used.
        for raw in [&b"pen\xffcil"[..], "pen\u{7}cil".as_bytes()] {
            let ours = ScramKeys::derive(raw, &salt, n(16)).verifier();
            assert_eq!(ours, verifier_of_bytes(raw, &salt, 16));
        }
    }

    #[test]
    fn keys_for_a_new_password_have_a_fresh_salt_and_stay_out_of_debug() {
        let pw = generate_password(GENERATED_PASSWORD_LEN);
        let (a, b) = (
            ScramKeys::for_new_password(&pw, SCRAM_ITERATIONS),
            ScramKeys::for_new_password(&pw, SCRAM_ITERATIONS),
        );
        assert_eq!((a.iterations(), a.salt().len()), (SCRAM_ITERATIONS, 16));
        assert_ne!(a.salt(), b.salt());
        let again = ScramKeys::derive(pw.expose_secret().as_bytes(), a.salt(), SCRAM_ITERATIONS);
        assert_eq!(again.verifier(), a.verifier());
        let dbg = format!("{a:?}");
        assert!(
            !dbg.contains("client_key") && !dbg.contains("server_key"),
            "{dbg}"
        );
        assert!(!dbg.contains(&format!("{:?}", a.client_key())), "{dbg}");
    }

    #[test]
    fn debug_hides_keys() {
        let v = ScramVerifier::from_password(&generate_password(32));
        let dbg = format!("{v:?}");
        assert!(!dbg.contains(&STANDARD.encode(&v.stored_key)));
        assert!(!dbg.contains("stored_key"));
    }

    #[test]
    fn generated_passwords_are_long_and_varied() {
        let a = generate_password(GENERATED_PASSWORD_LEN);
        let b = generate_password(GENERATED_PASSWORD_LEN);
        assert_eq!(a.expose_secret().len(), GENERATED_PASSWORD_LEN);
        assert_ne!(a.expose_secret(), b.expose_secret());
        assert!(
            a.expose_secret()
                .bytes()
                .all(|c| PASSWORD_ALPHABET.contains(&c))
        );
    }
}
