//! The OpenAI-compatible provider: `POST {URL_BASE_OPENAI}/chat/completions` with
//! `Authorization: Bearer KEY_OPENAI`, native `tools` and `tool_calls`.

use std::time::Duration;

use serde_json::{json, Value};

use super::{ChatMessage, LlmError, LlmReply, LlmRequest, Role, ToolCall};
use crate::config::Config;

#[derive(Clone)]
pub struct OpenAi {
    http: reqwest::Client,
    base: String,
    key: Option<String>,
    timeout: Duration,
}

impl OpenAi {
    pub fn new(config: &Config, http: reqwest::Client) -> OpenAi {
        OpenAi {
            http,
            base: config.openai_base.trim_end_matches('/').to_string(),
            key: config.openai_key.clone(),
            timeout: config.llm_timeout,
        }
    }

    pub async fn chat(&self, req: &LlmRequest<'_>) -> Result<LlmReply, LlmError> {
        let mut call = self
            .http
            .post(format!("{}/chat/completions", self.base))
            .timeout(self.timeout)
            .json(&body(req));
        if let Some(key) = &self.key {
            call = call.bearer_auth(key);
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
        parse(&v)
    }
}

fn message(m: &ChatMessage) -> Value {
    match (m.role, &m.tool_call, &m.answers) {
        (Role::Assistant, Some(c), _) => json!({"role": "assistant", "content": m.content,
            "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.raw_arguments}}]}),
        (Role::Tool, _, Some((id, _))) => {
            json!({"role": "tool", "tool_call_id": id, "content": m.content})
        }
        _ => json!({"role": m.role.as_str(), "content": m.content}),
    }
}

/// The request body.
pub fn body(req: &LlmRequest<'_>) -> Value {
    let mut b = json!({
        "model": req.model,
        "messages": req.messages.iter().map(message).collect::<Vec<_>>(),
        "temperature": req.temperature,
    });
    if !req.tools.is_empty() {
        b["tools"] = req
            .tools
            .iter()
            .map(|t| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}))
            .collect();
    }
    b
}

/// Reads `choices[0].message` and `usage`.
pub fn parse(v: &Value) -> Result<LlmReply, LlmError> {
    let msg = v
        .pointer("/choices/0/message")
        .ok_or_else(|| LlmError::BadResponse("no choices[0].message".into()))?;
    let content = msg
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let tool_call = msg.pointer("/tool_calls/0").map(|c| {
        let raw = c
            .pointer("/function/arguments")
            .and_then(Value::as_str)
            .unwrap_or("{}")
            .to_string();
        ToolCall {
            id: c
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or("call_0")
                .to_string(),
            name: c
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
            arguments: serde_json::from_str(&raw).unwrap_or(Value::Null),
            raw_arguments: raw,
        }
    });
    Ok(LlmReply {
        content,
        tool_call,
        prompt_tokens: v.pointer("/usage/prompt_tokens").and_then(Value::as_u64),
        completion_tokens: v
            .pointer("/usage/completion_tokens")
            .and_then(Value::as_u64),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_tool_call() {
        let v = json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_article_by_id", "arguments": "{\"article_id\": 2}"}}]}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}});
        let r = parse(&v).unwrap();
        let c = r.tool_call.unwrap();
        assert_eq!(c.name, "get_article_by_id");
        assert_eq!(c.arguments, json!({"article_id": 2}));
        assert_eq!(r.prompt_tokens, Some(10));
        assert!(parse(&json!({})).is_err());
    }
}
