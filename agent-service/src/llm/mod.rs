//! LLM providers behind one call: [`Llm::chat`]. `openai` (any OpenAI-compatible base URL, native
//! tool calls), `ollama` (its `/api/chat`, with the text tool protocol `TOOL_CALL:` / `ARGUMENTS:` /
//! `END_TOOL_CALL`), and `offline`, the built-in deterministic demo provider that needs no network.
//!
//! Character counts for the status log: `prompt_chars` is the characters of every message sent
//! (contents, plus the name and arguments of earlier tool calls); `response_chars` is the characters
//! of the reply's content plus the name and arguments of a tool call it makes.

pub mod offline;
pub mod ollama;
pub mod openai;
pub mod policy;

use std::time::Duration;

use serde_json::Value;
use shared::status_log::char_count;

use crate::config::Config;

/// A tool as described to an LLM.
#[derive(Debug, Clone)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    /// JSON Schema of the arguments object.
    pub parameters: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
            Role::Tool => "tool",
        }
    }
}

/// A tool call an LLM asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: Value,
    /// The arguments exactly as the LLM wrote them.
    pub raw_arguments: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    /// On an assistant message: the tool call it made.
    pub tool_call: Option<ToolCall>,
    /// On a tool message: the call it answers (id, name).
    pub answers: Option<(String, String)>,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
            tool_call: None,
            answers: None,
        }
    }
}

/// What a call is for; the offline provider uses it to pick its behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    Answer,
    GenerateSql,
    Summarize,
}

pub struct LlmRequest<'a> {
    pub model: &'a str,
    pub messages: &'a [ChatMessage],
    pub tools: &'a [ToolSpec],
    pub temperature: f32,
    pub purpose: Purpose,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LlmReply {
    pub content: String,
    pub tool_call: Option<ToolCall>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
}

impl LlmReply {
    pub fn response_chars(&self) -> usize {
        char_count(&self.content)
            + self
                .tool_call
                .as_ref()
                .map_or(0, |c| char_count(&c.name) + char_count(&c.raw_arguments))
    }
}

/// Characters of everything sent in a request's messages.
pub fn prompt_chars(messages: &[ChatMessage]) -> usize {
    messages
        .iter()
        .map(|m| {
            char_count(&m.content)
                + m.tool_call
                    .as_ref()
                    .map_or(0, |c| char_count(&c.name) + char_count(&c.raw_arguments))
        })
        .sum()
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LlmError {
    #[error("the LLM did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the LLM could not be reached: {0}")]
    Unreachable(String),
    #[error("the LLM answered HTTP {0}")]
    Status(u16),
    #[error("the LLM's answer could not be read: {0}")]
    BadResponse(String),
}

impl LlmError {
    fn from_reqwest(e: reqwest::Error, timeout: Duration) -> LlmError {
        if e.is_timeout() {
            LlmError::Timeout(timeout)
        } else if let Some(status) = e.status() {
            LlmError::Status(status.as_u16())
        } else if e.is_decode() {
            LlmError::BadResponse(e.to_string())
        } else {
            // reqwest errors name the URL; strip any query string (keys never go there, but be safe).
            // The cause chain says why ("connection refused"), which the top error alone does not.
            LlmError::Unreachable(crate::logs::chain(&e.without_url()))
        }
    }
}

/// One configured provider.
#[derive(Clone)]
pub enum Llm {
    OpenAi(openai::OpenAi),
    Ollama(ollama::Ollama),
    Offline,
}

pub const OFFLINE_MODEL: &str = "offline-demo";

/// `(name, default model, description)` of each provider.
pub const PROVIDER_INFO: [(&str, &str, &str); 3] = [
    (
        "openai",
        "gpt-4o-mini",
        "Any OpenAI-compatible chat completions API (URL_BASE_OPENAI), native tool calls",
    ),
    (
        "ollama",
        "mistral:instruct",
        "An Ollama server (URL_BASE_OLLAMA), text tool protocol",
    ),
    (
        "offline",
        OFFLINE_MODEL,
        "Built-in deterministic demo provider: picks tools by keywords, needs no network",
    ),
];

impl Llm {
    /// The provider named `name`, or `None` if there is no such provider.
    pub fn by_name(name: &str, config: &Config, http: &reqwest::Client) -> Option<Llm> {
        match name {
            "openai" => Some(Llm::OpenAi(openai::OpenAi::new(config, http.clone()))),
            "ollama" => Some(Llm::Ollama(ollama::Ollama::new(config, http.clone()))),
            "offline" => Some(Llm::Offline),
            _ => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Llm::OpenAi(_) => "openai",
            Llm::Ollama(_) => "ollama",
            Llm::Offline => "offline",
        }
    }

    pub fn default_model(&self) -> &'static str {
        Llm::builtin_model(self.name())
    }

    /// The model a provider uses when none is named.
    pub fn builtin_model(provider: &str) -> &'static str {
        PROVIDER_INFO
            .iter()
            .find(|(n, _, _)| *n == provider)
            .map(|(_, m, _)| *m)
            .unwrap_or(OFFLINE_MODEL)
    }

    /// True if tools are described in the prompt text rather than sent natively.
    pub fn uses_text_tools(&self) -> bool {
        matches!(self, Llm::Ollama(_))
    }

    pub async fn chat(&self, req: &LlmRequest<'_>) -> Result<LlmReply, LlmError> {
        match self {
            Llm::OpenAi(p) => p.chat(req).await,
            Llm::Ollama(p) => p.chat(req).await,
            Llm::Offline => Ok(offline::chat(req)),
        }
    }
}
