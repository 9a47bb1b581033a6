//! Failed-authentication throttling per client IP: past N failures in a minute, further requests
//! from that IP get 429 without their token being verified. Counting uses pingora-limits' `Rate`
//! (a count-min sketch over two one-minute windows), so memory stays bounded whatever the traffic.

use std::net::IpAddr;
use std::time::Duration;

use pingora_limits::rate::Rate;

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

#[cfg(test)]
mod tests {
    use super::*;

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
