//! The revoker: every lease handed to it is revoked, eventually, or pgwarden
//! says loudly at exit that it could not.
//!
//! Revocations run in the background so a closing session never waits on the
//! credential source. A failed attempt is retried with exponential backoff
//! (1 s doubling to 60 s) for as long as the process runs; a lease the source
//! no longer knows counts as revoked. At shutdown, [`Revoker::drain`] cuts the
//! backoff short and waits, up to a deadline, for the backlog to empty.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::outcome::{REVOCATIONS, RevocationOutcome};
use super::{CredentialSource, ErrorKind, Lease};
use crate::metrics;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Revocations in flight at once per source, so a burst of closes cannot
/// stampede it, and a source that hangs cannot hold up another's.
const CONCURRENCY: usize = 16;
/// One revocation attempt may take this long; past it the attempt counts as
/// failed (and is retried), so no attempt holds a slot for ever.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// Handle to the revocation machinery; cheap to clone.
#[derive(Clone)]
pub struct Revoker {
    inner: Arc<Inner>,
}

struct Inner {
    /// Leases handed over and not yet revoked.
    pending: AtomicUsize,
    /// Woken whenever `pending` drops, for `drain`.
    drained: Notify,
    /// Cancelled at shutdown: retries stop waiting out their backoff.
    hurry: CancellationToken,
    /// Woken when a source proves healthy again: retries need not wait.
    nudged: Notify,
    /// Per source (by name): [`CONCURRENCY`] attempts at once.
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    tasks: TaskTracker,
}

impl Default for Revoker {
    fn default() -> Self {
        Self::new()
    }
}

impl Revoker {
    pub fn new() -> Self {
        Revoker {
            inner: Arc::new(Inner {
                pending: AtomicUsize::new(0),
                drained: Notify::new(),
                hurry: CancellationToken::new(),
                nudged: Notify::new(),
                limits: Mutex::new(HashMap::new()),
                tasks: TaskTracker::new(),
            }),
        }
    }

    /// Leases not yet revoked.
    pub fn pending(&self) -> usize {
        self.inner.pending.load(Ordering::Acquire)
    }

    /// Hands a lease over for revocation. Never blocks; usable from `Drop`.
    pub fn submit(&self, source: Arc<CredentialSource>, lease: Lease) {
        let count = self.inner.pending.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::LEASE_REVOCATIONS_PENDING.set(count as f64);
        let inner = self.inner.clone();
        // Spawning needs a runtime; a Drop during runtime teardown has none, and
        // then the lease is reported as abandoned below instead of silently lost.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::error!(event = "lease_revocation_abandoned", lease_id_hash = %lease.id, source = %source.name, "no runtime left to revoke this lease");
            return;
        };
        let task = inner
            .tasks
            .track_future(revoke_until_done(inner.clone(), source, lease));
        handle.spawn(task);
    }

    /// A credential source just worked: failed revocations retry now.
    pub fn nudge(&self) {
        if self.pending() > 0 {
            self.inner.nudged.notify_waiters();
        }
    }

    /// Shutdown has begun: retries stop waiting out their backoff.
    pub fn hurry(&self) {
        self.inner.hurry.cancel();
    }

    /// Retries now instead of after their backoff, and waits until every lease
    /// is revoked or `timeout` passes. Returns how many are left.
    pub async fn drain(&self, timeout: Duration) -> usize {
        self.inner.hurry.cancel();
        let wait = async {
            loop {
                let notified = self.inner.drained.notified();
                if self.pending() == 0 {
                    return;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        let left = self.pending();
        if left > 0 {
            tracing::error!(
                event = "lease_revocation_abandoned",
                count = left,
                "leases still unrevoked at exit; they expire at the end of their TTL"
            );
        }
        left
    }
}

impl Inner {
    fn limit(&self, source: &str) -> Arc<Semaphore> {
        let mut limits = self.limits.lock().unwrap_or_else(|p| p.into_inner());
        limits
            .entry(source.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(CONCURRENCY)))
            .clone()
    }
}

async fn revoke_until_done(inner: Arc<Inner>, source: Arc<CredentialSource>, lease: Lease) {
    let mut backoff = FIRST_RETRY;
    let mut attempt = 1u32;
    loop {
        let limit = inner.limit(&source.name);
        let result = {
            let _permit = limit.acquire().await;
            tokio::time::timeout(ATTEMPT_TIMEOUT, source.revoke(&lease))
                .await
                .unwrap_or_else(|_| {
                    Err(super::CredentialError::new(
                        ErrorKind::Unavailable,
                        format!("no answer within {ATTEMPT_TIMEOUT:?}"),
                    ))
                })
        };
        match result {
            Ok(()) => {
                REVOCATIONS.increment(RevocationOutcome::Success);
                tracing::info!(event = "lease_revoked", lease_id_hash = %lease.id, upstream_user = %lease.username, source = %source.name, attempt);
                break;
            }
            Err(e) if e.kind == ErrorKind::LeaseGone => {
                REVOCATIONS.increment(RevocationOutcome::LeaseGone);
                tracing::info!(event = "lease_revoked", lease_id_hash = %lease.id, upstream_user = %lease.username, source = %source.name, attempt, note = "lease already gone");
                break;
            }
            Err(e) => {
                REVOCATIONS.increment(RevocationOutcome::Failure);
                tracing::warn!(event = "lease_revocation_failed", lease_id_hash = %lease.id, upstream_user = %lease.username, source = %source.name, attempt, retry_in_ms = backoff.as_millis() as u64, error = %e);
                if !inner.hurry.is_cancelled() {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = inner.hurry.cancelled() => {}
                        _ = inner.nudged.notified() => {}
                    }
                } else {
                    // Draining: retry promptly, but do not spin.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                backoff = (backoff * 2).min(MAX_RETRY);
                attempt += 1;
            }
        }
    }
    let left = inner.pending.fetch_sub(1, Ordering::AcqRel) - 1;
    metrics::LEASE_REVOCATIONS_PENDING.set(left as f64);
    inner.drained.notify_waiters();
}
