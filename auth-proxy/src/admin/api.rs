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

use crate::clock::now_unix;
use crate::live::revocations::RevocationRequest;
use crate::server::state::AppState;

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

/// The cookie that keeps a browser signed in to the operator's pages after it proved the admin
/// token in a form (the sign-in or the revocation form).
pub const OPERATOR_COOKIE: &str = "auth_proxy_operator";
/// How long that sign-in lasts.
pub const OPERATOR_SESSION_SECS: u64 = 8 * 3600;

/// The MAC of a sign-in expiring at `exp`, keyed by the admin token (a new token signs everyone out).
fn operator_mac(admin_token: &str, exp: u64) -> String {
    use hmac::{Mac, SimpleHmac};
    let mut mac = SimpleHmac::<sha2::Sha256>::new_from_slice(admin_token.as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("auth-proxy operator session|{exp}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The `Set-Cookie` value of a sign-in made at `now`: HttpOnly, SameSite=Strict, for `/status`.
pub fn operator_cookie(admin_token: &str, now: u64) -> String {
    let exp = now + OPERATOR_SESSION_SECS;
    format!(
        "{OPERATOR_COOKIE}={exp}.{}; Path=/status; HttpOnly; SameSite=Strict; Max-Age={OPERATOR_SESSION_SECS}",
        operator_mac(admin_token, exp)
    )
}

/// True when a `Cookie` header holds an unexpired sign-in made with this admin token.
fn signed_in(admin_token: &str, cookies: Option<&[u8]>, now: u64) -> bool {
    let Some(cookies) = cookies.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    cookies.split(';').any(|c| {
        let Some(value) = c
            .trim()
            .strip_prefix(OPERATOR_COOKIE)
            .and_then(|r| r.strip_prefix('='))
        else {
            return false;
        };
        let Some((exp, mac)) = value.split_once('.') else {
            return false;
        };
        let Ok(exp) = exp.parse::<u64>() else {
            return false;
        };
        exp > now
            && bool::from(
                mac.as_bytes()
                    .ct_eq(operator_mac(admin_token, exp).as_bytes()),
            )
    })
}

/// True when a request proves the admin token to the operator's pages: `Authorization: Bearer`,
/// HTTP Basic with the token as the password (any user name), or the sign-in cookie. Constant-time
/// comparisons; never with an empty admin token.
pub fn authorized_operator(
    expected: &str,
    authorization: Option<&[u8]>,
    cookies: Option<&[u8]>,
    now: u64,
) -> bool {
    use base64::Engine;
    if expected.is_empty() {
        return false;
    }
    if authorized(expected, authorization) || signed_in(expected, cookies, now) {
        return true;
    }
    let Some(value) = authorization.and_then(|v| std::str::from_utf8(v).ok()) else {
        return false;
    };
    let Some((scheme, encoded)) = value.trim().split_once(' ') else {
        return false;
    };
    if !scheme.eq_ignore_ascii_case("basic") {
        return false;
    }
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
        return false;
    };
    let Some(colon) = decoded.iter().position(|&b| b == b':') else {
        return false;
    };
    bool::from(decoded[colon + 1..].ct_eq(expected.as_bytes()))
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
    match state.live.revoke(&new).await {
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

fn unavailable(e: crate::live::store::StoreError) -> Response<Vec<u8>> {
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
    fn operators_prove_the_token_by_bearer_basic_or_the_sign_in_cookie() {
        use base64::Engine;
        let basic = |user_pass: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(user_pass)
            )
        };
        let ok = |v: &str| authorized_operator(TOKEN, Some(v.as_bytes()), None, 1000);
        assert!(ok(&format!("Bearer {TOKEN}")));
        assert!(ok(&basic(&format!("operator:{TOKEN}"))));
        assert!(ok(&basic(&format!(":{TOKEN}"))));
        assert!(!ok(&basic(&format!("{TOKEN}:x"))));
        assert!(!ok(&basic("operator:wrong")));
        assert!(!ok("Basic not-base64!"));
        assert!(!ok("Bearer wrong"));
        assert!(!authorized_operator(TOKEN, None, None, 1000));
        assert!(!authorized_operator(
            "",
            Some(basic("a:").as_bytes()),
            None,
            1000
        ));

        let set = operator_cookie(TOKEN, 1000);
        assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict"));
        let pair = set.split(';').next().unwrap();
        let cookies = format!("other=1; {pair}");
        let with = |c: &str, now| authorized_operator(TOKEN, None, Some(c.as_bytes()), now);
        assert!(with(&cookies, 1001));
        assert!(!with(&cookies, 1000 + OPERATOR_SESSION_SECS), "expired");
        assert!(!authorized_operator(
            "another-admin-token-0123456789abcdef",
            None,
            Some(cookies.as_bytes()),
            1001
        ));
        let (exp, _) = pair.rsplit_once('.').unwrap();
        assert!(!with(&format!("{exp}.{}", "0".repeat(64)), 1001), "forged");
        let later = format!("{OPERATOR_COOKIE}=99999999999.{}", "0".repeat(64));
        assert!(!with(&later, 1001));
    }

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
