//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is alive) and
//! `/readyz` (the database, the state store and the upstream answer, and the proxy is not
//! draining), the admin API under `/admin/` ([`crate::admin::api`], only when an admin token is
//! set), and `/status`, the operator's HTML page ([`crate::admin::status_page`]) with its revocation form
//! (`POST /status/revocations`). Kept on its own port so it is never exposed through the public
//! Service.

pub(crate) mod api;
pub(crate) mod recent;
pub(crate) mod status_page;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;

use crate::admin::status_page::{Revocations, StatusSnapshot};
use crate::clock::now_unix;
use crate::server::state::AppState;

pub struct AdminApp {
    state: Arc<AppState>,
}

impl AdminApp {
    pub fn new(state: Arc<AppState>) -> AdminApp {
        AdminApp { state }
    }
}

fn respond(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_default()
}

impl AdminApp {
    /// The caller proved the admin token (Bearer, Basic with it as the password, or the sign-in
    /// cookie).
    fn operator(&self, session: &ServerSession) -> bool {
        let h = &session.req_header().headers;
        crate::admin::api::authorized_operator(
            &self.state.config.admin_token,
            h.get("authorization").map(|v| v.as_bytes()),
            h.get("cookie").map(|v| v.as_bytes()),
            now_unix(),
        )
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let health = &self.state.health;
        let path = session.req_header().uri.path().to_string();
        let path = path.as_str();
        if crate::admin::api::owns(path) && !self.state.config.admin_token.is_empty() {
            return crate::admin::api::serve(&self.state, session).await;
        }
        match path {
            "/metrics" => respond(
                200,
                "text/plain; version=0.0.4",
                self.state.metrics.render(),
            ),
            "/healthz" => respond(200, "application/json", br#"{"status":"alive"}"#.to_vec()),
            "/status" => {
                let operator = self.operator(session);
                status_page(&self.state, 200, None, operator)
            }
            // A browser's ways to prove the admin token: the sign-in form (a cookie for
            // `/status`), or Basic authentication with the token as the password.
            "/status/signin"
                if session.req_header().method == http::Method::POST
                    && !self.state.config.admin_token.is_empty() =>
            {
                sign_in(&self.state, session).await
            }
            "/status/signin" if self.operator(session) => status_page(&self.state, 200, None, true),
            "/status/signin" if !self.state.config.admin_token.is_empty() => {
                let mut r = respond(
                    401,
                    "application/json",
                    br#"{"error":"unauthorized","message":"Sign in with the admin token as the password."}"#
                        .to_vec(),
                );
                r.headers_mut().insert(
                    "www-authenticate",
                    http::HeaderValue::from_static(
                        r#"Basic realm="auth-proxy status", charset="UTF-8""#,
                    ),
                );
                r
            }
            "/status/revocations" if session.req_header().method == http::Method::POST => {
                let operator = self.operator(session);
                revoke_from_form(&self.state, session, operator).await
            }
            "/readyz" => {
                let ready = health.is_ready();
                let body = json!({
                    "ready": ready,
                    "listening": health.listening(),
                    "database": health.database(),
                    "upstream": health.upstream(),
                    "state_store": health.state_store(),
                    "draining": health.is_draining(),
                });
                respond(
                    if ready { 200 } else { 503 },
                    "application/json",
                    body.to_string().into_bytes(),
                )
            }
            _ => respond(
                404,
                "application/json",
                br#"{"error":"not_found","message":"Try /metrics, /healthz, /readyz or /status."}"#
                    .to_vec(),
            ),
        }
    }
}

/// `GET /status`: the operator's HTML page (with `notice` after a form post).
fn status_page(
    state: &AppState,
    status: u16,
    notice: Option<String>,
    operator: bool,
) -> Response<Vec<u8>> {
    let html = status_page::render(&snapshot(state, notice, operator)).into_bytes();
    let mut r = respond(status, "text/html; charset=utf-8", html);
    let h = r.headers_mut();
    h.insert(
        "content-security-policy",
        http::HeaderValue::from_static(status_page::CONTENT_SECURITY_POLICY),
    );
    h.insert("x-frame-options", http::HeaderValue::from_static("DENY"));
    r
}

/// A 303 back to the status page, signing the browser in (it proved the admin token).
fn back_signed_in(state: &AppState) -> Response<Vec<u8>> {
    Response::builder()
        .status(303)
        .header("location", "/status")
        .header(
            "set-cookie",
            crate::admin::api::operator_cookie(&state.config.admin_token, now_unix()),
        )
        .header("content-length", 0)
        .body(Vec::new())
        .unwrap_or_default()
}

/// Reads a form of the status page and checks its `admin_token` field like the admin API's Bearer
/// token; `Err` is the page with the refusal (`what`: which form, for the log).
async fn read_checked_form(
    state: &AppState,
    session: &mut ServerSession,
    operator: bool,
    what: &str,
) -> Result<status_page::RevocationForm, Response<Vec<u8>>> {
    let Some(body) = crate::admin::api::read_body(session).await else {
        let notice = Some("The form could not be read.".into());
        return Err(status_page(state, 400, notice, operator));
    };
    let form = status_page::parse_form(&body);
    let bearer = format!("Bearer {}", form.admin_token);
    if !crate::admin::api::authorized(&state.config.admin_token, Some(bearer.as_bytes())) {
        tracing::warn!(form = what, "status page: wrong admin token");
        return Err(status_page(
            state,
            401,
            Some("Wrong admin token.".into()),
            operator,
        ));
    }
    Ok(form)
}

/// `POST /status/signin`: the sign-in form (its `admin_token` field), answered with the sign-in
/// cookie and the page, or the page with the refusal.
async fn sign_in(state: &AppState, session: &mut ServerSession) -> Response<Vec<u8>> {
    match read_checked_form(state, session, false, "sign-in").await {
        Ok(_) => back_signed_in(state),
        Err(page) => page,
    }
}

/// `POST /status/revocations`: the page's form, checked against the admin token like the admin
/// API; success goes back to the page (303), a refusal shows the page with the reason.
async fn revoke_from_form(
    state: &AppState,
    session: &mut ServerSession,
    operator: bool,
) -> Response<Vec<u8>> {
    if state.config.admin_token.is_empty() {
        return status_page(state, 404, Some("The admin API is off.".into()), operator);
    }
    let form = match read_checked_form(state, session, operator, "revocation").await {
        Ok(form) => form,
        Err(page) => return page,
    };
    let new = match status_page::form_request(&form).and_then(|r| r.into_new(now_unix() as i64)) {
        Ok(new) => new,
        Err(problem) => return status_page(state, 400, Some(problem.to_string()), operator),
    };
    match state.live.revoke(&new).await {
        Ok(record) => {
            tracing::info!(
                id = record.id,
                kind = record.kind.as_str(),
                user_id = record.user_id,
                "revocation stored through the status page"
            );
            back_signed_in(state)
        }
        Err(e) => {
            tracing::warn!(error = %e, "status page: state store unavailable");
            status_page(
                state,
                503,
                Some("The state store cannot be reached; try again shortly.".into()),
                operator,
            )
        }
    }
}

fn snapshot(state: &AppState, notice: Option<String>, operator: bool) -> StatusSnapshot {
    let m = &state.metrics;
    let now = now_unix();
    let revocations = if state.config.admin_token.is_empty() {
        Revocations::Off
    } else if !operator {
        Revocations::Hidden
    } else {
        let set = state.live.current();
        let mut lines: Vec<String> = set
            .records()
            .iter()
            .rev()
            .take(20)
            .map(|r| {
                let target = match (r.user_id, &r.jti) {
                    (Some(id), _) => format!("user {id}"),
                    (None, Some(j)) => format!("jti {j}"),
                    _ => "all tokens".into(),
                };
                let reason = r.reason.as_deref().unwrap_or("");
                format!(
                    "#{} {}: {target}, issued before {} {reason}",
                    r.id,
                    r.kind.as_str(),
                    r.issued_before
                )
            })
            .collect();
        if set.len() > 20 {
            lines.push(format!(
                "… {} more (GET /admin/revocations)",
                set.len() - 20
            ));
        }
        Revocations::Listed(lines)
    };
    StatusSnapshot {
        version: env!("CARGO_PKG_VERSION"),
        uptime_secs: state.started.elapsed().as_secs(),
        draining: state.health.is_draining(),
        database_ok: state.health.database(),
        upstream_ok: state.health.upstream(),
        upstream: state.upstream.to_string(),
        tunnels_open: m.websocket_active.get(),
        in_flight: m.in_flight.get(),
        cache_hits: m.user_cache.with_label_values(&["hit"]).get(),
        cache_misses: m.user_cache.with_label_values(&["miss"]).get(),
        recent: status_page::WINDOWS
            .iter()
            .map(|w| state.recent.last(*w, now))
            .collect(),
        revocations,
        notice,
    }
}

/// Checks the database and the upstream every second and records the result for `/readyz`.
pub struct ReadinessProbe {
    state: Arc<AppState>,
}

/// How often readiness inputs are refreshed.
pub const PROBE_INTERVAL: Duration = Duration::from_secs(1);

impl ReadinessProbe {
    pub fn new(state: Arc<AppState>) -> ReadinessProbe {
        ReadinessProbe { state }
    }

    async fn probe_once(&self) {
        let s = &self.state;
        if !s.health.listening() && accepts(&s.config.listen).await {
            s.health.set_listening();
        }
        s.health.set_database(s.users.db().ping().await.is_ok());
        let upstream = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(s.upstream),
        )
        .await;
        s.health.set_upstream(matches!(upstream, Ok(Ok(_))));
    }
}

/// True when a TCP connection to the edge's own listen address succeeds (a wildcard address is
/// reached on loopback). Checked until it first succeeds: a bound listener stays bound.
async fn accepts(listen: &str) -> bool {
    let Ok(mut addr) = listen.parse::<std::net::SocketAddr>() else {
        // A host name: connect to it as given.
        return matches!(
            tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(listen)
            )
            .await,
            Ok(Ok(_))
        );
    };
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            std::net::SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            std::net::SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr)).await,
        Ok(Ok(_))
    )
}

#[async_trait]
impl BackgroundService for ReadinessProbe {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.probe_once().await;
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            }
        }
    }
}
