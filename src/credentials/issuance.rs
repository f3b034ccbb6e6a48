//! Issuing a credential so that no deadline can lose it.
//!
//! Once a request for a credential is on its way, the source may create the
//! role whether or not anyone still waits for the answer: Vault may finish a
//! `creds` request whose client went away, and PostgreSQL runs a `CREATE ROLE`
//! to the end once it has it. So the request runs in a task of its own that no
//! caller's deadline can cancel. The [`LeaseGuard`] is made in that task the
//! moment the credential arrives and handed back over a oneshot; when the
//! caller has given up (its handshake deadline or `[vault] timeout` passed),
//! the undelivered guard is dropped, which hands the lease to the revoker. The
//! tasks are tracked so that shutdown waits for them before the revoker drains.
//!
//! This module must never drop a request in flight, and never logs a password.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::lease::LeaseGuard;
use super::{Credential, CredentialError, CredentialSource, ErrorKind};

/// A credential and the guard that revokes it: what issuing gives a session.
pub struct Issued {
    /// The login itself; drop it as soon as the upstream login is done.
    pub credential: Credential,
    /// Revokes the credential when dropped, whatever happens next.
    pub lease: LeaseGuard,
}

impl Issued {
    pub(super) fn new(credential: Credential, source: Arc<CredentialSource>) -> Self {
        let revoker = source.revoker.clone();
        let lease = LeaseGuard::new(credential.lease.clone(), source, revoker);
        Issued { credential, lease }
    }
}

/// Requests in flight at once per source. Requests whose connections gave up
/// still run to the end, so without a bound a client reconnecting in a loop
/// against a slow source could pile them up without end.
const MAX_IN_FLIGHT: usize = 128;

/// The credential requests of one source that are still in flight.
pub(super) struct Issuing {
    tasks: TaskTracker,
    slots: Arc<Semaphore>,
}

impl Default for Issuing {
    fn default() -> Self {
        Issuing {
            tasks: TaskTracker::new(),
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        }
    }
}

impl Issuing {
    /// Runs `request` to the end in a tracked task and waits for its answer,
    /// for at most `within` when given (waiting for a free slot included).
    /// Dropping the returned future, or `within` passing, abandons the answer
    /// but never a request once started: a credential that arrives after
    /// that is revoked at once.
    pub(super) async fn issue<F>(
        &self,
        source: Arc<CredentialSource>,
        request: F,
        within: Option<Duration>,
    ) -> Result<Issued, CredentialError>
    where
        F: Future<Output = Result<Credential, CredentialError>> + Send + 'static,
    {
        let work = async {
            // Giving up while waiting here is safe: nothing was sent yet.
            let slot = self.slots.clone().acquire_owned().await.map_err(|_| {
                CredentialError::new(ErrorKind::Unavailable, "the source is shutting down")
            })?;
            self.start(source, request, slot).await
        };
        match within {
            None => work.await,
            Some(limit) => tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
                Err(CredentialError::new(
                    ErrorKind::Unavailable,
                    format!("no credential within {limit:?}"),
                ))
            }),
        }
    }

    /// Spawns `request` holding `slot`, and waits for its answer.
    async fn start<F>(
        &self,
        source: Arc<CredentialSource>,
        request: F,
        slot: OwnedSemaphorePermit,
    ) -> Result<Issued, CredentialError>
    where
        F: Future<Output = Result<Credential, CredentialError>> + Send + 'static,
    {
        let (answer, answered) = oneshot::channel();
        let task = async move {
            let _slot = slot;
            let result = request.await.map(|c| Issued::new(c, source));
            if let Err(Ok(late)) = answer.send(result) {
                // Dropping `late` hands its lease to the revoker.
                tracing::warn!(
                    event = "credential_abandoned",
                    lease_id_hash = %late.credential.lease.id,
                    upstream_user = %late.credential.username,
                    "the connection gave up before its credential arrived; revoking the credential"
                );
            }
        };
        self.tasks.spawn(task.in_current_span());
        answered.await.unwrap_or_else(|_| {
            Err(CredentialError::new(
                ErrorKind::Unavailable,
                "the credential request ended without an answer",
            ))
        })
    }

    /// Shutdown: waits until every request in flight has ended (its credential,
    /// if any, delivered or handed to the revoker) or `deadline` passes.
    /// Returns how many are still in flight.
    pub(super) async fn finish(&self, deadline: Instant) -> usize {
        self.tasks.close();
        let _ = tokio::time::timeout_at(deadline, self.tasks.wait()).await;
        self.tasks.len()
    }
}
