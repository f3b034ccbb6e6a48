//! The prefetch pool: up to N credentials issued ahead, each used once.
//!
//! A background task (the filler) keeps the pool full. A credential older than
//! `prefetch_max_age` is revoked and replaced, never handed out; at shutdown the
//! pool is emptied into the revoker. Pooled leases count as active leases.
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
pub(super) type Disposal = Box<dyn Fn(Lease) + Send + Sync>;

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

pub(super) struct Pool {
    inner: Arc<Inner>,
    /// The filler, waited for at shutdown.
    filler: Mutex<Option<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pool {
    pub(super) fn new(size: usize, max_age: Duration) -> Self {
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
    pub(super) fn take(&self) -> Option<Credential> {
        if self.inner.size == 0 {
            return None;
        }
        let mut ready = lock(&self.inner.ready);
        let mut found = None;
        let mut stale = Vec::new();
        while let Some(p) = ready.credentials.pop() {
            if p.credential.lease.issued_at.elapsed() < self.inner.max_age {
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

    pub(super) fn start<F, Fut>(&self, fetch: F, disposal: Disposal)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Credential, CredentialError>> + Send,
    {
        *lock(&self.inner.disposal) = Some(disposal);
        let inner = self.inner.clone();
        *lock(&self.filler) = Some(tokio::spawn(async move { inner.fill(fetch).await }));
    }

    /// Stops filling, hands every pooled credential to the disposal, and waits
    /// until `deadline` for the filler to end: a fetch in flight runs to the
    /// end and its credential is disposed of too.
    pub(super) async fn stop(&self, deadline: Instant) {
        let drained = {
            let mut ready = lock(&self.inner.ready);
            ready.stopped = true;
            std::mem::take(&mut ready.credentials)
        };
        self.inner.stopping.cancel();
        for p in drained {
            self.inner.dispose(p.credential);
        }
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
            let (len, oldest_age) = self.expire_old();
            if len >= self.size {
                // Full: wait until one is taken or the oldest needs replacing.
                let wait = self.max_age.saturating_sub(oldest_age) + Duration::from_millis(10);
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
    /// and the age of the oldest of them.
    fn expire_old(&self) -> (usize, Duration) {
        let mut ready = lock(&self.ready);
        let (old, young): (Vec<_>, Vec<_>) = std::mem::take(&mut ready.credentials)
            .into_iter()
            .partition(|p| p.credential.lease.issued_at.elapsed() >= self.max_age);
        ready.credentials = young;
        let left = ready.credentials.len();
        let oldest = ready
            .credentials
            .iter()
            .map(|p| p.credential.lease.issued_at.elapsed())
            .max()
            .unwrap_or_default();
        drop(ready);
        for p in old {
            self.dispose(p.credential);
        }
        (left, oldest)
    }
}
