//! The SQL agent (SQL mode): the LLM writes one query, the guard checks it, it runs on the
//! read-only connection, and the LLM summarises the rows.

use std::time::Instant;

use serde_json::json;
use shared::status_log::char_count;

use super::{call_llm, call_tool, finish, AgentCtx, AgentError};
use crate::llm::{ChatMessage, LlmRequest, Purpose, Role, ToolCall};

pub const AGENT: &str = "sql";
const TOOL: &str = "execute_custom_sql";

const PROMPT: &str = "You write one read-only SQL SELECT query for the News Nexus database and nothing else. Tables: \
Users(id, username, isAdmin, createdAt) - no other Users column may be read, and never SELECT * or a whole row of Users; \
Articles(id, publicationName, author, title, description, url, urlToImage, publishedDate, createdAt, updatedAt); \
ArticleApproveds(id, userId, articleId, isApproved, headlineForPdfReport, publicationNameForPdfReport, \
publicationDateForPdfReport, textForPdfReport, urlForPdfReport, kmNotes, createdAt, updatedAt). \
Name each column (qualify it with its table when several tables are joined), use plain functions \
(count, sum, min, max, avg, lower, upper, substr, coalesce, date functions), no WITH RECURSIVE. \
Quote identifiers with double quotes. Answer with the query only.";

/// The query inside a reply: a ```sql fenced block if there is one, else the whole text.
pub fn extract_sql(reply: &str) -> String {
    if let Some(start) = reply.find("```") {
        let rest = &reply[start + 3..];
        let rest = rest
            .strip_prefix("sql")
            .or_else(|| rest.strip_prefix("SQL"))
            .unwrap_or(rest);
        if let Some(end) = rest.find("```") {
            return rest[..end].trim().to_string();
        }
    }
    reply.trim().to_string()
}

pub async fn run(ctx: &AgentCtx<'_>, question: &str) -> Result<String, AgentError> {
    let started = Instant::now();
    let r = ctx.reporter;
    r.step(
        "agent_start",
        "SQL agent started",
        &[("agent", json!(AGENT))],
    )?;
    r.step(
        "sql_generation",
        "Writing a query",
        &[("question", json!(question)), ("agent", json!(AGENT))],
    )?;
    let mut messages = vec![ChatMessage::new(Role::System, PROMPT)];
    messages.extend(ctx.history.iter().cloned());
    messages.push(ChatMessage::new(Role::User, question));
    let req = LlmRequest {
        model: ctx.model,
        messages: &messages,
        tools: &[],
        temperature: 0.1,
        purpose: Purpose::GenerateSql,
    };
    let reply = call_llm(ctx, AGENT, &req).await?;
    let sql = extract_sql(&reply.content);

    let answer = match call_tool(ctx, TOOL, &json!({ "sql": sql })).await? {
        Ok((output, rows)) => {
            let len = char_count(&output);
            r.step(
                "sql_executed",
                format!("The query returned {} row(s)", rows.rows.len()),
                &[
                    ("sql", json!(sql)),
                    ("row_count", json!(rows.rows.len())),
                    ("output_length", json!(len)),
                    ("truncated", json!(rows.truncated)),
                ],
            )?;
            r.step(
                "llm_summarizing",
                "Asking the LLM to summarise the rows",
                &[("agent", json!(AGENT))],
            )?;
            // The query is presented as the tool call it was, and the rows as its result.
            let call = ToolCall {
                id: "sql_query".into(),
                name: TOOL.into(),
                arguments: json!({"sql": sql}),
                raw_arguments: json!({"sql": sql}).to_string(),
            };
            messages.push(ChatMessage {
                role: Role::Assistant,
                content: String::new(),
                tool_call: Some(call),
                answers: None,
            });
            messages.push(ChatMessage {
                role: Role::Tool,
                content: output,
                tool_call: None,
                answers: Some(("sql_query".into(), TOOL.into())),
            });
            let req = LlmRequest {
                model: ctx.model,
                messages: &messages,
                tools: &[],
                temperature: 0.3,
                purpose: Purpose::Summarize,
            };
            call_llm(ctx, AGENT, &req).await?.content
        }
        Err(e) => {
            r.step(
                "sql_error",
                format!("The query was not run: {e}"),
                &[("sql", json!(sql)), ("error", json!(e.to_string()))],
            )?;
            format!("I could not run that query: {e}")
        }
    };
    finish(ctx, AGENT, &answer, started)?;
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_fenced_sql() {
        assert_eq!(
            extract_sql("Here:\n```sql\nSELECT 1\n```\nDone"),
            "SELECT 1"
        );
        assert_eq!(extract_sql("  SELECT 2 "), "SELECT 2");
    }
}
