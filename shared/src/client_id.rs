//! The one grammar of a WebSocket client id, the `{client_id}` of `/ws/{client_id}`: 1 to
//! [`MAX_LEN`] characters of `A-Z a-z 0-9 . _ -`, checked on the raw path segment (before any
//! percent-decoding, so `%41` is refused rather than read as `A`). The edge refuses anything else
//! with 400 `invalid_client_id` before authentication, and the agent refuses the same, so no
//! spelling of an id can reach a path that treats it differently.

/// Longest client id, in bytes (all of them ASCII).
pub const MAX_LEN: usize = 128;

/// Ids outside the grammar that a client might try (for the tests of both services): characters
/// pingora-proxy's generic path once let through, percent-encodings, separators.
pub const REFUSED_EXAMPLES: [&str; 9] = [
    "6f1c2b1e-0c3a-4f7e-9d7e-2b8f2c1a9e10~x",
    "%41",
    "a%2Db",
    "a:b",
    "a@b",
    "a+b",
    "a;b",
    "a b",
    "é",
];

/// What the error messages say the grammar is.
pub const GRAMMAR: &str = "1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-'";

/// True when `raw` (the path segment as sent) is a valid client id.
pub fn is_valid(raw: &str) -> bool {
    !raw.is_empty()
        && raw.len() <= MAX_LEN
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The client id of a raw `/ws/...` path: `Some(Ok(id))` for a valid one, `Some(Err(()))` for a
/// path of the WebSocket endpoint (`/ws` or `/ws/...`) whose rest is no valid id, `None` for any
/// other path.
pub fn of_path(raw_path: &str) -> Option<Result<&str, ()>> {
    if raw_path == "/ws" {
        return Some(Err(()));
    }
    let rest = raw_path.strip_prefix("/ws/")?;
    Some(if is_valid(rest) { Ok(rest) } else { Err(()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_is_url_safe_ascii_up_to_128() {
        for ok in [
            "a",
            "6f1c2b1e-0c3a-4f7e-9d7e-2b8f2c1a9e10",
            "ada-laptop_1.2",
            "...",
            &"x".repeat(128),
        ] {
            assert!(is_valid(ok), "{ok}");
        }
        for bad in REFUSED_EXAMPLES {
            assert!(!is_valid(bad), "{bad:?}");
        }
        for bad in ["", "a/b", "a\0", &"x".repeat(129)] {
            assert!(!is_valid(bad), "{bad:?}");
        }
    }

    #[test]
    fn paths_of_the_endpoint_are_told_apart_from_others() {
        assert_eq!(of_path("/ws/abc"), Some(Ok("abc")));
        assert_eq!(of_path("/ws/a~b"), Some(Err(())));
        assert_eq!(of_path("/ws/a/b"), Some(Err(())));
        assert_eq!(of_path("/ws/"), Some(Err(())));
        assert_eq!(of_path("/ws"), Some(Err(())));
        assert_eq!(of_path("/wsx"), None);
        assert_eq!(of_path("/api/ws/a"), None);
        assert_eq!(of_path("/WS/a"), None);
    }
}
