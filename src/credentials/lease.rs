//! A lease held by a live session: renewed while the session lives, revoked
//! however it ends.
//!
//! [`LeaseGuard`] is created the moment a credential is issued. Its `Drop` hands
//! the lease to the revoker — on a normal close, an error, a timeout, a panic
//! unwinding the session, or the session future being dropped at shutdown.
//! Renewal runs at ~2/3 of the lease's current duration. When the lease can
//! live no longer (not renewable, max TTL reached, renewal refused), the
//! session's `on_lease_end` policy decides: stop when idle, stop now, or keep.

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::revoker::Revoker;
use super::{CredentialSource, ErrorKind, Lease};
use crate::config::OnLeaseEnd;
use crate::metrics::{self, GaugeGuard};
use crate::relay::{Stop, StopSignal};

/// Renewal retries after a transient failure wait this long at most.
const RENEW_RETRY: Duration = Duration::from_secs(5);

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
            _active: GaugeGuard::new(::metrics::gauge!(metrics::LEASES_ACTIVE)),
        }
    }

    pub fn lease(&self) -> &Lease {
        self.lease
            .as_ref()
            .unwrap_or_else(|| unreachable!("lease taken before drop"))
    }

    /// Starts renewing; at the end of the lease's life, applies the source's
    /// `on_lease_end` through `stop`.
    pub fn start_renewal(&mut self, stop: Arc<StopSignal>) {
        let lease = self.lease().clone();
        let source = self.source.clone();
        let task = renew_while_alive(lease, source, stop).in_current_span();
        self.renewal = Some(tokio::spawn(task));
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        if let Some(task) = self.renewal.take() {
            task.abort();
        }
        if let Some(lease) = self.lease.take() {
            self.revoker.submit(self.source.clone(), lease);
        }
    }
}

async fn renew_while_alive(lease: Lease, source: Arc<CredentialSource>, stop: Arc<StopSignal>) {
    let start = Instant::from_std(lease.issued_at);
    let mut expires = start + lease.duration;
    let mut next = start + lease.duration * 2 / 3;
    if !lease.renewable {
        tokio::time::sleep_until(next).await;
        return end_of_life(&source, &lease, &stop, "lease is not renewable");
    }
    loop {
        tokio::time::sleep_until(next).await;
        let increment = source.renew_increment(&lease);
        match source.renew(&lease, increment).await {
            Ok(r) => {
                ::metrics::counter!(metrics::LEASE_RENEWALS, "outcome" => "success").increment(1);
                tracing::info!(event = "lease_renewed", lease_id_hash = %lease.id, ttl_s = r.duration.as_secs());
                let now = Instant::now();
                expires = now + r.duration;
                next = now + r.duration * 2 / 3;
                if r.duration + Duration::from_secs(1) < increment {
                    // Capped: the lease ends within one increment and will not
                    // get longer. Recycling starts now, to leave the session the
                    // whole remaining time to become idle.
                    return end_of_life(&source, &lease, &stop, "lease reached its maximum TTL");
                }
            }
            Err(e) => {
                ::metrics::counter!(metrics::LEASE_RENEWALS, "outcome" => e.outcome()).increment(1);
                tracing::warn!(event = "lease_renewal_failed", lease_id_hash = %lease.id, error = %e);
                let now = Instant::now();
                match e.kind {
                    ErrorKind::Unavailable if now + RENEW_RETRY < expires => {
                        let left = expires - now;
                        next = now + (left / 4).min(RENEW_RETRY);
                    }
                    ErrorKind::Unavailable => {
                        return end_of_life(
                            &source,
                            &lease,
                            &stop,
                            "lease could not be renewed before it expired",
                        );
                    }
                    ErrorKind::NotRenewable => {
                        return end_of_life(
                            &source,
                            &lease,
                            &stop,
                            "lease reached its maximum TTL",
                        );
                    }
                    ErrorKind::Refused | ErrorKind::LeaseGone => {
                        return end_of_life(&source, &lease, &stop, "lease renewal was refused");
                    }
                }
            }
        }
    }
}

fn end_of_life(source: &CredentialSource, lease: &Lease, stop: &StopSignal, why: &'static str) {
    let policy = source.on_lease_end;
    tracing::info!(event = "lease_end", lease_id_hash = %lease.id, reason = why, on_lease_end = ?policy);
    match policy {
        OnLeaseEnd::RecycleWhenIdle => stop.request(Stop::WhenIdle),
        OnLeaseEnd::Terminate => stop.request(Stop::Now),
        OnLeaseEnd::Keep => {}
    }
}
