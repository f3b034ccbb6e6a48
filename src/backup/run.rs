//! One backup run of one target, start to end: lock the destination, issue a
//! fresh credential, stream pg_dump through age into a pending object, revoke
//! the credential, commit the backup and its manifest, apply retention.
//!
//! Whatever happens the run ends with the lease handed to the revoker and the
//! revoker drained, and a failed dump leaves nothing under a final name. A
//! dump that is stopped (timeout, interrupt, the lease's end) gives its lease
//! up as soon as pg_dump is killed, before anything else is waited for; a
//! dump whose output never ends even then (something it started holds the
//! pipe) is left behind after [`STOPPED_GRACE`] rather than waited for.

use std::io::{self, Write as _};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::task::{JoinError, JoinHandle};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::destination::{Destination, LocalDir, PendingObject};
use super::dump::{self, DumpError, Running};
use super::error::{RunError, Stop};
use super::manifest::{self, DUMP_SUFFIX, MANIFEST_SUFFIX, Manifest, Tools};
use super::pipeline::{self, PipelineError, Written};
use super::report::Pushgateway;
use super::source::{self, RunSource};
use super::{Failure, Report, Success, inventory, retention};
use crate::config::{BackupConfig, BackupFile};
use crate::credentials::Issued;
use crate::relay::{Stop as LeaseStop, StopSignal};

/// How long the run waits for its lease to be revoked before it exits.
const REVOKE_WITHIN: Duration = Duration::from_secs(30);
/// After the lease's end asks the dump to stop, how long before it is cut
/// (the dump is killed at the first request anyway).
const LEASE_GRACE: Duration = Duration::from_secs(5);
/// How often the run looks at the lease's stop signal.
const LEASE_POLL: Duration = Duration::from_millis(500);
/// How long a killed dump's pipeline may take to see its output end.
const STOPPED_GRACE: Duration = Duration::from_secs(10);

/// A target that the configuration does not have.
#[derive(Debug, thiserror::Error)]
#[error("no [backup.{0}] in the configuration")]
pub struct UnknownTarget(String);

/// Runs `[backup.<target>]`. `interrupt` is cancelled on SIGTERM/SIGINT: the
/// dump is stopped and the run fails as `interrupted`.
pub async fn backup(
    file: &BackupFile,
    target: &str,
    interrupt: CancellationToken,
) -> Result<Report, UnknownTarget> {
    let cfg = file
        .backup
        .get(target)
        .ok_or_else(|| UnknownTarget(target.to_owned()))?;
    let started = SystemTime::now();
    let clock = Instant::now();
    let run = Run {
        file,
        cfg,
        target,
        dest: Arc::new(LocalDir::new(&cfg.directory)),
        started,
        interrupt,
    };
    let mut progress = Progress::default();
    let outcome = attempt(&run, &mut progress).await.map_err(Failure::from);
    Ok(Report {
        target: target.to_owned(),
        started,
        duration: clock.elapsed(),
        outcome,
        lease_revoked: progress.lease_revoked,
        removed: progress.removed,
        inventory: inventory::take(&*run.dest, target).ok(),
        destination: cfg.directory.clone(),
        metrics_file: cfg.metrics_file.clone(),
        pushgateway: cfg.pushgateway.as_deref().map(Pushgateway::new),
    })
}

/// What a run works with.
struct Run<'a> {
    file: &'a BackupFile,
    cfg: &'a BackupConfig,
    target: &'a str,
    dest: Arc<dyn Destination>,
    started: SystemTime,
    interrupt: CancellationToken,
}

/// What the report says besides the outcome.
#[derive(Default)]
struct Progress {
    lease_revoked: Option<bool>,
    removed: Vec<String>,
}

