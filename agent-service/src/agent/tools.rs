//! The agent's tools over the News Nexus database: their descriptions (sent to LLMs), argument
//! validation, and execution. Every tool returns text (compact JSON) whose length the status log
//! reports as `output_length`. Bad arguments are a [`ToolError`], never a panic.

use serde_json::{json, Map, Value};

use crate::llm::ToolSpec;
use crate::newsnexus::sql_exec::{SqlError, SqlRunner};
use crate::newsnexus::sql_guard::SqlRefusal;
use crate::newsnexus::{NewsDb, Rows};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ToolError {
    #[error("unknown tool {0:?}")]
    Unknown(String),
    #[error("bad arguments: {0}")]
    BadArguments(String),
    #[error("query refused: {0}")]
    Refused(#[from] SqlRefusal),
    #[error("{0}")]
    Database(String),
}

pub const TOOL_NAMES: [&str; 7] = [
    "count_approved_articles",
    "search_approved_articles",
    "get_articles_by_user",
    "get_articles_by_date_range",
    "get_article_by_id",
    "list_approved_articles",
    "execute_custom_sql",
];

const LIMIT_SCHEMA: &str = "Maximum rows (1-50, default 10)";

/// The tools the general agent may call (`execute_custom_sql` belongs to the SQL agent).
pub fn article_tool_specs() -> Vec<ToolSpec> {
    vec![
        ToolSpec {
            name: "count_approved_articles",
            description: "Count the approved articles.",
            parameters: json!({"type": "object", "properties": {}}),
        },
        ToolSpec {
            name: "search_approved_articles",
            description:
                "Search approved articles by words in the title, description or report text.",
            parameters: json!({"type": "object", "properties": {
                "query": {"type": "string", "description": "Words to look for"},
                "limit": {"type": "integer", "description": LIMIT_SCHEMA}}, "required": ["query"]}),
        },
        ToolSpec {
            name: "get_articles_by_user",
            description: "Approved articles approved by one user.",
            parameters: json!({"type": "object", "properties": {
                "user_id": {"type": "integer"}, "limit": {"type": "integer", "description": LIMIT_SCHEMA}}, "required": ["user_id"]}),
        },
        ToolSpec {
            name: "get_articles_by_date_range",
            description: "Approved articles published between two dates (YYYY-MM-DD, inclusive).",
            parameters: json!({"type": "object", "properties": {
                "start_date": {"type": "string"}, "end_date": {"type": "string"},
                "limit": {"type": "integer", "description": LIMIT_SCHEMA}}, "required": ["start_date", "end_date"]}),
        },
        ToolSpec {
            name: "get_article_by_id",
            description: "One article by its id.",
            parameters: json!({"type": "object", "properties": {"article_id": {"type": "integer"}}, "required": ["article_id"]}),
        },
        ToolSpec {
            name: "list_approved_articles",
            description: "The most recently published approved articles.",
            parameters: json!({"type": "object", "properties": {"limit": {"type": "integer", "description": LIMIT_SCHEMA}}}),
        },
    ]
}

const APPROVED: &str = r#"SELECT CAST(a."id" AS TEXT) AS "articleId", a."title" AS "title", a."publicationName" AS "publication",
 CAST(a."publishedDate" AS TEXT) AS "publishedDate", CAST(aa."userId" AS TEXT) AS "approvedBy", a."url" AS "url"
 FROM "ArticleApproveds" aa JOIN "Articles" a ON a."id" = aa."articleId" WHERE aa."isApproved" IS TRUE"#;

/// Validated arguments for one tool call: the SQL to run and its parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub sql: String,
    pub args: Vec<Value>,
}

fn object(args: &Value) -> Result<&Map<String, Value>, ToolError> {
    match args {
        Value::Object(m) => Ok(m),
        Value::Null => Ok(empty_map()),
        _ => Err(ToolError::BadArguments(
            "arguments must be a JSON object".into(),
        )),
    }
}

fn empty_map() -> &'static Map<String, Value> {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    EMPTY.get_or_init(Map::new)
}

