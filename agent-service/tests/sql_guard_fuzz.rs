//! Property test of the SQL guard over generated SQL (pieces of ordinary and hostile queries,
//! combined and then mutated with random text): whatever the guard accepts parses as exactly one
//! read-only query that touches only allowed tables and columns, checked by an independent walk
//! written here, and running it on the real SQLite fixture returns no password hash and no
//! e-mail address. A bounded number of cases runs as an ordinary test (CI included).

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use agent_service::sql_exec::{self, Capper, SqlSettings};
use agent_service::sql_guard::{self, Schema, SqlDialect, SqlPolicy};
use proptest::prelude::*;
use sqlparser::ast::{
    Expr, ObjectName, Query, Select, SelectItem, SetExpr, Statement, TableFactor, Visit, Visitor,
};
use test_support::{sqlite_fixture, sqlite_url, temp_dir};

const SELECTS: &[&str] = &[
    "password",
    "u.password",
    "email",
    "u.email",
    "u",
    "row_to_json(u)",
    "set_config('a','b',false)",
    "\"set_config\"('a','b',false)",
    "(SELECT password FROM Users)",
    "u.*",
    "pg_read_file('/etc/passwd')",
    "load_extension('x')",
    "[password]",
    "`password`",
    "\"PassWord\"",
    "updatedAt",
    "hex(zeroblob(10))",
    "x.password",
    "*",
];
const GOOD_SELECTS: &[&str] = &[
    "id",
    "title",
    "username",
    "u.username",
    "count(*)",
    "lower(title)",
    "a.*",
    "x.*",
    "1",
    "'x'",
    "$$y$$",
    "isAdmin",
    "coalesce(u.username, 'x')",
    "(SELECT max(id) FROM Users)",
    "x.username",
    "a.title",
    "upper(a.author)",
    "u.createdAt",
    "aa.userId",
];
const FROMS: &[&str] = &[
    "Users",
    "Users u",
    "chat_messages",
    "sqlite_master",
    "pg_shadow",
    "(SELECT * FROM Users) x",
    "main.Users",
    "Users u NATURAL JOIN Articles a",
    "pragma_table_info('Users')",
    "x",
    "Users x",
    "Users u JOIN Users x USING (id)",
];
const GOOD_FROMS: &[&str] = &[
    "Articles",
    "Articles a",
    "(SELECT id, title FROM Articles) x",
    "ArticleApproveds aa",
    "Articles a JOIN Users u ON u.id = a.id",
    "(SELECT username FROM Users) x",
    "Articles a JOIN ArticleApproveds aa ON aa.articleId = a.id JOIN Users u ON u.id = aa.userId",
    "Users u",
];
const PREFIXES: &[&str] = &[
    "WITH x AS (SELECT * FROM Users) ",
    "WITH RECURSIVE x AS (SELECT 1) ",
    "WITH u AS (DELETE FROM Users RETURNING *) ",
    "WITH Articles AS (SELECT password FROM Users) ",
];
const GOOD_PREFIXES: &[&str] = &[
    "",
    "WITH x AS (SELECT username FROM Users) ",
    "WITH x AS (SELECT id, title FROM Articles) ",
];
const SUFFIXES: &[&str] = &[
    " WHERE password = 'x'",
    " ORDER BY email",
    " FOR UPDATE",
    "; DELETE FROM Users",
    " UNION SELECT password FROM Users",
    " WHERE id IN (SELECT id FROM Users WHERE email LIKE '%')",
];
const GOOD_SUFFIXES: &[&str] = &[
    "",
    " -- ; DROP TABLE Users",
    " LIMIT 5",
    " UNION SELECT username FROM Users",
    " ORDER BY 1",
    "/* ; ATTACH DATABASE 'x' AS y */",
    " WHERE id > 1",
];

/// Mostly ordinary pieces, sometimes hostile ones.
fn piece(
    good: &'static [&'static str],
    bad: &'static [&'static str],
) -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => prop::sample::select(good), 1 => prop::sample::select(bad)]
}

fn schema() -> Schema {
    let cols = |s: &'static str| s.split(' ').collect::<Vec<_>>();
    Schema::default()
        .with_table("users", &cols("id username email password isAdmin createdAt updatedAt"))
        .with_table("articles", &cols("id publicationName author title description url urlToImage publishedDate createdAt updatedAt"))
        .with_table("articleapproveds", &cols("id userId articleId isApproved headlineForPdfReport publicationNameForPdfReport publicationDateForPdfReport textForPdfReport urlForPdfReport kmNotes createdAt updatedAt"))
}

/// Columns no accepted query may name (hidden in every table).
const HIDDEN: &[&str] = &["password", "hash", "token", "secret", "salt"];
/// Columns of Users outside its allowlist: no accepted query that reads Users may name them.
const USERS_DENIED: &[&str] = &["email", "updatedat", "password"];

/// An independent walk over an accepted query.
#[derive(Default)]
struct Oracle {
    statements: usize,
    ctes: BTreeSet<String>,
    tables: BTreeSet<String>,
    columns: BTreeSet<String>,
    problems: Vec<String>,
}

fn names_users(tf: &TableFactor) -> bool {
    match tf {
        TableFactor::Table { name, .. } => name
            .to_string()
            .trim_matches('"')
            .eq_ignore_ascii_case("users"),
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => {
            names_users(&table_with_joins.relation)
                || table_with_joins
                    .joins
                    .iter()
                    .any(|j| names_users(&j.relation))
        }
        _ => false,
    }
}

impl Visitor for Oracle {
    type Break = ();

