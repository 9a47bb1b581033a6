//! The guard in front of LLM-written SQL. The read-only connection is the second wall; this is the
//! first: one statement, `SELECT` or `WITH` only, comments stripped, a blocklist of keywords and
//! functions (PRAGMA, ATTACH, load_extension, ...), at most [`MAX_SQL_CHARS`] characters.
//! Rows are capped at [`MAX_ROWS`] by the executor.

pub const MAX_SQL_CHARS: usize = 2000;
pub const MAX_ROWS: usize = 1000;

/// Words refused anywhere outside string literals and quoted identifiers.
const BLOCKED: &[&str] = &[
    "insert",
    "update",
    "delete",
    "drop",
    "alter",
    "create",
    "replace",
    "truncate",
    "attach",
    "detach",
    "pragma",
    "vacuum",
    "reindex",
    "grant",
    "revoke",
    "copy",
    "call",
    "exec",
    "execute",
    "merge",
    "upsert",
    "lock",
    "set",
    "reset",
    "begin",
    "commit",
    "rollback",
    "savepoint",
    "release",
    "analyze",
    "into",
    "load_extension",
    "readfile",
    "writefile",
    "fts3_tokenizer",
    "pg_sleep",
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_dir",
    "lo_import",
    "lo_export",
    "dblink",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "set_config",
    "sqlite_master",
    "sqlite_schema",
    "pg_shadow",
    "pg_authid",
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlRefusal {
    #[error("the query is empty")]
    Empty,
    #[error("the query is longer than {MAX_SQL_CHARS} characters")]
    TooLong,
    #[error("only one statement is allowed")]
    MultipleStatements,
    #[error("only SELECT or WITH queries are allowed")]
    NotASelect,
    #[error("the query uses a forbidden keyword or function: {0}")]
    Forbidden(String),
    #[error("the query has an unterminated string, identifier or comment")]
    Unterminated,
}

/// The query with comments removed, and the same with literals blanked (for keyword checks).
fn strip(sql: &str) -> Result<(String, String), SqlRefusal> {
    let mut text = String::with_capacity(sql.len());
    let mut code = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
                text.push(' ');
                code.push(' ');
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                let mut closed = false;
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        closed = true;
                        break;
                    }
                    prev = n;
                }
                if !closed {
                    return Err(SqlRefusal::Unterminated);
                }
                text.push(' ');
                code.push(' ');
            }
            '\'' | '"' | '`' => {
                text.push(c);
                code.push(' ');
                let mut closed = false;
                while let Some(n) = chars.next() {
                    text.push(n);
                    if n == c {
                        if chars.peek() == Some(&c) {
                            text.push(c);
                            chars.next();
                            continue;
                        }
                        closed = true;
                        break;
                    }
                }
                if !closed {
                    return Err(SqlRefusal::Unterminated);
                }
            }
            _ => {
                text.push(c);
                code.push(c);
            }
        }
    }
    Ok((text, code))
}

/// Checks an LLM-written query; returns it without comments or a trailing `;`, ready to run.
pub fn check(sql: &str) -> Result<String, SqlRefusal> {
    if sql.chars().count() > MAX_SQL_CHARS {
        return Err(SqlRefusal::TooLong);
    }
    let (text, code) = strip(sql)?;
    let text = text.trim().trim_end_matches(';').trim().to_string();
    let code = code.trim().trim_end_matches(';').trim().to_string();
    if text.is_empty() {
        return Err(SqlRefusal::Empty);
    }
    if code.contains(';') {
        return Err(SqlRefusal::MultipleStatements);
    }
    let lower = code.to_ascii_lowercase();
    let words: Vec<&str> = lower
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .collect();
    match words.first() {
        Some(&"select") | Some(&"with") => {}
        _ => return Err(SqlRefusal::NotASelect),
    }
    if let Some(bad) = words.iter().find(|w| BLOCKED.contains(w)) {
        return Err(SqlRefusal::Forbidden(bad.to_uppercase()));
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_pass() {
        assert_eq!(
            check("SELECT COUNT(*) FROM Articles;").unwrap(),
            "SELECT COUNT(*) FROM Articles"
        );
        assert!(check("with a as (select 1) select * from a").is_ok());
        assert!(check(r#"SELECT "updatedAt", 'drop table; --' FROM "Users""#).is_ok());
        assert_eq!(check("SELECT 1 -- trailing comment").unwrap(), "SELECT 1");
        assert_eq!(check("/* why */ SELECT 2").unwrap(), "SELECT 2");
    }

    #[test]
    fn writes_and_tricks_are_refused() {
        use SqlRefusal::*;
        assert_eq!(check("DROP TABLE Users"), Err(NotASelect));
        assert_eq!(check("PRAGMA table_info(Users)"), Err(NotASelect));
        assert_eq!(
            check("SELECT 1; DELETE FROM Users"),
            Err(MultipleStatements)
        );
        assert_eq!(check("SELECT 1;; ").unwrap(), "SELECT 1");
        assert_eq!(check("SELECT 1; ; SELECT 2"), Err(MultipleStatements));
        assert_eq!(
            check("SELECT load_extension('x')"),
            Err(Forbidden("LOAD_EXTENSION".into()))
        );
        assert!(check("SELECT * FROM pragma_table_info('Users')").is_ok());
        assert_eq!(
            check("WITH x AS (DELETE FROM Users RETURNING *) SELECT * FROM x"),
            Err(Forbidden("DELETE".into()))
        );
        assert_eq!(
            check("SELECT * INTO t FROM Users"),
            Err(Forbidden("INTO".into()))
        );
        assert_eq!(check("ATTACH DATABASE 'x' AS y"), Err(NotASelect));
        assert_eq!(check("SELECT 1 /* unterminated"), Err(Unterminated));
        assert_eq!(check("SELECT 'open"), Err(Unterminated));
        assert_eq!(check("-- only a comment"), Err(Empty));
        assert_eq!(check("SE/**/LECT 1"), Err(NotASelect));
        assert_eq!(
            check(&format!("SELECT {}", "1,".repeat(1200))),
            Err(TooLong)
        );
        assert_eq!(
            check("SELECT pg_sleep(10)"),
            Err(Forbidden("PG_SLEEP".into()))
        );
    }
}
