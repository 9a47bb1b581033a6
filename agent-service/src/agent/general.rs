//! The general agent: answers, or calls article tools (one per LLM step, at most `max_steps`
//! LLM calls), then phrases the result.

use std::time::Instant;

use serde_json::json;

use super::tools::article_tool_specs;
use super::{call_llm, call_tool, finish, AgentCtx, AgentError};
use crate::llm::{ollama, ChatMessage, LlmRequest, Purpose, Role};

pub const AGENT: &str = "general";

const PROMPT: &str = "You are Fluxion00, an assistant for the News Nexus database of consumer-safety news articles. \
Answer briefly. Use a tool when the question needs data from the database.";

pub async fn run(ctx: &AgentCtx<'_>, question: &str) -> Result<String, AgentError> {
    let started = Instant::now();
    let r = ctx.reporter;
    r.step(
        "agent_start",
        "General agent started",
        &[("agent", json!(AGENT))],
    )?;
    r.step(
        "analyzing",
        "Deciding how to answer",
        &[("agent", json!(AGENT))],
    )?;
    let tools = article_tool_specs();
    let mut system = PROMPT.to_string();
    if ctx.llm.uses_text_tools() {
        system = format!("{system}\n\n{}", ollama::tool_instructions(&tools));
    }
    let mut messages = vec![ChatMessage::new(Role::System, system)];
    messages.extend(ctx.history.iter().cloned());
    messages.push(ChatMessage::new(Role::User, question));

    let mut answer = String::new();
    for step in 0..ctx.max_steps {
        if step > 0 {
            r.step(
                "llm_summarizing",
                "Asking the LLM to use the tool's result",
                &[("agent", json!(AGENT))],
            )?;
        }
        let req = LlmRequest {
            model: ctx.model,
            messages: &messages,
            tools: &tools,
            temperature: 0.3,
            purpose: Purpose::Answer,
        };
        let reply = call_llm(ctx, AGENT, &req).await?;
        let Some(call) = reply.tool_call.clone() else {
            answer = reply.content;
            break;
        };
        if step + 1 == ctx.max_steps {
            answer = format!("I could not finish within {} steps.", ctx.max_steps);
            break;
        }
        let output = match call_tool(ctx, &call.name, &call.arguments).await? {
            Ok((output, _)) => output,
            Err(e) => format!("Error: {e}"),
        };
        messages.push(ChatMessage {
            role: Role::Assistant,
            content: reply.content,
            tool_call: Some(call.clone()),
            answers: None,
        });
        messages.push(ChatMessage {
            role: Role::Tool,
            content: output,
            tool_call: None,
            answers: Some((call.id, call.name)),
        });
    }
    finish(ctx, AGENT, &answer, started)?;
    Ok(answer)
}
