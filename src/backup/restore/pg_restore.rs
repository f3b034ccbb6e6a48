//! Running pg_restore with the decrypted dump on its standard input, and the
//! copy that feeds it.
//!
//! The decrypted stream goes only into pg_restore's pipe (or the caller's
//! writer); the copy's buffer is zeroed when it ends. pg_restore's standard
//! error is captured only for `--list`, which prints no row; when it
//! restores, its messages (which may quote a row that failed) go straight to
//! the operator's terminal and never into pgwarden's error text.

use std::io::{self, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use super::RestoreError;

/// Chunk size of the copies below.
const BUFFER: usize = 64 * 1024;

pub(super) enum PumpError {
    Read(io::Error),
    Write(io::Error),
}

/// Copies all of `from` into `to`; returns the byte count. Read errors are
/// decryption failures (a changed or truncated file).
pub(super) fn pump(from: &mut dyn Read, to: &mut dyn Write) -> Result<u64, PumpError> {
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

pub(super) struct Fed {
    pub(super) fed: u64,
    pub(super) stdout: String,
}

/// Runs `pg_restore <args>` with the decrypted stream on its standard input.
/// `list`: capture its standard output and error (`--list`); else they are
/// the operator's. Reads the stream to its end even if pg_restore stops
/// early, so every chunk is authenticated.
pub(super) fn feed(
    program: &Path,
    args: &[String],
    reader: &mut dyn Read,
    list: bool,
) -> Result<Fed, RestoreError> {
    let captured = || {
        if list {
            Stdio::piped()
        } else {
            Stdio::inherit()
        }
    };
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(captured())
        .stderr(captured())
        .spawn()
        .map_err(|source| RestoreError::PgRestoreSpawn {
            program: program.to_owned(),
            source,
        })?;
    let stdout = child
        .stdout
        .take()
        .map(|out| std::thread::spawn(|| read_all(out)));
    let stderr = child
        .stderr
        .take()
        .map(|err| std::thread::spawn(|| read_all(err)));
    let fed = child
        .stdin
        .take()
        .map(|mut input| authenticate_all(reader, &mut input));
    let status = child.wait().map_err(RestoreError::PgRestoreWait)?;
    let out = stdout.and_then(|t| t.join().ok()).unwrap_or_default();
    let said = stderr.and_then(|t| t.join().ok());
    let fed = fed.transpose().map_err(RestoreError::Damaged)?.unwrap_or(0);
    if !status.success() {
        return Err(RestoreError::PgRestoreFailed {
            status,
            said: said.map(|s| s.trim().to_owned()),
        });
    }
    Ok(Fed { fed, stdout: out })
}

/// Feeds `reader` into `input` (then closes it); if pg_restore stops reading
/// (`--list` needs only the table of contents), reads the rest anyway, so
/// every chunk is authenticated. Returns the bytes decrypted, or the read
/// error that says the file is damaged.
fn authenticate_all(reader: &mut dyn Read, input: &mut dyn Write) -> io::Result<u64> {
    match pump(reader, input) {
        Ok(n) => Ok(n),
        Err(PumpError::Read(e)) => Err(e),
        Err(PumpError::Write(_)) => match pump(reader, &mut io::sink()) {
            Ok(n) => Ok(n),
            Err(PumpError::Read(e)) | Err(PumpError::Write(e)) => Err(e),
        },
    }
}

fn read_all(mut from: impl Read) -> String {
    let mut s = String::new();
    let _ = from.read_to_string(&mut s);
    s
}
