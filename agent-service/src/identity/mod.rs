//! Who is calling: identity comes only from auth-proxy, as `x-user-*` headers with an
//! `x-identity-assertion` that must verify (HMAC with `IDENTITY_SECRET`, at most
//! `AGENT_IDENTITY_MAX_AGE_SECS` old, bound to this request's method, path and query) and whose
//! nonce was not seen before ([`crate::identity::replay`]). Anything else is 401 with a JSON error (503 when
//! the replay guard is full).

pub mod replay;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use shared::error_body::ErrorBody;
use shared::identity::{
    AssertionError, BoundRequest, Identity, ReceivedIdentity, Verifier, HEADER_ASSERTION,
    HEADER_USER_ADMIN, HEADER_USER_ID, HEADER_USER_NAME,
};

use crate::config::Config;
use replay::{ReplayGuard, ReplayRefusal};

/// Paths served without identity: health, readiness, service info, and metrics (scraped inside the pod).
pub fn is_public(path: &str) -> bool {
    matches!(path, "/health" | "/ready" | "/api/info" | "/metrics")
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// Why a request's identity was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Assertion(AssertionError),
    /// The replay guard holds its maximum of nonces.
    Busy,
}

/// The check of the proxy's signed identity: the assertion's verifier and the replay guard behind it.
pub struct IdentityCheck {
    verifier: Verifier,
    replay: ReplayGuard,
}

impl IdentityCheck {
    /// From `IDENTITY_SECRET`, `AGENT_IDENTITY_MAX_AGE_SECS` and `AGENT_IDENTITY_NONCE_CAPACITY`.
    pub fn new(config: &Config) -> IdentityCheck {
        IdentityCheck {
            verifier: Verifier::new(
                config.identity_secret.as_bytes(),
                config.identity_max_age_secs,
            ),
            replay: ReplayGuard::new(config.identity_max_age_secs, config.identity_nonce_capacity),
        }
    }

    /// Checks a request's identity headers, then lets the replay guard accept its nonce once.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        request: BoundRequest<'_>,
    ) -> Result<Identity, Refused> {
        verify(&self.verifier, &self.replay, headers, request)
    }
}

fn verify(
    verifier: &Verifier,
    guard: &ReplayGuard,
    headers: &HeaderMap,
    request: BoundRequest<'_>,
) -> Result<Identity, Refused> {
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
    let asserted = verifier
        .verify(&received, request, now)
        .map_err(Refused::Assertion)?;
    match guard.admit(asserted.nonce, asserted.issued_at, now) {
        Ok(()) => Ok(asserted.identity),
        Err(ReplayRefusal::Replayed) => Err(Refused::Assertion(AssertionError::Replayed)),
        Err(ReplayRefusal::Full) => Err(Refused::Busy),
    }
}

impl Refused {
    pub fn code(&self) -> &'static str {
        match self {
            Refused::Assertion(e) => e.code(),
            Refused::Busy => "identity_busy",
        }
    }
}

pub fn refusal(e: &Refused) -> Response {
    match e {
        Refused::Assertion(e) => {
            let body = ErrorBody::new(
                e.code(),
                format!("Requests must come through auth-proxy: {e}."),
            );
            (StatusCode::UNAUTHORIZED, Json(body)).into_response()
        }
        Refused::Busy => {
            let body = ErrorBody::new(
                "identity_busy",
                "Too many requests in the last seconds; try again shortly.",
            );
            (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
        }
    }
}

/// Middleware: public paths pass; every other request needs a verified identity, which handlers
/// then read as `Extension<Identity>`.
pub async fn require(
    State(check): State<Arc<IdentityCheck>>,
    mut req: Request,
    next: Next,
) -> Response {
    if is_public(req.uri().path()) {
        return next.run(req).await;
    }
    let request = BoundRequest::new(req.method().as_str(), req.uri().path(), req.uri().query());
    match check.verify(req.headers(), request) {
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
