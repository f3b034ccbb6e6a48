//! Cancel budgets per source address, so that nobody can guess keys at speed.

use std::net::IpAddr;
use std::sync::Mutex;

use tokio::time::Instant;

/// Cancel requests one address may send per second, sustained.
pub(super) const CANCELS_PER_SECOND: f64 = 10.0;
/// Short bursts allowed on top.
pub(super) const CANCEL_BURST: f64 = 50.0;

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
pub(super) struct RateLimiter {
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

    pub(super) fn allow(&self, peer: IpAddr) -> bool {
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
