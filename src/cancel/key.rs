//! The cancel keys pgwarden hands its clients: random bytes, as long as the
//! client's protocol allows (4 in 3.0, 32 in 3.2), with — when `[peering]`
//! is configured — the issuing replica's id in the top 4 bits of the first
//! byte, so that any replica can tell whose key a cancel carries.
//!
//! Those 4 bits are the only ones not drawn from the system's CSPRNG: a 3.0
//! key keeps 28 unguessable bits (PostgreSQL's own keys have 32), a 3.2 key
//! 252; guessing stays bound by the per-address cancel budget at the first
//! replica a cancel reaches. Nothing here may make a key predictable.

use crate::auth::verifier::random_bytes;
use crate::protocol::ProtocolMinor;

/// A new key for a session on `minor`, carrying `replica` when given
/// (below [`crate::config::raw::MAX_REPLICAS`]).
pub(crate) fn issue(minor: ProtocolMinor, replica: Option<u8>) -> Vec<u8> {
    let mut key = match minor {
        ProtocolMinor::V0 => random_bytes::<4>().to_vec(),
        ProtocolMinor::V2 => random_bytes::<32>().to_vec(),
    };
    if let Some(id) = replica {
        debug_assert!(id < crate::config::raw::MAX_REPLICAS);
        key[0] = (key[0] & 0x0F) | (id << 4);
    }
    key
}

/// The replica a key names (meaningful only among replicas with `[peering]`).
pub(crate) fn replica(key: &[u8]) -> Option<u8> {
    key.first().map(|b| b >> 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_replica_in_four_bits_and_randomness_in_the_rest() {
        for minor in [ProtocolMinor::V0, ProtocolMinor::V2] {
            for id in 0..16 {
                let key = issue(minor, Some(id));
                assert_eq!(key.len(), minor.cancel_key_len());
                assert_eq!(replica(&key), Some(id));
            }
            // The other bits vary: of 64 keys for one replica, not all
            // share their first byte's low nibble and second byte.
            let keys: std::collections::HashSet<(u8, u8)> = (0..64)
                .map(|_| {
                    let k = issue(minor, Some(5));
                    (k[0] & 0x0F, k[1])
                })
                .collect();
            assert!(keys.len() > 32, "{}", keys.len());
        }
        assert_eq!(replica(&[]), None);
    }

    #[test]
    fn without_peering_every_bit_is_random() {
        let firsts: std::collections::HashSet<u8> = (0..256)
            .map(|_| issue(ProtocolMinor::V0, None)[0] >> 4)
            .collect();
        assert!(firsts.len() > 8, "the top nibble is random too");
    }
}
