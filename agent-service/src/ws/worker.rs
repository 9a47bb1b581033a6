//! The worker: one connection's chat turns. Each queued message is stored (the session row is
//! created with the first), echoed, answered by an agent with the status log streaming, stored
//! again and sent, one at a time and in order; each answer gets one log line (what it used and how
//! it ended, never what was said). While draining, new messages are refused and the answer in
//! progress is waited for.

use std::sync::Arc;
use std::time::Instant;

use shared::frames::ServerFrame;
use shared::identity::Identity;
use tokio::sync::mpsc;

use crate::agent::{self, AgentCtx, AgentError};
use crate::chat::hub::Outbound;
use crate::chat::status_log::Reporter;
use crate::chat::store::enforce_session_cap;
use crate::chat::usage::Account;
use crate::llm::{Llm, Role};
use crate::state::AppState;

/// A user message waiting for the worker.
#[derive(Debug, PartialEq)]
pub(super) struct Job {
    pub(super) content: String,
    pub(super) mode: Option<String>,
}

/// The chat session a connection writes to.
#[derive(Clone)]
pub(super) struct SessionRef {
    pub(super) id: String,
    /// Already stored (resumed, or written since).
    stored: Arc<std::sync::atomic::AtomicBool>,
}

/// Resumes the requested session if it is the user's, else starts a new one; sends the `session` frame.
pub(super) async fn open_session(
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
pub(super) struct Chat {
    pub(super) state: Arc<AppState>,
    pub(super) llm: Llm,
    pub(super) model: String,
    pub(super) out: Outbound,
    pub(super) user: Identity,
    pub(super) client_id: String,
    pub(super) session: SessionRef,
    pub(super) account: Account,
    /// The provider policy's fallback notice, repeated in the first entry of each answer.
    pub(super) notice: Option<String>,
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

/// Answers the queued messages one at a time, in order, until the queue or the connection ends.
pub(super) async fn work_loop(chat: Chat, mut jobs: mpsc::Receiver<Box<Job>>) {
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
        // The answer's futures are boxed: an idle connection's worker holds only this loop.
        if !Box::pin(chat.save_user_message(&job.content)).await {
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
        if chat.state.drain.track(Box::pin(answered)).await.is_none() {
            return;
        }
    }
}

/// The answer's log line: what it used and how it ended, never what was said.
fn log_answer(chat: &Chat, reporter: &Reporter, started: Instant, frame: Option<&ServerFrame>) {
    let tally = reporter.take_tally();
    let outcome = outcome(frame);
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

/// How an answer ended, for its log line: `ok`, `error`, or `gone` (the client left).
fn outcome(frame: Option<&ServerFrame>) -> &'static str {
    match frame {
        Some(ServerFrame::AgentMessage { .. }) => "ok",
        Some(_) => "error",
        None => "gone",
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_logged_by_how_they_ended() {
        let answered = ServerFrame::AgentMessage {
            content: "42".into(),
        };
        assert_eq!(outcome(Some(&answered)), "ok");
        assert_eq!(outcome(Some(&ServerFrame::error("no"))), "error");
        assert_eq!(outcome(Some(&ServerFrame::Pong)), "error");
        assert_eq!(outcome(None), "gone");
    }
}
