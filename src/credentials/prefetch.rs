//! The prefetch pool: up to N credentials issued ahead, each used once.
//!
//! Any source can fill one: it is given the request that issues a credential
//! (Vault's `creds` read, the built-in source's `CREATE ROLE`) and where to
//! send the leases it must not hand out (the revoker). A background task (the
//! filler) keeps the pool full. A credential older than `prefetch_max_age` —
//! or so close to its lease's end that a session would be stopped at once
//! (the lease may be shorter than `prefetch_max_age`) — is revoked and
//! replaced, never handed out; at shutdown the pool is emptied into the
//! revoker. Pooled leases count as active leases.
//!
//! No credential may slip past shutdown: whether the pool has stopped is kept
//! under the same lock as the credentials, so the filler either pushes before
//! `stop` drains or disposes of the credential itself; and `stop` waits for
//! the filler, whose fetch in flight is never cut short, before the revoker
//! drains. The pool never hands a credential out twice.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::credentials::{Credential, CredentialError, Lease};
use crate::metrics::{self, GaugeGuard};

/// Where expired and leftover credentials go: the revoker.
pub(crate) type Disposal = Box<dyn Fn(Lease) + Send + Sync>;

struct Pooled {
    credential: Credential,
    _active: GaugeGuard,
}

/// The pool's contents and whether it has stopped, under one lock.
#[derive(Default)]
struct Ready {
    stopped: bool,
    credentials: Vec<Pooled>,
}

struct Inner {
    size: usize,
    max_age: Duration,
    ready: Mutex<Ready>,
    /// Wakes the filler when a credential was taken.
    taken: Notify,
    /// Wakes the filler from its waits at shutdown.
    stopping: CancellationToken,
    /// Set at start.
    disposal: Mutex<Option<Disposal>>,
}

pub(crate) struct Pool {
    inner: Arc<Inner>,
    /// The filler, waited for at shutdown.
    filler: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub(crate) fn new(size: usize, max_age: Duration) -> Self {
        Pool {
            inner: Arc::new(Inner {
                size,
                max_age,
                ready: Mutex::new(Ready::default()),
                taken: Notify::new(),
                stopping: CancellationToken::new(),
                disposal: Mutex::new(None),
            }),
            filler: Mutex::new(None),
        }
    }

    /// A pooled credential young enough to use, if any.
    pub(crate) fn take(&self) -> Option<Credential> {
        if self.inner.size == 0 {
            return None;
        }
        let mut ready = lock(&self.inner.ready);
        let mut found = None;
        let mut stale = Vec::new();
        while let Some(p) = ready.credentials.pop() {
            if p.credential.lease.issued_at.elapsed() < self.inner.max_age(&p.credential.lease) {
                found = Some(p.credential);
                break;
            }
            stale.push(p);
        }
        drop(ready);
        for p in stale {
            self.inner.dispose(p.credential);
        }
        self.inner.taken.notify_one();
        found
    }

    pub(crate) fn start<F, Fut>(&self, fetch: F, disposal: Disposal)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Credential, CredentialError>> + Send,
    {
        *lock(&self.inner.disposal) = Some(disposal);
        let inner = self.inner.clone();
        *lock(&self.filler) = Some(tokio::spawn(async move { inner.fill(fetch).await }));
    }

    /// Stops filling and hands every pooled credential to the disposal, now;
    /// a fetch in flight runs to the end and its credential is disposed of
    /// too. [`Pool::stop`] then waits for it.
    pub(crate) fn halt(&self) {
        let drained = {
            let mut ready = lock(&self.inner.ready);
            ready.stopped = true;
            std::mem::take(&mut ready.credentials)
        };
        self.inner.stopping.cancel();
        for p in drained {
            self.inner.dispose(p.credential);
        }
    }

    /// Stops filling, hands every pooled credential to the disposal, and waits
    /// until `deadline` for the filler to end: a fetch in flight runs to the
    /// end and its credential is disposed of too.
    pub(crate) async fn stop(&self, deadline: Instant) {
        self.halt();
        let filler = lock(&self.filler).take();
        if let Some(filler) = filler
            && tokio::time::timeout_at(deadline, filler).await.is_err()
        {
            tracing::error!(
                event = "prefetch_abandoned",
                "a prefetch request is still in flight at exit; its credential expires at the end of its TTL"
            );
        }
    }
}

impl Inner {
    /// How old `lease`'s credential may be to be handed out: `max_age`, and
    /// never past the point where its session would be stopped for the
    /// lease's end (its expiry less the margin sessions are stopped by).
    fn max_age(&self, lease: &Lease) -> Duration {
        let lasts = lease
            .duration
            .saturating_sub(crate::credentials::lease::margin(lease.duration));
        self.max_age.min(lasts)
    }

    fn dispose(&self, credential: Credential) {
        if let Some(dispose) = lock(&self.disposal).as_ref() {
            dispose(credential.lease);
        }
    }

