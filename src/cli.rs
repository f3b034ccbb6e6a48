//! The small commands: `check-config`, `scram-verifier`, `healthcheck`,
//! `reload`, and
//! the entry to `audit` (whose work is in `crate::audit`).
//!
//! They print to the writers they are given and return the exit code; they
//! never print a secret they were not asked to make (`scram-verifier` prints
//! the password it generated, since nobody else knows it).

use std::io::{BufRead, Write};
use std::path::Path;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// Exit codes, after sysexits.h, so a supervisor can tell a broken
/// configuration (which a restart will not fix) from a passing fault.
pub mod exit {
    /// Ran and stopped as asked.
    pub const OK: i32 = 0;
    /// The command line is wrong (unknown flag, missing value).
    pub const USAGE: i32 = 64;
    /// The configuration file cannot be read.
    pub const NO_INPUT: i32 = 66;
    /// Something inside pgwarden failed (the async runtime would not start).
    pub const SOFTWARE: i32 = 70;
    /// A program pgwarden needs is missing (`pgwarden dev` without PostgreSQL).
    pub const UNAVAILABLE: i32 = 69;
    /// The operating system refused (a port to listen on is taken or forbidden).
    pub const OS_ERROR: i32 = 71;
    /// The configuration is invalid, or a file it names is (a certificate
    /// rustls refuses, a key that does not match).
    pub const CONFIG: i32 = 78;
}

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
            for (name, b) in &c.backup {
                let _ = writeln!(
                    out,
                    "  backup {name} → {}/{} with credentials {}, into {}, for {} recipient(s)",
                    b.upstream.endpoint(),
                    b.upstream.database,
                    b.credentials,
                    b.directory.display(),
                    b.recipients.len()
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

/// The URL `pgwarden healthcheck` asks by default: the admin listener's
/// readiness on its default port, from inside the same container or host.
pub const DEFAULT_HEALTHCHECK_URL: &str = "http://127.0.0.1:9187/readyz";

/// How much of an unhealthy answer's body is echoed (it names what is not ready).
const HEALTHCHECK_BODY_LIMIT: usize = 300;

/// GETs `url` and returns 0 for a 2xx answer, 1 for anything else or no answer
/// within `timeout`: a health probe for images that ship no HTTP client (the
/// distroless runtime image has no shell, curl or wget). Proxy variables in the
/// environment are ignored, redirects are not followed.
pub async fn healthcheck(
    url: &str,
    timeout: Duration,
    out: &mut impl Write,
    err: &mut impl Write,
) -> i32 {
    let client = match reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = writeln!(err, "unhealthy: cannot build an HTTP client: {e}");
            return 1;
        }
    };
    let response = match client.get(url).send().await {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(
                err,
                "unhealthy: no answer from {url}: {}",
                crate::error_text::with_causes(&e)
            );
            return 1;
        }
    };
    let status = response.status();
    if status.is_success() {
        let _ = writeln!(out, "healthy: {url} answered {status}");
        return 0;
    }
    let body = response.text().await.unwrap_or_default();
    let body: String = body.trim().chars().take(HEALTHCHECK_BODY_LIMIT).collect();
    let _ = writeln!(err, "unhealthy: {url} answered {status} {body}");
    1
}

/// `pgwarden audit`: logs warnings (a credential that could not be revoked)
/// to stderr, runs the audit, prints its report. Exit 0, 1 or 2.
pub async fn audit(
    opts: crate::audit::command::Options,
    out: &mut impl Write,
    err: &mut impl Write,
) -> i32 {
    crate::logging::init(crate::config::LogFormat::Text, "warn");
    crate::audit::command::run(opts, std::env::vars().collect(), out, err).await
}

/// Sends SIGHUP to `pid` (a `pgwarden run`), which reloads its configuration;
/// what the reload did is in that process's log. Exit code 0 or 1.
pub fn reload(pid: i32, err: &mut impl Write) -> i32 {
    let Some(target) = rustix::process::Pid::from_raw(pid).filter(|p| p.as_raw_nonzero().get() > 0)
    else {
        let _ = writeln!(err, "--pid must be a process id (1 or more)");
        return 1;
    };
    match rustix::process::kill_process(target, rustix::process::Signal::HUP) {
        Ok(()) => {
            let _ = writeln!(
                err,
                "asked process {pid} to reload; its log says what changed (config_reloaded) or why nothing did (config_reload_failed)"
            );
            0
        }
        Err(e) => {
            let _ = writeln!(err, "cannot signal process {pid}: {e}");
            1
        }
    }
}
