//! One backup run of one target, start to end: lock the destination, issue a
//! fresh credential, stream pg_dump through age into a pending object, revoke
//! the credential, commit the backup and its manifest, apply retention.
//!
//! Whatever happens the run ends with the lease handed to the revoker and the
//! revoker drained, and a failed dump leaves nothing under a final name.

use std::io::Write as _;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::destination::{Destination, LocalDir, PendingObject};
use super::manifest::{self, DUMP_SUFFIX, MANIFEST_SUFFIX, Manifest, Tools};
use super::pipeline::{self, PipelineError, Written};
use super::source::{self, RunSource};
use super::{Failure, Reason, Report, Success, dump, inventory, retention};
use crate::config::{BackupConfig, BackupFile};
use crate::credentials::Issued;
use crate::relay::{Stop, StopSignal};

/// How long the run waits for its lease to be revoked before it exits.
const REVOKE_WITHIN: Duration = Duration::from_secs(30);
/// After the lease's end asks the dump to stop, how long before it is cut
/// (the dump is killed at the first request anyway).
const LEASE_GRACE: Duration = Duration::from_secs(5);
/// How often the run looks at the lease's stop signal.
const LEASE_POLL: Duration = Duration::from_millis(500);

/// Runs `[backup.<target>]`. `interrupt` is cancelled on SIGTERM/SIGINT: the
/// dump is stopped and the run fails as `interrupted`.
pub async fn backup(
    file: &BackupFile,
    target: &str,
    interrupt: CancellationToken,
) -> Result<Report, String> {
    let cfg = file
        .backup
        .get(target)
        .ok_or_else(|| format!("no [backup.{target}] in the configuration"))?;
    let started = SystemTime::now();
    let clock = Instant::now();
    let dest: Arc<dyn Destination> = Arc::new(LocalDir::new(&cfg.directory));
    let mut report = Report::new(target, cfg, started);
    let outcome = attempt(file, cfg, target, &dest, started, &interrupt, &mut report).await;
    report.duration = clock.elapsed();
    report.outcome = outcome;
    report.inventory = inventory::take(&*dest, target).ok();
    Ok(report)
}

async fn attempt(
    file: &BackupFile,
    cfg: &BackupConfig,
    target: &str,
    dest: &Arc<dyn Destination>,
    started: SystemTime,
    interrupt: &CancellationToken,
    report: &mut Report,
) -> Result<Success, Failure> {
    let _lock = match dest.lock() {
        Ok(Some(lock)) => lock,
        Ok(None) => {
            return Err(Failure::new(
                Reason::Busy,
                "another backup is writing to this destination",
            ));
        }
        Err(e) => return Err(Failure::new(Reason::Destination, format!("lock: {e}"))),
    };
    match dest.remove_leftovers() {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(event = "backup_leftovers_removed", target, count = n, destination = %dest.describe())
        }
        Err(e) => return Err(Failure::new(Reason::Destination, e.to_string())),
    }
    let recipients = recipients(cfg)?;
    let pg_dump = dump::version(&cfg.pg_dump).map_err(|e| Failure::new(Reason::Dump, e))?;
    let source = source::build(file, &cfg.credentials, &cfg.upstream)
        .await
        .map_err(|e| Failure::new(Reason::Credentials, e))?;
    let stem = manifest::stem(target, started);
    let dumped = dump_once(&source, cfg, &recipients, dest, &stem, interrupt).await;
    report.lease_revoked = Some(source.finish(REVOKE_WITHIN).await);
    let (pending, written) = dumped?;
    let finished = SystemTime::now();
    let dump_file = format!("{stem}{DUMP_SUFFIX}");
    pending
        .commit()
        .map_err(|e| Failure::new(Reason::Destination, format!("{dump_file}: {e}")))?;
    let manifest = Manifest {
        format: manifest::MANIFEST_FORMAT,
        target: target.to_owned(),
        file: dump_file,
        started_at: manifest::rfc3339(started),
        finished_at: manifest::rfc3339(finished),
        duration_ms: manifest::millis(finished.duration_since(started).unwrap_or_default()),
        database: cfg.upstream.database.clone(),
        server: cfg.upstream.endpoint(),
        server_version: written.header.as_ref().map(|h| h.server_version.clone()),
        archive_format: written.header.as_ref().map(|h| h.format_version.clone()),
        dump_bytes: written.dump_bytes,
        encrypted_bytes: written.encrypted_bytes,
        sha256: written.sha256.clone(),
        recipients: cfg.recipients.clone(),
        credential_source: cfg.credentials.clone(),
        tools: Tools {
            pgwarden: env!("CARGO_PKG_VERSION").to_owned(),
            pg_dump,
            age: manifest::AGE_CRATE.to_owned(),
        },
    };
    write_manifest(&**dest, &stem, &manifest)?;
    report.removed = apply_retention(&**dest, target, cfg);
    Ok(Success { manifest })
}

fn recipients(cfg: &BackupConfig) -> Result<Vec<age::x25519::Recipient>, Failure> {
    cfg.recipients
        .iter()
        .map(|r| age::x25519::Recipient::from_str(r))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| Failure::new(Reason::Encryption, "a recipient does not parse"))
}

