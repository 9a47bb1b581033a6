//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process is alive) and
//! `/readyz` (the database, the state store and the upstream answer, and the proxy is not
//! draining), and the admin API under `/admin/` ([`crate::admin_api`], only when an admin token is
//! set). Kept on its own port so it is never exposed through the public Service.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use serde_json::json;

use crate::state::AppState;

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

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let health = &self.state.health;
        let path = session.req_header().uri.path();
        if crate::admin_api::owns(path) && !self.state.config.admin_token.is_empty() {
            return crate::admin_api::serve(&self.state, session).await;
        }
        match path {
            "/metrics" => respond(
                200,
                "text/plain; version=0.0.4",
                self.state.metrics.render(),
            ),
            "/healthz" => respond(200, "application/json", br#"{"status":"alive"}"#.to_vec()),
            "/readyz" => {
                let ready = health.is_ready();
                let body = json!({
                    "ready": ready,
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
                br#"{"error":"not_found","message":"Try /metrics, /healthz or /readyz."}"#.to_vec(),
            ),
        }
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
        s.health.set_database(s.users.db().ping().await.is_ok());
        let upstream = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::net::TcpStream::connect(s.upstream),
        )
        .await;
        s.health.set_upstream(matches!(upstream, Ok(Ok(_))));
    }
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
