//! The HTTP side, in the order a request meets it: [`router`] (every route, identity middleware
//! around all but the public paths), then the handlers: [`health`] (`/health`, `/ready`,
//! `/api/info`, `/metrics`, the 404 fallback), [`sessions`] (`/api/chat/sessions`), [`usage`]
//! (`/api/usage`, `/api/admin/usage`). `/ws/{client_id}` is handed to `crate::ws`.

pub mod health;
pub mod sessions;
pub mod usage;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::identity;
use crate::state::{AppState, RouterState};
use crate::ws;

/// All routes. Identity is checked by middleware for everything but the public paths.
pub fn router(state: Arc<AppState>) -> Router {
    let state = RouterState(state);
    Router::new()
        .route("/health", get(health::health))
        .route("/ready", get(health::ready))
        .route("/api/info", get(health::info))
        .route("/metrics", get(health::metrics))
        .route("/ws/{client_id}", get(ws::handler))
        .route(
            "/api/chat/sessions",
            get(sessions::list).post(sessions::create),
        )
        .route(
            "/api/chat/sessions/{id}",
            get(sessions::get).delete(sessions::delete),
        )
        .route("/api/usage", get(usage::mine))
        .route("/api/admin/usage", get(usage::everyone))
        .fallback(health::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            identity::require,
        ))
        .with_state(state)
}
