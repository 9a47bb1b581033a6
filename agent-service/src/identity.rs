//! Who is calling: identity comes only from auth-proxy, as `x-user-*` headers with an
//! `x-identity-assertion` that must verify (HMAC with `IDENTITY_SECRET`, at most 60 s old, bound to
//! this request's method and path). Anything else is 401 with a JSON error.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use shared::error_body::ErrorBody;
use shared::identity::{
    AssertionError, Identity, ReceivedIdentity, Verifier, HEADER_ASSERTION, HEADER_USER_ADMIN,
    HEADER_USER_ID, HEADER_USER_NAME,
};

use crate::app::AppState;

/// How old an assertion may be.
pub const MAX_ASSERTION_AGE_SECS: u64 = 60;

/// Paths served without identity: health, service info, and metrics (scraped inside the pod).
pub fn is_public(path: &str) -> bool {
    matches!(path, "/health" | "/api/info" | "/metrics")
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Checks a request's identity headers.
pub fn verify(
    verifier: &Verifier,
    headers: &HeaderMap,
    method: &str,
    path: &str,
) -> Result<Identity, AssertionError> {
    let received = ReceivedIdentity {
        user_id: header(headers, HEADER_USER_ID),
        user_name: header(headers, HEADER_USER_NAME),
        user_admin: header(headers, HEADER_USER_ADMIN),
        assertion: header(headers, HEADER_ASSERTION),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    verifier.verify(&received, method, path, now)
}

pub fn refusal(e: &AssertionError) -> Response {
    let body = ErrorBody::new(
        e.code(),
        format!("Requests must come through auth-proxy: {e}."),
    );
    (StatusCode::UNAUTHORIZED, Json(body)).into_response()
}

/// Middleware: public paths pass; every other request needs a verified identity, which handlers
/// then read as `Extension<Identity>`.
pub async fn require(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    match verify(
        &state.verifier,
        req.headers(),
        req.method().as_str(),
        req.uri().path(),
    ) {
        Ok(identity) => {
            req.extensions_mut().insert(identity);
            next.run(req).await
        }
        Err(e) => {
            tracing::warn!(
                path = req.uri().path(),
                reason = e.code(),
                "request without a valid proxy identity"
            );
            refusal(&e)
        }
    }
}
