//! Paging and capping a user's chat sessions. The session list is read newest first (by last
//! update, then id) in pages: `GET /api/chat/sessions?limit=N&before=CURSOR`, at most
//! [`MAX_LIMIT`] a page ([`DEFAULT_LIMIT`] without `limit`); each page names the cursor of the next
//! one (`next_before`, `null` on the last page). A user holds at most `AGENT_MAX_SESSIONS_PER_USER`
//! sessions: creating one past the cap deletes the least recently updated ones, with their messages.

/// Sessions per page without `limit`.
pub const DEFAULT_LIMIT: u32 = 50;
/// The largest `limit` honoured; larger values are clamped.
pub const MAX_LIMIT: u32 = 200;

/// Where a page starts: after the session with this last update and id (exclusive).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub updated_ms: i64,
    pub id: String,
}

impl Cursor {
    /// The opaque form clients send back as `before`.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.updated_ms, self.id)
    }

    pub fn decode(s: &str) -> Option<Cursor> {
        let (ms, id) = s.split_once('.')?;
        let updated_ms = ms.parse().ok().filter(|ms: &i64| *ms >= 0)?;
        let valid_id = !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        valid_id.then(|| Cursor {
            updated_ms,
            id: id.to_string(),
        })
    }
}

/// One page's request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub limit: u32,
    pub before: Option<Cursor>,
}

/// The page a client asked for, from its raw `limit` and `before` parameters.
pub fn page_request(limit: Option<&str>, before: Option<&str>) -> Result<PageRequest, String> {
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(l) => match l.trim().parse::<u64>() {
            Ok(n) if n >= 1 => n.min(MAX_LIMIT as u64) as u32,
            _ => return Err(format!("limit must be a number from 1 to {MAX_LIMIT}")),
        },
    };
    let before = match before {
        None => None,
        Some(b) => Some(Cursor::decode(b).ok_or_else(|| {
            "before must be the next_before value of a previous page".to_string()
        })?),
    };
    Ok(PageRequest { limit, before })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_junk_is_refused() {
        let c = Cursor {
            updated_ms: 1_764_000_000_123,
            id: "6f1c2b1e-0c3a-4f7e-9d7e-2b8f2c1a9e10".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()), Some(c));
        for bad in ["", "1", "x.abc", "-1.abc", "1.", "1.a b", "1.a'--"] {
            assert_eq!(Cursor::decode(bad), None, "{bad}");
        }
    }

    #[test]
    fn limits_default_clamp_and_refuse() {
        assert_eq!(page_request(None, None).unwrap().limit, DEFAULT_LIMIT);
        assert_eq!(page_request(Some("10"), None).unwrap().limit, 10);
        assert_eq!(page_request(Some("100000"), None).unwrap().limit, MAX_LIMIT);
        for bad in ["0", "-1", "ten", ""] {
            assert!(page_request(Some(bad), None).is_err(), "{bad}");
        }
        assert!(page_request(None, Some("nope")).is_err());
        let p = page_request(None, Some("5.abc")).unwrap();
        assert_eq!(
            p.before,
            Some(Cursor {
                updated_ms: 5,
                id: "abc".into()
            })
        );
    }
}