    /// Adds a fresh credential unless the pool has stopped; then it is disposed
    /// of instead. Returns whether the pool is still running.
    fn push(&self, pooled: Pooled) -> bool {
        let mut ready = lock(&self.ready);
        if ready.stopped {
            drop(ready);
            self.dispose(pooled.credential);
            return false;
        }
        ready.credentials.push(pooled);
        true
    }

    async fn fill<F, Fut>(&self, fetch: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Credential, CredentialError>>,
    {
        let mut backoff = Duration::from_millis(500);
        while !self.stopping.is_cancelled() {
            let (len, soonest) = self.expire_old();
            if len >= self.size {
                // Full: wait until one is taken or the first needs replacing.
                let wait = soonest + Duration::from_millis(10);
                tokio::select! {
                    _ = self.taken.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.stopping.cancelled() => return,
                }
                continue;
            }
            // Never raced against `stopping`: once sent, the request may issue
            // a credential, which must reach the pool or the disposal.
            match fetch().await {
                Ok(c) => {
                    backoff = Duration::from_millis(500);
                    let pooled = Pooled {
                        credential: c,
                        _active: GaugeGuard::new(&metrics::LEASES_ACTIVE),
                    };
                    if !self.push(pooled) {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(event = "prefetch_failed", error = %e, retry_in_ms = backoff.as_millis() as u64);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stopping.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Disposes of credentials too old to hand out; returns how many are left
    /// and how long until the first of them is.
    fn expire_old(&self) -> (usize, Duration) {
        let left_of = |p: &Pooled| {
            self.max_age(&p.credential.lease)
                .saturating_sub(p.credential.lease.issued_at.elapsed())
        };
        let mut ready = lock(&self.ready);
        let (old, young): (Vec<_>, Vec<_>) = std::mem::take(&mut ready.credentials)
            .into_iter()
            .partition(|p| left_of(p).is_zero());
        ready.credentials = young;
        let left = ready.credentials.len();
        let soonest = ready
            .credentials
            .iter()
            .map(left_of)
            .min()
            .unwrap_or_default();
        drop(ready);
        for p in old {
            self.dispose(p.credential);
        }
        (left, soonest)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use secrecy::SecretString;

    use super::*;
    use crate::credentials::LeaseId;

    fn credential(ttl: Duration, n: usize) -> Credential {
        Credential {
            username: format!("v-{n}"),
            password: SecretString::from("x".to_owned()),
            scram_keys: None,
            lease: Lease {
                id: LeaseId::new(format!("database/creds/r/{n}")),
                username: format!("v-{n}"),
                endpoint: "db:5432".into(),
                issuer: String::new(),
                duration: ttl,
                renewable: true,
                issued_at: Instant::now(),
            },
        }
    }

    /// A pool of one whose credentials have leases of `ttl`; the leases it
    /// disposes of are collected.
    fn pool(ttl: Duration, max_age: Duration) -> (Pool, Arc<Mutex<Vec<String>>>) {
        let pool = Pool::new(1, max_age);
        let issued = Arc::new(AtomicUsize::new(0));
        let disposed = Arc::new(Mutex::new(Vec::new()));
        let sink = disposed.clone();
        pool.start(
            move || {
                let n = issued.fetch_add(1, Ordering::SeqCst);
                async move { Ok(credential(ttl, n)) }
            },
            Box::new(move |lease: Lease| lock(&sink).push(lease.username)),
        );
        (pool, disposed)
    }

    #[tokio::test(start_paused = true)]
    async fn a_credential_whose_lease_ends_before_the_max_age_is_not_handed_out() {
        // Vault's TTL (20 s) is shorter than prefetch_max_age (5 min).
        let (pool, disposed) = pool(Duration::from_secs(20), Duration::from_secs(300));
        tokio::time::sleep(Duration::from_secs(1)).await;
        let fresh = pool.take().expect("a fresh credential");
        assert_eq!(fresh.username, "v-0");
        // The next one waits in the pool past its lease's end less the margin (18 s).
        tokio::time::sleep(Duration::from_secs(19)).await;
        let taken = pool.take().expect("a credential");
        assert_ne!(taken.username, "v-1", "v-1's lease ends within its margin");
        assert!(
            lock(&disposed).contains(&"v-1".to_owned()),
            "revoked, not lost"
        );
        let age = taken.lease.issued_at.elapsed();
        assert!(age < Duration::from_secs(18), "handed out at {age:?}");
        pool.stop(Instant::now() + Duration::from_secs(1)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_long_lease_is_handed_out_until_the_max_age() {
        let (pool, disposed) = pool(Duration::from_secs(3600), Duration::from_secs(300));
        tokio::time::sleep(Duration::from_secs(299)).await;
        assert_eq!(pool.take().expect("a credential").username, "v-0");
        tokio::time::sleep(Duration::from_secs(301)).await;
        assert_eq!(pool.take().expect("a credential").username, "v-2");
        assert_eq!(*lock(&disposed), vec!["v-1".to_owned()]);
        pool.stop(Instant::now() + Duration::from_secs(1)).await;
    }
}
