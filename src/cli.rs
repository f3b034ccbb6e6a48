//! The small commands: `check-config` and `scram-verifier`.

use std::io::{BufRead, Write};
use std::path::Path;

use secrecy::{ExposeSecret, SecretString};

use crate::auth::ScramVerifier;
use crate::auth::verifier::{GENERATED_PASSWORD_LEN, generate_password};
use crate::config;

/// Validates a configuration and reports every problem. Exit code 0 or 1.
pub fn check_config(path: &Path, out: &mut impl Write, err: &mut impl Write) -> i32 {
    match config::load(path, std::env::vars()) {
        Ok(c) => {
            let _ = writeln!(out, "{}: configuration is valid", path.display());
            let _ = writeln!(
                out,
                "  listen {} (TLS {}), {} allowed network(s), max {} connections",
                c.listen.address,
                if c.listen.require_tls {
                    "required"
                } else if c.listen.tls.is_some() {
                    "optional"
                } else {
                    "off"
                },
                c.listen.allow.len(),
                c.listen.max_connections
            );
            for r in &c.routes {
                let _ = writeln!(
                    out,
                    "  route {} → {}/{} (tls {:?}) for [{}], credentials {}",
                    r.database,
                    r.upstream.endpoint(),
                    r.upstream.database,
                    r.upstream.tls,
                    r.users.join(", "),
                    r.credentials
                );
            }
            0
        }
        Err(errors) => {
            let _ = writeln!(err, "{}: {} problem(s):", path.display(), errors.0.len());
            for e in &errors.0 {
                let _ = writeln!(err, "  - {e}");
            }
            1
        }
    }
}

/// Prints a SCRAM-SHA-256 verifier for a password read from stdin, or for a
/// freshly generated one (printed too, since nobody else knows it).
pub fn scram_verifier(password_stdin: bool, out: &mut impl Write, err: &mut impl Write) -> i32 {
    let (password, generated) = if password_stdin {
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line).is_err() {
            let _ = writeln!(err, "could not read a password from standard input");
            return 1;
        }
        let pw = line.trim_end_matches(['\n', '\r']).to_owned();
        if pw.is_empty() {
            let _ = writeln!(err, "the password read from standard input is empty");
            return 1;
        }
        (SecretString::from(pw), false)
    } else {
        (generate_password(GENERATED_PASSWORD_LEN), true)
    };
    let verifier = ScramVerifier::from_password(&password);
    if generated {
        let _ = writeln!(out, "password = \"{}\"", password.expose_secret());
    }
    let _ = writeln!(
        out,
        "scram_verifier = \"{}\"",
        verifier.to_text().expose_secret()
    );
    0
}
