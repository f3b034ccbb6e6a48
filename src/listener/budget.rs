//! The budget of handshakes in progress, apart from established sessions.
//!
//! A handshake runs from accept to authentication: PROXY header, TLS,
//! startup, SASL. It holds one of `max_handshakes` slots, taken *before*
//! `accept()` (when all are taken, new connections wait in the kernel's
//! backlog instead of being refused), and counts against its client
//! address's `max_handshakes_per_address` (an IPv6 address counts by its
//! /64, which one host may hold whole); a connection past that cap is closed
//! before a byte is read from it. Only an authenticated client takes one of
//! `max_connections` session slots, and gives its handshake slot back, so
//! silent or slow handshakes, however many, never displace a session, and one
//! address cannot take more than its share of the handshakes.
//!
//! Memory stays bounded by the budget itself: an address has an entry only
//! while a handshake from it is in progress.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(crate) struct HandshakeBudget {
    /// `max_handshakes` slots.
    total: Arc<Semaphore>,
    /// Handshakes in progress by source (see [`source`]).
    by_source: Mutex<HashMap<u128, usize>>,
}

/// A handshake's place in the budget, given back on drop.
pub(crate) struct HandshakeSlot {
    _total: OwnedSemaphorePermit,
    /// `None` until the client's address is known and counted.
    source: Option<SourceCount>,
}

struct SourceCount {
    budget: Arc<HandshakeBudget>,
    key: u128,
}

impl Drop for SourceCount {
    fn drop(&mut self) {
        let mut by_source = self.budget.lock();
        if let Some(n) = by_source.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.key);
            }
        }
    }
}

/// An IPv4 address, or an IPv6 /64 (marked so that it never equals an IPv4 address).
fn source(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => (u128::from(v6) >> 64) | (1 << 127),
    }
}

impl HandshakeBudget {
    pub(crate) fn new(total: usize) -> Arc<HandshakeBudget> {
        Arc::new(HandshakeBudget {
            total: Arc::new(Semaphore::new(total)),
            by_source: Mutex::new(HashMap::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u128, usize>> {
        self.by_source.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a free slot (before accepting the next connection).
    pub(crate) async fn reserve(&self) -> HandshakeSlot {
        let permit = self
            .total
            .clone()
            .acquire_owned()
            .await
            .expect("the handshake semaphore is never closed");
        HandshakeSlot {
            _total: permit,
            source: None,
        }
    }

    /// Counts `slot` against `client`'s cap; gives it back (`Err`) when
    /// `client` already has `cap` handshakes in progress.
    pub(crate) fn count(
        self: &Arc<Self>,
        mut slot: HandshakeSlot,
        client: IpAddr,
        cap: usize,
    ) -> Result<HandshakeSlot, HandshakeSlot> {
        let key = source(client);
        let mut by_source = self.lock();
        let n = by_source.entry(key).or_default();
        if *n >= cap {
            if *n == 0 {
                by_source.remove(&key);
            }
            return Err(slot);
        }
        *n += 1;
        drop(by_source);
        slot.source = Some(SourceCount {
            budget: self.clone(),
            key,
        });
        Ok(slot)
    }

    /// Handshakes in progress from `client`'s source.
    #[cfg(test)]
    pub(crate) fn in_progress(&self, client: IpAddr) -> usize {
        self.lock().get(&source(client)).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn one_address_gets_its_cap_and_others_their_own() {
        let budget = HandshakeBudget::new(10);
        let a = ip("10.0.0.1");
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(budget.count(budget.reserve().await, a, 3).ok().unwrap());
        }
        assert!(budget.count(budget.reserve().await, a, 3).is_err());
        // Mapped IPv4 is the same address.
        assert!(
            budget
                .count(budget.reserve().await, ip("::ffff:10.0.0.1"), 3)
                .is_err()
        );
        let b = budget.count(budget.reserve().await, ip("10.0.0.2"), 3);
        assert!(b.is_ok());
        assert_eq!(budget.in_progress(a), 3);
        held.pop();
        assert_eq!(budget.in_progress(a), 2);
        held.push(budget.count(budget.reserve().await, a, 3).ok().unwrap());
        drop(held);
        drop(b);
        assert!(budget.lock().is_empty(), "no entry outlives its handshakes");
    }

    #[tokio::test]
    async fn an_ipv6_slash_64_counts_as_one_address() {
        let budget = HandshakeBudget::new(10);
        let first = budget.count(budget.reserve().await, ip("2001:db8:1:2::1"), 2);
        let second = budget.count(budget.reserve().await, ip("2001:db8:1:2::ffff"), 2);
        let third = budget.count(budget.reserve().await, ip("2001:db8:1:2:3::"), 2);
        let elsewhere = budget.count(budget.reserve().await, ip("2001:db8:1:3::1"), 2);
        assert!(first.is_ok() && second.is_ok() && third.is_err() && elsewhere.is_ok());
    }

    /// The total is taken before accept: the next reservation waits for a
    /// slot to come back, refused ones included.
    #[tokio::test(start_paused = true)]
    async fn the_total_waits_instead_of_refusing() {
        let budget = HandshakeBudget::new(2);
        let one = budget.reserve().await;
        let two = budget.count(budget.reserve().await, ip("10.0.0.1"), 5).ok();
        let waiting = tokio::time::timeout(std::time::Duration::from_secs(1), budget.reserve());
        assert!(waiting.await.is_err(), "no third slot");
        drop(one);
        let three = budget.reserve().await;
        drop((two, three));
    }
}
