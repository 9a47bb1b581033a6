//! Property test of the SQL guard over generated SQL (pieces of ordinary and hostile queries,
//! combined and then mutated with random text): whatever the guard accepts parses as exactly one
//! read-only query that touches only allowed tables and columns and satisfies the cost rules
//! (literal short search patterns over single stored values, no regular expressions, on
//! PostgreSQL no growth functions and no long concatenations), checked by an independent walk
//! written here; running it (inside the guard's cutting wrapper) on the real SQLite fixture
//! returns no password hash and no e-mail address, and the wrapper's column count always matches.
//! A bounded number of cases runs as an ordinary test (CI included).

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use agent_service::custom_sql::{self, Capper, Schema, SqlDialect, SqlPolicy, SqlSettings};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, ObjectName, Query,
    Select, SelectItem, SetExpr, Statement, TableFactor, Value, Visit, Visitor,
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
    "instr(title, group_concat(title))",
    "trim(title, (SELECT group_concat(title) FROM Articles))",
    "strpos(title, title)",
    "repeat(title, 1000)",
    "string_agg(title, ',')",
    "title || title || title || title || title || title || title || title || title",
    "regexp_replace(title, 'a', 'b')",
    "position(author IN title)",
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
    "instr(title, 'x')",
    "lower(title) || ' ' || author",
    "substr(title, 1, 10)",
    "title",
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
    " WHERE title LIKE author",
    " WHERE title ~ 'a'",
    " WHERE title SIMILAR TO 'a'",
    " WHERE title LIKE '%' || author || '%'",
    " WHERE (title || author) LIKE 'a%'",
];
const GOOD_SUFFIXES: &[&str] = &[
    "",
    " -- ; DROP TABLE Users",
    " LIMIT 5",
    " UNION SELECT username FROM Users",
    " ORDER BY 1",
    "/* ; ATTACH DATABASE 'x' AS y */",
    " WHERE id > 1",
    " WHERE lower(title) LIKE '%fire%'",
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
/// Columns of Users outside its allowlist: no accepted query may name them where Users is in
/// scope.
const USERS_DENIED: &[&str] = &["email", "updatedat", "password"];
/// Functions whose result can be far larger than their arguments: never accepted on PostgreSQL.
const PG_GROWTH: &[&str] = &[
    "string_agg",
    "array_agg",
    "json_agg",
    "repeat",
    "lpad",
    "rpad",
    "format",
    "printf",
    "zeroblob",
    "overlay",
    "space",
];
/// Functions whose second argument is searched for in the first.
const SEARCHES: &[&str] = &[
    "instr",
    "strpos",
    "split_part",
    "trim",
    "ltrim",
    "rtrim",
    "btrim",
    "replace",
    "translate",
];

/// What one SELECT (or query) sees of Users: whether it is in scope, and its qualifiers.
#[derive(Clone, Default)]
struct Frame {
    users: bool,
    qualifiers: BTreeSet<String>,
}

/// An independent walk over an accepted query.
struct Oracle {
    dialect: SqlDialect,
    statements: usize,
    ctes: BTreeSet<String>,
    tables: BTreeSet<String>,
    columns: BTreeSet<String>,
    frames: Vec<Frame>,
    problems: Vec<String>,
}

impl Oracle {
    fn new(dialect: SqlDialect) -> Oracle {
        Oracle {
            dialect,
            statements: 0,
            ctes: BTreeSet::new(),
            tables: BTreeSet::new(),
            columns: BTreeSet::new(),
            frames: vec![Frame::default()],
            problems: Vec::new(),
        }
    }

    fn push(&mut self, s: Option<&Select>) {
        let mut f = self.frames.last().cloned().unwrap_or_default();
        if let Some(s) = s {
            for t in &s.from {
                users_qualifiers(&t.relation, &mut f.qualifiers);
                for j in &t.joins {
                    users_qualifiers(&j.relation, &mut f.qualifiers);
                }
            }
            f.users |= !f.qualifiers.is_empty();
        }
        self.frames.push(f);
    }
}

/// The qualifiers (alias or name) under which a FROM item reads Users directly.
fn users_qualifiers(tf: &TableFactor, out: &mut BTreeSet<String>) {
    match tf {
        TableFactor::Table { name, alias, .. }
            if name
                .to_string()
                .trim_matches('"')
                .eq_ignore_ascii_case("users") =>
        {
            out.insert(match alias {
                Some(a) => a.name.value.to_lowercase(),
                None => "users".into(),
            });
        }
        TableFactor::NestedJoin {
            table_with_joins, ..
        } => {
            users_qualifiers(&table_with_joins.relation, out);
            for j in &table_with_joins.joins {
                users_qualifiers(&j.relation, out);
            }
        }
        _ => {}
    }
}

/// A plain string literal of at most 256 characters.
fn short_literal(e: &Expr) -> bool {
    match e {
        Expr::Nested(i) => short_literal(i),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => {
                s.chars().count() <= 256
            }
            Value::DollarQuotedString(d) => d.value.chars().count() <= 256,
            _ => false,
        },
        _ => false,
    }
}

