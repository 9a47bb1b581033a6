//! The two engines: which one a URL names, identifier quoting, and positional placeholders.

use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

impl Engine {
    /// `sqlite:...` is SQLite, `postgres://` / `postgresql://` is PostgreSQL; anything else is a
    /// configuration error.
    pub fn of_url(url: &str) -> Result<Engine, Error> {
        if url.starts_with("sqlite:") {
            Ok(Engine::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Engine::Postgres)
        } else {
            Err(Error::Url(
                "expected a sqlite: or postgres:// URL".to_string(),
            ))
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Engine::Sqlite => "sqlite",
            Engine::Postgres => "postgres",
        }
    }

    /// A quoted identifier: `"name"` with inner quotes doubled (the same rule for both engines).
    pub fn quote(self, name: &str) -> String {
        format!("\"{}\"", name.replace('"', "\"\""))
    }

    /// The `n`-th positional placeholder in the engine's own spelling (`?n` or `$n`). Both engines
    /// also accept `$n` through sqlx, which is what shared SQL text uses.
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Engine::Sqlite => format!("?{n}"),
            Engine::Postgres => format!("${n}"),
        }
    }
}

/// Checks a configured table or column name: letters, digits and `_`, not starting with a digit,
/// at most 63 characters. Names are quoted in SQL anyway; this keeps configuration mistakes from
/// becoming SQL.
pub fn check_identifier(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must be letters, digits and '_' (at most 63, not starting with a digit)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_from_urls() {
        assert_eq!(
            Engine::of_url("sqlite:///tmp/x.db").unwrap(),
            Engine::Sqlite
        );
        assert_eq!(Engine::of_url("sqlite::memory:").unwrap(), Engine::Sqlite);
        assert_eq!(
            Engine::of_url("postgres://u@h/db").unwrap(),
            Engine::Postgres
        );
        assert_eq!(
            Engine::of_url("postgresql://u@h/db").unwrap(),
            Engine::Postgres
        );
        assert!(matches!(Engine::of_url("mysql://h/db"), Err(Error::Url(_))));
        assert!(matches!(Engine::of_url(""), Err(Error::Url(_))));
    }

    #[test]
    fn quoting_doubles_inner_quotes() {
        assert_eq!(Engine::Postgres.quote("Users"), r#""Users""#);
        assert_eq!(Engine::Sqlite.quote(r#"a"b"#), r#""a""b""#);
    }

    #[test]
    fn placeholders_per_engine() {
        assert_eq!(Engine::Sqlite.placeholder(2), "?2");
        assert_eq!(Engine::Postgres.placeholder(12), "$12");
    }

    #[test]
    fn identifiers_are_checked() {
        assert!(check_identifier("Users").is_ok());
        assert!(check_identifier("is_admin2").is_ok());
        for bad in ["", "1abc", "a b", "a\"b", "Users;", &"x".repeat(64)] {
            assert!(check_identifier(bad).is_err(), "{bad}");
        }
    }
}
