//! Admission of client connections to the edge listener: a cap on open connections per client IP
//! and a global cap kept below the process's file limit, so the edge answers 503 instead of failing
//! `accept` when descriptors run out. Settings: the `[connections]` section.
//!
//! [`Admission::admit`] is called once per accepted connection and returns a [`Ticket`] that holds
//! the connection's place until it is dropped (when the connection closes, tunnels included).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use prometheus::IntGauge;

use crate::config::ConnectionsConfig;

/// Descriptors kept free for the upstream side, the database pool, the admin listener and logs.
const RESERVED_FDS: u64 = 64;

impl ConnectionsConfig {
    /// The global cap: the configured one, or one derived from the soft `RLIMIT_NOFILE`.
    pub fn effective_max_total(&self) -> usize {
        if self.max_total > 0 {
            return self.max_total;
        }
        max_total_for_file_limit(file_limit())
    }
}

/// Half the descriptors left after the reserve: each client connection may hold an upstream one.
pub fn max_total_for_file_limit(nofile: u64) -> usize {
    (nofile.saturating_sub(RESERVED_FDS) / 2).max(1) as usize
}

fn file_limit() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The client IP holds `max_per_ip` connections already.
    PerIp,
    /// The edge holds `max_total` connections already.
    Total,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerIp => "per_ip",
            Refusal::Total => "total",
        }
    }
}

/// Counts open connections, in total and per client IP.
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    exempt: Vec<(IpAddr, u8)>,
    /// Mirrors `total` for the metrics.
    gauge: IntGauge,
}

impl Admission {
    /// `exempt`: networks whose peers are not capped per IP (trusted proxies carry many clients).
    /// `gauge` follows the number of open connections.
    pub fn new(
        max_total: usize,
        max_per_ip: usize,
        exempt: Vec<(IpAddr, u8)>,
        gauge: IntGauge,
    ) -> Arc<Admission> {
        Arc::new(Admission {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            exempt,
            gauge,
        })
    }

    /// Takes a place for a connection from `peer` (None: not an IP socket, counted in total only).
    pub fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Result<Ticket, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        let mut ticket = Ticket {
            admission: self.clone(),
            ip: None,
            counted: false,
        };
        if let Some(ip) = peer.filter(|ip| !crate::decide::headers::in_networks(*ip, &self.exempt))
        {
            let mut map = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = map.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                drop(map);
                return Err(Refusal::PerIp); // the ticket's drop gives the total place back
            }
            *n += 1;
            ticket.ip = Some(ip);
        }
        self.gauge.inc();
        ticket.counted = true;
        Ok(ticket)
    }

    /// Open connections now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }
}

/// One admitted connection's place; dropping it frees the place.
pub struct Ticket {
    admission: Arc<Admission>,
    ip: Option<IpAddr>,
    /// Counted in the gauge (only admitted connections are).
    counted: bool,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(ip) = self.ip {
            let mut map = self
                .admission
                .per_ip
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            if let Some(n) = map.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&ip);
                }
            }
        }
        if self.counted {
            self.admission.gauge.dec();
        }
        self.admission.total.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gauge() -> IntGauge {
        IntGauge::new("open", "open").unwrap()
    }

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn per_ip_cap_counts_each_ip_apart_and_frees_on_drop() {
        let a = Admission::new(100, 2, Vec::new(), gauge());
        let t1 = a.admit(ip("10.0.0.1")).unwrap();
        let _t2 = a.admit(ip("10.0.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.0.0.1")).err(), Some(Refusal::PerIp));
        let _other = a.admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.open(), 3, "a refused connection holds no place");
        assert_eq!(a.gauge.get(), 3);
        drop(t1);
        assert!(a.admit(ip("10.0.0.1")).is_ok());
    }

    #[test]
    fn total_cap_refuses_then_admits_after_a_close() {
        let a = Admission::new(2, 10, Vec::new(), gauge());
        let t1 = a.admit(ip("10.0.0.1")).unwrap();
        let _t2 = a.admit(None).unwrap();
        assert_eq!(a.admit(ip("10.0.0.3")).err(), Some(Refusal::Total));
        drop(t1);
        assert!(a.admit(ip("10.0.0.3")).is_ok());
    }

    #[test]
    fn trusted_peers_are_not_capped_per_ip() {
        let a = Admission::new(100, 1, vec![("10.1.0.0".parse().unwrap(), 16)], gauge());
        let _t = (0..5)
            .map(|_| a.admit(ip("10.1.2.3")).unwrap())
            .collect::<Vec<_>>();
        let _x = a.admit(ip("10.2.0.1")).unwrap();
        assert_eq!(a.admit(ip("10.2.0.1")).err(), Some(Refusal::PerIp));
    }

    #[test]
    fn derived_total_leaves_a_reserve() {
        assert_eq!(max_total_for_file_limit(1024), 480);
        assert_eq!(max_total_for_file_limit(10), 1);
        assert!(ConnectionsConfig::default().effective_max_total() >= 1);
    }
}
