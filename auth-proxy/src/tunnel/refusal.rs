//! Refusals a browser can read (`ws.reject_with = "close"`): browsers hide the status and body of
//! a refused WebSocket handshake, so the edge instead completes the upgrade itself (the upstream is
//! never contacted), optionally sends one text frame rendered from `ws.reject_frame`, and closes
//! at once with a close frame whose code maps the HTTP status (`4000 + status`: 4401, 4403, 4429,
//! 4503) and whose reason is the JSON error code.
//!
//! Pure pieces only: the accept key, the close code, the template and the bytes on the wire.

use bytes::Bytes;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;

use crate::config::{ConfigError, WsConfig};
use crate::decide::reject::Reject;

/// The close code for a refusal: `4000 + status` (4401, 4403, 4429, 4503, ...).
pub fn close_code(reject: Reject) -> u16 {
    4000 + reject.status()
}

/// The `Sec-WebSocket-Accept` value for a handshake's `Sec-WebSocket-Key`, if it has a valid one
/// (16 bytes, base64).
pub fn accept_key(key: Option<&[u8]>) -> Option<String> {
    let key = key?;
    let trimmed = key.trim_ascii();
    // A base64 16-byte nonce is 24 characters ending in "==".
    if trimmed.len() != 24 || !trimmed.ends_with(b"==") {
        return None;
    }
    Some(derive_accept_key(trimmed))
}

/// `s` JSON-escaped, without the quotes: what a template's placeholder inside a JSON string takes.
pub fn json_escaped(s: &str) -> String {
    let quoted = serde_json::Value::String(s.to_string()).to_string();
    quoted[1..quoted.len() - 1].to_string()
}

/// Fills a `ws.reject_frame` template; values are JSON-escaped (without the quotes), so a template
/// that is valid JSON stays valid JSON.
pub fn render(template: &str, reject: Reject) -> String {
    template
        .replace("{error}", &json_escaped(reject.code()))
        .replace("{message}", &json_escaped(reject.message()))
        .replace("{status}", &reject.status().to_string())
}

/// The start-up check of `ws.reject_frame`: a template that, filled in, is JSON.
pub fn check_config(ws: &WsConfig) -> Result<(), ConfigError> {
    if ws.reject_frame.is_empty() {
        return Ok(());
    }
    check_template(&ws.reject_frame).map_err(|p| ConfigError::new("ws.reject_frame", p))
}

/// Checks a `ws.reject_frame` template: rendered, it must be JSON.
pub fn check_template(template: &str) -> Result<(), String> {
    let sample = render(template, Reject::TokenExpired);
    serde_json::from_str::<serde_json::Value>(&sample)
        .map(|_| ())
        .map_err(|e| format!("is not a JSON template once filled in ({e}); e.g. {{\"type\":\"error\",\"content\":\"{{message}}\"}}"))
}

/// The bytes the edge writes after the 101: the optional text frame, then the close frame
/// ([`crate::tunnel::frames::close_frame`]). Server frames are never masked.
pub fn frames(reject: Reject, template: Option<&str>) -> Bytes {
    let mut out = Vec::with_capacity(256);
    if let Some(t) = template {
        let text = render(t, reject);
        // Writing into a Vec cannot fail.
        let _ = Frame::message(text, OpCode::Data(Data::Text), true).format(&mut out);
    }
    out.extend_from_slice(&crate::tunnel::frames::close_frame(
        close_code(reject),
        reject.code(),
    ));
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_map_the_status() {
        assert_eq!(close_code(Reject::TokenExpired), 4401);
        assert_eq!(close_code(Reject::Forbidden), 4403);
        assert_eq!(close_code(Reject::OriginNotAllowed), 4403);
        assert_eq!(close_code(Reject::RateLimited), 4429);
        assert_eq!(close_code(Reject::AuthUnavailable), 4503);
    }

    #[test]
    fn accept_key_follows_rfc_6455() {
        // The example of RFC 6455 section 1.3.
        assert_eq!(
            accept_key(Some(b"dGhlIHNhbXBsZSBub25jZQ==")).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(accept_key(Some(b"short")), None);
        assert_eq!(accept_key(None), None);
    }

    #[test]
    fn templates_are_filled_with_escaped_values_and_checked() {
        let t = r#"{"type":"error","content":"{message}","code":"{error}","status":{status}}"#;
        let v: serde_json::Value = serde_json::from_str(&render(t, Reject::TokenExpired)).unwrap();
        assert_eq!(v["content"], "The token has expired.");
        assert_eq!(v["code"], "token_expired");
        assert_eq!(v["status"], 401);
        assert!(check_template(t).is_ok());
        assert!(check_template(r#"{"type":"error","content":{message}}"#).is_err());
    }

    #[test]
    fn the_wire_bytes_are_a_text_frame_then_a_close_frame() {
        let b = frames(Reject::TokenExpired, Some(r#"{"m":"{error}"}"#));
        let text = br#"{"m":"token_expired"}"#;
        assert_eq!(b[0], 0x81, "FIN + text");
        assert_eq!(b[1] as usize, text.len(), "unmasked, short length");
        assert_eq!(&b[2..2 + text.len()], text);
        let close = &b[2 + text.len()..];
        assert_eq!(close[0], 0x88, "FIN + close");
        assert_eq!(close[1] as usize, 2 + "token_expired".len());
        assert_eq!(u16::from_be_bytes([close[2], close[3]]), 4401);
        assert_eq!(&close[4..], b"token_expired");
        let bare = frames(Reject::RateLimited, None);
        assert_eq!(bare[0], 0x88);
        assert_eq!(u16::from_be_bytes([bare[2], bare[3]]), 4429);
    }
}
