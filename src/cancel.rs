//! Query cancellation through pgwarden.
//!
//! A client holds the upstream backend's *real* pid and a key of pgwarden's own.
//! The map takes (pid, pgwarden key) to the upstream and the backend's real key,
//! and forwards the cancel over the same kind of channel the session uses.
//! Keys are compared in constant time; an unknown pair does nothing and says
//! nothing (as PostgreSQL does). Cancels are rate-limited per source address
//! where they arrive first.
//!
//! Several replicas behind one address: each puts its id in the keys it
//! issues (`key`), and a cancel whose key is not in the local map but names
//! another replica is forwarded to it over mutual TLS (`peer`), where it is
//! looked up in that replica's map and never forwarded again
//! (`peer_listener`).

pub(crate) mod key;
mod limiter;
pub(crate) mod peer;
pub(crate) mod peer_listener;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use crate::metrics::{self, Label};
use crate::upstream::UpstreamTarget;
use limiter::RateLimiter;
use peer::Peering;

/// `pgwarden_cancel_requests_total`, by outcome.
pub(crate) static CANCELS: metrics::Counter<CancelOutcome> =
    metrics::Counter::new(metrics::name::CANCEL_REQUESTS, "outcome");

/// Where a cancel for one session goes.
pub struct CancelTarget {
    pub upstream: Arc<UpstreamTarget>,
    /// The server the session's connection reached.
    pub addr: std::net::SocketAddr,
    pub pid: i32,
    pub key: Vec<u8>,
}

struct Entry {
    id: u64,
    client_key: Vec<u8>,
    target: Arc<CancelTarget>,
}

async fn cancel_upstream(target: &CancelTarget) -> CancelOutcome {
    match target
        .upstream
        .cancel(target.addr, target.pid, &target.key)
        .await
    {
        Ok(()) => CancelOutcome::Forwarded,
        Err(e) => {
            tracing::warn!(upstream = %target.upstream.endpoint(), error = %e, "could not forward cancel request");
            CancelOutcome::UpstreamFailed
        }
    }
}

/// Live sessions' cancel keys.
#[derive(Default)]
pub struct CancelMap {
    /// By the pid the client was given; a pid may repeat across upstreams.
    entries: Mutex<HashMap<i32, Vec<Entry>>>,
    next_id: std::sync::atomic::AtomicU64,
    limiter: RateLimiter,
}

/// Removes its entry from the map when the session ends.
pub struct Registration {
    map: Arc<CancelMap>,
    pid: i32,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut entries = self.map.entries.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = entries.get_mut(&self.pid) {
            list.retain(|e| e.id != self.id);
            if list.is_empty() {
                entries.remove(&self.pid);
            }
        }
    }
}

/// What became of a cancel request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Sent to the backend.
    Forwarded,
    UnknownKey,
    RateLimited,
    UpstreamFailed,
    /// Handed to the replica whose key it is (which counts what it did).
    ForwardedToPeer,
    /// That replica could not be reached.
    PeerFailed,
}

impl Label for CancelOutcome {
    const ALL: &'static [Self] = &[
        CancelOutcome::Forwarded,
        CancelOutcome::UnknownKey,
        CancelOutcome::RateLimited,
        CancelOutcome::UpstreamFailed,
        CancelOutcome::ForwardedToPeer,
        CancelOutcome::PeerFailed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            CancelOutcome::Forwarded => "forwarded",
            CancelOutcome::UnknownKey => "unknown_key",
            CancelOutcome::RateLimited => "rate_limited",
            CancelOutcome::UpstreamFailed => "upstream_failed",
            CancelOutcome::ForwardedToPeer => "forwarded_to_peer",
            CancelOutcome::PeerFailed => "peer_failed",
        }
    }
}

impl CancelMap {
    pub fn register(self: &Arc<Self>, client_key: Vec<u8>, target: CancelTarget) -> Registration {
        let pid = target.pid;
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.entry(pid).or_default().push(Entry {
            id,
            client_key,
            target: Arc::new(target),
        });
        Registration {
            map: self.clone(),
            pid,
            id,
        }
    }

    /// The target for `pid` and `key`, comparing keys in constant time.
    pub fn lookup(&self, pid: i32, key: &[u8]) -> Option<Arc<CancelTarget>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        for e in entries.get(&pid)? {
            // Every entry is compared, so timing does not reveal which matched.
            if aws_lc_rs::constant_time::verify_slices_are_equal(&e.client_key, key).is_ok() {
                found = Some(e.target.clone());
            }
        }
        found
    }

    /// Handles one CancelRequest from the client at `from`: within its
    /// budget, the local session with that key, else the replica the key
    /// names (when `peering` is configured).
    pub async fn cancel(
        &self,
        from: IpAddr,
        pid: i32,
        key: &[u8],
        peering: Option<&Peering>,
    ) -> CancelOutcome {
        if !self.limiter.allow(from) {
            return CancelOutcome::RateLimited;
        }
        if let Some(target) = self.lookup(pid, key) {
            return cancel_upstream(&target).await;
        }
        let Some((peering, owner)) = peering.and_then(|p| Some((p, p.owner(key)?))) else {
            return CancelOutcome::UnknownKey;
        };
        match peering.forward(owner, pid, key).await {
            Ok(()) => CancelOutcome::ForwardedToPeer,
            Err(e) => {
                tracing::warn!(peer_id = owner.id, error = %e, "could not forward cancel request to its replica");
                CancelOutcome::PeerFailed
            }
        }
    }

    /// A cancel another replica forwarded: it applied the budget; this map
    /// alone is looked in, and nothing is forwarded again.
    pub async fn cancel_forwarded(&self, pid: i32, key: &[u8]) -> CancelOutcome {
        match self.lookup(pid, key) {
            Some(target) => cancel_upstream(&target).await,
            None => CancelOutcome::UnknownKey,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn target(pid: i32) -> CancelTarget {
        let config = crate::config::UpstreamConfig {
            host: "127.0.0.1".into(),
            port: 5432,
            database: "db".into(),
            tls: crate::config::UpstreamTls::Disable,
            ca_file: None,
            server_name: None,
            connect_timeout: Duration::from_secs(1),
            allow_insecure_auth: false,
        };
        CancelTarget {
            upstream: Arc::new(UpstreamTarget::new(config, None, Duration::ZERO).unwrap()),
            addr: "127.0.0.1:5432".parse().unwrap(),
            pid,
            key: vec![9, 9, 9, 9],
        }
    }

    #[test]
    fn lookup_needs_pid_and_key_and_ends_with_the_session() {
        let map = Arc::new(CancelMap::default());
        let a = map.register(vec![1, 2, 3, 4], target(100));
        // Same pid on another upstream, another key.
        let b = map.register(vec![5, 6, 7, 8], target(100));
        assert_eq!(
            map.lookup(100, &[1, 2, 3, 4]).unwrap().key,
            vec![9, 9, 9, 9]
        );
        assert!(map.lookup(100, &[5, 6, 7, 8]).is_some());
        assert!(map.lookup(100, &[1, 2, 3, 5]).is_none());
        assert!(map.lookup(101, &[1, 2, 3, 4]).is_none());
        assert!(map.lookup(100, &[1, 2, 3]).is_none());
        drop(a);
        assert!(map.lookup(100, &[1, 2, 3, 4]).is_none());
        assert_eq!(map.len(), 1);
        drop(b);
        assert!(map.is_empty());
    }
}
