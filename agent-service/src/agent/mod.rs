//! The agents. Each user message goes to one: [`general`] (answers, or calls article tools) or
//! [`sql`] (SQL mode: writes a query, runs it read-only, summarises the rows). Both report every
//! step through the [`Reporter`]; the LLM and tool wrappers here emit the `llm_*` and `tool_*`
//! entries so no agent can forget them.

pub mod general;
pub mod sql;
pub mod tools;

use std::time::Instant;

use serde_json::{json, Value};
use shared::status_log::{char_count, Progress};

use crate::chat::hub::Gone;
use crate::chat::status_log::Reporter;
use crate::chat::usage::Account;
use crate::llm::{prompt_chars, ChatMessage, Llm, LlmError, LlmReply, LlmRequest};
use crate::newsnexus::sql_exec::SqlRunner;
use crate::newsnexus::{NewsDb, Rows};
use tools::ToolError;

/// Everything an agent needs for one message.
pub struct AgentCtx<'a> {
    pub llm: &'a Llm,
    pub model: &'a str,
    pub db: &'a NewsDb,
    /// Custom SQL, limited per user.
    pub sql: &'a SqlRunner,
    /// The user the message is from.
    pub user_id: i64,
    pub reporter: &'a Reporter,
    pub max_steps: usize,
    /// Earlier user and assistant messages of this conversation.
    pub history: &'a [ChatMessage],
    /// Where LLM and tool calls are accounted and quotas checked (none in tools-only uses).
    pub account: Option<&'a Account>,
    /// The provider policy's fallback notice, shown in the first entry of the answer.
    pub notice: Option<&'a str>,
}

/// Why a message got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("LLM request failed: {0}")]
    Llm(#[from] LlmError),
    #[error("the connection went away")]
    Gone,
    /// A daily quota is used up; the message says when it resets.
    #[error("{0}")]
    Quota(String),
}

impl From<Gone> for AgentError {
    fn from(_: Gone) -> Self {
        AgentError::Gone
    }
}

/// True when a message asks for SQL mode (`mode: "sql"` or a `/sql ` prefix); returns the question.
pub fn sql_mode<'a>(content: &'a str, mode: Option<&str>) -> (bool, &'a str) {
    if let Some(rest) = content.strip_prefix("/sql ") {
        return (true, rest.trim());
    }
    (mode == Some("sql"), content.trim())
}

/// One LLM call, with its `llm_request` and `llm_response` entries and metrics.
pub async fn call_llm(
    ctx: &AgentCtx<'_>,
    agent: &str,
    req: &LlmRequest<'_>,
) -> Result<LlmReply, AgentError> {
    let provider = ctx.llm.name();
    let sent = prompt_chars(req.messages);
    if let Some(account) = ctx.account {
        if let Err(q) = account.check(sent).await {
            ctx.reporter.step(
                "quota_exceeded",
                q.message(),
                &[
                    ("agent", json!(agent)),
                    ("quota", json!(q.quota)),
                    ("limit", json!(q.limit)),
                    ("used", json!(q.used)),
                    ("resets_at", json!(q.resets_at)),
                ],
            )?;
            return Err(AgentError::Quota(q.message()));
        }
    }
    ctx.reporter.step(
        "llm_request",
        format!("Asking {provider}/{} ({sent} characters)", req.model),
        &[
            ("agent", json!(agent)),
            ("provider", json!(provider)),
            ("model", json!(req.model)),
            ("prompt_chars", json!(sent)),
        ],
    )?;
    let started = Instant::now();
    let result = ctx.llm.chat(req).await;
    let elapsed = started.elapsed();
    let m = &ctx.reporter.metrics;
    m.llm_duration.observe(elapsed.as_secs_f64());
    m.llm_prompt_chars.inc_by(sent as u64);
    let base = Progress::new("llm_response", "")
        .with("agent", agent)
        .with("provider", provider)
        .with("model", req.model)
        .with("prompt_chars", sent)
        .with("duration_ms", elapsed.as_millis() as u64);
    match result {
        Ok(reply) => {
            let got = reply.response_chars();
            m.llm_response_chars.inc_by(got as u64);
            m.llm_calls
                .with_label_values(&[provider, agent, "ok"])
                .inc();
            let mut p = base
                .with("response_chars", got)
                .with_opt("prompt_tokens", reply.prompt_tokens)
                .with_opt("completion_tokens", reply.completion_tokens);
            p.message = format!(
                "{provider} answered: {got} characters in {} ms",
                elapsed.as_millis()
            );
            account(ctx, &p).await;
            ctx.reporter.emit(p)?;
            Ok(reply)
        }
        Err(e) => {
            m.llm_calls
                .with_label_values(&[provider, agent, "error"])
                .inc();
            let mut p = base.with("response_chars", 0).with("error", e.to_string());
            p.message = format!("{provider} failed: {e}");
            account(ctx, &p).await;
            ctx.reporter.emit(p)?;
            Err(e.into())
        }
    }
}

