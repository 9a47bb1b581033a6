//! The `AGENT_SQL_*` section: what custom SQL may touch ([`SqlPolicy`]: tables, columns,
//! functions) and the limits it runs under ([`SqlSettings`]). The guard (`newsnexus::sql_guard`)
//! and the executor (`newsnexus::sql_exec`) read this section; it reads nothing of theirs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{number, ConfigError};

/// Default `AGENT_SQL_MAX_COLUMNS`.
pub const DEFAULT_MAX_COLUMNS: usize = 32;
/// Default `AGENT_SQL_MAX_VALUE_BYTES`: the largest string or blob a custom SQLite query may read
/// or build (`SQLITE_LIMIT_LENGTH`). It must exceed the largest stored value the agent reads: a
/// larger one fails to read ("string or blob too big").
pub const DEFAULT_MAX_VALUE_BYTES: usize = 1024 * 1024;
/// SQLite's own ceiling for `SQLITE_LIMIT_LENGTH`.
pub const SQLITE_LENGTH_CEILING: usize = 1_000_000_000;

/// Default table allowlist: the News Nexus content tables the tools read, and `Users` limited to
/// four columns. Format of `AGENT_SQL_TABLES`: comma-separated, `Table` or `Table(col col ...)`.
pub const DEFAULT_TABLES: &str = "Articles,ArticleApproveds,Users(id username isAdmin createdAt)";
/// Default hidden columns (`AGENT_SQL_HIDDEN_COLUMNS`), refused in every table.
pub const DEFAULT_HIDDEN_COLUMNS: &str = "password,passwordHash,password_hash,hash,token,accessToken,refreshToken,resetToken,reset_token,secret,apiKey,api_key,salt";
/// Default function allowlist (`AGENT_SQL_FUNCTIONS`): aggregates, window ranking, string,
/// date/time and math functions, `coalesce`, `nullif`. Functions that build large values from
/// small input (`repeat`, `lpad`, `printf`, `zeroblob`, `string_agg`, ...) are not in it, and on
/// PostgreSQL they are refused even when listed (see `sql_guard::FUNCTION_COSTS`). `group_concat` exists
/// only on SQLite, whose value length limit caps it.
pub const DEFAULT_FUNCTIONS: &str =
    "count,sum,avg,min,max,total,group_concat,bool_and,bool_or,every,\
row_number,rank,dense_rank,ntile,lag,lead,first_value,last_value,percent_rank,cume_dist,\
lower,upper,length,char_length,character_length,octet_length,substr,substring,trim,ltrim,rtrim,\
instr,strpos,position,concat,concat_ws,left,right,initcap,reverse,split_part,starts_with,\
date,time,datetime,julianday,strftime,unixepoch,now,current_date,current_time,current_timestamp,\
localtime,localtimestamp,date_trunc,date_part,extract,age,to_char,to_date,to_timestamp,make_date,\
abs,round,ceil,ceiling,floor,sign,sqrt,power,pow,mod,ln,log,log10,exp,greatest,least,trunc,\
coalesce,nullif,ifnull,iif,cast";

/// What custom SQL may touch. Names are compared lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlPolicy {
    /// Allowed tables; `Some(columns)` limits a table to those columns.
    pub tables: BTreeMap<String, Option<BTreeSet<String>>>,
    /// Column names refused in every table.
    pub hidden_columns: BTreeSet<String>,
    /// Allowed function names.
    pub functions: BTreeSet<String>,
    /// Most result columns a query may have (`AGENT_SQL_MAX_COLUMNS`).
    pub max_columns: usize,
}

impl Default for SqlPolicy {
    fn default() -> Self {
        SqlPolicy::parse(DEFAULT_TABLES, DEFAULT_HIDDEN_COLUMNS, DEFAULT_FUNCTIONS)
            .expect("the default SQL policy parses")
    }
}

fn names(list: &str) -> BTreeSet<String> {
    list.split([',', ' '])
        .map(|s| s.trim().to_lowercase())
        .filter(|s| !s.is_empty())
        .collect()
}

impl SqlPolicy {
    /// Builds a policy from the three config lists; the error says what is malformed.
    pub fn parse(tables: &str, hidden: &str, functions: &str) -> Result<SqlPolicy, String> {
        let mut map = BTreeMap::new();
        let mut rest = tables.trim();
        while !rest.is_empty() {
            let end = rest.find([',', '(']).unwrap_or(rest.len());
            let name = rest[..end].trim().to_lowercase();
            if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                return Err(format!("{:?} is not a table name", &rest[..end]));
            }
            rest = &rest[end..];
            let columns = if let Some(r) = rest.strip_prefix('(') {
                let close = r
                    .find(')')
                    .ok_or_else(|| format!("the column list of {name} has no ')'"))?;
                let cols = names(&r[..close]);
                if cols.is_empty() {
                    return Err(format!("the column list of {name} is empty"));
                }
                rest = &r[close + 1..];
                Some(cols)
            } else {
                None
            };
            map.insert(name, columns);
            rest = rest.trim_start().trim_start_matches(',').trim_start();
        }
        if map.is_empty() {
            return Err("no table is allowed".into());
        }
        Ok(SqlPolicy {
            tables: map,
            hidden_columns: names(hidden),
            functions: names(functions),
            max_columns: DEFAULT_MAX_COLUMNS,
        })
    }
}

