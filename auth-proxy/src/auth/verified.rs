//! Tokens this edge has already verified, so a client that presents the same token on every
//! request (a browser's API calls, a front end that reconnects its WebSocket) pays for the
//! signature, the base64 and the JSON once, not on every request.
//!
//! What the cache may and may not skip:
//! - Only tokens that passed every check of [`crate::auth::jwt`] are inserted; a refused token never is,
//!   so a client cannot fill the cache with tokens it made up.
//! - An entry is looked up by the whole token, byte for byte (not by a hash of it), so a hit is a
//!   token whose signature was checked.
//! - Each entry remembers the [`KeyEpoch`] it was verified under. Reloading the keys (SIGHUP) or a
//!   new JWKS key set starts a new epoch; an entry of an older epoch is a miss and the token is
//!   verified again with the keys of now, so a removed key stops its tokens at once.
//! - The time claims are kept as read and checked again at every hit ([`crate::auth::claims::TimeClaims`]),
//!   so `exp`, `nbf` and `max_token_age_secs` apply at the second, as without the cache.
//! - Revocations and the user row are checked after this, on every request, hit or miss.
//!
//! Bounded: at most `jwt.verified_cache_capacity` entries, each at most [`MAX_CACHED_TOKEN_BYTES`]
//! of token, each dropped `jwt.verified_cache_ttl_secs` after it was verified. Capacity 0 turns the
//! cache off.

use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use crate::auth::claims::TimeClaims;
use crate::live::revocations::TokenFacts;

/// Longer tokens are verified every time (they are rare; the bound keeps the cache's memory at
/// about capacity × 2.3 KiB at worst).
pub const MAX_CACHED_TOKEN_BYTES: usize = 2048;

/// Which keys verified a token: the static keys' generation and the JWKS set's. Either changing
/// makes every older entry a miss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyEpoch {
    pub keys: u64,
    pub jwks: u64,
}

/// What a verification established, kept for the next request with the same token.
#[derive(Debug, Clone)]
pub struct Verified {
    pub facts: TokenFacts,
    pub times: TimeClaims,
    pub epoch: KeyEpoch,
}

/// The cache of verified tokens (see the module documentation).
pub struct VerifiedTokens {
    cache: Option<Cache<Box<str>, Arc<Verified>>>,
}

impl VerifiedTokens {
    /// A cache of at most `capacity` tokens, each kept `ttl` after its verification; capacity 0
    /// is no cache.
    pub fn new(capacity: u64, ttl: Duration) -> VerifiedTokens {
        VerifiedTokens {
            cache: (capacity > 0 && !ttl.is_zero()).then(|| {
                Cache::builder()
                    .max_capacity(capacity)
                    .time_to_live(ttl)
                    .build()
            }),
        }
    }

    /// The entry for `token`, if it was verified under `epoch`.
    pub fn get(&self, token: &str, epoch: KeyEpoch) -> Option<Arc<Verified>> {
        let cache = self.cache.as_ref()?;
        if token.len() > MAX_CACHED_TOKEN_BYTES {
            return None;
        }
        cache.get(token).filter(|v| v.epoch == epoch)
    }

    /// Remembers a token that passed every check.
    pub fn insert(&self, token: &str, verified: Verified) {
        if let Some(cache) = &self.cache {
            if token.len() <= MAX_CACHED_TOKEN_BYTES {
                cache.insert(token.into(), Arc::new(verified));
            }
        }
    }

    /// Forgets every entry (the keys changed; older entries would only be misses).
    pub fn clear(&self) {
        if let Some(cache) = &self.cache {
            cache.invalidate_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EPOCH: KeyEpoch = KeyEpoch { keys: 0, jwks: 0 };

    fn verified(user_id: i64, epoch: KeyEpoch) -> Verified {
        Verified {
            facts: TokenFacts {
                user_id,
                iat: Some(1),
                exp: None,
                jti: None,
            },
            times: TimeClaims::default(),
            epoch,
        }
    }

    #[test]
    fn a_hit_is_the_same_token_under_the_same_keys() {
        let cache = VerifiedTokens::new(10, Duration::from_secs(60));
        cache.insert("a.b.c", verified(7, EPOCH));
        assert_eq!(cache.get("a.b.c", EPOCH).unwrap().facts.user_id, 7);
        assert!(cache.get("a.b.C", EPOCH).is_none());
        assert!(cache.get("a.b.c ", EPOCH).is_none());
        assert!(cache.get("a.b.", EPOCH).is_none());
    }

    #[test]
    fn entries_of_another_key_epoch_are_misses() {
        let cache = VerifiedTokens::new(10, Duration::from_secs(60));
        cache.insert("a.b.c", verified(7, EPOCH));
        assert!(cache.get("a.b.c", KeyEpoch { keys: 1, jwks: 0 }).is_none());
        assert!(cache.get("a.b.c", KeyEpoch { keys: 0, jwks: 1 }).is_none());
        cache.clear();
        assert!(cache.get("a.b.c", EPOCH).is_none());
    }

    #[test]
    fn long_tokens_and_a_zero_capacity_are_not_cached() {
        let cache = VerifiedTokens::new(10, Duration::from_secs(60));
        let long = "x".repeat(MAX_CACHED_TOKEN_BYTES + 1);
        cache.insert(&long, verified(7, EPOCH));
        assert!(cache.get(&long, EPOCH).is_none());
        let off = VerifiedTokens::new(0, Duration::from_secs(60));
        off.insert("a.b.c", verified(7, EPOCH));
        assert!(off.get("a.b.c", EPOCH).is_none());
    }
}
