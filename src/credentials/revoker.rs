//! The revoker: every lease handed to it is revoked, eventually, or pgwarden
//! says loudly at exit that it could not.
//!
//! Revocations run in the background so a closing session never waits on the
//! credential source. A failed attempt is retried with exponential backoff
//! (1 s doubling to 60 s) for as long as the process runs; a lease the source
//! no longer knows counts as revoked. At shutdown, [`Revoker::drain`] cuts the
//! backoff short and waits, up to a deadline, for the backlog to empty.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::outcome::{REVOCATIONS, RevocationOutcome};
use super::{CredentialError, CredentialSource, ErrorKind, Lease};
use crate::metrics;

const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Revocations in flight at once per source, so a burst of closes cannot
/// stampede it, and a source that hangs cannot hold up another's.
const CONCURRENCY: usize = 16;
/// One revocation attempt may take this long; past it the attempt counts as
/// failed (and is retried), so no attempt holds a slot for ever.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);

/// What the revoker needs of a credential source.
pub trait Revoke: Send + Sync + 'static {
    /// Its name in `[credentials.<name>]`, for logs and its concurrency limit.
    fn name(&self) -> &str;
    /// Ends `lease`; a lease the source no longer knows counts as revoked.
    fn revoke(&self, lease: &Lease) -> impl Future<Output = Result<(), CredentialError>> + Send;
}

