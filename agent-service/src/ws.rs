//! One WebSocket connection at `/ws/{client_id}`: the Fluxion00Web protocol, attached to a chat
//! session (`?session_id=` resumes one of the user's sessions; otherwise a new one starts and is
//! written on its first message). The session id is sent in a `session` frame after the welcome.
//!
//! Three tasks per connection: the reader (parses client frames, answers `ping` and
//! `clear_history`, queues user messages), the worker (runs queued messages through the agents, one
//! at a time, in order) and the writer (drains the bounded outbound queue to the socket, sends
//! server pings, closes slow consumers with 1013).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{OriginalUri, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use shared::frames::{ClientFrame, ServerFrame};
use shared::identity::Identity;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentCtx, AgentError};
use crate::chat::hub::{Out, Outbound};
use crate::chat::status_log::Reporter;
use crate::chat::store::enforce_session_cap;
use crate::chat::usage::{Account, Ledger};
use crate::config::PROVIDERS;
use crate::llm::{Llm, Role};
use crate::state::AppState;

pub const CLOSE_INVALID_PROVIDER: u16 = 4000;
pub const CLOSE_SLOW_CONSUMER: u16 = 1013;
/// Hard frame limit enforced by the WebSocket layer (the soft limit answers with an `error` frame).
pub const HARD_MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Messages waiting behind the one being answered.
const QUEUED_MESSAGES: usize = 32;
/// How long one write to the socket may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

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
    ws.max_message_size(HARD_MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| connection(state, socket, client_id, identity, params))
}

