//! Reading a backup back: decrypt it with an age identity file and feed
//! `pg_restore` (into a database the operator names), standard output, or
//! `pg_restore --list` (verification, restoring nothing).
//!
//! Before decrypting, the encrypted file is checked against the SHA-256 of
//! its manifest when the manifest lies beside it. Decryption authenticates
//! every chunk, so a changed or truncated file fails. The identity file is a
//! secret: its content is never printed or logged, and the decrypted dump goes
//! only to a pipe or to standard output, never to a file of pgwarden's.

use std::fs::File;
use std::io::{self, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::manifest::{DUMP_SUFFIX, MANIFEST_SUFFIX, Manifest};
use super::pipeline::sha256_of;

/// Chunk size of the copies below.
const BUFFER: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("identity file {path}: {detail}")]
    Identity { path: PathBuf, detail: String },
    #[error("backup {path}: {detail}")]
    Backup { path: PathBuf, detail: String },
    #[error("no identity in {0} can decrypt this backup")]
    WrongIdentity(PathBuf),
    #[error("decrypting: {0}")]
    Decrypt(String),
    #[error("{0}")]
    Refused(String),
    #[error("pg_restore: {0}")]
    PgRestore(String),
}

type Identities = Vec<Box<dyn age::Identity + Send + Sync>>;

/// The identities of an age identity file (`AGE-SECRET-KEY-1…` lines).
pub fn identities(path: &Path) -> Result<Identities, RestoreError> {
    let err = |detail: String| RestoreError::Identity {
        path: path.to_owned(),
        detail,
    };
    let file = File::open(path).map_err(|e| err(e.to_string()))?;
    if let Ok(meta) = file.metadata()
        && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0
    {
        tracing::warn!(event = "identity_file_readable_by_others", path = %path.display(), "the identity file can be read by other users: chmod 600 it");
    }
    // age's messages name a line number, never the line.
    let parsed = age::IdentityFile::from_buffer(BufReader::new(file))
        .map_err(|_| err("not an age identity file".into()))?;
    let ids = parsed
        .into_identities()
        .map_err(|_| err("holds an identity this build cannot use (X25519 only)".into()))?;
    if ids.is_empty() {
        return Err(err("holds no identity".into()));
    }
    Ok(ids)
}

/// The manifest beside `backup`, if there is one.
pub fn manifest_of(backup: &Path) -> Result<Option<Manifest>, RestoreError> {
    let name = backup.to_string_lossy();
    let Some(stem) = name.strip_suffix(DUMP_SUFFIX) else {
        return Ok(None);
    };
    let path = PathBuf::from(format!("{stem}{MANIFEST_SUFFIX}"));
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| RestoreError::Backup {
                path,
                detail: format!("unreadable manifest: {e}"),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RestoreError::Backup {
            path,
            detail: e.to_string(),
        }),
    }
}

/// Checks `backup` against its manifest's hash (when it has a manifest) and
/// opens it for decryption with `identities`.
pub fn open(
    backup: &Path,
    identity_path: &Path,
) -> Result<(Box<dyn Read>, Option<Manifest>), RestoreError> {
    let ids = identities(identity_path)?;
    let berr = |detail: String| RestoreError::Backup {
        path: backup.to_owned(),
        detail,
    };
    let manifest = manifest_of(backup)?;
    if let Some(m) = &manifest {
        let mut f = File::open(backup).map_err(|e| berr(e.to_string()))?;
        let sum = sha256_of(&mut f).map_err(|e| berr(e.to_string()))?;
        if sum != m.sha256 {
            return Err(berr(
                "its SHA-256 differs from its manifest's: the file changed after it was written"
                    .into(),
            ));
        }
    }
    let file = File::open(backup).map_err(|e| berr(e.to_string()))?;
    let decryptor = age::Decryptor::new_buffered(BufReader::new(file))
        .map_err(|_| berr("not an age-encrypted file".into()))?;
    let reader = decryptor
        .decrypt(ids.iter().map(|i| &**i as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => {
                RestoreError::WrongIdentity(identity_path.to_owned())
            }
            other => RestoreError::Decrypt(other.to_string()),
        })?;
    Ok((Box::new(reader), manifest))
}

/// Copies all of `from` into `to`; returns the byte count. Read errors are
/// decryption failures (a changed or truncated file).
fn pump(from: &mut dyn Read, to: &mut dyn Write) -> Result<u64, PumpError> {
    let mut buffer = vec![0u8; BUFFER];
    let mut total = 0u64;
    let result = loop {
        let n = match from.read(&mut buffer) {
            Ok(0) => break Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => break Err(PumpError::Read(e)),
        };
        if let Err(e) = to.write_all(&buffer[..n]) {
            break Err(PumpError::Write(e));
        }
        total += n as u64;
    };
    buffer.fill(0);
    result
}

enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

/// Decrypts `backup` to `out` (standard output).
pub fn to_writer(backup: &Path, identity: &Path, out: &mut dyn Write) -> Result<u64, RestoreError> {
    let (mut reader, _) = open(backup, identity)?;
    let n = pump(&mut reader, out).map_err(|e| match e {
        PumpError::Read(e) => RestoreError::Decrypt(e.to_string()),
        PumpError::Write(e) => RestoreError::Refused(format!("writing the dump: {e}")),
    })?;
    out.flush()
        .map_err(|e| RestoreError::Refused(format!("writing the dump: {e}")))?;
    Ok(n)
}

