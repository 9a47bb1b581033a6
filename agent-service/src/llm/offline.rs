//! The offline provider: a deterministic stand-in for an LLM, for demos and for running the stack
//! with no network. It is not a language model. It picks a tool from keywords in the question
//! ("how many" → count, "article 3" → by id, "search ... for X" / "about X" → search, dates →
//! date range, "user 2" → by user, "list"/"recent" → list), writes simple SQL in SQL mode (or runs
//! the question itself when it already is a SELECT), and phrases tool results as short sentences.

use serde_json::{json, Value};

use super::{LlmReply, LlmRequest, Purpose, Role, ToolCall};

pub fn chat(req: &LlmRequest<'_>) -> LlmReply {
    let question = last_user(req);
    match req.purpose {
        Purpose::GenerateSql => text(generate_sql(question)),
        Purpose::Summarize => text(summarize(req)),
        Purpose::Answer => {
            if matches!(req.messages.last(), Some(m) if m.role == Role::Tool) {
                return text(summarize(req));
            }
            let offered: Vec<&str> = req.tools.iter().map(|t| t.name).collect();
            match pick_tool(question, &offered) {
                Some((name, args)) => tool_reply(name, args),
                None => text(plain_answer(question)),
            }
        }
    }
}

fn text(content: String) -> LlmReply {
    LlmReply {
        content,
        tool_call: None,
        prompt_tokens: None,
        completion_tokens: None,
    }
}

fn last_user<'a>(req: &'a LlmRequest<'_>) -> &'a str {
    req.messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.as_str())
        .unwrap_or("")
}

fn plain_answer(question: &str) -> String {
    let q = question.trim();
    format!(
        "I am the offline demo assistant (no language model is connected). You asked: \"{}\". \
I can count, list and search approved articles, look one up by id, filter by user or dates, \
and run read-only SQL with /sql.",
        q.chars().take(200).collect::<String>()
    )
}

/// Picks a tool for a question, if one fits and is offered.
pub fn pick_tool(question: &str, offered: &[&str]) -> Option<(String, Value)> {
    let q = question.to_lowercase();
    let words: Vec<&str> = q
        .split(|c: char| !(c.is_alphanumeric() || c == '-'))
        .filter(|w| !w.is_empty())
        .collect();
    let number_after = |key: &str| {
        words
            .windows(2)
            .find(|w| w[0] == key)
            .and_then(|w| w[1].trim_start_matches('#').parse::<i64>().ok())
    };
    let dates: Vec<&str> = words
        .iter()
        .copied()
        .filter(|w| chrono::NaiveDate::parse_from_str(w, "%Y-%m-%d").is_ok())
        .collect();
    let choice = if q.contains("how many") || q.contains("count") || q.contains("number of") {
        Some(("count_approved_articles", json!({})))
    } else if let Some(id) = number_after("article") {
        Some(("get_article_by_id", json!({"article_id": id})))
    } else if dates.len() >= 2 {
        Some((
            "get_articles_by_date_range",
            json!({"start_date": dates[0], "end_date": dates[1]}),
        ))
    } else if let Some(id) = number_after("user") {
        Some(("get_articles_by_user", json!({"user_id": id})))
    } else if let Some(topic) = topic(&q) {
        Some(("search_approved_articles", json!({"query": topic})))
    } else if ["list", "recent", "latest", "show"]
        .iter()
        .any(|k| words.contains(k))
    {
        Some(("list_approved_articles", json!({"limit": 5})))
    } else {
        None
    };
    choice
        .filter(|(name, _)| offered.contains(name))
        .map(|(n, a)| (n.to_string(), a))
}

/// The words after "about" or "for" (search topics).
fn topic(q: &str) -> Option<String> {
    for key in [" about ", " for ", " on "] {
        if let Some(i) = q.find(key) {
            let t: String = q[i + key.len()..]
                .trim()
                .trim_end_matches(['?', '.', '!'])
                .to_string();
            let t = t.split_whitespace().take(4).collect::<Vec<_>>().join(" ");
            if !t.is_empty() {
                return Some(t);
            }
        }
    }
    None
}

const SQL_VERBS: [&str; 12] = [
    "select", "with", "drop", "delete", "insert", "update", "pragma", "attach", "create", "alter",
    "replace", "vacuum",
];

