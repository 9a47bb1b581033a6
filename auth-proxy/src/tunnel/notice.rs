//! What the edge tells the person when it ends an open tunnel itself. Browsers show a page nothing
//! of a close frame, so with a template configured (`ws.close_frame`, or else `ws.reject_frame`)
//! the edge sends one text frame, at a frame boundary, just before its close frame: the same
//! template a refused handshake gets, filled with the close's code and a message per reason that
//! says what to do. Fluxion00Web shows `{"type":"error","content":"{message}"}` in the chat.
//!
//! Pure pieces only: the message per reason, the template and the bytes on the wire.

use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;

use crate::config::{ConfigError, WsConfig};
use crate::live::tunnels::CloseRequest;
use crate::tunnel::refusal::json_escaped;

/// The template for live closes: `ws.close_frame`, else `ws.reject_frame`; `None` when neither is
/// set (then a tunnel ends with its close frame only, as before).
pub fn template(ws: &WsConfig) -> Option<&str> {
    [ws.close_frame.as_str(), ws.reject_frame.as_str()]
        .into_iter()
        .find(|t| !t.is_empty())
}

/// The start-up check of the live-close template: filled in for a live close, it must be JSON.
pub fn check_config(ws: &WsConfig) -> Result<(), ConfigError> {
    let Some(t) = template(ws) else {
        return Ok(());
    };
    let key = if ws.close_frame.is_empty() {
        "ws.reject_frame"
    } else {
        "ws.close_frame"
    };
    serde_json::from_str::<serde_json::Value>(&render(t, &CloseRequest::going_away()))
        .map(|_| ())
        .map_err(|e| {
            ConfigError::new(
                key,
                format!("is not a JSON template once filled in for a live close ({e}); e.g. {{\"type\":\"error\",\"content\":\"{{message}}\"}}"),
            )
        })
}

/// The edge's close reasons (the close frame's reason text), each with its short code for
/// `{error}` and the message a person reads; any other reason (a broken frame sequence) is the last.
const REASONS: [(&str, &str, &str); 6] = [
    (
        "token_revoked",
        "token_revoked",
        "Your session was revoked; sign in again.",
    ),
    (
        "token_expired",
        "token_expired",
        "Your session has expired; sign in again.",
    ),
    (
        "user_removed",
        "user_removed",
        "Your account is no longer active; sign in again or ask your administrator.",
    ),
    (
        "server shutting down",
        "shutting_down",
        "The server is restarting; reconnecting…",
    ),
    (
        "idle timeout",
        "idle_timeout",
        "The chat was closed after a long silence; reconnect to go on.",
    ),
    (
        "message too big",
        "message_too_big",
        "That message was too large to send; the chat was closed.",
    ),
];
const OTHER: (&str, &str) = (
    "protocol_error",
    "The connection was closed by the server; reconnect to go on.",
);

/// `{error}` and `{message}` for a close.
fn describe(close: &CloseRequest) -> (&'static str, &'static str) {
    REASONS
        .iter()
        .find(|(reason, _, _)| *reason == close.reason)
        .map_or(OTHER, |&(_, code, message)| (code, message))
}

/// Fills a template for a live close: `{error}` (e.g. `token_revoked`), `{message}`, and `{code}`
/// and `{status}` (both the close code); values are JSON-escaped, as for refusals.
pub fn render(template: &str, close: &CloseRequest) -> String {
    let code = close.code.to_string();
    let (error, message) = describe(close);
    template
        .replace("{error}", &json_escaped(error))
        .replace("{message}", &json_escaped(message))
        .replace("{code}", &code)
        .replace("{status}", &code)
}

/// The text frame to send before the close frame (server to client: unmasked).
pub fn frame(template: &str, close: &CloseRequest) -> Vec<u8> {
    let mut out = Vec::with_capacity(template.len() + 96);
    // Writing into a Vec cannot fail.
    let _ =
        Frame::message(render(template, close), OpCode::Data(Data::Text), true).format(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::tunnels::CLOSE_POLICY_VIOLATION;

    const FLUXION: &str =
        r#"{"type":"error","content":"{message}","code":{code},"error":"{error}"}"#;

    #[test]
    fn both_templates_are_checked_and_the_bad_key_is_named() {
        let mut ws = WsConfig::default();
        assert!(check_config(&ws).is_ok());
        ws.close_frame = r#"{"type":"error","content":"{message}","code":{code}}"#.into();
        assert!(check_config(&ws).is_ok());
        ws.close_frame = r#"{"content":{message}}"#.into();
        let e = check_config(&ws).unwrap_err().to_string();
        assert!(e.contains("ws.close_frame"), "{e}");
        ws.close_frame.clear();
        ws.reject_frame = r#"{"content":"{message}"}"#.into();
        assert!(check_config(&ws).is_ok());
    }

    #[test]
    fn close_frame_overrides_reject_frame_and_neither_means_none() {
        let mut ws = WsConfig::default();
        assert_eq!(template(&ws), None);
        ws.reject_frame = "R".into();
        assert_eq!(template(&ws), Some("R"));
        ws.close_frame = "C".into();
        assert_eq!(template(&ws), Some("C"));
    }

    #[test]
    fn every_reason_the_edge_closes_for_has_its_own_message() {
        let reasons = [
            "token_revoked",
            "token_expired",
            "user_removed",
            "server shutting down",
            "idle timeout",
            "message too big",
        ];
        let mut seen = std::collections::HashSet::new();
        for r in reasons {
            let (_, m) = describe(&CloseRequest::new(1008, r));
            assert!(seen.insert(m), "{r} shares its message");
            assert!(m.ends_with('.') || m.ends_with('…'), "{m}");
        }
        assert_eq!(
            describe(&CloseRequest::new(1002, "reserved bits set")).1,
            "The connection was closed by the server; reconnect to go on."
        );
    }

    #[test]
    fn a_filled_template_is_json_with_the_code_and_message() {
        let close = CloseRequest::new(CLOSE_POLICY_VIOLATION, "token_revoked");
        let v: serde_json::Value = serde_json::from_str(&render(FLUXION, &close)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "error",
                "content": "Your session was revoked; sign in again.",
                "code": 1008,
                "error": "token_revoked"
            })
        );
        let drain = CloseRequest::going_away();
        let v: serde_json::Value = serde_json::from_str(&render(FLUXION, &drain)).unwrap();
        assert_eq!(v["content"], "The server is restarting; reconnecting…");
        assert_eq!(v["code"], 1001);
        assert_eq!(v["error"], "shutting_down");
    }

    #[test]
    fn the_frame_is_one_unmasked_final_text_frame() {
        let close = CloseRequest::new(1009, "message too big");
        let bytes = frame(r#"{"m":"{message}"}"#, &close);
        let text = render(r#"{"m":"{message}"}"#, &close);
        assert_eq!(bytes[0], 0x81, "FIN + text");
        assert_eq!(bytes[1] as usize, text.len(), "unmasked, short length");
        assert_eq!(&bytes[2..], text.as_bytes());
    }
}
