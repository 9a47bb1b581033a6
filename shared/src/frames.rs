//! The WebSocket frames of the Fluxion00Web protocol. All frames are JSON text with a `type` field.
//!
//! Client to server: [`ClientFrame`]. Server to client: [`ServerFrame`]. For one user message the
//! server sends `user_echo`, `typing` (true), any number of `agent_progress`, then `agent_message` or
//! `error`, then `typing` (false).

use serde::{Deserialize, Serialize};

use crate::status_log::Progress;

/// What the front end sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// A chat message. `mode: "sql"` (or content starting with `/sql `) selects SQL mode.
    UserMessage {
        content: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<String>,
    },
    /// Forget the conversation so far.
    ClearHistory,
    /// Keep-alive; answered with `pong`.
    Ping,
}

impl ClientFrame {
    /// Parses a text frame; `None` for invalid JSON or an unknown `type`.
    pub fn parse(text: &str) -> Option<ClientFrame> {
        serde_json::from_str(text).ok()
    }
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Informational text: the welcome, "Conversation history cleared".
    System { content: String },
    /// The chat session this connection writes to (sent right after the welcome).
    Session {
        session_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        title: Option<String>,
        resumed: bool,
    },
    /// The user's message, echoed once it is stored.
    UserEcho { content: String },
    /// The agent is (true) or is no longer (false) working on an answer.
    Typing { content: bool },
    /// The agent's answer.
    AgentMessage { content: String },
    /// Something went wrong with the last message; the connection stays usable.
    Error { content: String },
    /// The answer to `ping`.
    Pong,
    /// The user's list of chat sessions changed (sent to every connection of the user).
    SessionsChanged,
    /// One status-log entry.
    AgentProgress(Progress),
}

impl ServerFrame {
    pub fn system(content: impl Into<String>) -> Self {
        ServerFrame::System {
            content: content.into(),
        }
    }

    pub fn error(content: impl Into<String>) -> Self {
        ServerFrame::Error {
            content: content.into(),
        }
    }

    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Every field is a string, bool, number or JSON map: serialising cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_the_front_end_frames() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"user_message","content":"hi","mode":"sql"}"#),
            Some(ClientFrame::UserMessage {
                content: "hi".into(),
                mode: Some("sql".into())
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"user_message","content":"hi"}"#),
            Some(ClientFrame::UserMessage {
                content: "hi".into(),
                mode: None
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Some(ClientFrame::Ping)
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"clear_history"}"#),
            Some(ClientFrame::ClearHistory)
        );
        assert_eq!(ClientFrame::parse(r#"{"type":"nope"}"#), None);
        assert_eq!(ClientFrame::parse("not json"), None);
    }

    #[test]
    fn server_frames_have_the_documented_shape() {
        let v: serde_json::Value = serde_json::from_str(&ServerFrame::Pong.to_json()).unwrap();
        assert_eq!(v, json!({"type": "pong"}));
        let v: serde_json::Value =
            serde_json::from_str(&ServerFrame::Typing { content: true }.to_json()).unwrap();
        assert_eq!(v, json!({"type": "typing", "content": true}));
        let v: serde_json::Value =
            serde_json::from_str(&ServerFrame::system("hello").to_json()).unwrap();
        assert_eq!(v, json!({"type": "system", "content": "hello"}));
    }
}
