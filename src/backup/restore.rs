//! Reading a backup back: decrypt it with an age identity file and feed
//! `pg_restore` (into a database the operator names), standard output, or
//! `pg_restore --list` (verification, restoring nothing).
//!
//! The backup is opened once and must be a regular file; when its manifest
//! lies beside it, the SHA-256 of that open file is checked against the
//! manifest's before the same file, rewound, is decrypted, so the bytes
//! checked are the bytes decrypted. Decryption authenticates every chunk, so
//! a changed or truncated file fails. The identity file is a secret: its
//! content is never printed or logged, and the decrypted dump goes only to a
//! pipe or to standard output, never to a file of pgwarden's.
//!
//! Layout: this file opens and decrypts; [`conninfo`] keeps passwords off
//! pg_restore's command line; [`pg_restore`] runs it.

mod conninfo;
mod pg_restore;

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use super::manifest::{DUMP_SUFFIX, MANIFEST_SUFFIX, Manifest};
use super::pipeline::sha256_of;
use pg_restore::{PumpError, feed, pump};

/// Why a backup could not be read back. Never quotes an identity (age's
/// parse errors name a line number, not the line) nor a byte of the dump:
/// pg_restore's messages, which may quote rows, are never captured when it
/// restores.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RestoreError {
    #[error("identity file {}: {source}", path.display())]
    IdentityOpen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("identity file {}: not an age identity file ({source})", path.display())]
    IdentityParse {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("identity file {}: holds an identity this build cannot use (X25519 only)", path.display())]
    IdentityUnsupported { path: PathBuf },
    #[error("identity file {}: holds no identity", path.display())]
    IdentityEmpty { path: PathBuf },
    #[error("backup {}: {source}", path.display())]
    Backup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("backup {}: not a regular file", path.display())]
    NotAFile { path: PathBuf },
    #[error("backup {}: unreadable manifest: {source}", path.display())]
    ManifestParse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("backup {}: its SHA-256 differs from its manifest's: the file changed after it was written", path.display())]
    Changed { path: PathBuf },
    #[error("backup {}: not an age-encrypted file", path.display())]
    NotAge {
        path: PathBuf,
        #[source]
        source: age::DecryptError,
    },
    #[error("no identity in {} can decrypt this backup", .0.display())]
    WrongIdentity(PathBuf),
    #[error("decrypting: {0}")]
    Decrypt(#[source] age::DecryptError),
    #[error("decrypting: {0} (the file is damaged or was cut short)")]
    Damaged(#[source] io::Error),
    #[error(
        "the connection string holds a password, which would appear on pg_restore's command \
         line; give it through PGPASSWORD, PGPASSFILE or the prompt"
    )]
    PasswordInDbname,
    #[error(
        "pg_restore argument #{0} holds a password, which would appear on pg_restore's command \
         line; give it through PGPASSWORD, PGPASSFILE or the prompt"
    )]
    PasswordInArgument(usize),
    #[error("writing the dump: {0}")]
    Output(#[source] io::Error),
    #[error("pg_restore: cannot run {}: {source}", program.display())]
    PgRestoreSpawn {
        program: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("pg_restore: {0}")]
    PgRestoreWait(#[source] io::Error),
    /// `said`: pg_restore's standard error when it was captured (`--list`).
    #[error("pg_restore exited with {status}{}", said.as_deref().map(|s| format!(": {s}")).unwrap_or_else(|| " (its messages are above)".into()))]
    PgRestoreFailed {
        status: ExitStatus,
        said: Option<String>,
    },
    #[error("pg_restore: the archive lists no entry")]
    EmptyArchive,
}

type Identities = Vec<Box<dyn age::Identity + Send + Sync>>;

/// The identities of an age identity file (`AGE-SECRET-KEY-1…` lines).
fn identities(path: &Path) -> Result<Identities, RestoreError> {
    let file = File::open(path).map_err(|source| RestoreError::IdentityOpen {
        path: path.to_owned(),
        source,
    })?;
    if let Ok(meta) = file.metadata()
        && std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o077 != 0
    {
        tracing::warn!(event = "identity_file_readable_by_others", path = %path.display(), "the identity file can be read by other users: chmod 600 it");
    }
    // age's messages name a line number, never the line.
    let parsed = age::IdentityFile::from_buffer(BufReader::new(file)).map_err(|source| {
        RestoreError::IdentityParse {
            path: path.to_owned(),
            source,
        }
    })?;
    let unsupported = || RestoreError::IdentityUnsupported {
        path: path.to_owned(),
    };
    let ids = parsed.into_identities().map_err(|_| unsupported())?;
    if ids.is_empty() {
        return Err(RestoreError::IdentityEmpty {
            path: path.to_owned(),
        });
    }
    Ok(ids)
}

/// The manifest beside `backup`, if there is one.
fn manifest_of(backup: &Path) -> Result<Option<Manifest>, RestoreError> {
    let name = backup.to_string_lossy();
    let Some(stem) = name.strip_suffix(DUMP_SUFFIX) else {
        return Ok(None);
    };
    let path = PathBuf::from(format!("{stem}{MANIFEST_SUFFIX}"));
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| RestoreError::ManifestParse { path, source }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(RestoreError::Backup { path, source }),
    }
}