/// True when an expression concatenates or aggregates text (not a single stored value).
fn concatenates(e: &Expr) -> bool {
    struct Finder(bool);
    impl Visitor for Finder {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            match e {
                Expr::BinaryOp {
                    op: BinaryOperator::StringConcat,
                    ..
                } => self.0 = true,
                Expr::Function(f) => {
                    let n = f.name.to_string().to_lowercase();
                    if ["concat", "concat_ws", "group_concat", "string_agg"].contains(&n.as_str()) {
                        self.0 = true;
                    }
                }
                _ => {}
            }
            ControlFlow::Continue(())
        }
    }
    let mut f = Finder(false);
    let _ = e.visit(&mut f);
    f.0
}

/// Column references in an expression.
fn identifiers(e: &Expr) -> usize {
    struct Count(usize);
    impl Visitor for Count {
        type Break = ();
        fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
            if matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)) {
                self.0 += 1;
            }
            ControlFlow::Continue(())
        }
    }
    let mut c = Count(0);
    let _ = e.visit(&mut c);
    c.0
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
        match &*q.body {
            SetExpr::Select(s) => self.push(Some(s)),
            SetExpr::SetOperation { .. } | SetExpr::Query(_) | SetExpr::Values(_) => {
                self.push(None)
            }
            _ => {
                self.problems.push("not a select".into());
                self.push(None)
            }
        }
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.frames.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        if s.into.is_some() {
            self.problems.push("SELECT INTO".into());
        }
        self.push(Some(s));
        let own = self.frames.last().is_some_and(|f| f.users);
        if own
            && s.projection
                .iter()
                .any(|i| matches!(i, SelectItem::Wildcard(_)))
        {
            self.problems.push("* on Users".into());
        }
        ControlFlow::Continue(())
    }

    fn post_visit_select(&mut self, _s: &Select) -> ControlFlow<()> {
        self.frames.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, r: &ObjectName) -> ControlFlow<()> {
        self.tables
            .insert(r.to_string().trim_matches('"').to_lowercase());
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        let frame = self.frames.last().cloned().unwrap_or_default();
        match e {
            Expr::Identifier(i) => {
                let c = i.value.to_lowercase();
                if frame.users && USERS_DENIED.contains(&c.as_str()) {
                    self.problems.push(format!("Users column {c}"));
                }
                self.columns.insert(c);
            }
            Expr::CompoundIdentifier(p) if p.len() == 2 => {
                let (q, c) = (p[0].value.to_lowercase(), p[1].value.to_lowercase());
                if frame.qualifiers.contains(&q) && USERS_DENIED.contains(&c.as_str()) {
                    self.problems.push(format!("Users column {q}.{c}"));
                }
                self.columns.insert(c);
            }
            Expr::Function(f) => {
                let name = f.name.to_string().trim_matches('"').to_lowercase();
                if !SqlPolicy::default().functions.contains(&name) {
                    self.problems.push(format!("function {name}"));
                }
                if self.dialect == SqlDialect::Postgres && PG_GROWTH.contains(&name.as_str()) {
                    self.problems.push(format!("growth function {name}"));
                }
                if name.starts_with("regexp") {
                    self.problems.push(format!("regex function {name}"));
                }
                if let FunctionArguments::List(list) = &f.args {
                    let args: Vec<&Expr> = list
                        .args
                        .iter()
                        .filter_map(|a| match a {
                            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
                            _ => None,
                        })
                        .collect();
                    if SEARCHES.contains(&name.as_str()) && args.len() >= 2 {
                        if !short_literal(args[1]) {
                            self.problems.push(format!("{name} pattern {}", args[1]));
                        }
                        if concatenates(args[0]) {
                            self.problems.push(format!("{name} subject {}", args[0]));
                        }
                    }
                }
            }
            Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => {
                if !short_literal(pattern) {
                    self.problems.push(format!("LIKE pattern {pattern}"));
                }
                if concatenates(expr) {
                    self.problems.push(format!("LIKE subject {expr}"));
                }
            }
            Expr::Position { expr, r#in } if !short_literal(expr) || concatenates(r#in) => {
                self.problems.push(format!("position {e}"));
            }
            Expr::SimilarTo { .. } | Expr::RLike { .. } => {
                self.problems.push(format!("regex {e}"));
            }
            Expr::BinaryOp {
                op:
                    BinaryOperator::PGRegexMatch
                    | BinaryOperator::PGRegexIMatch
                    | BinaryOperator::PGRegexNotMatch
                    | BinaryOperator::PGRegexNotIMatch
                    | BinaryOperator::Regexp,
                ..
            } => self.problems.push(format!("regex {e}")),
            Expr::BinaryOp {
                op: BinaryOperator::StringConcat,
                ..
            } if self.dialect == SqlDialect::Postgres && identifiers(e) > 8 => {
                self.problems.push(format!("long concatenation {e}"));
            }
            _ => {}
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
            let Ok(canonical) = custom_sql::check(&sql, dialect, &policy, &schema) else { continue };
            let statement = custom_sql::parse_one(&canonical, dialect)
                .map_err(|e| TestCaseError::fail(format!("{canonical}: {e}")))?;
            prop_assert!(matches!(statement, Statement::Query(_)), "{}", canonical);
            let mut oracle = Oracle::new(dialect);
            let _ = statement.visit(&mut oracle);
            prop_assert_eq!(oracle.statements, 1, "{}", canonical);
            prop_assert!(oracle.problems.is_empty(), "{}: {:?}", canonical, oracle.problems);
            for c in &oracle.columns {
                prop_assert!(!HIDDEN.contains(&c.as_str()), "{}: column {}", canonical, c);
            }
            for t in &oracle.tables {
                prop_assert!(
                    policy.tables.contains_key(t) || oracle.ctes.contains(t),
                    "{}: table {}", canonical, t
                );
            }
            if dialect == SqlDialect::Sqlite {
                let prepared = custom_sql::prepare(&sql, dialect, &policy, &schema, SqlSettings::default().cut())
                    .map_err(|e| TestCaseError::fail(format!("{canonical} checks but does not prepare: {e}")))?;
                prop_assert_eq!(&prepared.canonical, &canonical);
                run_on_sqlite(&prepared)?;
            }
        }
    }
}

