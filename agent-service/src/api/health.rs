//! The small HTTP routes: `/health`, `/ready` (503 once draining), `/api/info` (what the service offers; never paths, URLs with
//! keys or secrets) and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Map, Value};
use shared::error_body::ErrorBody;

use crate::agent::tools::TOOL_NAMES;
use crate::llm::PROVIDER_INFO;
use crate::metrics::Metrics;
use crate::state::AppState;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub async fn health(State(state): State<Arc<AppState>>) -> Json<Value> {
    let status = if state.drain.is_draining() {
        "draining"
    } else {
        "healthy"
    };
    Json(json!({"status": status, "version": VERSION, "active_connections": state.hub.count()}))
}

/// Readiness: fails at once when the drain starts, so no new work is routed here.
pub async fn ready(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    if state.drain.is_draining() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ready": false, "draining": true})),
        )
    } else {
        (
            StatusCode::OK,
            Json(json!({"ready": true, "draining": false, "bus": state.bus.connected()})),
        )
    }
}

pub async fn info() -> Json<Value> {
    let providers: Map<String, Value> = PROVIDER_INFO
        .iter()
        .map(|(name, model, description)| {
            (
                name.to_string(),
                json!({"default_model": model, "description": description}),
            )
        })
        .collect();
    Json(json!({
        "name": "Fluxion00 agent-service",
        "version": VERSION,
        "description": "News Nexus agent behind auth-proxy: WebSocket chat with a live status log of every LLM call, agent and tool.",
        "supported_providers": providers,
        "available_tools": TOOL_NAMES,
        "agents": ["general", "sql"],
    }))
}

pub async fn metrics(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

pub async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody::new("not_found", "No such route.")),
    )
}
