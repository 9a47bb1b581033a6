//! The admin API on the admin listener, under `/admin/`: present only when `admin_token`
//! (`AUTH_PROXY_ADMIN_TOKEN`) is set, and every request must carry `Authorization: Bearer <it>`
//! (compared in constant time; 401 otherwise).
//!
//! - `POST /admin/revocations` with `{"user_id": N}`, `{"jti": "…"}` or `{"all": true}` (optional
//!   `"reason"`, optional `"expires_at"`) → 201 and the stored record.
//! - `GET /admin/revocations` → 200 `{"revocations": [...]}`.
//!
//! A state store that cannot answer is 503; a malformed body is 400. Bodies never echo the token.

use bytes::Bytes;
use http::{Method, Response};
use pingora::protocols::http::ServerSession;
use serde_json::json;
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::revocations::RevocationRequest;
use crate::state::{now_unix, AppState};

/// The largest request body read.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// True for paths this module answers (when the admin token is set).
pub fn owns(path: &str) -> bool {
    path == "/admin" || path.starts_with("/admin/")
}

/// True when `authorization` is `Bearer <expected>` (scheme case-insensitive).
pub fn authorized(expected: &str, authorization: Option<&[u8]>) -> bool {
    let Some(value) = authorization.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer")
        && !expected.is_empty()
        && bool::from(token.trim().as_bytes().ct_eq(expected.as_bytes()))
}

fn json_response(status: u16, body: serde_json::Value) -> Response<Vec<u8>> {
    let body = body.to_string().into_bytes();
    let mut r = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store");
    if status == 401 {
        r = r.header("www-authenticate", "Bearer");
    }
    r.body(body).unwrap_or_default()
}

fn error(status: u16, code: &str, message: &str) -> Response<Vec<u8>> {
    json_response(status, json!({"error": code, "message": message}))
}

/// Reads the whole body, up to [`MAX_BODY_BYTES`]; `None` when it is larger or unreadable.
pub(crate) async fn read_body(session: &mut ServerSession) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return None;
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Some(body),
            Err(_) => return None,
        }
    }
}

/// Answers a request under `/admin/`.
pub async fn serve(state: &AppState, session: &mut ServerSession) -> Response<Vec<u8>> {
    let req = session.req_header();
    let authorization = req.headers.get("authorization").map(|v| v.as_bytes());
    if !authorized(&state.config.admin_token, authorization) {
        return error(
            401,
            "unauthorized",
            "The admin API needs Authorization: Bearer <admin token>.",
        );
    }
    let method = req.method.clone();
    match (req.uri.path(), method) {
        ("/admin/revocations", Method::GET) => list(state).await,
        ("/admin/revocations", Method::POST) => {
            let Some(body) = read_body(session).await else {
                return error(400, "bad_request", "The body is unreadable or too large.");
            };
            create(state, Bytes::from(body)).await
        }
        ("/admin/revocations", _) => error(
            405,
            "method_not_allowed",
            "Use GET or POST on /admin/revocations.",
        ),
        _ => error(404, "not_found", "Try /admin/revocations."),
    }
}

async fn list(state: &AppState) -> Response<Vec<u8>> {
    let store = match state.live.store().await {
        Ok(store) => store,
        Err(e) => return unavailable(e),
    };
    match store.list().await {
        Ok(records) => json_response(200, json!({"revocations": records})),
        Err(e) => unavailable(e),
    }
}

async fn create(state: &AppState, body: Bytes) -> Response<Vec<u8>> {
    let request: RevocationRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return error(
                400,
                "bad_request",
                "Send JSON: {\"user_id\": N}, {\"jti\": \"...\"} or {\"all\": true}, with an optional \"reason\".",
            )
        }
    };
    let new = match request.into_new(now_unix() as i64) {
        Ok(n) => n,
        Err(problem) => return error(400, "bad_request", problem),
    };
    match state.live.revoke(state, &new).await {
        Ok(record) => {
            info!(
                id = record.id,
                kind = record.kind.as_str(),
                user_id = record.user_id,
                "revocation stored through the admin API"
            );
            json_response(201, json!(record))
        }
        Err(e) => unavailable(e),
    }
}

fn unavailable(e: crate::state_store::StoreError) -> Response<Vec<u8>> {
    warn!(error = %e, "admin API: state store unavailable");
    error(
        503,
        "state_store_unavailable",
        "The state store cannot be reached; try again shortly.",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "admin-token-0123456789abcdef-0123456789";

    #[test]
    fn bearer_must_match_exactly() {
        let ok = format!("Bearer {TOKEN}");
        assert!(authorized(TOKEN, Some(ok.as_bytes())));
        assert!(authorized(
            TOKEN,
            Some(format!("bearer  {TOKEN} ").as_bytes())
        ));
        assert!(!authorized(TOKEN, None));
        assert!(!authorized(TOKEN, Some(b"Bearer wrong")));
        assert!(!authorized(
            TOKEN,
            Some(format!("Basic {TOKEN}").as_bytes())
        ));
        assert!(!authorized(TOKEN, Some(TOKEN.as_bytes())));
        assert!(!authorized(
            TOKEN,
            Some(format!("Bearer {TOKEN}x").as_bytes())
        ));
        assert!(!authorized("", Some(b"Bearer ")));
        assert!(!authorized(TOKEN, Some(&[0xff, 0x20, 0x41])));
    }

    #[test]
    fn paths_owned() {
        assert!(owns("/admin/revocations"));
        assert!(owns("/admin"));
        assert!(!owns("/administrator"));
        assert!(!owns("/metrics"));
    }
}