fn generate_sql(question: &str) -> String {
    let q = question.trim();
    let lower = q.to_lowercase();
    // A question that already is SQL is used as written (the guard decides what may run).
    let first = lower.split_whitespace().next().unwrap_or("");
    if SQL_VERBS.contains(&first) {
        return q.to_string();
    }
    if lower.contains("how many") || lower.contains("count") {
        return r#"SELECT COUNT(*) AS "count" FROM "ArticleApproveds" WHERE "isApproved" IS TRUE"#
            .into();
    }
    r#"SELECT "id", "title", "publicationName", CAST("publishedDate" AS TEXT) AS "publishedDate" FROM "Articles" ORDER BY "publishedDate" DESC LIMIT 10"#.into()
}

/// Phrases the last tool result.
fn summarize(req: &LlmRequest<'_>) -> String {
    let Some(result) = req.messages.iter().rev().find(|m| m.role == Role::Tool) else {
        return "There is nothing to summarise.".into();
    };
    let tool = result
        .answers
        .as_ref()
        .map(|(_, n)| n.as_str())
        .unwrap_or("the tool");
    let v: Value = serde_json::from_str(&result.content).unwrap_or(Value::Null);
    if let Some(count) = v.get("count") {
        return format!("There are {count} approved articles.");
    }
    if let Some(rows) = v.get("rows").and_then(Value::as_array) {
        if rows.is_empty() {
            return format!("{tool} found nothing.");
        }
        let shown: Vec<String> = rows.iter().take(5).map(describe_row).collect();
        let more = if rows.len() > 5 {
            format!(" (and {} more)", rows.len() - 5)
        } else {
            String::new()
        };
        return format!(
            "I found {} result(s){more}: {}.",
            rows.len(),
            shown.join("; ")
        );
    }
    if v.get("found") == Some(&Value::Bool(false)) {
        return "No such article.".into();
    }
    if v.is_object() {
        return format!("Here it is: {}.", describe_row(&v));
    }
    format!(
        "The tool said: {}",
        result.content.chars().take(300).collect::<String>()
    )
}

fn describe_row(row: &Value) -> String {
    match (
        row.get("title").and_then(Value::as_str),
        row.get("publication")
            .or(row.get("publicationName"))
            .and_then(Value::as_str),
    ) {
        (Some(t), Some(p)) => format!("\"{t}\" ({p})"),
        (Some(t), None) => format!("\"{t}\""),
        _ => row.to_string(),
    }
}

/// The offline provider's answer when it decides to call a tool.
pub fn tool_reply(name: String, arguments: Value) -> LlmReply {
    let raw = arguments.to_string();
    LlmReply {
        content: String::new(),
        tool_call: Some(ToolCall {
            id: "offline_call".into(),
            name,
            arguments,
            raw_arguments: raw,
        }),
        prompt_tokens: None,
        completion_tokens: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [&str; 6] = [
        "count_approved_articles",
        "search_approved_articles",
        "get_articles_by_user",
        "get_articles_by_date_range",
        "get_article_by_id",
        "list_approved_articles",
    ];

    #[test]
    fn picks_tools_by_keywords() {
        let p = |q| pick_tool(q, &ALL);
        assert_eq!(
            p("How many approved articles are there?").unwrap().0,
            "count_approved_articles"
        );
        assert_eq!(
            p("Show me article 3").unwrap(),
            ("get_article_by_id".into(), json!({"article_id": 3}))
        );
        assert_eq!(
            p("articles between 2025-03-01 and 2025-03-31").unwrap().0,
            "get_articles_by_date_range"
        );
        assert_eq!(
            p("what did user 2 approve").unwrap(),
            ("get_articles_by_user".into(), json!({"user_id": 2}))
        );
        assert_eq!(
            p("anything about space heaters?").unwrap(),
            (
                "search_approved_articles".into(),
                json!({"query": "space heaters"})
            )
        );
        assert_eq!(p("list recent ones").unwrap().0, "list_approved_articles");
        assert!(p("hello there").is_none());
        assert!(pick_tool("how many", &[]).is_none());
    }

    #[test]
    fn writes_sql() {
        assert_eq!(generate_sql("SELECT 1"), "SELECT 1");
        assert_eq!(generate_sql("DROP TABLE Users"), "DROP TABLE Users");
        assert!(generate_sql("how many approved").contains("COUNT(*)"));
    }
}
