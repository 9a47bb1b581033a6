//! Results: latency histograms summarised as percentiles, printed for people or as JSON.

use std::collections::BTreeMap;

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
    /// `idle` with several `--pid`s: each process's RSS growth (`rss_bytes_per_connection` is their sum).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_by_pid: Option<Vec<PidRss>>,
    /// `chat`: what the answers looked like (status log, the agent's own timing).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<ChatStats>,
}

/// Stage counts as one line, for people: `analyzing×2 completed×2`.
pub fn stages_line(stages: &BTreeMap<String, u64>) -> String {
    stages
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One watched process of an `idle` run.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PidRss {
    pub pid: u32,
    pub rss_before_bytes: u64,
    pub rss_after_bytes: u64,
    pub rss_bytes_per_connection: f64,
}

/// The answers of a `chat` run, as the client saw them.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct ChatStats {
    /// Messages each connection sends, one after the other.
    pub messages_per_connection: usize,
    /// `agent_message` frames received (the latency histogram counts the same answers).
    pub answers: u64,
    /// `error` frames received in place of an answer.
    pub error_frames: u64,
    /// Every frame received between a `user_message` and the `typing: false` that ends its answer.
    pub frames: u64,
    /// `agent_progress` frames among them (the status log).
    pub progress_frames: u64,
    pub progress_per_answer: f64,
    /// How many entries of each `stage`.
    pub stages: BTreeMap<String, u64>,
    /// `llm_request` entries, and those carrying a numeric `prompt_chars`.
    pub llm_requests: u64,
    pub llm_requests_with_chars: u64,
    /// `llm_response` entries, and those carrying numeric `prompt_chars` and `response_chars`.
    pub llm_responses: u64,
    pub llm_responses_with_chars: u64,
    /// Median of the `duration_ms` the agent reports in its `completed` entry (none: not reported).
    pub agent_duration_ms_p50: Option<f64>,
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
            rss_by_pid: None,
            chat: None,
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
        for p in self.rss_by_pid.iter().flatten() {
            s.push_str(&format!(
                "; pid {} {:.1} KiB each",
                p.pid,
                p.rss_bytes_per_connection / 1024.0
            ));
        }
        if let Some(c) = &self.chat {
            s.push_str(&format!(
                "; {} answers, {} error frames, {:.1} status entries per answer",
                c.answers, c.error_frames, c.progress_per_answer
            ));
            if let Some(d) = c.agent_duration_ms_p50 {
                s.push_str(&format!(", agent duration_ms p50 {d}"));
            }
            s.push_str(&format!(" ({})", stages_line(&c.stages)));
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