/// Runs an accepted query, wrapped, on the hardened SQLite fixture: no hash or e-mail in what
/// comes back, and the wrapper's column list always matches the query's columns.
fn run_on_sqlite(prepared: &custom_sql::Prepared) -> Result<(), TestCaseError> {
    thread_local! {
        static FIXTURE: (tokio::runtime::Runtime, tempfile::TempDir, sqlx::SqlitePool) = {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let dir = temp_dir();
            let path = rt.block_on(sqlite_fixture(dir.path(), "nn.db"));
            let pool = rt.block_on(async { custom_sql::hardened_sqlite_pool(&sqlite_url(&path), 1, custom_sql::DEFAULT_MAX_VALUE_BYTES) }).unwrap();
            (rt, dir, pool)
        };
    }
    FIXTURE.with(|(rt, _dir, pool)| {
        let settings = SqlSettings::default();
        let r = rt.block_on(custom_sql::execute_sqlite(
            pool,
            &prepared.sql,
            settings.timeout,
            Capper::wrapped(&settings, prepared.columns.clone()),
        ));
        match r {
            Ok(rows) => {
                let text = serde_json::to_string(&rows.rows).unwrap();
                prop_assert!(!text.contains("$2b$"), "{}: {}", prepared.sql, text);
                prop_assert!(!text.contains("@example.com"), "{}: {}", prepared.sql, text);
                for row in &rows.rows {
                    prop_assert_eq!(row.len(), prepared.columns.len(), "{}", prepared.sql);
                }
            }
            Err(e) => {
                let e = e.to_string();
                prop_assert!(!e.contains("values for"), "{}: {}", prepared.sql, e);
            }
        }
        Ok(())
    })
}

#[test]
fn the_generator_reaches_both_outcomes() {
    let policy = SqlPolicy::default();
    let schema = schema();
    let ok = custom_sql::check(
        "SELECT username FROM Users",
        SqlDialect::Sqlite,
        &policy,
        &schema,
    );
    assert!(ok.is_ok());
    let refused = custom_sql::check(
        "SELECT password FROM Users",
        SqlDialect::Sqlite,
        &policy,
        &schema,
    );
    assert!(refused.is_err());
    // Generated queries: both outcomes are common (names must fit their FROM, so most random
    // combinations are refused).
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = hostile_sql();
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..400 {
        let sql = strategy.new_tree(&mut runner).unwrap().current();
        match custom_sql::check(&sql, SqlDialect::Sqlite, &policy, &schema) {
            Ok(_) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    eprintln!("{accepted} of 400 generated queries accepted on SQLite");
    assert!(
        accepted >= 25 && refused >= 40,
        "{accepted} accepted, {refused} refused"
    );
}
