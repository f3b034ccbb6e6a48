//! Query cancellation through pgwarden.
//!
//! A client holds the upstream backend's *real* pid and a key of pgwarden's own.
//! The map takes (pid, pgwarden key) to the upstream and the backend's real key,
//! and forwards the cancel over the same kind of channel the session uses.
//! Keys are compared in constant time; an unknown pair does nothing and says
//! nothing (as PostgreSQL does). Cancels are rate-limited per source address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::time::Instant;

use crate::metrics::{self, Label};
use crate::upstream::UpstreamTarget;

/// `pgwarden_cancel_requests_total`, by outcome.
pub(crate) static CANCELS: metrics::Counter<CancelOutcome> =
    metrics::Counter::new(metrics::name::CANCEL_REQUESTS, "outcome");

/// Cancel requests one address may send per second, sustained.
const CANCELS_PER_SECOND: f64 = 10.0;
/// Short bursts allowed on top.
const CANCEL_BURST: f64 = 50.0;

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
    Forwarded,
    UnknownKey,
    RateLimited,
    UpstreamFailed,
}

impl Label for CancelOutcome {
    const ALL: &'static [Self] = &[
        CancelOutcome::Forwarded,
        CancelOutcome::UnknownKey,
        CancelOutcome::RateLimited,
        CancelOutcome::UpstreamFailed,
    ];

    fn as_str(self) -> &'static str {
        match self {
            CancelOutcome::Forwarded => "forwarded",
            CancelOutcome::UnknownKey => "unknown_key",
            CancelOutcome::RateLimited => "rate_limited",
            CancelOutcome::UpstreamFailed => "upstream_failed",
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

    /// Handles one CancelRequest from `peer`.
    pub async fn cancel(&self, peer: IpAddr, pid: i32, key: &[u8]) -> CancelOutcome {
        if !self.limiter.allow(peer) {
            return CancelOutcome::RateLimited;
        }
        let Some(target) = self.lookup(pid, key) else {
            return CancelOutcome::UnknownKey;
        };
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

/// Buckets in the cancel rate limiter's table.
const LIMITER_BUCKETS: usize = 4096;

/// Cancel budgets per source address, in a fixed table: O(1) work and no
/// allocation per request, whatever the number of addresses.
///
/// An address picks its token bucket by a keyed hash (SipHash with a random
/// key per process, std's `RandomState`), so that no one outside the process
/// can choose addresses that land in someone else's bucket. IPv6 addresses
/// count by their /64, which one host may hold whole. Two addresses that do
/// share a bucket share one budget: a collision errs on the strict side, never
/// letting more through.
struct RateLimiter {
    key: std::collections::hash_map::RandomState,
    buckets: Mutex<Box<[Bucket]>>,
}

/// Tokens, and when they were last counted.
#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::with_buckets(LIMITER_BUCKETS)
    }
}

impl RateLimiter {
    fn with_buckets(n: usize) -> Self {
        let empty = Bucket {
            tokens: CANCEL_BURST,
            at: None,
        };
        RateLimiter {
            key: std::collections::hash_map::RandomState::new(),
            buckets: Mutex::new(vec![empty; n.max(1)].into_boxed_slice()),
        }
    }

    /// Which bucket `peer` draws from.
    fn index(&self, peer: IpAddr, buckets: usize) -> usize {
        use std::hash::BuildHasher;
        let source: u128 = match peer.to_canonical() {
            IpAddr::V4(v4) => u32::from(v4).into(),
            // The /64, marked so that it never equals an IPv4 address.
            IpAddr::V6(v6) => (u128::from(v6) >> 64) | (1 << 127),
        };
        (self.key.hash_one(source) % buckets as u64) as usize
    }

    fn allow(&self, peer: IpAddr) -> bool {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let i = self.index(peer, buckets.len());
        let b = &mut buckets[i];
        if let Some(at) = b.at {
            let refill = now.duration_since(at).as_secs_f64() * CANCELS_PER_SECOND;
            b.tokens = (b.tokens + refill).min(CANCEL_BURST);
        }
        b.at = Some(now);
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// How many of `n` cancels at one instant from `peer` get through.
    fn allowed(l: &RateLimiter, peer: IpAddr, n: usize) -> usize {
        (0..n).filter(|_| l.allow(peer)).count()
    }

    #[tokio::test(start_paused = true)]
    async fn an_address_gets_a_burst_then_its_rate() {
        let l = RateLimiter::default();
        let a = ip("10.0.0.1");
        assert_eq!(allowed(&l, a, 200), CANCEL_BURST as usize);
        // Refill: CANCELS_PER_SECOND a second, never past the burst.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(allowed(&l, a, 200), CANCELS_PER_SECOND as usize);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(allowed(&l, a, 200), CANCELS_PER_SECOND as usize / 2);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(allowed(&l, a, 200), CANCEL_BURST as usize);
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_have_budgets_of_their_own() {
        let l = RateLimiter::default();
        let a = ip("10.0.0.1");
        assert_eq!(allowed(&l, a, 200), CANCEL_BURST as usize);
        // Another address (in another bucket: the key is random, so find one).
        let b = (2..=255)
            .map(|n| ip(&format!("10.0.0.{n}")))
            .find(|b| l.index(*b, LIMITER_BUCKETS) != l.index(a, LIMITER_BUCKETS))
            .unwrap();
        assert_eq!(allowed(&l, b, 200), CANCEL_BURST as usize);
        assert!(!l.allow(a));
    }

    /// An address in IPv6 can be one of 2^64 of the same host: they share a budget.
    #[tokio::test(start_paused = true)]
    async fn addresses_of_one_ipv6_slash_64_share_a_budget() {
        let l = RateLimiter::default();
        let through = (0..200)
            .filter(|n| l.allow(ip(&format!("2001:db8:1:2::{n:x}"))))
            .count();
        assert_eq!(through, CANCEL_BURST as usize);
    }

    /// Addresses that land in one bucket share its budget: stricter, never looser.
    #[tokio::test(start_paused = true)]
    async fn a_collision_shares_a_budget() {
        let l = RateLimiter::with_buckets(1);
        assert_eq!(allowed(&l, ip("10.0.0.1"), 30), 30);
        assert_eq!(allowed(&l, ip("10.0.0.2"), 200), CANCEL_BURST as usize - 30);
    }

    /// The table never grows: a flood of new addresses touches the same
    /// buckets, and an address's bucket does not move.
    #[tokio::test(start_paused = true)]
    async fn a_flood_of_addresses_keeps_the_table_fixed() {
        let l = RateLimiter::default();
        let a = ip("10.0.0.1");
        let before = l.index(a, LIMITER_BUCKETS);
        for n in 0..100_000u32 {
            l.allow(IpAddr::V4(std::net::Ipv4Addr::from(0x0b00_0000 + n)));
        }
        assert_eq!(l.buckets.lock().unwrap().len(), LIMITER_BUCKETS);
        assert_eq!(l.index(a, LIMITER_BUCKETS), before);
    }

    /// The key is the process's secret: two limiters place addresses differently.
    #[test]
    fn the_hash_is_keyed() {
        let (l1, l2) = (RateLimiter::default(), RateLimiter::default());
        let differ = (1..=64)
            .map(|n| ip(&format!("10.0.1.{n}")))
            .any(|a| l1.index(a, LIMITER_BUCKETS) != l2.index(a, LIMITER_BUCKETS));
        assert!(differ);
    }
}
