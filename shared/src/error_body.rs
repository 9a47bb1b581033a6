//! The JSON body of every error answer: `{"error":"<code>","message":"<human text>"}`.
//!
//! Both services answer rejections with this shape so a client can switch on `error` alone.

use serde::{Deserialize, Serialize};

/// An error answer's body. `error` is a stable machine code, `message` a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            message: message.into(),
        }
    }

    /// The body as JSON bytes, ready to send.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising two strings cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_to_the_documented_shape() {
        let body = ErrorBody::new("missing_token", "A token is required.");
        let json: serde_json::Value = serde_json::from_slice(&body.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"error": "missing_token", "message": "A token is required."})
        );
    }
}