async fn attempt(run: &Run<'_>, progress: &mut Progress) -> Result<Success, RunError> {
    let _lock = run
        .dest
        .lock()
        .map_err(RunError::Lock)?
        .ok_or(RunError::Busy)?;
    remove_leftovers(run)?;
    let recipients = recipients(run.cfg)?;
    let pg_dump = dump::version(&run.cfg.pg_dump)?;
    let source = source::build(run.file, &run.cfg.credentials, &run.cfg.upstream).await?;
    let stem = manifest::stem(run.target, run.started);
    let dumped = dump_once(&source, run, &recipients, &stem).await;
    progress.lease_revoked = Some(source.finish(REVOKE_WITHIN).await);
    let (pending, written) = dumped?;
    let finished = SystemTime::now();
    let file = format!("{stem}{DUMP_SUFFIX}");
    pending.commit().map_err(|source| RunError::Commit {
        file: file.clone(),
        source,
    })?;
    let manifest = describe(run, file, finished, written, pg_dump);
    write_manifest(&*run.dest, &stem, &manifest)?;
    progress.removed = apply_retention(&*run.dest, run.target, run.cfg, &stem);
    Ok(Success { manifest })
}

fn remove_leftovers(run: &Run<'_>) -> Result<(), RunError> {
    let n = run.dest.remove_leftovers().map_err(RunError::Leftovers)?;
    if n > 0 {
        tracing::info!(event = "backup_leftovers_removed", target = run.target, count = n, destination = %run.dest.describe());
    }
    Ok(())
}

fn recipients(cfg: &BackupConfig) -> Result<Vec<age::x25519::Recipient>, RunError> {
    cfg.recipients
        .iter()
        .enumerate()
        .map(|(i, r)| age::x25519::Recipient::from_str(r).map_err(|_| RunError::Recipient(i + 1)))
        .collect()
}

/// What the pipeline's task hands back: the pending object, what went
/// through, and how pg_dump ended.
type Dumped = (
    Box<dyn PendingObject>,
    Result<Written, PipelineError>,
    Result<(), DumpError>,
);

/// Issues the credential, runs pg_dump into the pipeline, and lets the lease
/// go (to the revoker) as soon as pg_dump has ended, whatever the outcome.
async fn dump_once(
    source: &RunSource,
    run: &Run<'_>,
    recipients: &[age::x25519::Recipient],
    stem: &str,
) -> Result<(Box<dyn PendingObject>, Written), RunError> {
    let cfg = run.cfg;
    let Issued {
        credential,
        mut lease,
    } = source
        .source
        .issue(&cfg.upstream)
        .await
        .map_err(RunError::Issue)?;
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
    let name = format!("{stem}{DUMP_SUFFIX}");
    let pending = run
        .dest
        .create(&name)
        .map_err(|source| RunError::Create { name, source })?;
    let running = dump::start(
        &cfg.pg_dump,
        &cfg.upstream,
        &credential.username,
        &credential.password,
        cfg.compression_level,
    )?;
    drop(credential);
    let killer = running.killer();
    let mut task = spawn_pipeline(running, pending, recipients.to_vec());
    match watch(&mut task, run, &stop).await {
        Ok(joined) => {
            drop(lease);
            dumped(joined)
        }
        Err(why) => {
            killer.kill();
            // pg_dump is dead: its login can go now, whatever the pipeline does.
            drop(lease);
            if tokio::time::timeout(STOPPED_GRACE, task).await.is_err() {
                tracing::warn!(
                    event = "backup_pipeline_abandoned",
                    target = run.target,
                    "the killed dump's output did not end; not waiting for it"
                );
            }
            Err(RunError::Stopped(why))
        }
    }
}

/// Reads pg_dump's output through age into `pending` on the blocking pool.
fn spawn_pipeline(
    mut running: Running,
    mut pending: Box<dyn PendingObject>,
    recipients: Vec<age::x25519::Recipient>,
) -> JoinHandle<Dumped> {
    tokio::task::spawn_blocking(move || {
        let written = match running.stdout.take() {
            Some(mut out) => pipeline::encrypt(&mut out, &recipients, &mut *pending),
            None => Err(PipelineError::Source(io::Error::other(
                "pg_dump's output was not captured",
            ))),
        };
        if written.is_err() {
            // Nobody reads pg_dump any more: stop it rather than wait on it.
            running.killer().kill();
        }
        (pending, written, running.finish())
    })
}

