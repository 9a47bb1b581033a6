//! The Ollama provider: `POST {URL_BASE_OLLAMA}/api/chat` (`stream: false`), with `X-API-Key:
//! KEY_OLLAMA` when set. Tools are described in the system prompt and called in plain text:
//!
//! ```text
//! TOOL_CALL: tool_name
//! ARGUMENTS: {"key": "value"}
//! END_TOOL_CALL
//! ```

use std::time::Duration;

use serde_json::{json, Value};

use super::{LlmError, LlmReply, LlmRequest, ToolCall, ToolSpec};
use crate::config::Config;

#[derive(Clone)]
pub struct Ollama {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
    timeout: Duration,
}

impl Ollama {
    pub fn new(config: &Config, http: reqwest::Client) -> Ollama {
        Ollama {
            http,
            base: config.ollama_base.trim_end_matches('/').to_string(),
            key: config.ollama_key.clone(),
            timeout: config.llm_timeout,
        }
    }

    pub async fn chat(&self, req: &LlmRequest<'_>) -> Result<LlmReply, LlmError> {
        let messages: Vec<Value> = req
            .messages
            .iter()
            .map(|m| json!({"role": text_role(m.role), "content": m.content}))
            .collect();
        let body = json!({"model": req.model, "messages": messages, "stream": false, "options": {"temperature": req.temperature}});
        let mut call = self
            .http
            .post(format!("{}/api/chat", self.base))
            .timeout(self.timeout)
            .json(&body);
        if let Some(key) = &self.key {
            call = call.header("X-API-Key", key);
        }
        let resp = call
            .send()
            .await
            .map_err(|e| LlmError::from_reqwest(e, self.timeout))?;
        if !resp.status().is_success() {
            return Err(LlmError::Status(resp.status().as_u16()));
        }
        let v: Value = resp
            .json()
            .await
            .map_err(|e| LlmError::from_reqwest(e, self.timeout))?;
        let content = v
            .pointer("/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| LlmError::BadResponse("no message.content".into()))?;
        Ok(LlmReply {
            content: content.to_string(),
            tool_call: parse_tool_call(content),
            prompt_tokens: v.get("prompt_eval_count").and_then(Value::as_u64),
            completion_tokens: v.get("eval_count").and_then(Value::as_u64),
        })
    }
}

/// Tool results go back as user messages: text-protocol models know no `tool` role.
fn text_role(role: super::Role) -> &'static str {
    match role {
        super::Role::Tool => "user",
        other => other.as_str(),
    }
}

/// The prompt text that teaches a model the tool protocol.
pub fn tool_instructions(tools: &[ToolSpec]) -> String {
    let mut s = String::from(
        "You can use tools. To call one, answer with exactly:\nTOOL_CALL: <tool name>\nARGUMENTS: <JSON object>\nEND_TOOL_CALL\nCall at most one tool per answer. Tools:\n",
    );
    for t in tools {
        s.push_str(&format!(
            "- {}: {} Arguments schema: {}\n",
            t.name, t.description, t.parameters
        ));
    }
    s
}

/// Finds `TOOL_CALL:` / `ARGUMENTS:` / `END_TOOL_CALL` in a reply.
pub fn parse_tool_call(text: &str) -> Option<ToolCall> {
    let start = text.find("TOOL_CALL:")?;
    let rest = &text[start + "TOOL_CALL:".len()..];
    let (name_part, rest) = rest.split_once("ARGUMENTS:")?;
    let args = rest.split("END_TOOL_CALL").next().unwrap_or(rest).trim();
    let name = name_part.trim().to_string();
    if name.is_empty() {
        return None;
    }
    Some(ToolCall {
        id: "text_call".into(),
        name,
        arguments: serde_json::from_str(args).unwrap_or(Value::Null),
        raw_arguments: args.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_text_protocol() {
        let c = parse_tool_call("Sure.\nTOOL_CALL: search_approved_articles\nARGUMENTS: {\"query\": \"heater\"}\nEND_TOOL_CALL").unwrap();
        assert_eq!(c.name, "search_approved_articles");
        assert_eq!(c.arguments, json!({"query": "heater"}));
        assert!(parse_tool_call("no tools here").is_none());
        let bad = parse_tool_call("TOOL_CALL: x\nARGUMENTS: not json\nEND_TOOL_CALL").unwrap();
        assert_eq!(bad.arguments, Value::Null);
    }
}