/// Issues the credential, runs pg_dump into the pipeline, and lets the lease
/// go (to the revoker) as soon as pg_dump has ended, whatever the outcome.
async fn dump_once(
    source: &RunSource,
    cfg: &BackupConfig,
    recipients: &[age::x25519::Recipient],
    dest: &Arc<dyn Destination>,
    stem: &str,
    interrupt: &CancellationToken,
) -> Result<(Box<dyn PendingObject>, Written), Failure> {
    let issued = source
        .source
        .issue(&cfg.upstream)
        .await
        .map_err(|e| Failure::new(Reason::Credentials, e.to_string()))?;
    let Issued {
        credential,
        mut lease,
    } = issued;
    let stop = Arc::new(StopSignal::default());
    lease.start_renewal(stop.clone(), LEASE_GRACE);
    tracing::info!(
        event = "backup_started",
        target = %stem,
        upstream = %cfg.upstream.endpoint(),
        database = %cfg.upstream.database,
        upstream_user = %credential.username,
        lease_id_hash = %lease.lease().id,
        credential_source = %cfg.credentials,
    );
    let pending = dest
        .create(&format!("{stem}{DUMP_SUFFIX}"))
        .map_err(|e| Failure::new(Reason::Destination, e.to_string()))?;
    let mut running = dump::start(
        &cfg.pg_dump,
        &cfg.upstream,
        &credential.username,
        &credential.password,
        cfg.compression_level,
    )
    .map_err(|e| Failure::new(Reason::Dump, e))?;
    drop(credential);
    let killer = running.killer();
    let recipients = recipients.to_vec();
    let mut task = tokio::task::spawn_blocking(move || {
        let mut pending = pending;
        let written = match running.stdout.take() {
            Some(mut out) => pipeline::encrypt(&mut out, &recipients, &mut *pending),
            None => Err(PipelineError::Source(std::io::Error::other("no output"))),
        };
        if written.is_err() {
            // Nobody reads pg_dump any more: stop it rather than wait on it.
            running.killer().kill();
        }
        (pending, written, running.finish())
    });
    let deadline = tokio::time::sleep(cfg.timeout);
    tokio::pin!(deadline);
    let stopped = tokio::select! {
        joined = &mut task => Ok(joined),
        _ = &mut deadline => Err(Reason::Timeout),
        _ = interrupt.cancelled() => Err(Reason::Interrupted),
        _ = lease_ending(&stop) => Err(Reason::LeaseEnded),
    };
    let joined = match stopped {
        Ok(joined) => joined,
        Err(reason) => {
            killer.kill();
            let _ = task.await;
            drop(lease);
            return Err(Failure::new(reason, "the dump was stopped before it ended"));
        }
    };
    drop(lease);
    let (pending, written, exit) =
        joined.map_err(|e| Failure::new(Reason::Dump, format!("the dump task failed: {e}")))?;
    exit.map_err(|e| Failure::new(Reason::Dump, e))?;
    let written = written.map_err(|e| match e {
        PipelineError::Source(_) => Failure::new(Reason::Dump, e.to_string()),
        PipelineError::Encrypt(_) => Failure::new(Reason::Encryption, e.to_string()),
        PipelineError::Sink(_) => Failure::new(Reason::Destination, e.to_string()),
    })?;
    Ok((pending, written))
}

/// Resolves when the lease's end of life asks the dump to stop: the
/// credential is about to expire (and Vault's revocation would end the
/// session anyway).
async fn lease_ending(stop: &StopSignal) {
    let mut tick = tokio::time::interval(LEASE_POLL);
    loop {
        tick.tick().await;
        if stop.requested() >= Some(Stop::Now) {
            return;
        }
    }
}

fn write_manifest(dest: &dyn Destination, stem: &str, m: &Manifest) -> Result<(), Failure> {
    let name = format!("{stem}{MANIFEST_SUFFIX}");
    let fail = |e: std::io::Error| Failure::new(Reason::Destination, format!("{name}: {e}"));
    let text = serde_json::to_vec_pretty(m)
        .map_err(|e| Failure::new(Reason::Destination, format!("{name}: {e}")))?;
    let mut object = dest.create(&name).map_err(fail)?;
    object.write_all(&text).map_err(fail)?;
    object.write_all(b"\n").map_err(fail)?;
    object.commit().map_err(fail)
}

/// Deletes what the retention policy does not keep; returns the stems removed.
/// A failure to delete is logged, not a failed backup.
fn apply_retention(dest: &dyn Destination, target: &str, cfg: &BackupConfig) -> Vec<String> {
    let found = match inventory::take(dest, target) {
        Ok(i) => i.found,
        Err(e) => {
            tracing::warn!(event = "backup_retention_failed", target, error = %e);
            return Vec::new();
        }
    };
    let plan = retention::plan(&found, &cfg.retention);
    let mut removed = Vec::new();
    for stem in plan.delete {
        // The manifest first: a half-deleted backup is then incomplete, never
        // a complete-looking one missing its dump.
        let manifest = format!("{stem}{MANIFEST_SUFFIX}");
        let dump = format!("{stem}{DUMP_SUFFIX}");
        let listed = dest.list().unwrap_or_default();
        let result = [manifest, dump]
            .into_iter()
            .filter(|n| listed.contains(n))
            .try_for_each(|n| dest.remove(&n));
        match result {
            Ok(()) => removed.push(stem),
            Err(e) => {
                tracing::warn!(event = "backup_retention_failed", target, backup = %stem, error = %e)
            }
        }
    }
    removed
}
