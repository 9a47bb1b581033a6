//! The live status log: `agent_progress` frames, one per step, sent as each step happens.
//!
//! Shape: `{"type":"agent_progress","stage":STR,"message":STR,"timestamp":<float unix seconds>,
//! "details":{...}}`. The front end renders stage, message and details generically, so new stages and
//! keys show up without front-end changes.
//!
//! | stage | when | details |
//! |---|---|---|
//! | `processing` | a message was received | `question` |
//! | `agent_start` | an agent starts on the message | `agent` |
//! | `analyzing` | the agent decides what to do | `agent` |
//! | `llm_request` | just before each LLM call | `agent`, `provider`, `model`, `prompt_chars` |
//! | `llm_response` | right after each LLM call | `agent`, `provider`, `model`, `prompt_chars`, `response_chars`, `duration_ms`, `prompt_tokens`?, `completion_tokens`?, `error`? |
//! | `tool_execution` | a tool is about to run | `tool`, `arguments` |
//! | `tool_success` | the tool returned | `tool`, `output_length` (characters of the tool's output), `duration_ms` |
//! | `tool_error` | the tool failed or its arguments were bad | `tool`, `error`, `duration_ms` |
//! | `quota_exceeded` | a daily usage quota refused an LLM call (none was made) | `agent`, `quota`, `limit`, `used`, `resets_at` |
//! | `sql_generation` | SQL mode: the LLM writes a query | `question` |
//! | `sql_executed` | the query ran | `sql`, `row_count`, `output_length` |
//! | `sql_error` | the query was refused or failed | `sql`, `error` |
//! | `llm_summarizing` | the LLM is asked to phrase tool or SQL output | `agent` |
//! | `generating_response` | the final answer is being written | `agent` |
//! | `agent_end` | the agent finished | `agent`, `output_chars` |
//! | `completed` | the message is done | `agent`, `duration_ms` |
//!
//! Character counts are Unicode scalar values (`str::chars().count()`), the same as JavaScript's
//! `[...s].length`.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One status-log entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub stage: String,
    pub message: String,
    /// Unix time in seconds, with fractions.
    pub timestamp: f64,
    pub details: Map<String, Value>,
}

/// Characters of a text, as reported in `*_chars` and `output_length`.
pub fn char_count(text: &str) -> usize {
    text.chars().count()
}

fn now_unix_f64() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Progress {
    /// An entry for `stage`, stamped now, with no details yet.
    pub fn new(stage: &str, message: impl Into<String>) -> Self {
        Progress {
            stage: stage.to_string(),
            message: message.into(),
            timestamp: now_unix_f64(),
            details: Map::new(),
        }
    }

    /// Adds one detail.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_string(), value.into());
        self
    }

    /// Adds one detail when it is known.
    pub fn with_opt(self, key: &str, value: Option<impl Into<Value>>) -> Self {
        match value {
            Some(v) => self.with(key, v),
            None => self,
        }
    }

    pub fn detail(&self, key: &str) -> Option<&Value> {
        self.details.get(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frames::ServerFrame;
    use serde_json::json;

    #[test]
    fn serialises_as_an_agent_progress_frame() {
        let p = Progress::new("tool_success", "Tool finished")
            .with("tool", "count_approved_articles")
            .with("output_length", 12);
        let v: Value = serde_json::from_str(&ServerFrame::AgentProgress(p).to_json()).unwrap();
        assert_eq!(v["type"], "agent_progress");
        assert_eq!(v["stage"], "tool_success");
        assert_eq!(v["message"], "Tool finished");
        assert!(v["timestamp"].as_f64().unwrap() > 1.7e9);
        assert_eq!(
            v["details"],
            json!({"tool": "count_approved_articles", "output_length": 12})
        );
    }

    #[test]
    fn counts_characters_not_bytes() {
        assert_eq!(char_count("héllo ✓"), 7);
    }

    #[test]
    fn optional_details_are_left_out_when_unknown() {
        let p = Progress::new("llm_response", "x")
            .with_opt("prompt_tokens", None::<u64>)
            .with_opt("error", Some("boom"));
        assert_eq!(p.details.len(), 1);
        assert_eq!(p.detail("error"), Some(&json!("boom")));
    }
}
