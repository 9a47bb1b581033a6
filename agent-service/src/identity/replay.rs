//! The replay guard for identity assertions: every nonce the agent accepted is remembered until its
//! assertion is too old to verify anyway, so each assertion is accepted once.
//!
//! Nonces are kept in buckets by the assertion's timestamp (one per second), and a bucket is dropped
//! as soon as its second is older than the verifier's window, so memory follows the request rate
//! times the window (10 s by default), never the history. Only nonces of assertions whose MAC
//! verified reach the guard, so clients cannot fill it. It is still bounded: past `capacity`
//! remembered nonces new assertions are refused (fail closed, 503) until old buckets expire.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

/// Why an assertion was refused by the guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayRefusal {
    /// This nonce was already accepted.
    Replayed,
    /// The guard holds `capacity` nonces; nothing new is accepted until some expire.
    Full,
}

#[derive(Default)]
struct Buckets {
    by_second: BTreeMap<u64, HashSet<u128>>,
    len: usize,
}

pub struct ReplayGuard {
    inner: Mutex<Buckets>,
    max_age_secs: u64,
    capacity: usize,
}

impl ReplayGuard {
    /// A guard for assertions accepted while at most `max_age_secs` old, holding at most `capacity`
    /// nonces.
    pub fn new(max_age_secs: u64, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            inner: Mutex::new(Buckets::default()),
            max_age_secs,
            capacity: capacity.max(1),
        }
    }

    /// Accepts a verified assertion's nonce once. `issued_at` is the assertion's timestamp, `now`
    /// the current unix time.
    pub fn admit(&self, nonce: u128, issued_at: u64, now: u64) -> Result<(), ReplayRefusal> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let oldest_kept = now.saturating_sub(self.max_age_secs);
        let keep = g.by_second.split_off(&oldest_kept);
        let dropped: usize = g.by_second.values().map(HashSet::len).sum();
        g.by_second = keep;
        g.len -= dropped;
        if g.by_second
            .get(&issued_at)
            .is_some_and(|set| set.contains(&nonce))
        {
            return Err(ReplayRefusal::Replayed);
        }
        if g.len >= self.capacity {
            return Err(ReplayRefusal::Full);
        }
        g.by_second.entry(issued_at).or_default().insert(nonce);
        g.len += 1;
        Ok(())
    }

    /// How many nonces are remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    #[test]
    fn each_nonce_is_accepted_once_within_the_window() {
        let g = ReplayGuard::new(10, 100);
        assert_eq!(g.admit(1, NOW, NOW), Ok(()));
        assert_eq!(g.admit(1, NOW, NOW + 10), Err(ReplayRefusal::Replayed));
        assert_eq!(g.admit(2, NOW, NOW + 10), Ok(()));
        // The same nonce under another timestamp is another assertion (its MAC differs).
        assert_eq!(g.admit(1, NOW + 1, NOW + 10), Ok(()));
        assert_eq!(g.len(), 3);
    }

    #[test]
    fn expired_buckets_are_dropped() {
        let g = ReplayGuard::new(10, 100);
        for n in 0..5 {
            g.admit(n, NOW, NOW).unwrap();
        }
        g.admit(99, NOW + 5, NOW + 5).unwrap();
        assert_eq!(g.len(), 6);
        // At NOW + 11 the NOW bucket is older than the window: the verifier refuses those as stale.
        g.admit(100, NOW + 11, NOW + 11).unwrap();
        assert_eq!(g.len(), 2);
    }

    #[test]
    fn a_full_guard_fails_closed_until_buckets_expire() {
        let g = ReplayGuard::new(10, 3);
        for n in 0..3 {
            g.admit(n, NOW, NOW).unwrap();
        }
        assert_eq!(g.admit(3, NOW, NOW), Err(ReplayRefusal::Full));
        assert_eq!(g.admit(0, NOW, NOW), Err(ReplayRefusal::Replayed));
        assert_eq!(g.admit(3, NOW + 11, NOW + 11), Ok(()));
    }
}