impl Revoke for CredentialSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn revoke(&self, lease: &Lease) -> impl Future<Output = Result<(), CredentialError>> + Send {
        CredentialSource::revoke(self, lease)
    }
}

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
    pub fn submit<R: Revoke>(&self, source: Arc<R>, lease: Lease) {
        let count = self.inner.pending.fetch_add(1, Ordering::AcqRel) + 1;
        metrics::LEASE_REVOCATIONS_PENDING.set(count as f64);
        let inner = self.inner.clone();
        // Spawning needs a runtime; a Drop during runtime teardown has none, and
        // then the lease is reported as abandoned below instead of silently lost.
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            tracing::error!(event = "lease_revocation_abandoned", lease_id_hash = %lease.id, source = %source.name(), "no runtime left to revoke this lease");
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

async fn revoke_until_done<R: Revoke>(inner: Arc<Inner>, source: Arc<R>, lease: Lease) {
    let mut backoff = FIRST_RETRY;
    let mut attempt = 1u32;
    loop {
        let limit = inner.limit(source.name());
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
                tracing::info!(event = "lease_revoked", lease_id_hash = %lease.id, upstream_user = %lease.username, source = %source.name(), attempt);
                break;
            }
            Err(e) if e.kind == ErrorKind::LeaseGone => {
                REVOCATIONS.increment(RevocationOutcome::LeaseGone);
                tracing::info!(event = "lease_revoked", lease_id_hash = %lease.id, upstream_user = %lease.username, source = %source.name(), attempt, note = "lease already gone");
                break;
            }
            Err(e) => {
                REVOCATIONS.increment(RevocationOutcome::Failure);
                tracing::warn!(event = "lease_revocation_failed", lease_id_hash = %lease.id, upstream_user = %lease.username, source = %source.name(), attempt, retry_in_ms = backoff.as_millis() as u64, error = %e);
                // A nudge says the source works again: worth retrying at once
                // only what failed because it did not (a refusal — a role the
                // database will not drop — waits out its backoff, or every
                // issued credential would set off a storm of doomed retries).
                // Even then, no lease is tried more than once a FIRST_RETRY.
                let nudgeable = e.kind == ErrorKind::Unavailable;
                let failed_at = tokio::time::Instant::now();
                if !inner.hurry.is_cancelled() {
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = inner.hurry.cancelled() => {}
                        _ = inner.nudged.notified(), if nudgeable => {
                            tokio::time::sleep_until(failed_at + FIRST_RETRY).await;
                        }
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::time::Instant;

    use super::*;
    use crate::credentials::LeaseId;

    /// A source whose revocations fail a number of times first, and that
    /// notes when it was asked.
    struct Flaky {
        failures_left: Mutex<u32>,
        kind: ErrorKind,
        asked_at: Mutex<Vec<Instant>>,
    }

    impl Flaky {
        fn failing(times: u32) -> Arc<Flaky> {
            Flaky::failing_with(times, ErrorKind::Unavailable)
        }

        fn failing_with(times: u32, kind: ErrorKind) -> Arc<Flaky> {
            Arc::new(Flaky {
                failures_left: Mutex::new(times),
                kind,
                asked_at: Mutex::new(Vec::new()),
            })
        }

        fn asked(&self, t0: Instant) -> Vec<f64> {
            let asked = self.asked_at.lock().unwrap();
            asked.iter().map(|t| (*t - t0).as_secs_f64()).collect()
        }
    }

    impl Revoke for Flaky {
        fn name(&self) -> &str {
            "flaky"
        }

        async fn revoke(&self, _: &Lease) -> Result<(), CredentialError> {
            self.asked_at.lock().unwrap().push(Instant::now());
            let mut left = self.failures_left.lock().unwrap();
            if *left == 0 {
                return Ok(());
            }
            *left -= 1;
            Err(CredentialError::new(self.kind, "down"))
        }
    }

    fn lease() -> Lease {
        Lease {
            id: LeaseId::new("database/creds/keycloak/x"),
            username: "v-x".into(),
            endpoint: "db:5432".into(),
            issuer: String::new(),
            duration: Duration::from_secs(60),
            renewable: true,
            issued_at: Instant::now(),
        }
    }

    async fn until_revoked(revoker: &Revoker) {
        while revoker.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failed_revocations_back_off_doubling_up_to_a_minute() {
        let t0 = Instant::now();
        let source = Flaky::failing(8);
        let revoker = Revoker::new();
        revoker.submit(source.clone(), lease());
        until_revoked(&revoker).await;
        // Waits of 1, 2, 4, 8, 16, 32 s, then 60 s at most.
        assert_eq!(
            source.asked(t0),
            vec![0.0, 1.0, 3.0, 7.0, 15.0, 31.0, 63.0, 123.0, 183.0]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn draining_retries_promptly_instead_of_waiting_out_the_backoff() {
        let t0 = Instant::now();
        let source = Flaky::failing(6);
        let revoker = Revoker::new();
        revoker.submit(source.clone(), lease());
        // Four failures: the next retry is 16 s after the last.
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(source.asked(t0), vec![0.0, 1.0, 3.0, 7.0]);
        let left = revoker.drain(Duration::from_secs(5)).await;
        assert_eq!(left, 0);
        // At once, then every 200 ms until it worked.
        assert_eq!(source.asked(t0), vec![0.0, 1.0, 3.0, 7.0, 10.0, 10.2, 10.4]);
    }

    /// Nudges `revoker` every 50 ms for `span`, as issued credentials would.
    async fn nudge_for(revoker: &Revoker, span: Duration) {
        let until = Instant::now() + span;
        while Instant::now() < until {
            revoker.nudge();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn nudges_never_hurry_a_revocation_the_database_refused() {
        let t0 = Instant::now();
        let source = Flaky::failing_with(100, ErrorKind::Refused);
        let revoker = Revoker::new();
        revoker.submit(source.clone(), lease());
        nudge_for(&revoker, Duration::from_secs(10)).await;
        // Exactly the backoff schedule: 0, 1, 3, 7 s.
        assert_eq!(source.asked(t0), vec![0.0, 1.0, 3.0, 7.0]);
    }

    #[tokio::test(start_paused = true)]
    async fn nudges_retry_an_unavailable_source_early_but_at_most_once_a_second() {
        let t0 = Instant::now();
        let source = Flaky::failing(100);
        let revoker = Revoker::new();
        revoker.submit(source.clone(), lease());
        tokio::time::sleep(Duration::from_secs(20)).await;
        // Backoff alone: 0, 1, 3, 7, 15.
        assert_eq!(source.asked(t0).len(), 5);
        nudge_for(&revoker, Duration::from_secs(5)).await;
        let asked = source.asked(t0);
        let nudged: Vec<f64> = asked.iter().copied().filter(|t| *t >= 20.0).collect();
        // Without nudges the next try would come at 31 s; with them, one a second.
        assert!((4..=6).contains(&nudged.len()), "{asked:?}");
        for pair in nudged.windows(2) {
            assert!(pair[1] - pair[0] >= 1.0, "{asked:?}");
        }
    }
}
