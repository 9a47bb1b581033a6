//! The agent's Prometheus metrics. Labels are provider, agent, tool and outcome names only.

use std::collections::HashSet;
use std::sync::Mutex;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Distinct model names that become metric labels.
const MAX_MODEL_LABELS: usize = 64;

pub struct Metrics {
    registry: Registry,
    pub llm_calls: IntCounterVec,
    pub llm_prompt_chars: IntCounter,
    pub llm_response_chars: IntCounter,
    pub llm_duration: Histogram,
    pub tool_calls: IntCounterVec,
    pub websocket_active: IntGauge,
    pub messages: IntCounter,
    /// Scale-out: bus state, usage by provider and model, quota refusals, drain.
    pub bus_connected: IntGauge,
    pub bus_degraded: IntCounterVec,
    pub usage_llm_calls: IntCounterVec,
    pub usage_prompt_chars: IntCounterVec,
    pub usage_response_chars: IntCounterVec,
    pub usage_tokens: IntCounterVec,
    pub quota_refusals: IntCounterVec,
    pub draining: IntGauge,
    models: ModelLabels,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone()))
        .expect("metric registers once");
    m
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let m = Metrics {
            llm_calls: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("agent_llm_calls_total", "LLM calls"),
                    &["provider", "agent", "outcome"],
                )
                .unwrap(),
            ),
            llm_prompt_chars: reg(
                &r,
                IntCounter::new("agent_llm_prompt_chars_total", "Characters sent to LLMs").unwrap(),
            ),
            llm_response_chars: reg(
                &r,
                IntCounter::new(
                    "agent_llm_response_chars_total",
                    "Characters received from LLMs",
                )
                .unwrap(),
            ),
            llm_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new("agent_llm_duration_seconds", "LLM call duration").buckets(
                        vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0],
                    ),
                )
                .unwrap(),
            ),
            tool_calls: reg(
                &r,
                IntCounterVec::new(
                    Opts::new("agent_tool_calls_total", "Tool calls"),
                    &["tool", "outcome"],
                )
                .unwrap(),
            ),
            websocket_active: reg(
                &r,
                IntGauge::new(
                    "agent_websocket_connections_active",
                    "Open WebSocket connections",
                )
                .unwrap(),
            ),
            messages: reg(
                &r,
                IntCounter::new("agent_messages_total", "User messages received").unwrap(),
            ),
            bus_connected: reg(
                &r,
                IntGauge::new(
                    "agent_bus_connected",
                    "1 while the cross-replica bus (NATS) is connected, 0 otherwise",
                )
                .unwrap(),
            ),
            bus_degraded: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "agent_bus_degraded_total",
                        "Bus operations skipped because NATS was unavailable",
                    ),
                    &["operation"],
                )
                .unwrap(),
            ),
            usage_llm_calls: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "agent_usage_llm_calls_total",
                        "LLM calls in the usage ledger",
                    ),
                    &["provider", "model", "outcome"],
                )
                .unwrap(),
            ),
            usage_prompt_chars: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "agent_usage_prompt_chars_total",
                        "Prompt characters in the usage ledger",
                    ),
                    &["provider", "model"],
                )
                .unwrap(),
            ),
            usage_response_chars: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "agent_usage_response_chars_total",
                        "Response characters in the usage ledger",
                    ),
                    &["provider", "model"],
                )
                .unwrap(),
            ),
            usage_tokens: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "agent_usage_tokens_total",
                        "Tokens the providers reported, by kind (prompt, completion)",
                    ),
                    &["provider", "model", "kind"],
                )
                .unwrap(),
            ),
            quota_refusals: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "agent_quota_refusals_total",
                        "LLM calls refused because a daily quota was used up",
                    ),
                    &["quota"],
                )
                .unwrap(),
            ),
            draining: reg(
                &r,
                IntGauge::new("agent_draining", "1 once SIGTERM started the drain").unwrap(),
            ),
            models: ModelLabels::default(),
            registry: r,
        };
        // Families a dashboard queries show up (at 0) before their first event.
        for quota in ["llm_calls", "prompt_chars"] {
            m.quota_refusals.with_label_values(&[quota]);
        }
        for operation in ["publish", "lease", "subscribe"] {
            m.bus_degraded.with_label_values(&[operation]);
        }
        m
    }

    /// A model name as a metric label: clients choose models, so only a bounded set of
    /// well-formed names become labels; the rest count as `other`.
    pub fn model_label(&self, model: &str) -> String {
        self.models.label(model)
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Model names as metric labels: at most [`MAX_MODEL_LABELS`] distinct well-formed names.
#[derive(Default)]
struct ModelLabels {
    seen: Mutex<HashSet<String>>,
}

impl ModelLabels {
    fn label(&self, model: &str) -> String {
        let well_formed = !model.is_empty()
            && model.len() <= 64
            && model
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._:/-".contains(c));
        if !well_formed {
            return "other".into();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.contains(model) || seen.len() < MAX_MODEL_LABELS {
            seen.insert(model.to_string());
            model.to_string()
        } else {
            "other".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_labels_are_bounded() {
        let m = ModelLabels::default();
        assert_eq!(m.label("gpt-4o-mini"), "gpt-4o-mini");
        assert_eq!(m.label("bad model\n"), "other");
        for i in 0..MAX_MODEL_LABELS {
            m.label(&format!("m{i}"));
        }
        assert_eq!(m.label("one-too-many"), "other");
        assert_eq!(m.label("gpt-4o-mini"), "gpt-4o-mini");
    }
}
