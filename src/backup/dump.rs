//! Running pg_dump: its command line, its environment, and a handle to stop it.
//!
//! pg_dump connects with `sslmode=verify-full` (or `verify-ca`) against the
//! upstream's CA and writes the custom format to its standard output, a pipe
//! read by [`super::pipeline`]. The issued password reaches it through
//! `PGPASSWORD` in an environment cleared of everything else (no `PG*`
//! variable of the caller, no service file): never on a command line, where
//! `ps` would show it. pg_dump's standard error is kept (bounded) for the log.

use std::ffi::OsString;
use std::io::{self, Read};
use std::net::{IpAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use secrecy::{ExposeSecret, SecretString};

use crate::config::{UpstreamConfig, UpstreamTls};

/// How much of pg_dump's standard error is kept.
const STDERR_LIMIT: usize = 8 * 1024;
/// `application_name` of the dump's session, for pg_stat_activity and the server log.
const APPLICATION_NAME: &str = "pgwarden-backup";

/// Why pg_dump could not run, or failed. Its text names the program, the
/// server's host and pg_dump's own message, never the password (pg_dump
/// never has it on its command line, and does not print it).
#[derive(Debug, thiserror::Error)]
pub(crate) enum DumpError {
    #[error("a backup needs TLS to the server")]
    NoTls,
    #[error("cannot resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: Option<io::Error>,
    },
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} --version failed ({status})", program.display())]
    Version {
        program: PathBuf,
        status: ExitStatus,
    },
    #[error("waiting for pg_dump: {0}")]
    Wait(#[source] io::Error),
    #[error("pg_dump was already reaped")]
    Reaped,
    /// `stderr`: what pg_dump said (at most [`STDERR_LIMIT`] bytes).
    #[error("pg_dump exited with {status}: {stderr}")]
    Exited { status: ExitStatus, stderr: String },
}

/// The libpq connection string for `upstream` as `user`, without a password.
fn conninfo(upstream: &UpstreamConfig, user: &str) -> Result<String, DumpError> {
    let sslmode = match upstream.tls {
        UpstreamTls::VerifyFull => "verify-full",
        UpstreamTls::VerifyCa => "verify-ca",
        UpstreamTls::Disable => return Err(DumpError::NoTls),
    };
    let mut parts = vec![];
    match &upstream.server_name {
        // libpq verifies the certificate against `host`; the address to
        // connect to then goes in `hostaddr`.
        Some(name) if name != &upstream.host => {
            parts.push(("host", name.clone()));
            parts.push(("hostaddr", address_of(&upstream.host, upstream.port)?));
        }
        _ => parts.push(("host", upstream.host.clone())),
    }
    parts.push(("port", upstream.port.to_string()));
    parts.push(("dbname", upstream.database.clone()));
    parts.push(("user", user.to_owned()));
    parts.push(("sslmode", sslmode.to_owned()));
    if let Some(ca) = &upstream.ca_file {
        parts.push(("sslrootcert", ca.display().to_string()));
    }
    parts.push((
        "connect_timeout",
        upstream.connect_timeout.as_secs().max(2).to_string(),
    ));
    parts.push(("application_name", APPLICATION_NAME.to_owned()));
    Ok(parts
        .into_iter()
        .map(|(k, v)| format!("{k}={}", quote(&v)))
        .collect::<Vec<_>>()
        .join(" "))
}

/// A conninfo value, quoted: `'…'` with `\` and `'` escaped.
fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn address_of(host: &str, port: u16) -> Result<String, DumpError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ip.to_string());
    }
    let unresolved = |source| DumpError::Resolve {
        host: host.to_owned(),
        source,
    };
    (host, port)
        .to_socket_addrs()
        .map_err(|e| unresolved(Some(e)))?
        .next()
        .map(|a| a.ip().to_string())
        .ok_or_else(|| unresolved(None))
}

/// An environment with nothing of the caller's but `PATH` and the locale
/// (pg_dump's messages in English).
fn clean_env(cmd: &mut Command) {
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.env("LC_ALL", "C");
}