fn positive_int(m: &Map<String, Value>, key: &str) -> Result<i64, ToolError> {
    let v = m
        .get(key)
        .ok_or_else(|| ToolError::BadArguments(format!("{key} is required")))?;
    let n = match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    n.filter(|n| *n > 0 && *n <= i32::MAX as i64)
        .ok_or_else(|| ToolError::BadArguments(format!("{key} must be a positive integer")))
}

fn limit(m: &Map<String, Value>) -> Result<i64, ToolError> {
    match m.get("limit") {
        None | Some(Value::Null) => Ok(10),
        Some(_) => positive_int(m, "limit").and_then(|n| {
            if n <= 50 {
                Ok(n)
            } else {
                Err(ToolError::BadArguments(
                    "limit must be between 1 and 50".into(),
                ))
            }
        }),
    }
}

fn text(m: &Map<String, Value>, key: &str, max: usize) -> Result<String, ToolError> {
    match m.get(key) {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= max => {
            Ok(s.trim().to_string())
        }
        _ => Err(ToolError::BadArguments(format!(
            "{key} must be a non-empty string of at most {max} characters"
        ))),
    }
}

fn date(m: &Map<String, Value>, key: &str) -> Result<String, ToolError> {
    let s = text(m, key, 10)?;
    chrono::NaiveDate::parse_from_str(&s, "%Y-%m-%d")
        .map(|d| d.to_string())
        .map_err(|_| ToolError::BadArguments(format!("{key} must be a date like 2025-03-01")))
}

