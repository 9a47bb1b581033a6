//! The agent's Prometheus metrics. Labels are provider, agent, tool and outcome names only.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub llm_calls: IntCounterVec,
    pub llm_prompt_chars: IntCounter,
    pub llm_response_chars: IntCounter,
    pub llm_duration: Histogram,
    pub tool_calls: IntCounterVec,
    pub websocket_active: IntGauge,
    pub messages: IntCounter,
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    r.register(Box::new(m.clone()))
        .expect("metric registers once");
    m
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        Metrics {
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
            registry: r,
        }
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
