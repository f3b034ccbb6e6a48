//! The prefetch pool: up to N credentials issued ahead, each used once.
//!
//! A background task keeps the pool full. A credential older than
//! `prefetch_max_age` is revoked and replaced, never handed out; at shutdown the
//! pool is emptied into the revoker. Pooled leases count as active leases.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::credentials::revoker::Revoker;
use crate::credentials::{Credential, CredentialError, CredentialSource};
use crate::metrics::{self, GaugeGuard};

struct Pooled {
    credential: Credential,
    _active: GaugeGuard,
}

struct Inner {
    size: usize,
    max_age: Duration,
    ready: Mutex<Vec<Pooled>>,
    /// Wakes the filler when a credential was taken.
    taken: Notify,
    stopped: CancellationToken,
    /// Set at start: where expired and leftover credentials go.
    disposal: Mutex<Option<(Arc<CredentialSource>, Revoker)>>,
}

pub(super) struct Pool {
    inner: Arc<Inner>,
}

impl Pool {
    pub(super) fn new(size: usize, max_age: Duration) -> Self {
        Pool {
            inner: Arc::new(Inner {
                size,
                max_age,
                ready: Mutex::new(Vec::new()),
                taken: Notify::new(),
                stopped: CancellationToken::new(),
                disposal: Mutex::new(None),
            }),
        }
    }

    /// A pooled credential young enough to use, if any.
    pub(super) fn take(&self) -> Option<Credential> {
        if self.inner.size == 0 {
            return None;
        }
        let mut ready = self.inner.ready.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        while let Some(p) = ready.pop() {
            if p.credential.lease.issued_at.elapsed() < self.inner.max_age {
                found = Some(p.credential);
                break;
            }
            self.inner.dispose(p.credential);
        }
        drop(ready);
        self.inner.taken.notify_one();
        found
    }

    pub(super) fn start<F, Fut>(&self, fetch: F, source: Arc<CredentialSource>, revoker: Revoker)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Credential, CredentialError>> + Send,
    {
        *self
            .inner
            .disposal
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((source, revoker));
        let inner = self.inner.clone();
        tokio::spawn(async move { inner.fill(fetch).await });
    }

    pub(super) fn stop(&self) {
        self.inner.stopped.cancel();
        let drained: Vec<Pooled> =
            std::mem::take(&mut *self.inner.ready.lock().unwrap_or_else(|p| p.into_inner()));
        for p in drained {
            self.inner.dispose(p.credential);
        }
    }
}

impl Inner {
    fn dispose(&self, credential: Credential) {
        if let Some((source, revoker)) = self
            .disposal
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            revoker.submit(source.clone(), credential.lease);
        }
    }

    fn len(&self) -> usize {
        self.ready.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    async fn fill<F, Fut>(&self, fetch: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Credential, CredentialError>>,
    {
        let mut backoff = Duration::from_millis(500);
        while !self.stopped.is_cancelled() {
            self.expire_old();
            if self.len() >= self.size {
                // Full: wait until one is taken or the oldest needs replacing.
                let oldest_age = self
                    .ready
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|p| p.credential.lease.issued_at.elapsed())
                    .max();
                let wait = self.max_age.saturating_sub(oldest_age.unwrap_or_default())
                    + Duration::from_millis(10);
                tokio::select! {
                    _ = self.taken.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.stopped.cancelled() => return,
                }
                continue;
            }
            match fetch().await {
                Ok(c) => {
                    backoff = Duration::from_millis(500);
                    let pooled = Pooled {
                        credential: c,
                        _active: GaugeGuard::new(::metrics::gauge!(metrics::LEASES_ACTIVE)),
                    };
                    if self.stopped.is_cancelled() {
                        self.dispose(pooled.credential);
                        return;
                    }
                    self.ready
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(pooled);
                }
                Err(e) => {
                    tracing::warn!(event = "prefetch_failed", error = %e, retry_in_ms = backoff.as_millis() as u64);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = self.stopped.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    fn expire_old(&self) {
        let mut ready = self.ready.lock().unwrap_or_else(|p| p.into_inner());
        let (old, young): (Vec<_>, Vec<_>) = std::mem::take(&mut *ready)
            .into_iter()
            .partition(|p| p.credential.lease.issued_at.elapsed() >= self.max_age);
        *ready = young;
        drop(ready);
        for p in old {
            self.dispose(p.credential);
        }
    }
}
