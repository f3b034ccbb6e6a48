//! A lease held by a live session: renewed while the session lives, revoked
//! however it ends.
//!
//! [`LeaseGuard`] is created the moment a credential is issued. Its `Drop` hands
//! the lease to the revoker — on a normal close, an error, a timeout, a panic
//! unwinding the session, or the session future being dropped at shutdown.
//! Renewal runs at ~2/3 of the lease's current duration. When the lease can
//! live no longer (not renewable, max TTL reached, renewal refused), the
//! session's `on_lease_end` policy decides: stop when idle, stop now, or keep.
//! Unless it is `keep`, the end is enforced: shortly before the credential
//! expires the session is stopped at the next message boundary, and cut after
//! a grace if it never reaches one (a client idle in a transaction, or one
//! that stops reading). A session never outlives its lease unless `keep` says so.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::outcome::{RENEWALS, RenewalOutcome};
use super::revoker::Revoker;
use super::{CredentialError, CredentialSource, ErrorKind, Lease, Renewal};
use crate::config::OnLeaseEnd;
use crate::metrics::{self, GaugeGuard};

/// Renewal retries after a transient failure wait this long at most.
const RENEW_RETRY: Duration = Duration::from_secs(5);
/// A session is stopped this long before its credential expires, at most.
const EXPIRY_MARGIN: Duration = Duration::from_secs(30);

/// How the end of a lease's life reaches its session. The credentials layer
/// knows nothing of the relay: the session hands it something that can be
/// told, with growing urgency, to end.
pub trait SessionEnd: Send + Sync {
    fn end(&self, how: EndOfLife);
}

/// How urgently a session must end; requests only ever grow stronger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EndOfLife {
    /// When the backend is next idle between transactions.
    WhenIdle,
    /// At the next message boundary, even inside a transaction.
    AtBoundary,
    /// At once.
    Now,
}

/// What the lease logic needs of a credential source.
pub trait Renew: Send + Sync {
    /// Asks for `increment` more time on `lease`.
    fn renew(
        &self,
        lease: &Lease,
        increment: Duration,
    ) -> impl Future<Output = Result<Renewal, CredentialError>> + Send;
    /// How much more time to ask for at each renewal.
    fn renew_increment(&self, lease: &Lease) -> Duration;
    /// What happens to a session whose lease can live no longer.
    fn on_lease_end(&self) -> OnLeaseEnd;
}

impl Renew for CredentialSource {
    fn renew(
        &self,
        lease: &Lease,
        increment: Duration,
    ) -> impl Future<Output = Result<Renewal, CredentialError>> + Send {
        CredentialSource::renew(self, lease, increment)
    }

    fn renew_increment(&self, lease: &Lease) -> Duration {
        CredentialSource::renew_increment(self, lease)
    }

    fn on_lease_end(&self) -> OnLeaseEnd {
        self.on_lease_end
    }
}

pub struct LeaseGuard {
    /// Taken by `Drop`.
    lease: Option<Lease>,
    source: Arc<CredentialSource>,
    revoker: Revoker,
    /// The renewal task, aborted when the session ends.
    renewal: Option<JoinHandle<()>>,
    /// Keeps `pgwarden_leases_active` up while the lease is held.
    _active: GaugeGuard,
}

impl LeaseGuard {
    pub fn new(lease: Lease, source: Arc<CredentialSource>, revoker: Revoker) -> Self {
        LeaseGuard {
            lease: Some(lease),
            source,
            revoker,
            renewal: None,
            _active: GaugeGuard::new(&metrics::LEASES_ACTIVE),
        }
    }

    pub fn lease(&self) -> &Lease {
        self.lease
            .as_ref()
            .unwrap_or_else(|| unreachable!("lease taken before drop"))
    }

    /// Starts renewing; at the end of the lease's life, applies the source's
    /// `on_lease_end` through `session`, and enforces it at the credential's
    /// expiry, cutting the session `grace` after asking it to stop.
    pub fn start_renewal(&mut self, session: Arc<dyn SessionEnd>, grace: Duration) {
        let lease = self.lease().clone();
        let source = self.source.clone();
        let task = async move {
            let (why, expires) = renew_while_alive(&lease, &*source).await;
            end_of_life(&*source, &lease, &*session, why, expires, grace).await;
        };
        self.renewal = Some(tokio::spawn(task.in_current_span()));
    }

    /// Stops renewing and enforcing: the session has ended (the lease itself
    /// is still revoked on drop).
    pub fn stop_renewal(&mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        self.stop_renewal();
        if let Some(lease) = self.lease.take() {
            self.revoker.submit(self.source.clone(), lease);
        }
    }
}

