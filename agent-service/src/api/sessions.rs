//! REST for chat sessions, behind the proxy's identity: list (in pages, see [`crate::chat::session_page`]),
//! create (past the per-user cap the least recently updated sessions are evicted), read (with
//! messages), delete. Another user's session answers exactly like a missing one: 404 `not_found`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde_json::{json, Value};
use shared::error_body::ErrorBody;
use shared::frames::ServerFrame;
use shared::identity::Identity;

use crate::chat::session_page::page_request;
use crate::chat::store::{enforce_session_cap, Store, StoreError};
use crate::state::AppState;

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(ErrorBody::new("not_found", "No such chat session.")),
    )
        .into_response()
}

fn unavailable(e: StoreError) -> Response {
    tracing::error!(error = %crate::logs::chain(&e), "the chat session store failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(ErrorBody::new(
            "store_unavailable",
            "Chat sessions are unavailable; try again shortly.",
        )),
    )
        .into_response()
}

fn bad_request(message: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(ErrorBody::new("bad_request", message)),
    )
        .into_response()
}

/// Session ids are UUIDs; anything else cannot exist.
fn valid_id(id: &str) -> bool {
    uuid::Uuid::parse_str(id).is_ok()
}

pub async fn list(
    State(store): State<Store>,
    Extension(me): Extension<Identity>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let page = match page_request(
        params.get("limit").map(String::as_str),
        params.get("before").map(String::as_str),
    ) {
        Ok(p) => p,
        Err(message) => return bad_request(&message),
    };
    match store.list_sessions(me.user_id, &page).await {
        Ok((sessions, next)) => Json(json!({
            "sessions": sessions,
            "next_before": next.map(|c| c.encode()),
        }))
        .into_response(),
        Err(e) => unavailable(e),
    }
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(me): Extension<Identity>,
    body: Bytes,
) -> Response {
    let title = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => match m.get("title") {
                None | Some(Value::Null) => None,
                Some(Value::String(t)) => Some(t.clone()),
                Some(_) => return bad_request("title must be a string"),
            },
            _ => return bad_request("the body must be a JSON object, e.g. {\"title\": \"...\"}"),
        }
    };
    match state
        .store
        .create_session(me.user_id, title.as_deref())
        .await
    {
        Ok(session) => {
            let cap = state.config.max_sessions_per_user;
            enforce_session_cap(&state.store, cap, me.user_id, &session.id).await;
            state
                .hub
                .send_to_user(me.user_id, &ServerFrame::SessionsChanged);
            (StatusCode::CREATED, Json(session)).into_response()
        }
        Err(e) => unavailable(e),
    }
}

pub async fn get(
    State(store): State<Store>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> Response {
    if !valid_id(&id) {
        return not_found();
    }
    let (session, messages) = match store.transcript(me.user_id, &id).await {
        Ok(Some(found)) => found,
        Ok(None) => return not_found(),
        Err(e) => return unavailable(e),
    };
    let mut v = serde_json::to_value(session).unwrap_or_default();
    v["messages"] = serde_json::to_value(messages).unwrap_or_default();
    Json(v).into_response()
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Extension(me): Extension<Identity>,
    Path(id): Path<String>,
) -> Response {
    if !valid_id(&id) {
        return not_found();
    }
    match state.store.delete_session(me.user_id, &id).await {
        Ok(true) => {
            state
                .hub
                .send_to_user(me.user_id, &ServerFrame::SessionsChanged);
            StatusCode::NO_CONTENT.into_response()
        }
        Ok(false) => not_found(),
        Err(e) => unavailable(e),
    }
}
