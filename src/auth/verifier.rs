//! SCRAM-SHA-256 verifiers in PostgreSQL's format, and passwords to make them from.
//!
//! `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (base64 fields), as
//! stored in `pg_authid.rolpassword`. A verifier lets pgwarden check a client
//! without ever holding its password. Key material never reaches `Debug`.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::rngs::OsRng;
use rand::{RngCore, TryRngCore};
use secrecy::{ExposeSecret, SecretString};

/// Length of passwords pgwarden generates.
pub const GENERATED_PASSWORD_LEN: usize = 40;
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
        let text = postgres_protocol::password::scram_sha_256(password.expose_secret().as_bytes());
        // postgres-protocol writes exactly the format parsed above.
        text.parse()
            .unwrap_or_else(|_| unreachable!("postgres-protocol wrote an unparsable verifier"))
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
