//! One WebSocket connection at `/ws/{client_id}`: the Fluxion00Web protocol, attached to a chat
//! session (`?session_id=` resumes one of the user's sessions; otherwise a new one starts and is
//! written on its first message). The session id is sent in a `session` frame after the welcome.
//!
//! Three tasks per connection: the [`reader`] (parses client frames, answers `ping` and
//! `clear_history`, queues user messages), the [`worker`] (runs queued messages through the agents,
//! one at a time, in order) and the [`writer`] (drains the bounded outbound queue to the socket,
//! sends server pings, closes slow consumers with 1013). This file holds the upgrade (client id,
//! draining) and the connection's life: provider choice, registration, the three tasks, the end.

mod reader;
mod worker;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{OriginalUri, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::{SinkExt, StreamExt};
use shared::frames::ServerFrame;
use shared::identity::Identity;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::chat::hub::Outbound;
use crate::chat::usage::{Account, Ledger};
use crate::config::PROVIDERS;
use crate::llm::Llm;
use crate::state::AppState;

pub const CLOSE_INVALID_PROVIDER: u16 = 4000;
pub const CLOSE_SLOW_CONSUMER: u16 = 1013;
/// A message past the WebSocket layer's hard limit (see [`SocketBuffers`]).
pub const CLOSE_TOO_BIG: u16 = 1009;
/// What one socket's WebSocket layer may hold. An idle chat connection (Fluxion00Web keeps one
/// open for minutes between questions) holds only the read buffer, so it is sized for a chat
/// message, not for bulk data: tungstenite's defaults (128 KiB read and write buffers, touched up
/// front) were 163 KiB of RSS per idle connection.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SocketBuffers {
    /// Bytes read from the socket at a time: a chat frame fits; a larger one grows the buffer to
    /// its announced length while it arrives.
    pub read: usize,
    /// 0: every frame is written to the socket as it is sent (status frames are live).
    pub write: usize,
    /// Bytes the WebSocket layer may hold for a slow socket. The writer sends one frame at a time
    /// and waits for it (the outbound queue in front closes slow consumers with 1013), so this
    /// only has to fit the largest frame the agent sends.
    pub max_write: usize,
    /// The hard limit, twice the soft one and at least 64 KiB above it: a message up to it gets
    /// the `error` frame "Message too large" and the connection stays; beyond it the WebSocket
    /// layer closes with 1009 unread.
    pub max_message: usize,
}

impl SocketBuffers {
    pub const READ: usize = 1024;
    pub const MAX_WRITE: usize = 16 << 20;
    const SLACK: usize = 64 * 1024;

    /// The buffers for a soft message limit of `max_message_bytes` (`AGENT_MAX_MESSAGE_BYTES`).
    pub fn for_messages(max_message_bytes: usize) -> SocketBuffers {
        let max_message = max_message_bytes
            .saturating_mul(2)
            .max(max_message_bytes.saturating_add(Self::SLACK));
        SocketBuffers {
            read: Self::READ,
            write: 0,
            max_write: Self::MAX_WRITE,
            max_message,
        }
    }

    fn apply(self, ws: WebSocketUpgrade) -> WebSocketUpgrade {
        ws.read_buffer_size(self.read)
            .write_buffer_size(self.write)
            .max_write_buffer_size(self.max_write)
            .max_message_size(self.max_message)
            .max_frame_size(self.max_message)
    }
}
/// Messages waiting behind the one being answered (boxed in the queue, whose first block of 32
/// slots lives as long as the connection).
const QUEUED_MESSAGES: usize = 32;

pub async fn handler(
    State(state): State<Arc<AppState>>,
    OriginalUri(uri): OriginalUri,
    Query(params): Query<HashMap<String, String>>,
    Extension(identity): Extension<Identity>,
    ws: WebSocketUpgrade,
) -> Response {
    // The raw segment, before axum's percent-decoding: the same grammar the edge checks.
    let Some(Ok(client_id)) = shared::client_id::of_path(uri.path()) else {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(shared::error_body::ErrorBody::new(
                "invalid_client_id",
                format!("The client id must be {}.", shared::client_id::GRAMMAR),
            )),
        )
            .into_response();
    };
    let client_id = client_id.to_string();
    if state.drain.is_draining() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(shared::error_body::ErrorBody::new(
                "draining",
                "This replica is shutting down; reconnect to reach another one.",
            )),
        )
            .into_response();
    }
    SocketBuffers::for_messages(state.config.max_message_bytes)
        .apply(ws)
        .on_upgrade(move |socket| connection(state, socket, client_id, identity, params))
}