/// Renews `lease` for as long as it can live; returns why it cannot live
/// longer and when it expires.
async fn renew_while_alive<R: Renew>(lease: &Lease, source: &R) -> (&'static str, Instant) {
    let start = lease.issued_at;
    let mut expires = start + lease.duration;
    let mut next = start + lease.duration * 2 / 3;
    if !lease.renewable {
        tokio::time::sleep_until(next).await;
        return ("lease is not renewable", expires);
    }
    loop {
        tokio::time::sleep_until(next).await;
        let increment = source.renew_increment(lease);
        // A renewal that hangs must not hold up enforcement at expiry.
        let enforce_at = expires
            .checked_sub(margin(lease.duration))
            .unwrap_or(expires);
        let Ok(renewed) = tokio::time::timeout_at(enforce_at, source.renew(lease, increment)).await
        else {
            RENEWALS.increment(RenewalOutcome::Unavailable);
            tracing::warn!(event = "lease_renewal_failed", lease_id_hash = %lease.id, error = "no answer before the credential expires");
            return ("lease could not be renewed before it expired", expires);
        };
        match renewed {
            Ok(r) => {
                RENEWALS.increment(RenewalOutcome::Success);
                tracing::info!(event = "lease_renewed", lease_id_hash = %lease.id, ttl_s = r.duration.as_secs());
                let now = Instant::now();
                expires = now + r.duration;
                next = now + r.duration * 2 / 3;
                if r.duration + Duration::from_secs(1) < increment {
                    // Capped: the lease ends within one increment and will not
                    // get longer. Recycling starts now, to leave the session the
                    // whole remaining time to become idle.
                    return ("lease reached its maximum TTL", expires);
                }
            }
            Err(e) => {
                RENEWALS.increment(e.renewal_outcome());
                tracing::warn!(event = "lease_renewal_failed", lease_id_hash = %lease.id, error = %e);
                let now = Instant::now();
                match e.kind {
                    ErrorKind::Unavailable if now + RENEW_RETRY < expires => {
                        let left = expires - now;
                        next = now + (left / 4).min(RENEW_RETRY);
                    }
                    ErrorKind::Unavailable => {
                        return ("lease could not be renewed before it expired", expires);
                    }
                    ErrorKind::NotRenewable => return ("lease reached its maximum TTL", expires),
                    ErrorKind::Refused | ErrorKind::LeaseGone => {
                        return ("lease renewal was refused", expires);
                    }
                }
            }
        }
    }
}

/// Applies `on_lease_end`; unless it is `keep`, stops the session at the next
/// message boundary shortly before `expires`, and cuts it `grace` later.
async fn end_of_life<R: Renew>(
    source: &R,
    lease: &Lease,
    session: &dyn SessionEnd,
    why: &'static str,
    expires: Instant,
    grace: Duration,
) {
    let policy = source.on_lease_end();
    let (action, first) = match policy {
        OnLeaseEnd::RecycleWhenIdle => ("stop_when_idle", EndOfLife::WhenIdle),
        OnLeaseEnd::Terminate => ("stop", EndOfLife::AtBoundary),
        OnLeaseEnd::Keep => {
            tracing::info!(event = "lease_end", lease_id_hash = %lease.id, reason = why, on_lease_end = ?policy, action = "keep", "the session runs past its lease");
            return;
        }
    };
    let margin = margin(lease.duration);
    let deadline = expires.checked_sub(margin).unwrap_or(expires);
    // Cut by the expiry at the latest, even for a lease shorter than 10 × grace.
    let grace = grace.min(margin);
    let left = deadline.saturating_duration_since(Instant::now());
    tracing::info!(event = "lease_end", lease_id_hash = %lease.id, reason = why, on_lease_end = ?policy, action, enforced_in_ms = left.as_millis() as u64);
    session.end(first);
    tokio::time::sleep_until(deadline).await;
    tracing::warn!(event = "lease_end", lease_id_hash = %lease.id, reason = "the credential expires", action = "stop", "ending the session at the next message boundary");
    session.end(EndOfLife::AtBoundary);
    tokio::time::sleep(grace).await;
    tracing::warn!(event = "lease_end", lease_id_hash = %lease.id, reason = "no message boundary before the grace ended", action = "cut", "cutting the session");
    session.end(EndOfLife::Now);
}

/// How long before its expiry a credential's session is stopped: 10 % of the
/// lease's duration, at most [`EXPIRY_MARGIN`].
pub(crate) fn margin(duration: Duration) -> Duration {
    (duration / 10).min(EXPIRY_MARGIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_is_a_tenth_of_the_lease_but_at_most_thirty_seconds() {
        assert_eq!(margin(Duration::from_secs(2)), Duration::from_millis(200));
        assert_eq!(margin(Duration::from_secs(300)), Duration::from_secs(30));
        assert_eq!(margin(Duration::from_secs(3600)), EXPIRY_MARGIN);
        assert_eq!(margin(Duration::ZERO), Duration::ZERO);
    }
}

#[cfg(test)]
mod paused;