/// `pg_dump --version`, e.g. `pg_dump (PostgreSQL) 15.14`.
pub(crate) fn version(program: &Path) -> Result<String, DumpError> {
    let mut cmd = Command::new(program);
    clean_env(&mut cmd);
    let out = cmd
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| DumpError::Spawn {
            program: program.to_owned(),
            source,
        })?;
    if !out.status.success() {
        return Err(DumpError::Version {
            program: program.to_owned(),
            status: out.status,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A running pg_dump.
pub(crate) struct Running {
    /// Taken by whoever reads the dump.
    pub(crate) stdout: Option<ChildStdout>,
    child: Arc<Mutex<Option<Child>>>,
    stderr: Option<JoinHandle<String>>,
}

/// Stops a running pg_dump from another task; cheap to clone.
#[derive(Clone)]
pub(crate) struct Killer(Arc<Mutex<Option<Child>>>);

impl Killer {
    /// Kills pg_dump, and whatever it started (its process group), if it
    /// still runs; its output then ends.
    pub(crate) fn kill(&self) {
        if let Some(child) = self.0.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            let group = i32::try_from(child.id())
                .ok()
                .and_then(rustix::process::Pid::from_raw);
            match group {
                Some(pid) => {
                    let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                }
                None => {
                    let _ = child.kill();
                }
            }
        }
    }
}

/// Starts pg_dump for `upstream` as `user` with `password`.
pub(crate) fn start(
    program: &Path,
    upstream: &UpstreamConfig,
    user: &str,
    password: &SecretString,
    compression: Option<u8>,
) -> Result<Running, DumpError> {
    let dbname = conninfo(upstream, user)?;
    let mut cmd = Command::new(program);
    clean_env(&mut cmd);
    cmd.env("PGPASSWORD", password.expose_secret());
    let mut args: Vec<OsString> = vec![
        "--format=custom".into(),
        "--no-password".into(),
        format!("--dbname={dbname}").into(),
    ];
    if let Some(level) = compression {
        args.push(format!("--compress={level}").into());
    }
    // A process group of its own: stopping the dump stops everything it
    // started, and a terminal's Ctrl-C reaches pgwarden, which stops it.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| DumpError::Spawn {
        program: program.to_owned(),
        source,
    })?;
    let stdout = child.stdout.take();
    let stderr = child
        .stderr
        .take()
        .map(|err| std::thread::spawn(|| keep_stderr(err)));
    Ok(Running {
        stdout,
        child: Arc::new(Mutex::new(Some(child))),
        stderr,
    })
}

/// pg_dump's standard error, read to its end, its first [`STDERR_LIMIT`]
/// bytes kept.
fn keep_stderr(mut err: impl Read) -> String {
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = err.read(&mut buf) {
        if n == 0 {
            break;
        }
        let room = STDERR_LIMIT.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).trim().to_owned()
}

impl Running {
    pub(crate) fn killer(&self) -> Killer {
        Killer(self.child.clone())
    }

    /// Waits for pg_dump to exit (call once its output has ended): `Ok` when
    /// it succeeded, else what it said.
    pub(crate) fn finish(mut self) -> Result<(), DumpError> {
        drop(self.stdout.take());
        let child = self.child.lock().unwrap_or_else(|p| p.into_inner()).take();
        let status = match child {
            Some(mut c) => c.wait().map_err(DumpError::Wait)?,
            None => return Err(DumpError::Reaped),
        };
        let said = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        if status.success() {
            if !said.is_empty() {
                tracing::warn!(event = "pg_dump_warning", detail = %said);
            }
            Ok(())
        } else {
            Err(DumpError::Exited {
                status,
                stderr: said,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn upstream() -> UpstreamConfig {
        UpstreamConfig {
            host: "db.internal".into(),
            port: 5433,
            database: "key cloak's".into(),
            tls: UpstreamTls::VerifyFull,
            ca_file: Some("/etc/ca dir/ca.crt".into()),
            server_name: None,
            connect_timeout: Duration::from_secs(5),
            allow_insecure_auth: false,
        }
    }

    #[test]
    fn the_conninfo_verifies_the_server_and_carries_no_password() {
        let c = conninfo(&upstream(), "v-backup-1").unwrap();
        assert_eq!(
            c,
            "host='db.internal' port='5433' dbname='key cloak\\'s' user='v-backup-1' \
             sslmode='verify-full' sslrootcert='/etc/ca dir/ca.crt' connect_timeout='5' \
             application_name='pgwarden-backup'"
        );
        assert!(!c.contains("password"));
        let mut u = upstream();
        u.tls = UpstreamTls::VerifyCa;
        u.server_name = Some("db.example".into());
        u.host = "127.0.0.1".into();
        let c = conninfo(&u, "x").unwrap();
        assert!(
            c.starts_with("host='db.example' hostaddr='127.0.0.1' "),
            "{c}"
        );
        assert!(c.contains("sslmode='verify-ca'"));
        u.tls = UpstreamTls::Disable;
        assert!(conninfo(&u, "x").is_err());
    }
}