async fn connection(
    state: Arc<AppState>,
    socket: WebSocket,
    client_id: String,
    identity: Identity,
    params: HashMap<String, String>,
) {
    let opened = Instant::now();
    let (mut sink, stream) = socket.split();
    let requested = params.get("provider").map(String::as_str);
    if let Some(reason) = invalid_provider(requested) {
        let _ = sink
            .send(close_message(CLOSE_INVALID_PROVIDER, &reason))
            .await;
        log_closed(&identity, &client_id, opened, CLOSE_INVALID_PROVIDER);
        return;
    }
    let choice =
        state
            .config
            .llm_policy
            .resolve(requested, params.get("model").map(String::as_str), &|p| {
                Llm::builtin_model(p).to_string()
            });
    let Some(llm) = Llm::by_name(&choice.provider, &state.config, &state.http) else {
        // The policy only resolves to configured provider names.
        tracing::error!(provider = %choice.provider, "the provider policy chose an unknown provider");
        return;
    };
    let model = choice
        .model
        .clone()
        .unwrap_or_else(|| llm.default_model().to_string());

    let (out, rx, slow) = Outbound::new(state.config.outbound_queue);
    let conn_id = match state
        .hub
        .register(&client_id, identity.user_id, out.clone())
    {
        Ok(id) => id,
        Err(refusal) => {
            let (code, reason) = refusal.close();
            let _ = sink.send(close_message(code, reason)).await;
            log_closed(&identity, &client_id, opened, code);
            return;
        }
    };
    // Across replicas: the per-user limit, and replacing this client id elsewhere. This future
    // and the others awaited once at the start or the end are boxed: the connection's own future
    // lives as long as the connection, and is as large as the largest future it awaits inline.
    if let Err(refusal) = Box::pin(state.bus.acquire(identity.user_id, &client_id, conn_id)).await {
        state.hub.unregister(&client_id, identity.user_id, conn_id);
        let (code, reason) = refusal.close();
        let _ = sink.send(close_message(code, reason)).await;
        return;
    }
    tracing::info!(
        user_id = identity.user_id,
        client_id = %client_id,
        provider = llm.name(),
        model = %model,
        fallback = choice.notice.is_some(),
        "connection opened"
    );
    state.metrics.websocket_active.inc();
    let done = CancellationToken::new();
    let writer = tokio::spawn(writer::write_loop(
        sink,
        rx,
        slow,
        done.clone(),
        state.config.ping_interval,
    ));

    let mut welcome = format!(
        "Welcome, {}! You are connected to the Fluxion00 agent ({}/{}).",
        identity.username,
        llm.name(),
        model
    );
    if let Some(notice) = &choice.notice {
        welcome.push_str(&format!(" Note: {notice}."));
    }
    let _ = out.send(ServerFrame::system(welcome));

    let requested = params.get("session_id").map(String::as_str);
    let session = Box::pin(worker::open_session(&state, &identity, requested, &out)).await;
    let (jobs, job_rx) = mpsc::channel(QUEUED_MESSAGES);
    let account = Account::new(
        Ledger::new(state.store.clone()),
        state.metrics.clone(),
        &state.config.scale,
        identity.user_id,
        &session.id,
        llm.name(),
        &model,
    );
    let chat = worker::Chat {
        state: state.clone(),
        llm,
        model,
        out: out.clone(),
        user: identity.clone(),
        client_id: client_id.clone(),
        session: session.clone(),
        account,
        notice: choice.notice,
    };
    let worker = tokio::spawn(worker::work_loop(chat, job_rx));
    let received = reader::read_loop(&state, stream, &out, &session.id, jobs, &done).await;

    done.cancel();
    worker.abort();
    let sent = writer.await.ok().flatten();
    state.hub.unregister(&client_id, identity.user_id, conn_id);
    Box::pin(state.bus.release(identity.user_id, &client_id, conn_id)).await;
    state.metrics.websocket_active.dec();
    // The code this side sent wins; else the client's; 1006 when the socket just ended.
    log_closed(
        &identity,
        &client_id,
        opened,
        sent.or(received).unwrap_or(1006),
    );
}

/// The close reason for a `?provider=` that names no provider (`None`: absent, empty or known).
fn invalid_provider(requested: Option<&str>) -> Option<String> {
    let name = requested.filter(|p| !p.is_empty() && !PROVIDERS.contains(p))?;
    Some(format!(
        "Invalid provider: {}",
        name.chars().take(40).collect::<String>()
    ))
}

fn log_closed(identity: &Identity, client_id: &str, opened: Instant, close_code: u16) {
    tracing::info!(
        user_id = identity.user_id,
        client_id = %client_id,
        duration_ms = opened.elapsed().as_millis() as u64,
        close_code,
        "connection closed"
    );
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: reason.to_string().into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_buffers_are_sized_for_chat_messages() {
        let b = SocketBuffers::for_messages(65536);
        assert_eq!(b.read, 1024);
        assert_eq!(b.write, 0, "frames leave as they are sent");
        assert_eq!(b.max_message, 131072);
        assert!(b.max_write > b.max_message);
        // A small soft limit still answers messages a little over it with the error frame.
        assert_eq!(SocketBuffers::for_messages(1000).max_message, 1000 + 65536);
        assert_eq!(
            SocketBuffers::for_messages(usize::MAX).max_message,
            usize::MAX
        );
    }

    #[test]
    fn only_unknown_providers_are_refused_and_the_reason_is_short() {
        assert_eq!(invalid_provider(None), None);
        assert_eq!(invalid_provider(Some("")), None);
        for known in PROVIDERS {
            assert_eq!(invalid_provider(Some(known)), None, "{known}");
        }
        assert_eq!(
            invalid_provider(Some("gpt")).as_deref(),
            Some("Invalid provider: gpt")
        );
        // Case matters: the query names the provider exactly.
        assert!(invalid_provider(Some("OpenAI")).is_some());
        let long = "é".repeat(100);
        let reason = invalid_provider(Some(&long)).unwrap();
        assert_eq!(reason, format!("Invalid provider: {}", "é".repeat(40)));
        // A close reason must fit a control frame (123 bytes).
        assert!(reason.len() <= 123, "{}", reason.len());
    }

    #[test]
    fn close_messages_carry_code_and_reason() {
        match close_message(CLOSE_SLOW_CONSUMER, "slow consumer") {
            Message::Close(Some(f)) => {
                assert_eq!(f.code, CLOSE_SLOW_CONSUMER);
                assert_eq!(f.reason.as_str(), "slow consumer");
            }
            other => panic!("{other:?}"),
        }
    }
}
