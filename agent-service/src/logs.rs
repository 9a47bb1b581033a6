//! What the service writes to its log: the subscriber set-up (`LOG_FORMAT` human or JSON, level
//! from `RUST_LOG`), errors with their whole cause chain, and the one-line summary of each answer,
//! tallied from its status-log entries. Message contents never go to the log at INFO.

use std::collections::BTreeSet;
use std::error::Error;

use shared::status_log::Progress;

use crate::config::LogFormat;

pub fn init(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi && format == LogFormat::Human);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

/// An error and every cause under it, joined with `": "` (a cause whose text the error already
/// ends with is not repeated).
pub fn chain(e: &dyn Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let c = cause.to_string();
        if !c.is_empty() && !text.ends_with(&c) {
            text.push_str(": ");
            text.push_str(&c);
        }
        source = cause.source();
    }
    text
}

/// What one answer did, counted from the status-log entries it emitted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerTally {
    pub agents: BTreeSet<String>,
    pub tools: Vec<String>,
    pub llm_calls: u64,
    pub prompt_chars: u64,
    pub response_chars: u64,
}

impl AnswerTally {
    pub fn observe(&mut self, p: &Progress) {
        let text = |k: &str| p.detail(k).and_then(|v| v.as_str()).map(str::to_string);
        let number = |k: &str| p.detail(k).and_then(|v| v.as_u64()).unwrap_or(0);
        match p.stage.as_str() {
            "agent_start" => self.agents.extend(text("agent")),
            "tool_execution" => self.tools.extend(text("tool")),
            "llm_request" => self.prompt_chars += number("prompt_chars"),
            "llm_response" => {
                self.llm_calls += 1;
                self.response_chars += number("response_chars");
            }
            _ => {}
        }
    }

    pub fn agents(&self) -> String {
        self.agents.iter().cloned().collect::<Vec<_>>().join(",")
    }

    pub fn tools(&self) -> String {
        self.tools.join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("error sending request")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn the_chain_keeps_the_cause() {
        let e = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "connection refused",
        ));
        assert_eq!(chain(&e), "error sending request: connection refused");
    }

    #[test]
    fn the_tally_counts_agents_tools_calls_and_characters() {
        let mut t = AnswerTally::default();
        for p in [
            Progress::new("agent_start", "").with("agent", "general"),
            Progress::new("llm_request", "").with("prompt_chars", 120),
            Progress::new("llm_response", "").with("response_chars", 30),
            Progress::new("tool_execution", "").with("tool", "search_articles"),
            Progress::new("llm_request", "").with("prompt_chars", 200),
            Progress::new("llm_response", "").with("response_chars", 12),
            Progress::new("completed", ""),
        ] {
            t.observe(&p);
        }
        assert_eq!(t.agents(), "general");
        assert_eq!(t.tools(), "search_articles");
        assert_eq!(
            (t.llm_calls, t.prompt_chars, t.response_chars),
            (2, 320, 42)
        );
    }
}
