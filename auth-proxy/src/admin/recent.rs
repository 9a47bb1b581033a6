//! What happened over the last minutes, for the status page: requests counted by route class and
//! outcome (`ok`, `public`, `preflight` or the refusal's error code) in one-minute buckets. Counters
//! since start live in the Prometheus metrics; this keeps only the recent window, a few hundred
//! bytes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

/// Minutes kept.
pub const WINDOW_MINUTES: u64 = 15;

/// `(route class, outcome)` → count.
pub type Counts = BTreeMap<(&'static str, &'static str), u64>;

#[derive(Default)]
pub struct Recent {
    /// `(minute since the epoch, counts)`, oldest first.
    buckets: Mutex<VecDeque<(u64, Counts)>>,
}

impl Recent {
    /// Counts one request that ended at `now` (unix seconds).
    pub fn record(&self, route: &'static str, outcome: &'static str, now: u64) {
        let minute = now / 60;
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.back().is_none_or(|(m, _)| *m < minute) {
            b.push_back((minute, Counts::new()));
            while b
                .front()
                .is_some_and(|(m, _)| *m + WINDOW_MINUTES <= minute)
            {
                b.pop_front();
            }
        }
        if let Some((_, counts)) = b.back_mut() {
            *counts.entry((route, outcome)).or_default() += 1;
        }
    }

    /// Sums over the last `minutes` minutes (the current one included) at `now`.
    pub fn last(&self, minutes: u64, now: u64) -> Counts {
        let minute = now / 60;
        let b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let mut sum = Counts::new();
        for (_, counts) in b.iter().filter(|(m, _)| *m + minutes > minute) {
            for (k, v) in counts {
                *sum.entry(*k).or_default() += v;
            }
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_fall_out_of_the_window() {
        let r = Recent::default();
        let t0 = 1_000_000 * 60;
        r.record("ws", "ok", t0);
        r.record("ws", "token_expired", t0 + 5);
        r.record("ws", "ok", t0 + 61);
        assert_eq!(r.last(1, t0 + 61)[&("ws", "ok")], 1);
        assert_eq!(r.last(5, t0 + 61)[&("ws", "ok")], 2);
        assert_eq!(r.last(5, t0 + 61)[&("ws", "token_expired")], 1);
        let later = t0 + 60 * WINDOW_MINUTES;
        r.record("api", "ok", later);
        assert!(!r
            .last(WINDOW_MINUTES, later)
            .contains_key(&("ws", "token_expired")));
        assert_eq!(r.last(WINDOW_MINUTES, later)[&("ws", "ok")], 1);
    }
}