    fn pre_visit_statement(&mut self, _s: &Statement) -> ControlFlow<()> {
        self.statements += 1;
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if let Some(w) = &q.with {
            for c in &w.cte_tables {
                self.ctes.insert(c.alias.name.value.to_lowercase());
            }
        }
        if !q.locks.is_empty() {
            self.problems.push("locking clause".into());
        }
        if !matches!(
            *q.body,
            SetExpr::Select(_)
                | SetExpr::SetOperation { .. }
                | SetExpr::Query(_)
                | SetExpr::Values(_)
        ) {
            self.problems.push("not a select".into());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if s.into.is_some() {
            self.problems.push("SELECT INTO".into());
        }
        let reads_users = s
            .from
            .iter()
            .any(|t| names_users(&t.relation) || t.joins.iter().any(|j| names_users(&j.relation)));
        if reads_users
            && s.projection
                .iter()
                .any(|i| matches!(i, SelectItem::Wildcard(_)))
        {
            self.problems.push("* on Users".into());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        self.tables
            .insert(r.to_string().trim_matches('"').to_lowercase());
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        let column = match e {
            Expr::Identifier(i) => Some(&i.value),
            Expr::CompoundIdentifier(p) => p.last().map(|i| &i.value),
            _ => None,
        };
        if let Some(c) = column {
            self.columns.insert(c.to_lowercase());
        }
        if let Expr::Function(f) = e {
            let name = f.name.to_string().trim_matches('"').to_lowercase();
            if !SqlPolicy::default().functions.contains(&name) {
                self.problems.push(format!("function {name}"));
            }
        }
        ControlFlow::Continue(())
    }
}

fn hostile_sql() -> impl Strategy<Value = String> {
    (
        piece(GOOD_PREFIXES, PREFIXES),
        prop::collection::vec(piece(GOOD_SELECTS, SELECTS), 1..4),
        piece(GOOD_FROMS, FROMS),
        piece(GOOD_SUFFIXES, SUFFIXES),
        any::<prop::sample::Index>(),
        "[ -~]{0,12}",
        prop::bool::weighted(0.3),
    )
        .prop_map(|(pre, cols, from, suf, at, noise, mutate)| {
            let sql = format!("{pre}SELECT {} FROM {from}{suf}", cols.join(", "));
            if mutate {
                let mut i = at.index(sql.len() + 1);
                while !sql.is_char_boundary(i) {
                    i -= 1;
                }
                format!("{}{noise}{}", &sql[..i], &sql[i..])
            } else {
                sql
            }
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn accepted_queries_are_single_reads_of_allowed_data(sql in hostile_sql()) {
        let policy = SqlPolicy::default();
        let schema = schema();
        for dialect in [SqlDialect::Sqlite, SqlDialect::Postgres] {
            let Ok(canonical) = sql_guard::check(&sql, dialect, &policy, &schema) else { continue };
            let statement = sql_guard::parse_one(&canonical, dialect)
                .map_err(|e| TestCaseError::fail(format!("{canonical}: {e}")))?;
            prop_assert!(matches!(statement, Statement::Query(_)), "{}", canonical);
            let mut oracle = Oracle::default();
            let _ = statement.visit(&mut oracle);
            prop_assert_eq!(oracle.statements, 1, "{}", canonical);
            prop_assert!(oracle.problems.is_empty(), "{}: {:?}", canonical, oracle.problems);
            for c in &oracle.columns {
                prop_assert!(!HIDDEN.contains(&c.as_str()), "{}: column {}", canonical, c);
                prop_assert!(
                    !(oracle.tables.contains("users") && USERS_DENIED.contains(&c.as_str())),
                    "{}: Users column {}", canonical, c
                );
            }
            for t in &oracle.tables {
                prop_assert!(
                    policy.tables.contains_key(t) || oracle.ctes.contains(t),
                    "{}: table {}", canonical, t
                );
            }
            if dialect == SqlDialect::Sqlite {
                run_on_sqlite(&canonical)?;
            }
        }
    }
}

/// Runs an accepted query on the hardened SQLite fixture: no hash or e-mail in what comes back.
fn run_on_sqlite(sql: &str) -> Result<(), TestCaseError> {
    thread_local! {
        static FIXTURE: (tokio::runtime::Runtime, tempfile::TempDir, sqlx::SqlitePool) = {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = temp_dir();
            let path = rt.block_on(sqlite_fixture(dir.path(), "nn.db"));
            let pool = rt.block_on(async { sql_exec::hardened_sqlite_pool(&sqlite_url(&path), 1) }).unwrap();
            (rt, dir, pool)
        };
    }
    FIXTURE.with(|(rt, _dir, pool)| {
        let settings = SqlSettings::default();
        let r = rt.block_on(sql_exec::execute_sqlite(
            pool,
            sql,
            settings.timeout,
            Capper::new(&settings),
        ));
        if let Ok(rows) = r {
            let text = serde_json::to_string(&rows.rows).unwrap();
            prop_assert!(!text.contains("$2b$"), "{}: {}", sql, text);
            prop_assert!(!text.contains("@example.com"), "{}: {}", sql, text);
        }
        Ok(())
    })
}

#[test]
fn the_generator_reaches_both_outcomes() {
    let policy = SqlPolicy::default();
    let schema = schema();
    let ok = sql_guard::check(
        "SELECT username FROM Users",
        SqlDialect::Sqlite,
        &policy,
        &schema,
    );
    assert!(ok.is_ok());
    let refused = sql_guard::check(
        "SELECT password FROM Users",
        SqlDialect::Sqlite,
        &policy,
        &schema,
    );
    assert!(refused.is_err());
}
