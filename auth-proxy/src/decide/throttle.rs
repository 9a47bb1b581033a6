//! Failed-authentication throttling per client IP. Only failures count (a missing, malformed,
//! ambiguous, expired or badly signed token, and a verified token whose user does not exist), and
//! only failures are refused: past N of them in a minute, the IP's next failures are answered 429
//! instead of 401. A token that verifies for a known user is never refused by the throttle, so a
//! burst of bad tokens from one address (or from anyone behind the same NAT or load balancer) cannot
//! lock out that address's valid users. Signature checks are cheap; the user lookups a verified token
//! for an unknown user causes are bounded by the user cache's negative entries and count as failures.
//! Counting uses pingora-limits' `Rate` (a count-min sketch over two one-minute windows), so memory
//! stays bounded whatever the traffic.

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::rate::Rate;

use crate::decide::reject::Reject;

pub struct Throttle {
    failures: Rate,
    limit: isize,
}

impl Throttle {
    pub fn new(failures_per_minute: u64) -> Throttle {
        Throttle {
            failures: Rate::new(Duration::from_secs(60)),
            limit: failures_per_minute.min(isize::MAX as u64) as isize,
        }
    }

    /// True when `ip` failed too often in this minute or the last one.
    pub fn is_throttled(&self, ip: &IpAddr) -> bool {
        let this_minute = self.failures.observe(ip, 0);
        let last_minute = (self.failures.rate(ip) * 60.0).round() as isize;
        this_minute.max(last_minute) >= self.limit
    }

    /// Records one failed authentication from `ip`.
    pub fn record_failure(&self, ip: &IpAddr) {
        self.failures.observe(ip, 1);
    }
}

/// What a failed authentication step answers: the failure itself, or 429 when the client IP is
/// throttled. Only ever applied to failures, never to a request whose token verified.
pub fn verdict(failure: Reject, throttled: bool) -> Reject {
    if throttled && failure.is_auth_failure() {
        Reject::RateLimited
    } else {
        failure
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_become_rate_limited() {
        assert_eq!(
            verdict(Reject::InvalidToken("x"), true),
            Reject::RateLimited
        );
        assert_eq!(verdict(Reject::UnknownUser, true), Reject::RateLimited);
        assert_eq!(verdict(Reject::UnknownUser, false), Reject::UnknownUser);
        assert_eq!(verdict(Reject::Forbidden, true), Reject::Forbidden);
        assert_eq!(
            verdict(Reject::AuthUnavailable, true),
            Reject::AuthUnavailable
        );
    }

    #[test]
    fn throttles_after_the_limit_per_ip() {
        let t = Throttle::new(3);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(!t.is_throttled(&a));
            t.record_failure(&a);
        }
        assert!(t.is_throttled(&a));
        assert!(!t.is_throttled(&b));
    }
}
