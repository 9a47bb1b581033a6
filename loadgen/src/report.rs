//! Results: latency histograms summarised as percentiles, printed for people or as JSON.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies in microseconds, 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub scenario: String,
    pub target: String,
    pub connections: usize,
    pub seconds: f64,
    pub ok: u64,
    pub errors: u64,
    pub per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_bytes_per_connection: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held: Option<usize>,
}

impl Report {
    pub fn new(
        scenario: &str,
        target: &str,
        connections: usize,
        seconds: f64,
        h: &Histogram<u64>,
        errors: u64,
    ) -> Report {
        let ok = h.len();
        Report {
            scenario: scenario.into(),
            target: target.into(),
            connections,
            seconds,
            ok,
            errors,
            per_second: if seconds > 0.0 {
                ok as f64 / seconds
            } else {
                0.0
            },
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            rss_bytes_per_connection: None,
            held: None,
        }
    }

    pub fn human(&self) -> String {
        let mut s = format!(
            "{} {}: {} ok, {} errors in {:.1} s over {} connections = {:.0}/s; latency p50 {} µs, p99 {} µs, p99.9 {} µs",
            self.scenario, self.target, self.ok, self.errors, self.seconds, self.connections, self.per_second, self.p50_us, self.p99_us, self.p999_us
        );
        if let (Some(rss), Some(held)) = (self.rss_bytes_per_connection, self.held) {
            s.push_str(&format!(
                "; held {held} idle connections, {:.1} KiB RSS each",
                rss / 1024.0
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_rates() {
        let mut h = histogram();
        for v in 1..=1000u64 {
            h.record(v).unwrap();
        }
        let r = Report::new("handshakes", "ws://127.0.0.1:1/ws/x", 4, 2.0, &h, 3);
        assert_eq!(r.ok, 1000);
        assert_eq!(r.per_second, 500.0);
        assert!((499..=501).contains(&r.p50_us));
        assert!((989..=991).contains(&r.p99_us));
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(json["errors"], 3);
        assert!(r.human().contains("500/s"));
    }
}