/// Refuses a connection string that carries a password: it would sit on
/// pg_restore's command line. (`PGPASSWORD`, `PGPASSFILE` or a prompt instead.)
pub fn check_dbname(conninfo: &str) -> Result<(), RestoreError> {
    let lower = conninfo.to_ascii_lowercase();
    let keyword = lower
        .split(|c: char| c.is_whitespace())
        .any(|w| w.trim_start().starts_with("password"));
    let uri_password = (lower.starts_with("postgres://") || lower.starts_with("postgresql://"))
        && lower
            .split_once("://")
            .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or(""))
            .and_then(|authority| authority.rsplit_once('@'))
            .is_some_and(|(userinfo, _)| userinfo.contains(':'));
    let query_password = lower.contains("?password=") || lower.contains("&password=");
    if keyword || uri_password || query_password {
        return Err(RestoreError::Refused(
            "the connection string holds a password, which would appear on pg_restore's command \
             line; give it through PGPASSWORD, PGPASSFILE or the prompt"
                .into(),
        ));
    }
    Ok(())
}

/// What a verification found.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Entries in the archive's table of contents.
    pub entries: usize,
    /// `Dumped from database version` and `Dumped by pg_dump version`.
    pub dumped_from: Option<String>,
    pub dumped_by: Option<String>,
    /// Decrypted bytes (the whole file was authenticated).
    pub dump_bytes: u64,
    pub manifest: Option<Manifest>,
}

/// Decrypts `backup` into `pg_restore --list`, restoring nothing: proves the
/// file is intact, decrypts with `identity` and is an archive pg_restore reads.
pub fn verify(backup: &Path, identity: &Path, pg_restore: &Path) -> Result<Verified, RestoreError> {
    let (mut reader, manifest) = open(backup, identity)?;
    let output = feed(pg_restore, &["--list".into()], &mut reader, true)?;
    let list = output.stdout;
    let entries = list
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .count();
    if entries == 0 {
        return Err(RestoreError::PgRestore("the archive lists no entry".into()));
    }
    let field = |key: &str| {
        list.lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
    };
    Ok(Verified {
        entries,
        dumped_from: field(";     Dumped from database version:"),
        dumped_by: field(";     Dumped by pg_dump version:"),
        dump_bytes: output.fed,
        manifest,
    })
}

/// Decrypts `backup` into `pg_restore --dbname=<dbname> <extra…>`.
pub fn to_database(
    backup: &Path,
    identity: &Path,
    pg_restore: &Path,
    dbname: &str,
    extra: &[String],
) -> Result<u64, RestoreError> {
    check_dbname(dbname)?;
    let (mut reader, _) = open(backup, identity)?;
    let mut args = vec![format!("--dbname={dbname}")];
    args.extend(extra.iter().cloned());
    Ok(feed(pg_restore, &args, &mut reader, false)?.fed)
}

struct Fed {
    fed: u64,
    stdout: String,
}

/// Runs `pg_restore <args>` with the decrypted stream on its standard input.
/// `capture`: keep its standard output (else it is the caller's). Reads the
/// stream to its end even if pg_restore stops early, so every chunk is
/// authenticated.
fn feed(
    program: &Path,
    args: &[String],
    reader: &mut dyn Read,
    capture: bool,
) -> Result<Fed, RestoreError> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(if capture {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| RestoreError::PgRestore(format!("cannot run {}: {e}", program.display())))?;
    let stdout = child.stdout.take().map(|mut out| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = out.read_to_string(&mut s);
            s
        })
    });
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        })
    });
    let mut stdin = child.stdin.take();
    let mut fed = 0u64;
    let mut read_error = None;
    if let Some(input) = stdin.as_mut() {
        match pump(reader, input) {
            Ok(n) => fed = n,
            Err(PumpError::Read(e)) => read_error = Some(e),
            // pg_restore stopped reading (--list needs only the table of
            // contents): authenticate the rest anyway.
            Err(PumpError::Write(_)) => match pump(reader, &mut io::sink()) {
                Ok(n) => fed = n,
                Err(PumpError::Read(e)) | Err(PumpError::Write(e)) => read_error = Some(e),
            },
        }
    }
    drop(stdin);
    let status = child
        .wait()
        .map_err(|e| RestoreError::PgRestore(e.to_string()))?;
    let out = stdout.and_then(|t| t.join().ok()).unwrap_or_default();
    let err = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if let Some(e) = read_error {
        return Err(RestoreError::Decrypt(format!(
            "{e} (the file is damaged or was cut short)"
        )));
    }
    if !status.success() {
        return Err(RestoreError::PgRestore(format!(
            "exited with {status}: {}",
            err.trim()
        )));
    }
    Ok(Fed { fed, stdout: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_strings_with_a_password_are_refused() {
        for bad in [
            "host=db password=x dbname=k",
            "host=db  PASSWORD = x",
            "postgresql://u:secret@db/k",
            "postgres://db/k?password=x",
            "postgres://db/k?sslmode=require&password=x",
        ] {
            assert!(check_dbname(bad).is_err(), "{bad}");
            assert!(
                !check_dbname(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("secret")
            );
        }
        for good in [
            "host=db dbname=k user=u sslmode=verify-full",
            "postgresql://u@db:5432/k?sslmode=verify-full",
            "postgresql://db/k",
        ] {
            assert!(check_dbname(good).is_ok(), "{good}");
        }
    }
}
