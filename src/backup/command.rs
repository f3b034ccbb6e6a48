//! The commands `pgwarden backup`, `pgwarden backup verify` and `pgwarden
//! restore`: what they print and their exit codes (0 done, 1 failed).
//!
//! They print paths, sizes, hashes and versions; never a password, an
//! identity or a byte of a dump (except `restore --stdout`, whose point is to
//! write the dump to standard output, and which refuses a terminal). Each
//! first turns core dumps off ([`hardening`](super::hardening)).

use std::io::{IsTerminal, Write};
use std::path::Path;

use tokio_util::sync::CancellationToken;

use super::{Report, hardening, report, restore, run};
use crate::config::BackupFile;
use crate::metrics::Label;

/// `pgwarden backup --config FILE --target NAME`.
pub async fn backup(
    config: &Path,
    target: &str,
    out: &mut impl Write,
    err: &mut impl Write,
) -> i32 {
    hardening::no_core_dumps();
    let Some(file) = load(config, err) else {
        return 1;
    };
    crate::logging::init(file.log.format, &file.log.level);
    let interrupt = CancellationToken::new();
    let on_signal = interrupt.clone();
    let signals = tokio::spawn(async move {
        crate::server::wait_for_signal().await;
        on_signal.cancel();
    });
    let result = run::backup(&file, target, interrupt).await;
    signals.abort();
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = writeln!(err, "{e}");
            return 1;
        }
    };
    for p in report::publish(&report).await {
        let _ = writeln!(err, "warning: {p}");
    }
    print_outcome(&report, out, err)
}

/// The configuration's backup sections, or every problem with them (printed).
fn load(config: &Path, err: &mut impl Write) -> Option<BackupFile> {
    match crate::config::load_backup(config, std::env::vars()) {
        Ok(f) => Some(f),
        Err(errors) => {
            let _ = writeln!(err, "{}: {} problem(s):", config.display(), errors.0.len());
            for e in &errors.0 {
                let _ = writeln!(err, "  - {e}");
            }
            None
        }
    }
}

fn print_outcome(report: &Report, out: &mut impl Write, err: &mut impl Write) -> i32 {
    match &report.outcome {
        Ok(s) => {
            let m = &s.manifest;
            let _ = writeln!(
                out,
                "backup {}/{}: {} bytes encrypted ({} dumped), sha256 {}, server {}; {} old backup(s) removed",
                report.destination.display(),
                m.file,
                m.encrypted_bytes,
                m.dump_bytes,
                m.sha256,
                m.server_version.as_deref().unwrap_or("unknown"),
                report.removed.len()
            );
            if report.lease_revoked == Some(false) {
                let _ = writeln!(
                    err,
                    "warning: the backup's credential could not be revoked; it expires at the end of its TTL"
                );
            }
            0
        }
        Err(f) => {
            let _ = writeln!(
                err,
                "backup of {} failed ({}): {f}",
                report.target,
                f.reason().as_str(),
            );
            1
        }
    }
}

/// `pgwarden backup verify --identity FILE BACKUP`.
pub fn verify(
    backup: &Path,
    identity: &Path,
    pg_restore: &Path,
    out: &mut impl Write,
    err: &mut impl Write,
) -> i32 {
    hardening::no_core_dumps();
    match restore::verify(backup, identity, pg_restore) {
        Ok(v) => {
            let _ = writeln!(
                out,
                "{}: intact and readable: {} archive entries, {} bytes decrypted{}; dumped from PostgreSQL {} by pg_dump {}",
                backup.display(),
                v.entries,
                v.dump_bytes,
                if v.manifest.is_some() {
                    ", SHA-256 matches the manifest"
                } else {
                    " (no manifest beside it)"
                },
                v.dumped_from.as_deref().unwrap_or("?"),
                v.dumped_by.as_deref().unwrap_or("?"),
            );
            0
        }
        Err(e) => {
            let _ = writeln!(err, "{}: verification failed: {e}", backup.display());
            1
        }
    }
}

/// Where `pgwarden restore` sends the dump.
pub enum RestoreTo<'a> {
    /// `pg_restore --dbname=<conninfo> <extra…>`.
    Database {
        dbname: &'a str,
        extra: &'a [String],
    },
    /// Standard output (for `pg_restore` elsewhere, or another tool).
    Stdout,
}

/// `pgwarden restore --identity FILE (--dbname CONNINFO | --stdout) BACKUP`.
pub fn restore(
    backup: &Path,
    identity: &Path,
    pg_restore: &Path,
    to: RestoreTo<'_>,
    err: &mut impl Write,
) -> i32 {
    hardening::no_core_dumps();
    let result = match to {
        RestoreTo::Database { dbname, extra } => {
            restore::to_database(backup, identity, pg_restore, dbname, extra)
        }
        RestoreTo::Stdout => {
            let stdout = std::io::stdout();
            if stdout.is_terminal() {
                let _ = writeln!(
                    err,
                    "standard output is a terminal: redirect it to a file or pipe it to pg_restore"
                );
                return 1;
            }
            restore::to_writer(backup, identity, &mut stdout.lock())
        }
    };
    match result {
        Ok(bytes) => {
            let _ = writeln!(err, "{}: {bytes} bytes restored", backup.display());
            0
        }
        Err(e) => {
            let _ = writeln!(err, "{}: restore failed: {e}", backup.display());
            1
        }
    }
}