/// Waits for the dump's task to end, unless the target's timeout passes, the
/// run is interrupted or the lease nears its end first.
async fn watch(
    task: &mut JoinHandle<Dumped>,
    run: &Run<'_>,
    stop: &StopSignal,
) -> Result<Result<Dumped, JoinError>, Stop> {
    let timeout = run.cfg.timeout;
    tokio::select! {
        joined = task => Ok(joined),
        () = tokio::time::sleep(timeout) => Err(Stop::Timeout(timeout)),
        () = run.interrupt.cancelled() => Err(Stop::Interrupted),
        () = lease_ending(stop) => Err(Stop::LeaseEnded),
    }
}

/// The dump's result: pg_dump's exit first (its message says more than a
/// broken pipe), then the pipeline's.
fn dumped(
    joined: Result<Dumped, JoinError>,
) -> Result<(Box<dyn PendingObject>, Written), RunError> {
    let (pending, written, exit) = joined.map_err(RunError::Task)?;
    exit?;
    Ok((pending, written?))
}

/// Resolves when the lease's end of life asks the dump to stop: the
/// credential is about to expire (and Vault's revocation would end the
/// session anyway).
async fn lease_ending(stop: &StopSignal) {
    let mut tick = tokio::time::interval(LEASE_POLL);
    loop {
        tick.tick().await;
        if stop.requested() >= Some(LeaseStop::Now) {
            return;
        }
    }
}

/// The manifest of the backup `file`, written by `run`.
fn describe(
    run: &Run<'_>,
    file: String,
    finished: SystemTime,
    written: Written,
    pg_dump: String,
) -> Manifest {
    let cfg = run.cfg;
    let header = written.header.as_ref();
    Manifest {
        format: manifest::MANIFEST_FORMAT,
        target: run.target.to_owned(),
        file,
        started_at: manifest::rfc3339(run.started),
        finished_at: manifest::rfc3339(finished),
        duration_ms: manifest::millis(finished.duration_since(run.started).unwrap_or_default()),
        database: cfg.upstream.database.clone(),
        server: cfg.upstream.endpoint(),
        server_version: header.map(|h| h.server_version.clone()),
        archive_format: header.map(|h| h.format_version.clone()),
        dump_bytes: written.dump_bytes,
        encrypted_bytes: written.encrypted_bytes,
        sha256: written.sha256,
        recipients: cfg.recipients.clone(),
        credential_source: cfg.credentials.clone(),
        tools: Tools {
            pgwarden: env!("CARGO_PKG_VERSION").to_owned(),
            pg_dump,
            age: manifest::AGE_CRATE.to_owned(),
        },
    }
}

fn write_manifest(dest: &dyn Destination, stem: &str, m: &Manifest) -> Result<(), RunError> {
    let file = format!("{stem}{MANIFEST_SUFFIX}");
    let text = serde_json::to_vec_pretty(m).map_err(|source| RunError::ManifestEncode {
        file: file.clone(),
        source,
    })?;
    let written = dest.create(&file).and_then(|mut object| {
        object.write_all(&text)?;
        object.write_all(b"\n")?;
        object.commit()
    });
    written.map_err(|source| RunError::ManifestWrite { file, source })
}

/// Deletes what the retention policy does not keep (never `written`, the
/// backup this run made); returns the stems removed. A failure to delete is
/// logged, not a failed backup.
fn apply_retention(
    dest: &dyn Destination,
    target: &str,
    cfg: &BackupConfig,
    written: &str,
) -> Vec<String> {
    let found = match inventory::take(dest, target) {
        Ok(i) => i.found,
        Err(e) => {
            tracing::warn!(event = "backup_retention_failed", target, error = %e);
            return Vec::new();
        }
    };
    let plan = retention::plan(&found, &cfg.retention, written);
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