/// Limits of the custom-SQL path (config: `AGENT_SQL_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlSettings {
    /// Tables, columns and functions, and `AGENT_SQL_MAX_COLUMNS` (default 32).
    pub policy: SqlPolicy,
    /// `AGENT_SQL_TIMEOUT_SECS`, default 5.
    pub timeout: Duration,
    /// `AGENT_SQL_MAX_ROWS`, default 1000.
    pub max_rows: usize,
    /// `AGENT_SQL_MAX_CELL_BYTES`, default 4096: longer text is cut (by the engine first).
    pub max_cell_bytes: usize,
    /// `AGENT_SQL_MAX_RESULT_BYTES`, default 65536: rendered JSON of all rows.
    pub max_result_bytes: usize,
    /// `AGENT_SQL_MAX_VALUE_BYTES`, default 1 MiB: SQLite's `SQLITE_LIMIT_LENGTH` for custom SQL.
    pub max_value_bytes: usize,
    /// `AGENT_SQL_PER_USER`, default 1: custom queries one user may run at once.
    pub per_user: usize,
    /// `AGENT_SQL_MAX_CONCURRENT`, default 2: custom queries running at once in all (the size of
    /// the custom-SQL pool; the article tools have their own).
    pub max_concurrent: usize,
}

impl Default for SqlSettings {
    fn default() -> Self {
        SqlSettings {
            policy: SqlPolicy::default(),
            timeout: Duration::from_secs(5),
            max_rows: 1000,
            max_cell_bytes: 4096,
            max_result_bytes: 65536,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
            per_user: 1,
            max_concurrent: 2,
        }
    }
}

impl SqlSettings {
    /// Reads the `AGENT_SQL_*` settings; a changed allowlist is logged as a warning at start.
    pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<SqlSettings, ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let tables = get("AGENT_SQL_TABLES");
        let hidden = get("AGENT_SQL_HIDDEN_COLUMNS");
        let functions = get("AGENT_SQL_FUNCTIONS");
        let mut policy = SqlPolicy::parse(
            tables.as_deref().unwrap_or(DEFAULT_TABLES),
            hidden.as_deref().unwrap_or(DEFAULT_HIDDEN_COLUMNS),
            functions.as_deref().unwrap_or(DEFAULT_FUNCTIONS),
        )
        .map_err(|problem| ConfigError {
            name: "AGENT_SQL_TABLES",
            problem,
        })?;
        for (name, set) in [
            ("AGENT_SQL_TABLES", &tables),
            ("AGENT_SQL_HIDDEN_COLUMNS", &hidden),
            ("AGENT_SQL_FUNCTIONS", &functions),
        ] {
            if set.is_some() {
                tracing::warn!(
                    variable = name,
                    "custom SQL policy differs from the strict default; check it exposes nothing private"
                );
            }
        }
        let d = SqlSettings::default();
        let positive = |name: &'static str, default: usize| -> Result<usize, ConfigError> {
            match number(env, name, default)? {
                0 => Err(ConfigError {
                    name,
                    problem: "must be at least 1".into(),
                }),
                n => Ok(n),
            }
        };
        policy.max_columns = positive("AGENT_SQL_MAX_COLUMNS", DEFAULT_MAX_COLUMNS)?;
        let max_value_bytes = positive("AGENT_SQL_MAX_VALUE_BYTES", d.max_value_bytes)?;
        if max_value_bytes > SQLITE_LENGTH_CEILING {
            return Err(ConfigError {
                name: "AGENT_SQL_MAX_VALUE_BYTES",
                problem: format!("must be at most {SQLITE_LENGTH_CEILING}"),
            });
        }
        Ok(SqlSettings {
            policy,
            timeout: Duration::from_secs(positive("AGENT_SQL_TIMEOUT_SECS", 5)? as u64),
            max_rows: positive("AGENT_SQL_MAX_ROWS", d.max_rows)?,
            max_cell_bytes: positive("AGENT_SQL_MAX_CELL_BYTES", d.max_cell_bytes)?,
            max_result_bytes: positive("AGENT_SQL_MAX_RESULT_BYTES", d.max_result_bytes)?,
            max_value_bytes,
            per_user: positive("AGENT_SQL_PER_USER", d.per_user)?,
            max_concurrent: positive("AGENT_SQL_MAX_CONCURRENT", d.max_concurrent)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_parses_and_names_errors() {
        let p = SqlPolicy::default();
        assert_eq!(p.tables["users"].as_ref().unwrap().len(), 4);
        assert_eq!(p.tables["articles"], None);
        assert!(p.functions.contains("count") && !p.functions.contains("load_extension"));
        assert_eq!(p.max_columns, DEFAULT_MAX_COLUMNS);
        assert!(SqlPolicy::parse("Users(", "", "").is_err());
        assert!(SqlPolicy::parse("", "", "").is_err());
        assert!(SqlPolicy::parse("a;b", "", "").is_err());
        let q = SqlPolicy::parse("Users(id,username), Articles", "pw", "count").unwrap();
        assert_eq!(q.tables.len(), 2);
        assert!(q.hidden_columns.contains("pw"));
    }
}