/// One tool call, with its `tool_execution` and `tool_success` / `tool_error` entries and metrics.
/// Returns the text handed back to the LLM (the output, or the error).
pub async fn call_tool(
    ctx: &AgentCtx<'_>,
    tool: &str,
    arguments: &Value,
) -> Result<Result<(String, Rows), ToolError>, Gone> {
    ctx.reporter.step(
        "tool_execution",
        format!("Running {tool}"),
        &[("tool", json!(tool)), ("arguments", arguments.clone())],
    )?;
    let started = Instant::now();
    let result = tools::run(ctx.db, ctx.sql, ctx.user_id, tool, arguments).await;
    let duration_ms = started.elapsed().as_millis() as u64;
    let m = &ctx.reporter.metrics;
    let entry = match &result {
        Ok((output, _)) => {
            m.tool_calls
                .with_label_values(&[tool_label(tool), "ok"])
                .inc();
            let len = char_count(output);
            Progress::new("tool_success", format!("{tool} returned {len} characters"))
                .with("tool", tool)
                .with("output_length", len)
                .with("duration_ms", duration_ms)
        }
        Err(e) => {
            m.tool_calls
                .with_label_values(&[tool_label(tool), "error"])
                .inc();
            Progress::new("tool_error", format!("{tool} failed: {e}"))
                .with("tool", tool)
                .with("error", e.to_string())
                .with("duration_ms", duration_ms)
        }
    };
    account(ctx, &entry).await;
    ctx.reporter.emit(entry)?;
    Ok(result)
}

/// Writes a status-log entry's ledger row, before the entry goes out, so that whatever the client
/// has seen is already accounted for.
async fn account(ctx: &AgentCtx<'_>, entry: &Progress) {
    if let Some(account) = ctx.account {
        account.record(entry).await;
    }
}

/// Tool names from an LLM are free text: only known names become metric labels.
fn tool_label(tool: &str) -> &str {
    if tools::TOOL_NAMES.contains(&tool) {
        tool
    } else {
        "unknown"
    }
}

/// The closing entries of a message: `generating_response`, `agent_end`, `completed`.
pub fn finish(ctx: &AgentCtx<'_>, agent: &str, answer: &str, started: Instant) -> Result<(), Gone> {
    let r = ctx.reporter;
    r.step(
        "generating_response",
        "Writing the answer",
        &[("agent", json!(agent))],
    )?;
    let chars = char_count(answer);
    r.step(
        "agent_end",
        format!("{agent} agent finished"),
        &[("agent", json!(agent)), ("output_chars", json!(chars))],
    )?;
    r.step(
        "completed",
        "Done",
        &[
            ("agent", json!(agent)),
            ("duration_ms", json!(started.elapsed().as_millis() as u64)),
        ],
    )
}

/// Runs a message through the right agent; `Ok` is the answer text.
pub async fn handle(
    ctx: &AgentCtx<'_>,
    content: &str,
    mode: Option<&str>,
) -> Result<String, AgentError> {
    let (sql, question) = sql_mode(content, mode);
    let mut first =
        Progress::new("processing", "Processing your message").with("question", question);
    if let Some(notice) = ctx.notice {
        first.message = format!("Processing your message ({notice})");
        first = first.with("provider_fallback", notice);
    }
    ctx.reporter.emit(first)?;
    if sql {
        sql::run(ctx, question).await
    } else {
        general::run(ctx, question).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sql_mode_detection() {
        assert_eq!(sql_mode("/sql SELECT 1", None), (true, "SELECT 1"));
        assert_eq!(sql_mode("count them", Some("sql")), (true, "count them"));
        assert_eq!(sql_mode("hello", Some("auto")), (false, "hello"));
        assert_eq!(sql_mode("/sqlite", None), (false, "/sqlite"));
    }
}