/// Opens `backup` once, checks it against its manifest's hash (when it has a
/// manifest), and hands the same open file, rewound, to decryption with the
/// identities of `identity_path`.
fn open(
    backup: &Path,
    identity_path: &Path,
) -> Result<(Box<dyn Read>, Option<Manifest>), RestoreError> {
    let ids = identities(identity_path)?;
    let berr = |source| RestoreError::Backup {
        path: backup.to_owned(),
        source,
    };
    let manifest = manifest_of(backup)?;
    let mut file = File::open(backup).map_err(berr)?;
    if !file.metadata().map_err(berr)?.is_file() {
        return Err(RestoreError::NotAFile {
            path: backup.to_owned(),
        });
    }
    if let Some(m) = &manifest {
        let sum = sha256_of(&mut file).map_err(berr)?;
        if sum != m.sha256 {
            return Err(RestoreError::Changed {
                path: backup.to_owned(),
            });
        }
        file.rewind().map_err(berr)?;
    }
    let decryptor = age::Decryptor::new_buffered(BufReader::new(file)).map_err(|source| {
        RestoreError::NotAge {
            path: backup.to_owned(),
            source,
        }
    })?;
    let reader = decryptor
        .decrypt(ids.iter().map(|i| &**i as &dyn age::Identity))
        .map_err(|e| match e {
            age::DecryptError::NoMatchingKeys => {
                RestoreError::WrongIdentity(identity_path.to_owned())
            }
            other => RestoreError::Decrypt(other),
        })?;
    Ok((Box::new(reader), manifest))
}

/// Decrypts `backup` to `out` (standard output).
pub(crate) fn to_writer(
    backup: &Path,
    identity: &Path,
    out: &mut dyn Write,
) -> Result<u64, RestoreError> {
    let (mut reader, _) = open(backup, identity)?;
    let n = pump(&mut reader, out).map_err(|e| match e {
        PumpError::Read(e) => RestoreError::Damaged(e),
        PumpError::Write(e) => RestoreError::Output(e),
    })?;
    out.flush().map_err(RestoreError::Output)?;
    Ok(n)
}

/// What a verification found.
#[derive(Debug, Clone)]
pub(crate) struct Verified {
    /// Entries in the archive's table of contents.
    pub(crate) entries: usize,
    /// `Dumped from database version` and `Dumped by pg_dump version`.
    pub(crate) dumped_from: Option<String>,
    pub(crate) dumped_by: Option<String>,
    /// Decrypted bytes (the whole file was authenticated).
    pub(crate) dump_bytes: u64,
    pub(crate) manifest: Option<Manifest>,
}

/// Decrypts `backup` into `pg_restore --list`, restoring nothing: proves the
/// file is intact, decrypts with `identity` and is an archive pg_restore reads.
pub(crate) fn verify(
    backup: &Path,
    identity: &Path,
    pg_restore: &Path,
) -> Result<Verified, RestoreError> {
    let (mut reader, manifest) = open(backup, identity)?;
    let output = feed(pg_restore, &["--list".into()], &mut reader, true)?;
    let list = output.stdout;
    let entries = list
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with(';'))
        .count();
    if entries == 0 {
        return Err(RestoreError::EmptyArchive);
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

/// Decrypts `backup` into `pg_restore --dbname=<dbname> <extra…>`, once
/// neither `dbname` nor `extra` holds a password.
pub(crate) fn to_database(
    backup: &Path,
    identity: &Path,
    pg_restore: &Path,
    dbname: &str,
    extra: &[String],
) -> Result<u64, RestoreError> {
    if conninfo::holds_password(dbname) {
        return Err(RestoreError::PasswordInDbname);
    }
    if let Some(i) = extra.iter().position(|a| conninfo::holds_password(a)) {
        return Err(RestoreError::PasswordInArgument(i + 1));
    }
    let (mut reader, _) = open(backup, identity)?;
    let mut args = vec![format!("--dbname={dbname}")];
    args.extend(extra.iter().cloned());
    Ok(feed(pg_restore, &args, &mut reader, false)?.fed)
}

#[cfg(test)]
mod tests;