/// Checks a tool call's arguments and turns it into SQL. Pure: unit-tested without a database.
pub fn plan(tool: &str, args: &Value) -> Result<Plan, ToolError> {
    let m = object(args)?;
    let p = |sql: String, args: Vec<Value>| Ok(Plan { sql, args });
    match tool {
        "count_approved_articles" => {
            p(r#"SELECT COUNT(*) AS "count" FROM "ArticleApproveds" WHERE "isApproved" IS TRUE"#.into(), vec![])
        }
        "search_approved_articles" => {
            let q = text(m, "query", 200)?.to_lowercase();
            p(
                format!(
                    r#"{APPROVED} AND (LOWER(a."title") LIKE $1 OR LOWER(a."description") LIKE $1 OR LOWER(aa."textForPdfReport") LIKE $1) ORDER BY a."publishedDate" DESC LIMIT $2"#
                ),
                vec![json!(format!("%{q}%")), json!(limit(m)?)],
            )
        }
        "get_articles_by_user" => p(
            format!(r#"{APPROVED} AND aa."userId" = $1 ORDER BY a."publishedDate" DESC LIMIT $2"#),
            vec![json!(positive_int(m, "user_id")?), json!(limit(m)?)],
        ),
        "get_articles_by_date_range" => {
            let (start, end) = (date(m, "start_date")?, date(m, "end_date")?);
            if start > end {
                return Err(ToolError::BadArguments("start_date is after end_date".into()));
            }
            p(
                format!(r#"{APPROVED} AND CAST(a."publishedDate" AS TEXT) BETWEEN $1 AND $2 ORDER BY a."publishedDate" LIMIT $3"#),
                vec![json!(start), json!(end), json!(limit(m)?)],
            )
        }
        "get_article_by_id" => p(
            r#"SELECT CAST("id" AS TEXT) AS "articleId", "title", "publicationName" AS "publication", "author", "description",
 CAST("publishedDate" AS TEXT) AS "publishedDate", "url" FROM "Articles" WHERE "id" = $1"#
                .into(),
            vec![json!(positive_int(m, "article_id")?)],
        ),
        "list_approved_articles" => {
            p(format!(r#"{APPROVED} ORDER BY a."publishedDate" DESC LIMIT $1"#), vec![json!(limit(m)?)])
        }
        other => Err(ToolError::Unknown(other.to_string())),
    }
}

/// The tool's output text for a result.
pub fn render(tool: &str, rows: &Rows) -> String {
    match tool {
        "count_approved_articles" => {
            let count = rows
                .rows
                .first()
                .and_then(|r| r.get("count"))
                .cloned()
                .unwrap_or(json!(0));
            json!({"count": count}).to_string()
        }
        "get_article_by_id" => match rows.rows.first() {
            Some(r) => Value::Object(r.clone()).to_string(),
            None => json!({"found": false}).to_string(),
        },
        _ => json!({"row_count": rows.rows.len(), "truncated": rows.truncated, "rows": rows.rows})
            .to_string(),
    }
}

/// The `sql` argument of `execute_custom_sql`.
pub fn custom_sql_arg(args: &Value) -> Result<&str, ToolError> {
    match object(args)?.get("sql") {
        Some(Value::String(s)) => Ok(s),
        _ => Err(ToolError::BadArguments("sql must be a string".into())),
    }
}

impl From<SqlError> for ToolError {
    fn from(e: SqlError) -> Self {
        match e {
            SqlError::Refused(r) => ToolError::Refused(r),
            other => ToolError::Database(other.to_string()),
        }
    }
}

/// Runs a tool call for a user; returns its output text. Custom SQL goes through the guard and
/// the hardened executor ([`SqlRunner`]); the article tools run their fixed SQL on `db`.
pub async fn run(
    db: &NewsDb,
    sql: &SqlRunner,
    user_id: i64,
    tool: &str,
    args: &Value,
) -> Result<(String, Rows), ToolError> {
    if tool == "execute_custom_sql" {
        let (_, rows) = sql.run(user_id, custom_sql_arg(args)?).await?;
        return Ok((render(tool, &rows), rows));
    }
    let plan = plan(tool, args)?;
    let rows = db
        .query(&plan.sql, &plan.args)
        .await
        .map_err(|e| ToolError::Database(e.to_string()))?;
    Ok((render(tool, &rows), rows))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_validated() {
        assert!(plan("count_approved_articles", &json!({})).is_ok());
        assert!(plan("count_approved_articles", &Value::Null).is_ok());
        assert!(matches!(
            plan("search_approved_articles", &json!({})),
            Err(ToolError::BadArguments(_))
        ));
        assert!(matches!(
            plan("search_approved_articles", &json!({"query": 5})),
            Err(ToolError::BadArguments(_))
        ));
        assert_eq!(
            plan("search_approved_articles", &json!({"query": "Recall"}))
                .unwrap()
                .args,
            vec![json!("%recall%"), json!(10)]
        );
        assert!(matches!(
            plan("get_article_by_id", &json!({"article_id": -1})),
            Err(ToolError::BadArguments(_))
        ));
        assert_eq!(
            plan("get_article_by_id", &json!({"article_id": "3"}))
                .unwrap()
                .args,
            vec![json!(3)]
        );
        assert!(matches!(
            plan("list_approved_articles", &json!({"limit": 500})),
            Err(ToolError::BadArguments(_))
        ));
        assert!(matches!(
            plan(
                "get_articles_by_date_range",
                &json!({"start_date": "2025-13-01", "end_date": "2025-12-31"})
            ),
            Err(ToolError::BadArguments(_))
        ));
        assert!(matches!(
            plan(
                "get_articles_by_date_range",
                &json!({"start_date": "2025-05-01", "end_date": "2025-01-01"})
            ),
            Err(ToolError::BadArguments(_))
        ));
        assert!(matches!(
            plan("nope", &json!({})),
            Err(ToolError::Unknown(_))
        ));
        assert!(matches!(
            plan("get_articles_by_user", &json!([1])),
            Err(ToolError::BadArguments(_))
        ));
    }

    #[test]
    fn custom_sql_is_not_planned_as_an_article_tool() {
        assert!(matches!(
            plan("execute_custom_sql", &json!({"sql": "SELECT 1"})),
            Err(ToolError::Unknown(_))
        ));
        assert_eq!(
            custom_sql_arg(&json!({"sql": "SELECT 1"})).unwrap(),
            "SELECT 1"
        );
        assert!(matches!(
            custom_sql_arg(&json!({"sql": 1})),
            Err(ToolError::BadArguments(_))
        ));
    }
}