/// A user message waiting for the worker.
struct Job {
    content: String,
    mode: Option<String>,
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
    if let Some(name) = requested.filter(|p| !p.is_empty() && !PROVIDERS.contains(p)) {
        let reason = format!(
            "Invalid provider: {}",
            name.chars().take(40).collect::<String>()
        );
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
    // Across replicas: the per-user limit, and replacing this client id elsewhere.
    if let Err(refusal) = state
        .bus
        .acquire(identity.user_id, &client_id, conn_id)
        .await
    {
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
    let writer = tokio::spawn(write_loop(
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
    let session = open_session(&state, &identity, requested, &out).await;
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
    let chat = Chat {
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
    let worker = tokio::spawn(work_loop(chat, job_rx));
    let received = read_loop(&state, stream, &out, &session.id, jobs, &done).await;

    done.cancel();
    worker.abort();
    let sent = writer.await.ok().flatten();
    state.hub.unregister(&client_id, identity.user_id, conn_id);
    state
        .bus
        .release(identity.user_id, &client_id, conn_id)
        .await;
    state.metrics.websocket_active.dec();
    // The code this side sent wins; else the client's; 1006 when the socket just ended.
    log_closed(
        &identity,
        &client_id,
        opened,
        sent.or(received).unwrap_or(1006),
    );
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

async fn read_loop(
    state: &AppState,
    mut stream: SplitStream<WebSocket>,
    out: &Outbound,
    session_id: &str,
    jobs: mpsc::Sender<Job>,
    done: &CancellationToken,
) -> Option<u16> {
    let idle = state.config.idle_timeout;
    loop {
        let next = tokio::select! {
            _ = done.cancelled() => return None,
            n = tokio::time::timeout(idle, stream.next()) => n,
        };
        let msg = match next {
            Err(_) => {
                tracing::info!("dropping a peer silent for {idle:?}");
                let _ = out.close(1001, "idle timeout");
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %crate::logs::chain(&e), "WebSocket read failed");
                return None;
            }
            Ok(Some(Ok(m))) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(frame) => return Some(frame.map_or(1005, |f| f.code)),
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Binary(_) => {
                let _ = out.send(ServerFrame::error("Invalid message format"));
                continue;
            }
        };
        if text.len() > state.config.max_message_bytes {
            let _ = out.send(ServerFrame::error(format!(
                "Message too large (at most {} bytes)",
                state.config.max_message_bytes
            )));
            continue;
        }
        let reply = match ClientFrame::parse(&text) {
            Some(ClientFrame::Ping) => Some(ServerFrame::Pong),
            Some(ClientFrame::ClearHistory) => match state.store.clear_context(session_id).await {
                Ok(()) => Some(ServerFrame::system("Conversation history cleared")),
                Err(e) => {
                    tracing::error!(session = %session_id, error = %crate::logs::chain(&e), "clearing the history failed");
                    Some(ServerFrame::error(
                        "The history could not be cleared; try again",
                    ))
                }
            },
            Some(ClientFrame::UserMessage { content, mode }) => {
                state.metrics.messages.inc();
                match jobs.try_send(Job { content, mode }) {
                    Ok(()) => None,
                    Err(_) => Some(ServerFrame::error(
                        "Too many messages waiting; try again when the current answer is done",
                    )),
                }
            }
            None => Some(ServerFrame::error("Invalid message format")),
        };
        if let Some(frame) = reply {
            if out.send(frame).is_err() {
                return None;
            }
        }
    }
}

/// The chat session a connection writes to.
#[derive(Clone)]
struct SessionRef {
    id: String,
    /// Already stored (resumed, or written since).
    stored: Arc<std::sync::atomic::AtomicBool>,
}

/// Resumes the requested session if it is the user's, else starts a new one; sends the `session` frame.
async fn open_session(
    state: &AppState,
    user: &Identity,
    requested: Option<&str>,
    out: &Outbound,
) -> SessionRef {
    let found = match requested.filter(|id| uuid::Uuid::parse_str(id).is_ok()) {
        Some(id) => state.store.session(user.user_id, id).await.ok().flatten(),
        None => None,
    };
    if requested.is_some() && found.is_none() {
        let _ = out.send(ServerFrame::error(
            "Session not found; a new session was started",
        ));
    }
    let (id, title, resumed) = match found {
        Some(s) => (s.id, s.title, true),
        None => (uuid::Uuid::new_v4().to_string(), None, false),
    };
    let _ = out.send(ServerFrame::Session {
        session_id: id.clone(),
        title,
        resumed,
    });
    SessionRef {
        id,
        stored: Arc::new(std::sync::atomic::AtomicBool::new(resumed)),
    }
}

/// What the worker needs to answer messages on one connection.
struct Chat {
    state: Arc<AppState>,
    llm: Llm,
    model: String,
    out: Outbound,
    user: Identity,
    client_id: String,
    session: SessionRef,
    account: Account,
    /// The provider policy's fallback notice, repeated in the first entry of each answer.
    notice: Option<String>,
}

impl Chat {
    /// Stores the user's message (creating the session row on the first one); true when stored.
    async fn save_user_message(&self, content: &str) -> bool {
        use std::sync::atomic::Ordering;
        let store = &self.state.store;
        let created = !self.session.stored.load(Ordering::SeqCst);
        let saved = async {
            if created {
                let user_id = self.user.user_id;
                if store.ensure_session(user_id, &self.session.id).await? {
                    let cap = self.state.config.max_sessions_per_user;
                    enforce_session_cap(store, cap, user_id, &self.session.id).await;
                }
                self.session.stored.store(true, Ordering::SeqCst);
            }
            store.add_message(&self.session.id, "user", content).await
        };
        match saved.await {
            Ok(titled) => {
                if created || titled {
                    let frame = ServerFrame::SessionsChanged;
                    let me = Some(self.client_id.as_str());
                    self.state
                        .hub
                        .send_to_user_except(self.user.user_id, me, &frame);
                }
                true
            }
            Err(e) => {
                tracing::error!(session = %self.session.id, error = %crate::logs::chain(&e), "storing a user message failed");
                false
            }
        }
    }
}

async fn work_loop(chat: Chat, mut jobs: mpsc::Receiver<Job>) {
    let out = &chat.out;
    let reporter = Reporter::new(out.clone(), chat.state.metrics.clone());
    while let Some(job) = jobs.recv().await {
        if chat.state.drain.is_draining() {
            let refusal = ServerFrame::error(
                "This replica is shutting down; reconnect and send your message again",
            );
            if out.send(refusal).is_err() {
                return;
            }
            continue;
        }
        // A message is acknowledged (echoed) only once it is committed.
        if !chat.save_user_message(&job.content).await {
            if out
                .send(ServerFrame::error(
                    "Your message could not be saved; please send it again",
                ))
                .is_err()
            {
                return;
            }
            continue;
        }
        if out
            .send(ServerFrame::UserEcho {
                content: job.content.clone(),
            })
            .is_err()
            || out.send(ServerFrame::Typing { content: true }).is_err()
        {
            return;
        }
        // The drain waits for the answer and its closing frames, which go out before any 1001.
        let answered = async {
            let started = Instant::now();
            let frame = answer(&chat, &reporter, &job).await;
            log_answer(&chat, &reporter, started, frame.as_ref());
            let frame = frame?;
            let sent =
                out.send(frame).is_ok() && out.send(ServerFrame::Typing { content: false }).is_ok();
            sent.then_some(())
        };
        if chat.state.drain.track(answered).await.is_none() {
            return;
        }
    }
}

/// The answer's log line: what it used and how it ended, never what was said.
fn log_answer(chat: &Chat, reporter: &Reporter, started: Instant, frame: Option<&ServerFrame>) {
    let tally = reporter.take_tally();
    let outcome = match frame {
        Some(ServerFrame::AgentMessage { .. }) => "ok",
        Some(_) => "error",
        None => "gone",
    };
    tracing::info!(
        user_id = chat.user.user_id,
        client_id = %chat.client_id,
        session = %chat.session.id,
        provider = chat.llm.name(),
        model = %chat.model,
        agents = %tally.agents(),
        tools = %tally.tools(),
        llm_calls = tally.llm_calls,
        prompt_chars = tally.prompt_chars,
        response_chars = tally.response_chars,
        duration_ms = started.elapsed().as_millis() as u64,
        outcome,
        "answer"
    );
}

/// Runs one message through an agent; the answer is committed before it is returned for sending.
async fn answer(chat: &Chat, reporter: &Reporter, job: &Job) -> Option<ServerFrame> {
    let state = &chat.state;
    let mut context = match state.store.context(&chat.session.id).await {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(session = %chat.session.id, error = %crate::logs::chain(&e), "loading the conversation failed");
            return Some(ServerFrame::error(
                "The conversation could not be loaded; try again",
            ));
        }
    };
    // The message just stored is the question itself, not context.
    if context
        .last()
        .is_some_and(|m| m.role == Role::User && m.content == job.content)
    {
        context.pop();
    }
    let ctx = AgentCtx {
        llm: &chat.llm,
        model: &chat.model,
        db: &state.db,
        sql: &state.sql,
        user_id: chat.user.user_id,
        reporter,
        max_steps: state.config.max_steps,
        history: &context,
        account: Some(&chat.account),
        notice: chat.notice.as_deref(),
    };
    match agent::handle(&ctx, &job.content, job.mode.as_deref()).await {
        Ok(answer) => match state
            .store
            .add_message(&chat.session.id, "assistant", &answer)
            .await
        {
            Ok(_) => Some(ServerFrame::AgentMessage { content: answer }),
            Err(e) => {
                tracing::error!(session = %chat.session.id, error = %crate::logs::chain(&e), "storing an answer failed");
                Some(ServerFrame::error(
                    "The answer could not be saved; please ask again",
                ))
            }
        },
        Err(AgentError::Gone) => None,
        Err(e) => {
            tracing::error!(session = %chat.session.id, error = %crate::logs::chain(&e), "answering failed");
            Some(ServerFrame::error(e.to_string()))
        }
    }
}

async fn write_loop(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Out>,
    slow: CancellationToken,
    done: CancellationToken,
    ping_every: Duration,
) -> Option<u16> {
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    loop {
        let msg = tokio::select! {
            biased;
            _ = slow.cancelled() => {
                tracing::warn!("closing a connection whose client does not read (outbound queue full)");
                let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(close_message(CLOSE_SLOW_CONSUMER, "slow consumer"))).await;
                done.cancel();
                return Some(CLOSE_SLOW_CONSUMER);
            }
            out = rx.recv() => match out {
                Some(Out::Frame(f)) => Message::Text(f.to_json().into()),
                Some(Out::Close(code, reason)) => {
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(close_message(code, &reason))).await;
                    done.cancel();
                    return Some(code);
                }
                None => return None,
            },
            _ = ping.tick() => Message::Ping(Vec::new().into()),
            _ = done.cancelled() => {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
                return None;
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
            Ok(Ok(())) => {}
            _ => {
                done.cancel();
                return None;
            }
        }
    }
}
