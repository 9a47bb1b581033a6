//! The guard in front of custom SQL (the `/sql` path and any SQL an LLM writes): a real parser
//! (`sqlparser`, with the connected engine's dialect) and a walk over the AST against a
//! [`SqlPolicy`] and the loaded [`Schema`]. Pure: no I/O; the executor (`sql_exec`) is the second
//! wall.
//!
//! Accepted is exactly one query (`SELECT`, `WITH`, set operations of selects, `VALUES`) with no
//! data-modifying CTE, no `WITH RECURSIVE`, no `SELECT INTO`, no locking clause, that reads only
//! allowlisted tables (unqualified names; CTE names resolved by scope) and calls only allowlisted
//! functions (matched case-insensitively, quoted or not, never schema-qualified). Beyond that:
//!
//! - **Names fail closed.** Every column name must resolve, scope by scope, to an allowed column
//!   of a real table in scope (per the schema loaded from the database), to an output of a CTE or
//!   derived table, or to a select alias. Anything else is refused as unknown (so SQLite's rule
//!   that an unknown `"x"` is the string `'x'` never applies). A column list on the alias of a real
//!   table (`Users AS u(a, b)`) is refused; `*` and `t.*` are refused on a table with a column
//!   that may not be read, and are counted over the schema.
//! - **Every call is cheap.** [`FUNCTION_COSTS`] and [`operator_cost`] classify what may be
//!   called. Searches whose cost is |subject| × |pattern| (`LIKE`, `instr`, `strpos`, `position`,
//!   `trim(x, set)`, `replace`, ...) need a string literal of at most [`MAX_PATTERN_CHARS`]
//!   characters as their pattern ([`MAX_PATTERN_TOTAL_CHARS`] in all) and a subject that holds at
//!   most one stored value; regular expressions are refused.
//! - **Values stay small.** Each expression's [copies](Copies) bound (how many stored values its
//!   result can contain) is computed; on PostgreSQL, which has no per-value size limit, functions
//!   that build large values from small input are refused and no expression may exceed
//!   [`MAX_COPIES`]. SQLite caps every value itself (`SQLITE_LIMIT_LENGTH`, set by `sql_exec`).
//! - **Results are cut by the engine.** [`prepare`] wraps the checked query so the database cuts
//!   every cell and stops at the row cap before anything is read ([`wrap`]).
//!
//! What runs is the canonical rendering of the checked AST, re-parsed and checked again, so
//! comments, quoting tricks and tokenizer differences never reach the database.

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, CastKind, Distinct, Expr, FunctionArg, FunctionArgExpr, FunctionArgumentClause,
    FunctionArguments, GroupByExpr, InTarget, JoinConstraint, JoinOperator, LimitClause,
    NamedWindowExpr, ObjectName, ObjectNamePart, OrderByExpr, OrderByKind, Query, Select,
    SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableAlias, TableFactor,
    TableWithJoins, UnaryOperator, Value, ValueWithSpan, Visit, Visitor, WildcardAdditionalOptions,
    WindowFrameBound, WindowSpec, WindowType,
};
use sqlparser::dialect::{Dialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

use crate::config::SqlPolicy;

/// Longest query text accepted, in characters.
pub const MAX_SQL_CHARS: usize = 4000;
/// Longest pattern (needle, character set) a search may use, in characters.
pub const MAX_PATTERN_CHARS: usize = 256;
/// All patterns of one query together, in characters (bounds the search work per row).
pub const MAX_PATTERN_TOTAL_CHARS: usize = 1024;
/// Most stored values one expression's result may hold on PostgreSQL.
pub const MAX_COPIES: Copies = 8;

/// The SQL dialect of the connected database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlDialect {
    Sqlite,
    Postgres,
}

impl SqlDialect {
    fn dialect(self) -> Box<dyn Dialect> {
        match self {
            SqlDialect::Sqlite => Box::new(SQLiteDialect {}),
            SqlDialect::Postgres => Box::new(PostgreSqlDialect {}),
        }
    }
}

// The guard's reading of the policy (the section itself is `config::sql`).
impl SqlPolicy {
    fn hidden(&self, column: &str) -> bool {
        self.hidden_columns.contains(column)
    }

    /// True when `column` (lower-cased) of `table` may not be read.
    fn denied(&self, table: &str, column: &str) -> bool {
        if self.hidden(column) {
            return true;
        }
        match self.tables.get(table) {
            Some(Some(allowed)) => !allowed.contains(column),
            Some(None) => false,
            None => true,
        }
    }
}

/// The columns of the allowed tables as the database has them: table names lower-cased, columns
/// in table order with their own spelling. Column references to a table missing here are refused
/// (its columns are unknown), and so are `*` and `t.*` on it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    pub columns: BTreeMap<String, Vec<String>>,
}

impl Schema {
    /// Adds (or replaces) a table and its columns.
    pub fn with_table(mut self, table: &str, columns: &[&str]) -> Schema {
        self.columns.insert(
            table.to_lowercase(),
            columns.iter().map(|c| c.to_string()).collect(),
        );
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlRefusal {
    #[error("the query is empty")]
    Empty,
    #[error("the query is longer than {MAX_SQL_CHARS} characters")]
    TooLong,
    #[error("the query does not parse: {0}")]
    Parse(String),
    #[error("only one statement is allowed")]
    MultipleStatements,
    #[error("only read-only queries (SELECT / WITH) are allowed, not {0}")]
    NotAQuery(String),
    #[error("{0} is not allowed")]
    Construct(String),
    #[error("table {0} is not allowed")]
    Table(String),
    #[error("column {0} is not allowed")]
    Column(String),
    #[error("column {0} is unknown")]
    Unknown(String),
    #[error("function {0} is not allowed")]
    Function(String),
    #[error("a whole-row reference to {0} is not allowed; name the columns")]
    WholeRow(String),
    #[error("* on {0} is not allowed (it has columns that are not allowed or unknown); name the columns")]
    Wildcard(String),
    #[error("the query has {0} result columns; at most {1} are allowed")]
    TooManyColumns(usize, usize),
    /// A cost rule: the message says what was refused and why.
    #[error("{0}")]
    Cost(String),
}

use SqlRefusal as R;

// ---------------------------------------------------------------------------------------------
// The cost table: one classification of every function and operator custom SQL may use.
// ---------------------------------------------------------------------------------------------

/// How many stored values an expression's result can contain: a column is 1, a literal 0 (its
/// size is bounded by the query text), `a || b` the sum of both, a length-preserving function its
/// argument's, an aggregate that concatenates rows [`UNBOUNDED`].
pub type Copies = u32;
/// The copies bound of a result that can grow without limit.
pub const UNBOUNDED: Copies = Copies::MAX;

/// What a function or operator costs and how large its result can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cost {
    /// Linear work, a result of bounded size (numbers, dates, booleans): 0 copies.
    Small,
    /// Linear work, a result no larger than its largest argument (`lower`, `coalesce`, `max`).
    Same,
    /// `substr`-like: the first argument cut by integer-literal positions.
    Slice,
    /// A result as large as all its arguments together (`concat`, `||`).
    Sum,
    /// Work |subject| × |pattern| in one call that the engine does not interrupt: the pattern
    /// argument must be a short literal and the subject one stored value. `keeps`: the result is
    /// as large as the subject (else small).
    Search {
        subject: usize,
        pattern: usize,
        keeps: bool,
    },
    /// `trim`, `ltrim`, `rtrim`, `btrim`: [`Cost::Same`] with one argument, a search with a
    /// character set.
    Trim,
    /// `replace(subject, pattern, replacement)`: a search; on PostgreSQL the replacement must be
    /// a literal no longer than the pattern (the result never grows).
    Replace,
    /// `translate(subject, from, to)`: a search with two literal character lists.
    Translate,
    /// Aggregates that concatenate rows: refused on PostgreSQL, capped by the engine on SQLite.
    ConcatAgg,
    /// Results far larger than the arguments: refused on PostgreSQL, capped on SQLite.
    Grow,
    /// Regular expressions: refused on both engines.
    Regex,
}

const fn search(subject: usize, pattern: usize, keeps: bool) -> Cost {
    Cost::Search {
        subject,
        pattern,
        keeps,
    }
}

/// Every function custom SQL may call, by cost. A function on `AGENT_SQL_FUNCTIONS` but not
/// here is refused: its cost is unknown.
pub const FUNCTION_COSTS: &[(&str, Cost)] = &[
    // Aggregates and window functions.
    ("count", Cost::Small),
    ("sum", Cost::Small),
    ("avg", Cost::Small),
    ("total", Cost::Small),
    ("bool_and", Cost::Small),
    ("bool_or", Cost::Small),
    ("every", Cost::Small),
    ("row_number", Cost::Small),
    ("rank", Cost::Small),
    ("dense_rank", Cost::Small),
    ("ntile", Cost::Small),
    ("percent_rank", Cost::Small),
    ("cume_dist", Cost::Small),
    ("min", Cost::Same),
    ("max", Cost::Same),
    ("lag", Cost::Same),
    ("lead", Cost::Same),
    ("first_value", Cost::Same),
    ("last_value", Cost::Same),
    ("nth_value", Cost::Same),
    ("group_concat", Cost::ConcatAgg),
    ("string_agg", Cost::ConcatAgg),
    ("array_agg", Cost::ConcatAgg),
    ("json_agg", Cost::ConcatAgg),
    ("jsonb_agg", Cost::ConcatAgg),
    ("json_object_agg", Cost::ConcatAgg),
    ("jsonb_object_agg", Cost::ConcatAgg),
    ("json_group_array", Cost::ConcatAgg),
    ("json_group_object", Cost::ConcatAgg),
    ("xmlagg", Cost::ConcatAgg),
    ("listagg", Cost::ConcatAgg),
    // Text.
    ("length", Cost::Small),
    ("char_length", Cost::Small),
    ("character_length", Cost::Small),
    ("octet_length", Cost::Small),
    ("starts_with", Cost::Small),
    ("typeof", Cost::Small),
    ("md5", Cost::Small),
    ("lower", Cost::Same),
    ("upper", Cost::Same),
    ("initcap", Cost::Same),
    ("reverse", Cost::Same),
    ("substr", Cost::Slice),
    ("substring", Cost::Slice),
    ("left", Cost::Slice),
    ("right", Cost::Slice),
    ("concat", Cost::Sum),
    ("concat_ws", Cost::Sum),
    ("trim", Cost::Trim),
    ("ltrim", Cost::Trim),
    ("rtrim", Cost::Trim),
    ("btrim", Cost::Trim),
    ("instr", search(0, 1, false)),
    ("strpos", search(0, 1, false)),
    ("split_part", search(0, 1, true)),
    ("like", search(1, 0, false)),
    ("glob", search(1, 0, false)),
    ("replace", Cost::Replace),
    ("translate", Cost::Translate),
    ("repeat", Cost::Grow),
    ("lpad", Cost::Grow),
    ("rpad", Cost::Grow),
    ("overlay", Cost::Grow),
    ("format", Cost::Grow),
    ("printf", Cost::Grow),
    ("zeroblob", Cost::Grow),
    ("randomblob", Cost::Grow),
    ("char", Cost::Grow),
    ("space", Cost::Grow),
    ("hex", Cost::Grow),
    ("quote", Cost::Grow),
    ("encode", Cost::Grow),
    ("regexp", Cost::Regex),
    ("regexp_like", Cost::Regex),
    ("regexp_match", Cost::Regex),
    ("regexp_matches", Cost::Regex),
    ("regexp_replace", Cost::Regex),
    ("regexp_substr", Cost::Regex),
    ("regexp_count", Cost::Regex),
    ("regexp_instr", Cost::Regex),
    ("regexp_split_to_array", Cost::Regex),
    ("regexp_split_to_table", Cost::Regex),
    ("similar_escape", Cost::Regex),
    ("similar_to_escape", Cost::Regex),
    // Dates and times.
    ("date", Cost::Small),
    ("time", Cost::Small),
    ("datetime", Cost::Small),
    ("julianday", Cost::Small),
    ("unixepoch", Cost::Small),
    ("now", Cost::Small),
    ("current_date", Cost::Small),
    ("current_time", Cost::Small),
    ("current_timestamp", Cost::Small),
    ("localtime", Cost::Small),
    ("localtimestamp", Cost::Small),
    ("date_trunc", Cost::Small),
    ("date_part", Cost::Small),
    ("extract", Cost::Small),
    ("age", Cost::Small),
    ("to_date", Cost::Small),
    ("to_timestamp", Cost::Small),
    ("make_date", Cost::Small),
    ("strftime", Cost::Same),
    ("to_char", Cost::Same),
    // Numbers.
    ("abs", Cost::Small),
    ("round", Cost::Small),
    ("ceil", Cost::Small),
    ("ceiling", Cost::Small),
    ("floor", Cost::Small),
    ("sign", Cost::Small),
    ("sqrt", Cost::Small),
    ("power", Cost::Small),
    ("pow", Cost::Small),
    ("mod", Cost::Small),
    ("ln", Cost::Small),
    ("log", Cost::Small),
    ("log10", Cost::Small),
    ("exp", Cost::Small),
    ("trunc", Cost::Small),
    ("random", Cost::Small),
    // Choices.
    ("greatest", Cost::Same),
    ("least", Cost::Same),
    ("coalesce", Cost::Same),
    ("nullif", Cost::Same),
    ("ifnull", Cost::Same),
    ("iif", Cost::Same),
    ("cast", Cost::Same),
];

/// The cost of a function (lower-cased name), `None` when it is unknown.
pub fn function_cost(name: &str) -> Option<Cost> {
    FUNCTION_COSTS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, c)| *c)
}

/// The cost of a binary operator, `None` when it is not allowed. The operand order of a search is
/// (left, right).
pub fn operator_cost(op: &BinaryOperator) -> Option<Cost> {
    use BinaryOperator as B;
    match op {
        B::Plus
        | B::Minus
        | B::Multiply
        | B::Divide
        | B::Modulo
        | B::Gt
        | B::Lt
        | B::GtEq
        | B::LtEq
        | B::Eq
        | B::NotEq
        | B::And
        | B::Or
        | B::Xor
        | B::BitwiseOr
        | B::BitwiseAnd
        | B::BitwiseXor
        | B::PGBitwiseXor
        | B::PGBitwiseShiftLeft
        | B::PGBitwiseShiftRight
        | B::PGExp
        | B::PGStartsWith => Some(Cost::Small),
        B::StringConcat => Some(Cost::Sum),
        B::Glob => Some(search(0, 1, false)),
        B::Regexp
        | B::Match
        | B::PGRegexMatch
        | B::PGRegexIMatch
        | B::PGRegexNotMatch
        | B::PGRegexNotIMatch => Some(Cost::Regex),
        _ => None,
    }
}

fn add(a: Copies, b: Copies) -> Copies {
    a.saturating_add(b)
}

fn shown_copies(c: Copies) -> String {
    if c == UNBOUNDED {
        "any number of".into()
    } else {
        c.to_string()
    }
}

fn regex_refusal(what: &str) -> SqlRefusal {
    R::Cost(format!(
        "{what} is not allowed: regular expressions are refused (their cost cannot be bounded before they run); use LIKE with a literal pattern"
    ))
}

/// The text of a plain string literal (possibly in parentheses).
fn literal_text(e: &Expr) -> Option<&str> {
    match e {
        Expr::Nested(inner) => literal_text(inner),
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s)
            | Value::EscapedStringLiteral(s)
            | Value::NationalStringLiteral(s) => Some(s),
            Value::DollarQuotedString(d) => Some(&d.value),
            _ => None,
        },
        _ => None,
    }
}

/// True for an integer literal, possibly negative or in parentheses.
fn integer_literal(e: &Expr) -> bool {
    match e {
        Expr::Nested(inner) => integer_literal(inner),
        Expr::UnaryOp {
            op: UnaryOperator::Minus | UnaryOperator::Plus,
            expr,
        } => integer_literal(expr),
        Expr::Value(v) => {
            matches!(&v.value, Value::Number(n, _) if n.to_string().chars().all(|c| c.is_ascii_digit()))
        }
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Checking.
// ---------------------------------------------------------------------------------------------

/// One result column of a checked query: its name (alias; the column's name for a column
/// reference; else the expression's text) and its copies bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub name: String,
    pub copies: Copies,
}

/// A query the guard accepted, ready to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// The canonical text of the checked query (what the user's query means).
    pub canonical: String,
    /// What runs: the canonical query inside the cutting wrapper ([`wrap`]).
    pub sql: String,
    /// The result's column names, unique, in order (each is a pair of columns in `sql`).
    pub columns: Vec<String>,
}

/// How the wrapper cuts a result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cut {
    /// The row cap: the wrapper returns at most one row more, so the reader knows it truncated.
    pub max_rows: usize,
    /// Cells longer than this many bytes come back cut to this many characters.
    pub cell_chars: usize,
}

/// Checks custom SQL; returns the canonical text of the checked query.
pub fn check(
    sql: &str,
    dialect: SqlDialect,
    policy: &SqlPolicy,
    schema: &Schema,
) -> Result<String, SqlRefusal> {
    checked(sql, dialect, policy, schema).map(|(canonical, _)| canonical)
}

/// Checks custom SQL and wraps it so the engine cuts the result ([`wrap`]); the wrapped text
/// round-trips through the parser and holds exactly the checked query.
pub fn prepare(
    sql: &str,
    dialect: SqlDialect,
    policy: &SqlPolicy,
    schema: &Schema,
    cut: Cut,
) -> Result<Prepared, SqlRefusal> {
    let (canonical, outputs) = checked(sql, dialect, policy, schema)?;
    let wrapped = wrap(&canonical, outputs.len(), cut);
    let statement = parse_one(&wrapped, dialect)?;
    let rendered = statement.to_string();
    let inner = match &statement {
        Statement::Query(q) => q.with.as_ref().and_then(|w| w.cte_tables.first()),
        _ => None,
    };
    let holds_the_query = inner.is_some_and(|c| c.query.to_string() == canonical);
    if rendered != wrapped || !holds_the_query {
        return Err(R::Construct(
            "a query whose wrapped text does not round-trip".into(),
        ));
    }
    if let Some(cte) = inner {
        check_statement(
            &Statement::Query(cte.query.clone()),
            dialect,
            policy,
            schema,
        )?;
    }
    Ok(Prepared {
        canonical,
        sql: wrapped,
        columns: unique_names(&outputs),
    })
}

fn checked(
    sql: &str,
    dialect: SqlDialect,
    policy: &SqlPolicy,
    schema: &Schema,
) -> Result<(String, Vec<Output>), SqlRefusal> {
    if sql.chars().count() > MAX_SQL_CHARS {
        return Err(R::TooLong);
    }
    let statement = parse_one(sql, dialect)?;
    check_statement(&statement, dialect, policy, schema)?;
    let canonical = statement.to_string();
    // What runs is the rendering: it must parse back to the same statement and pass again.
    let again = parse_one(&canonical, dialect)?;
    if again.to_string() != canonical {
        return Err(R::Construct(
            "a query whose text does not round-trip".into(),
        ));
    }
    let outputs = check_statement(&again, dialect, policy, schema)?;
    Ok((canonical, outputs))
}

/// The text that runs: `WITH q (c1, ..., cn) AS (<query>) SELECT <pair for each column> FROM q
/// LIMIT <max_rows + 1>`. Each output `ci` becomes two columns: the value itself when its text
/// is at most `cell_chars` bytes long (NULL otherwise; the type is kept), and, when it is
/// longer, `<octet length>:<first cell_chars characters>` (NULL otherwise). The engine therefore
/// never sends a long cell, and stops at the row cap. Both engines take a stored text's octet
/// length without reading the value, and a prefix by reading only the start of it (PostgreSQL
/// detoasts a slice), so a long value is not copied whole to be cut. The CTE's column list names
/// the outputs without touching the query, so its aliases, `ORDER BY` and `LIMIT` keep their
/// meaning.
pub fn wrap(canonical: &str, columns: usize, cut: Cut) -> String {
    let n = cut.cell_chars;
    let names: Vec<String> = (1..=columns).map(|i| format!("c{i}")).collect();
    let cells: Vec<String> = (1..=columns)
        .map(|i| {
            let text = format!("CAST(q.c{i} AS TEXT)");
            let long = format!("octet_length({text}) > {n}");
            format!(
                "CASE WHEN {long} THEN NULL ELSE q.c{i} END AS v{i}, \
                 CASE WHEN {long} THEN octet_length({text}) || ':' || SUBSTR({text}, 1, {n}) END AS t{i}"
            )
        })
        .collect();
    format!(
        "WITH q ({}) AS ({canonical}) SELECT {} FROM q LIMIT {}",
        names.join(", "),
        cells.join(", "),
        cut.max_rows.saturating_add(1)
    )
}

/// Output names made unique (`id`, `id_2`, ...).
fn unique_names(outputs: &[Output]) -> Vec<String> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut names = Vec::with_capacity(outputs.len());
    for o in outputs {
        let mut name = o.name.clone();
        let mut k = 2;
        while !seen.insert(name.clone()) {
            name = format!("{}_{k}", o.name);
            k += 1;
        }
        names.push(name);
    }
    names
}

/// Parses exactly one statement.
pub fn parse_one(sql: &str, dialect: SqlDialect) -> Result<Statement, SqlRefusal> {
    let d = dialect.dialect();
    let mut statements =
        Parser::parse_sql(d.as_ref(), sql).map_err(|e| R::Parse(short(&e.to_string())))?;
    match statements.len() {
        0 => Err(R::Empty),
        1 => Ok(statements.remove(0)),
        _ => Err(R::MultipleStatements),
    }
}

fn short(s: &str) -> String {
    s.chars().take(200).collect()
}

/// The policy, name and cost check of one parsed statement; returns its result columns.
pub fn check_statement(
    statement: &Statement,
    dialect: SqlDialect,
    policy: &SqlPolicy,
    schema: &Schema,
) -> Result<Vec<Output>, SqlRefusal> {
    let Statement::Query(q) = statement else {
        return Err(R::NotAQuery(statement_kind(statement)));
    };
    let mut a = Analyzer {
        dialect,
        policy,
        schema,
        levels: Vec::new(),
        ctes: Vec::new(),
        seen: Seen::default(),
        pattern_chars: 0,
    };
    let outputs = a.query(q)?;
    // Every expression, query and FROM item of the statement must have been checked above: one
    // in a position the walk does not know is refused.
    let mut net = Net {
        seen: &a.seen,
        missed: None,
    };
    let _ = statement.visit(&mut net);
    if let Some(what) = net.missed {
        return Err(R::Construct(format!("{what} in this position")));
    }
    if outputs.len() > policy.max_columns {
        return Err(R::TooManyColumns(outputs.len(), policy.max_columns));
    }
    Ok(outputs)
}

/// The first words of a statement, upper-cased (`INSERT`, `ATTACH DATABASE`, `PRAGMA`, ...).
fn statement_kind(statement: &Statement) -> String {
    let text = statement.to_string();
    let words: Vec<&str> = text.split_whitespace().take(2).collect();
    let first = words.first().copied().unwrap_or("statement").to_uppercase();
    match (first.as_str(), words.get(1)) {
        ("CREATE" | "DROP" | "ALTER" | "ATTACH" | "DETACH", Some(w)) => {
            format!("{first} {}", w.to_uppercase())
        }
        _ => first,
    }
}

/// The variant name of an expression, for refusals.
fn kind<T: std::fmt::Debug>(v: &T) -> String {
    let d = format!("{v:?}");
    d.split(|c: char| !c.is_alphanumeric() && c != '_')
        .next()
        .unwrap_or("expression")
        .to_string()
}

fn lower(ident: &sqlparser::ast::Ident) -> String {
    ident.value.to_lowercase()
}

/// An unqualified object name, lower-cased.
fn single_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(i)] => Some(lower(i)),
        _ => None,
    }
}

fn check_set_expr(body: &SetExpr) -> Result<(), SqlRefusal> {
    match body {
        SetExpr::Select(_) | SetExpr::Query(_) | SetExpr::Values(_) => Ok(()),
        SetExpr::SetOperation { left, right, .. } => {
            check_set_expr(left)?;
            check_set_expr(right)
        }
        SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => Err(
            R::Construct(format!("a data-modifying {}", statement_kind(s))),
        ),
        SetExpr::Table(_) => Err(R::Construct("TABLE (a whole-table reference)".into())),
    }
}

fn check_query_shape(q: &Query) -> Result<(), SqlRefusal> {
    if !q.locks.is_empty() {
        return Err(R::Construct(
            "a locking clause (FOR UPDATE / FOR SHARE)".into(),
        ));
    }
    if q.for_clause.is_some() || q.settings.is_some() || q.format_clause.is_some() {
        return Err(R::Construct("a FOR / SETTINGS / FORMAT clause".into()));
    }
    if !q.pipe_operators.is_empty() {
        return Err(R::Construct("a pipe operator".into()));
    }
    if let Some(with) = &q.with {
        if with.recursive {
            return Err(R::Construct("WITH RECURSIVE".into()));
        }
        if let Some(c) = with.cte_tables.iter().find(|c| c.from.is_some()) {
            return Err(R::Construct(format!("CTE {} with FROM", c.alias.name)));
        }
    }
    check_set_expr(&q.body)
}

fn check_select_shape(s: &Select) -> Result<(), SqlRefusal> {
    if s.into.is_some() {
        return Err(R::Construct("SELECT INTO".into()));
    }
    if !s.lateral_views.is_empty()
        || s.prewhere.is_some()
        || !s.connect_by.is_empty()
        || !s.cluster_by.is_empty()
        || !s.distribute_by.is_empty()
        || !s.sort_by.is_empty()
        || s.qualify.is_some()
        || s.value_table_mode.is_some()
        || !s.optimizer_hints.is_empty()
        || s.top.is_some()
        || s.select_modifiers.is_some()
        || s.exclude.is_some()
    {
        return Err(R::Construct("a dialect-specific SELECT clause".into()));
    }
    Ok(())
}

fn plain_wildcard(o: &WildcardAdditionalOptions) -> bool {
    o.opt_ilike.is_none()
        && o.opt_exclude.is_none()
        && o.opt_except.is_none()
        && o.opt_replace.is_none()
        && o.opt_rename.is_none()
        && o.opt_alias.is_none()
}

/// One column a FROM item offers.
#[derive(Debug, Clone)]
struct Column {
    key: String,
    name: String,
    copies: Copies,
    /// A column of a real table that may not be read.
    denied: bool,
}

/// A FROM item in scope.
#[derive(Debug, Clone)]
struct Source {
    /// Its alias, or the table or CTE name; `None` for a derived table without alias.
    qualifier: Option<String>,
    /// The real table it reads (lower-cased), if any.
    table: Option<String>,
    /// For a real table: false when the schema does not know its columns.
    known: bool,
    columns: Vec<Column>,
}

/// The names one SELECT (or the ORDER BY of a set operation) can see.
#[derive(Debug, Clone, Default)]
struct Level {
    sources: Vec<Source>,
    /// Select aliases (SQLite allows them in WHERE and GROUP BY, both engines in ORDER BY).
    aliases: Vec<(String, Copies)>,
    /// A `JOIN ... USING` is in the FROM clause (`*` would merge its columns).
    using: bool,
}

/// A CTE visible by name.
#[derive(Debug, Clone)]
struct CteDef {
    name: String,
    outputs: Vec<Output>,
}

#[derive(Default)]
struct Seen {
    exprs: HashSet<*const Expr>,
    queries: HashSet<*const Query>,
    factors: HashSet<*const TableFactor>,
}

/// Name resolution and cost rules, scope by scope.
struct Analyzer<'a> {
    dialect: SqlDialect,
    policy: &'a SqlPolicy,
    schema: &'a Schema,
    /// Enclosing SELECT scopes, innermost last (correlated subqueries see the outer ones).
    levels: Vec<Level>,
    /// CTE frames, innermost last.
    ctes: Vec<Vec<CteDef>>,
    seen: Seen,
    /// Characters of all search patterns so far.
    pattern_chars: usize,
}

fn output_columns(outputs: &[Output]) -> Vec<Column> {
    outputs
        .iter()
        .map(|o| Column {
            key: o.name.to_lowercase(),
            name: o.name.clone(),
            copies: o.copies,
            denied: false,
        })
        .collect()
}

/// Renames outputs by an alias's column list (`WITH c(a, b)`, `(...) AS d(a, b)`).
fn rename(mut outputs: Vec<Output>, alias: &TableAlias) -> Result<Vec<Output>, SqlRefusal> {
    if alias.columns.len() > outputs.len() {
        return Err(R::Construct(format!(
            "a column list of {} names for {} columns ({})",
            alias.columns.len(),
            outputs.len(),
            alias.name
        )));
    }
    for (o, c) in outputs.iter_mut().zip(&alias.columns) {
        if c.data_type.is_some() {
            return Err(R::Construct(format!(
                "a typed column list ({})",
                alias.name
            )));
        }
        o.name = c.name.value.clone();
    }
    Ok(outputs)
}

impl Analyzer<'_> {
    fn pg(&self) -> bool {
        self.dialect == SqlDialect::Postgres
    }

    fn query(&mut self, q: &Query) -> Result<Vec<Output>, SqlRefusal> {
        check_query_shape(q)?;
        self.seen.queries.insert(q as *const Query);
        self.ctes.push(Vec::new());
        let r = self.query_in_frame(q);
        self.ctes.pop();
        r
    }

    fn query_in_frame(&mut self, q: &Query) -> Result<Vec<Output>, SqlRefusal> {
        if let Some(w) = &q.with {
            for cte in &w.cte_tables {
                // A CTE's body sees only the CTEs before it (no recursion).
                let outputs = rename(self.query(&cte.query)?, &cte.alias)?;
                if let Some(frame) = self.ctes.last_mut() {
                    frame.push(CteDef {
                        name: lower(&cte.alias.name),
                        outputs,
                    });
                }
            }
        }
        let (outputs, level) = self.set_expr(&q.body)?;
        // ORDER BY and LIMIT see the outputs (and a plain SELECT's FROM items).
        let level = level.unwrap_or_else(|| Level {
            sources: vec![Source {
                qualifier: None,
                table: None,
                known: true,
                columns: output_columns(&outputs),
            }],
            ..Level::default()
        });
        self.levels.push(level);
        let r = self.query_tail(q);
        self.levels.pop();
        r?;
        Ok(outputs)
    }

    fn query_tail(&mut self, q: &Query) -> Result<(), SqlRefusal> {
        if let Some(order) = &q.order_by {
            if order.interpolate.is_some() {
                return Err(R::Construct("ORDER BY ... INTERPOLATE".into()));
            }
            match &order.kind {
                OrderByKind::Expressions(list) => {
                    for o in list {
                        self.order_by_expr(o)?;
                    }
                }
                OrderByKind::All(_) => return Err(R::Construct("ORDER BY ALL".into())),
            }
        }
        match &q.limit_clause {
            None => {}
            Some(LimitClause::LimitOffset {
                limit,
                offset,
                limit_by,
            }) => {
                if !limit_by.is_empty() {
                    return Err(R::Construct("LIMIT ... BY".into()));
                }
                if let Some(l) = limit {
                    self.expr(l)?;
                }
                if let Some(o) = offset {
                    self.expr(&o.value)?;
                }
            }
            Some(LimitClause::OffsetCommaLimit { offset, limit }) => {
                self.expr(offset)?;
                self.expr(limit)?;
            }
        }
        if let Some(f) = &q.fetch {
            if let Some(e) = &f.quantity {
                self.expr(e)?;
            }
        }
        Ok(())
    }

    fn order_by_expr(&mut self, o: &OrderByExpr) -> Result<(), SqlRefusal> {
        if o.with_fill.is_some() {
            return Err(R::Construct("ORDER BY ... WITH FILL".into()));
        }
        self.expr(&o.expr).map(|_| ())
    }

    fn set_expr(&mut self, body: &SetExpr) -> Result<(Vec<Output>, Option<Level>), SqlRefusal> {
        match body {
            SetExpr::Select(s) => {
                let (outputs, level) = self.select(s)?;
                Ok((outputs, Some(level)))
            }
            SetExpr::Query(q) => Ok((self.query(q)?, None)),
            SetExpr::SetOperation { left, right, .. } => {
                let (mut l, _) = self.set_expr(left)?;
                let (r, _) = self.set_expr(right)?;
                if l.len() != r.len() {
                    return Err(R::Construct(format!(
                        "a set operation of {} and {} columns",
                        l.len(),
                        r.len()
                    )));
                }
                for (a, b) in l.iter_mut().zip(&r) {
                    a.copies = a.copies.max(b.copies);
                }
                Ok((l, None))
            }
            SetExpr::Values(v) => {
                let mut outputs: Vec<Output> = Vec::new();
                for row in &v.rows {
                    for (i, e) in row.iter().enumerate() {
                        let c = self.expr(e)?;
                        match outputs.get_mut(i) {
                            Some(o) => o.copies = o.copies.max(c),
                            None => outputs.push(Output {
                                name: format!("column{}", i + 1),
                                copies: c,
                            }),
                        }
                    }
                }
                Ok((outputs, None))
            }
            other => {
                check_set_expr(other)?;
                Err(R::Construct(format!("query body {}", kind(other))))
            }
        }
    }

    fn select(&mut self, s: &Select) -> Result<(Vec<Output>, Level), SqlRefusal> {
        check_select_shape(s)?;
        let mut level = Level::default();
        let mut ons: Vec<&Expr> = Vec::new();
        let mut usings: Vec<&ObjectName> = Vec::new();
        for twj in &s.from {
            self.join_tree(twj, &mut level, &mut ons, &mut usings)?;
        }
        self.levels.push(level);
        let r = self.select_in_level(s, &ons, &usings);
        let level = self.levels.pop().unwrap_or_default();
        r.map(|outputs| (outputs, level))
    }

    fn select_in_level(
        &mut self,
        s: &Select,
        ons: &[&Expr],
        usings: &[&ObjectName],
    ) -> Result<Vec<Output>, SqlRefusal> {
        for col in usings {
            let name = single_name(col).ok_or_else(|| R::Construct(format!("USING ({col})")))?;
            self.column(None, &name, &col.to_string())?;
        }
        for e in ons {
            self.expr(e)?;
        }
        let mut outputs = Vec::new();
        for item in &s.projection {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    let copies = self.expr(e)?;
                    let name = match e {
                        Expr::Identifier(i) => i.value.clone(),
                        Expr::CompoundIdentifier(parts) => {
                            parts.last().map(|i| i.value.clone()).unwrap_or_default()
                        }
                        other => other.to_string(),
                    };
                    outputs.push(Output { name, copies });
                }
                SelectItem::ExprWithAlias { expr, alias } => {
                    let copies = self.expr(expr)?;
                    outputs.push(Output {
                        name: alias.value.clone(),
                        copies,
                    });
                }
                SelectItem::ExprWithAliases { .. } => {
                    return Err(R::Construct("a select item with several aliases".into()))
                }
                SelectItem::Wildcard(opts) => {
                    if !plain_wildcard(opts) {
                        return Err(R::Construct("* with options".into()));
                    }
                    outputs.extend(self.wildcard(None)?);
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(q),
                    opts,
                ) => {
                    if !plain_wildcard(opts) {
                        return Err(R::Construct("* with options".into()));
                    }
                    outputs.extend(self.wildcard(Some(q))?);
                }
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(e), _) => {
                    return Err(R::Construct(format!("{e}.*")))
                }
            }
        }
        if let Some(level) = self.levels.last_mut() {
            level.aliases = outputs
                .iter()
                .map(|o| (o.name.to_lowercase(), o.copies))
                .collect();
        }
        if let Some(Distinct::On(list)) = &s.distinct {
            for e in list {
                self.expr(e)?;
            }
        }
        if let Some(w) = &s.selection {
            self.expr(w)?;
        }
        match &s.group_by {
            GroupByExpr::Expressions(list, modifiers) => {
                if !modifiers.is_empty() {
                    return Err(R::Construct("GROUP BY modifiers".into()));
                }
                for e in list {
                    self.expr(e)?;
                }
            }
            GroupByExpr::All(_) => return Err(R::Construct("GROUP BY ALL".into())),
        }
        if let Some(h) = &s.having {
            self.expr(h)?;
        }
        for w in &s.named_window {
            if let NamedWindowExpr::WindowSpec(spec) = &w.1 {
                self.window(spec)?;
            }
        }
        Ok(outputs)
    }

    /// `*` (all FROM items of the current SELECT) or `q.*`, expanded.
    fn wildcard(&self, qualifier: Option<&ObjectName>) -> Result<Vec<Output>, SqlRefusal> {
        let level = self.levels.last().cloned().unwrap_or_default();
        let sources: Vec<&Source> = match qualifier {
            None => {
                if level.sources.is_empty() {
                    return Err(R::Construct("* without FROM".into()));
                }
                if level.using {
                    return Err(R::Construct(
                        "* over JOIN ... USING (name the columns)".into(),
                    ));
                }
                level.sources.iter().collect()
            }
            Some(q) => {
                let key = single_name(q).ok_or_else(|| R::Construct(format!("{q}.*")))?;
                match level
                    .sources
                    .iter()
                    .find(|s| s.qualifier.as_deref() == Some(key.as_str()))
                {
                    Some(s) => vec![s],
                    None => {
                        return Err(R::Construct(format!(
                            "{q}.* (no table or alias {key} in the query)"
                        )))
                    }
                }
            }
        };
        let mut outputs = Vec::new();
        for s in sources {
            if let Some(t) = &s.table {
                if !s.known || s.columns.iter().any(|c| c.denied) {
                    return Err(R::Wildcard(match qualifier {
                        Some(q) => single_name(q).unwrap_or_else(|| t.clone()),
                        None => t.clone(),
                    }));
                }
            }
            outputs.extend(s.columns.iter().map(|c| Output {
                name: c.name.clone(),
                copies: c.copies,
            }));
        }
        Ok(outputs)
    }

    fn join_tree<'q>(
        &mut self,
        twj: &'q TableWithJoins,
        level: &mut Level,
        ons: &mut Vec<&'q Expr>,
        usings: &mut Vec<&'q ObjectName>,
    ) -> Result<(), SqlRefusal> {
        self.factor(&twj.relation, level, ons, usings)?;
        for j in &twj.joins {
            self.factor(&j.relation, level, ons, usings)?;
            let c = match &j.join_operator {
                JoinOperator::Join(c)
                | JoinOperator::Inner(c)
                | JoinOperator::Left(c)
                | JoinOperator::LeftOuter(c)
                | JoinOperator::Right(c)
                | JoinOperator::RightOuter(c)
                | JoinOperator::FullOuter(c)
                | JoinOperator::CrossJoin(c) => c,
                other => return Err(R::Construct(format!("join kind {}", kind(other)))),
            };
            match c {
                JoinConstraint::On(e) => ons.push(e),
                JoinConstraint::None => {}
                JoinConstraint::Using(cols) => {
                    level.using = true;
                    usings.extend(cols.iter());
                }
                JoinConstraint::UsingAlias(..) => return Err(R::Construct("USING ... AS".into())),
                JoinConstraint::Natural => return Err(R::Construct("NATURAL JOIN".into())),
            }
        }
        Ok(())
    }

    fn visible_cte(&self, key: &str) -> Option<&CteDef> {
        self.ctes
            .iter()
            .rev()
            .find_map(|frame| frame.iter().rev().find(|c| c.name == key))
    }

    fn factor<'q>(
        &mut self,
        tf: &'q TableFactor,
        level: &mut Level,
        ons: &mut Vec<&'q Expr>,
        usings: &mut Vec<&'q ObjectName>,
    ) -> Result<(), SqlRefusal> {
        self.seen.factors.insert(tf as *const TableFactor);
        match tf {
            TableFactor::Table {
                name,
                alias,
                args,
                with_hints,
                version,
                with_ordinality,
                partitions,
                json_path,
                sample,
                index_directives,
                inheritance,
            } => {
                if args.is_some() {
                    return Err(R::Construct(format!("table function {name}")));
                }
                if !with_hints.is_empty()
                    || version.is_some()
                    || *with_ordinality
                    || !partitions.is_empty()
                    || json_path.is_some()
                    || sample.is_some()
                    || !index_directives.is_empty()
                    || inheritance.is_some()
                {
                    return Err(R::Construct(format!("a table modifier on {name}")));
                }
                let key = single_name(name).ok_or_else(|| {
                    R::Table(format!("{name} (schema-qualified names are not allowed)"))
                })?;
                let qualifier = alias
                    .as_ref()
                    .map(|a| lower(&a.name))
                    .unwrap_or(key.clone());
                if let Some(cte) = self.visible_cte(&key) {
                    let outputs = match alias {
                        Some(a) => rename(cte.outputs.clone(), a)?,
                        None => cte.outputs.clone(),
                    };
                    level.sources.push(Source {
                        qualifier: Some(qualifier),
                        table: None,
                        known: true,
                        columns: output_columns(&outputs),
                    });
                    return Ok(());
                }
                if !self.policy.tables.contains_key(&key) {
                    return Err(R::Table(name.to_string()));
                }
                if let Some(a) = alias {
                    if !a.columns.is_empty() {
                        return Err(R::Construct(format!(
                            "a column list on the alias of table {name} ({}); use the column names",
                            a.name
                        )));
                    }
                }
                let (known, columns) = match self.schema.columns.get(&key) {
                    Some(cols) => (
                        true,
                        cols.iter()
                            .map(|c| {
                                let k = c.to_lowercase();
                                Column {
                                    denied: self.policy.denied(&key, &k),
                                    key: k,
                                    name: c.clone(),
                                    copies: 1,
                                }
                            })
                            .collect(),
                    ),
                    None => (false, Vec::new()),
                };
                level.sources.push(Source {
                    qualifier: Some(qualifier),
                    table: Some(key),
                    known,
                    columns,
                });
                Ok(())
            }
            TableFactor::Derived {
                lateral,
                subquery,
                alias,
                sample,
            } => {
                if *lateral {
                    return Err(R::Construct("LATERAL".into()));
                }
                if sample.is_some() {
                    return Err(R::Construct("TABLESAMPLE".into()));
                }
                let mut outputs = self.query(subquery)?;
                if let Some(a) = alias {
                    outputs = rename(outputs, a)?;
                }
                level.sources.push(Source {
                    qualifier: alias.as_ref().map(|a| lower(&a.name)),
                    table: None,
                    known: true,
                    columns: output_columns(&outputs),
                });
                Ok(())
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                if alias.is_some() {
                    return Err(R::Construct("an alias on a parenthesized join".into()));
                }
                self.join_tree(table_with_joins, level, ons, usings)
            }
            other => Err(R::Construct(format!("table source {}", kind(other)))),
        }
    }

    /// Resolves a column name; returns its copies bound.
    fn column(
        &self,
        qualifier: Option<&str>,
        key: &str,
        shown: &str,
    ) -> Result<Copies, SqlRefusal> {
        if self.policy.hidden(key) {
            return Err(R::Column(shown.to_string()));
        }
        if let Some(q) = qualifier {
            for level in self.levels.iter().rev() {
                let Some(s) = level
                    .sources
                    .iter()
                    .find(|s| s.qualifier.as_deref() == Some(q))
                else {
                    continue;
                };
                return match s.columns.iter().find(|c| c.key == key) {
                    Some(c) if c.denied => Err(R::Column(shown.to_string())),
                    Some(c) => Ok(c.copies),
                    None => Err(R::Unknown(shown.to_string())),
                };
            }
            return Err(R::Column(format!(
                "{shown} (no table or alias {q} in the query)"
            )));
        }
        // A name that is a denied column of any table in scope is refused, whatever else it
        // could also name.
        for level in &self.levels {
            for s in &level.sources {
                if s.columns.iter().any(|c| c.key == key && c.denied) {
                    let t = s.table.clone().unwrap_or_default();
                    return Err(R::Column(format!("{t}.{shown}")));
                }
            }
        }
        for level in self.levels.iter().rev() {
            let from_sources = level
                .sources
                .iter()
                .flat_map(|s| s.columns.iter())
                .filter(|c| c.key == key)
                .map(|c| c.copies);
            let from_aliases = level
                .aliases
                .iter()
                .filter(|(a, _)| a == key)
                .map(|(_, c)| *c);
            if let Some(c) = from_sources.chain(from_aliases).max() {
                return Ok(c);
            }
        }
        for level in self.levels.iter().rev() {
            if let Some(s) = level
                .sources
                .iter()
                .find(|s| s.qualifier.as_deref() == Some(key))
            {
                return Err(R::WholeRow(s.table.clone().unwrap_or_else(|| key.into())));
            }
        }
        Err(R::Unknown(shown.to_string()))
    }

    fn window(&mut self, spec: &WindowSpec) -> Result<(), SqlRefusal> {
        for e in &spec.partition_by {
            self.expr(e)?;
        }
        for o in &spec.order_by {
            self.order_by_expr(o)?;
        }
        if let Some(frame) = &spec.window_frame {
            for b in [Some(&frame.start_bound), frame.end_bound.as_ref()]
                .into_iter()
                .flatten()
            {
                if let WindowFrameBound::Preceding(Some(e)) | WindowFrameBound::Following(Some(e)) =
                    b
                {
                    self.expr(e)?;
                }
            }
        }
        Ok(())
    }

    /// Checks a search's pattern: a string literal of at most [`MAX_PATTERN_CHARS`] characters,
    /// within the query's total.
    fn pattern(&mut self, what: &str, e: &Expr) -> Result<usize, SqlRefusal> {
        self.expr(e)?;
        let Some(text) = literal_text(e) else {
            return Err(R::Cost(format!(
                "the pattern of {what} must be a string literal (of at most {MAX_PATTERN_CHARS} characters), not {e}: a computed pattern can make one call run longer than any time limit can stop"
            )));
        };
        let n = text.chars().count();
        if n > MAX_PATTERN_CHARS {
            return Err(R::Cost(format!(
                "the pattern of {what} has {n} characters; at most {MAX_PATTERN_CHARS} are allowed"
            )));
        }
        self.pattern_chars += n;
        if self.pattern_chars > MAX_PATTERN_TOTAL_CHARS {
            return Err(R::Cost(format!(
                "the search patterns of the query have more than {MAX_PATTERN_TOTAL_CHARS} characters in all"
            )));
        }
        Ok(n)
    }

    /// Checks a search's subject: one stored value at most. Returns its copies.
    fn subject(&mut self, what: &str, e: &Expr) -> Result<Copies, SqlRefusal> {
        let c = self.expr(e)?;
        if c > 1 {
            return Err(R::Cost(format!(
                "the text {what} searches must be one stored value (a column, optionally through lower, upper, trim, substr, cast or coalesce), not {e}, which can hold {} stored values",
                shown_copies(c)
            )));
        }
        Ok(c)
    }

    /// A search with cost |subject| × |pattern|: both rules, and the copies of its result.
    fn search(
        &mut self,
        what: &str,
        subject: &Expr,
        pattern: &Expr,
        keeps: bool,
    ) -> Result<Copies, SqlRefusal> {
        let c = self.subject(what, subject)?;
        self.pattern(what, pattern)?;
        Ok(if keeps { c } else { 0 })
    }

    /// Checks an expression and returns its copies bound.
    fn expr(&mut self, e: &Expr) -> Result<Copies, SqlRefusal> {
        self.seen.exprs.insert(e as *const Expr);
        let copies = self.expr_inner(e)?;
        if self.pg() && copies > MAX_COPIES {
            return Err(R::Cost(format!(
                "{e} can hold {} stored values; at most {MAX_COPIES} are allowed on PostgreSQL, which has no limit on a value's size",
                shown_copies(copies)
            )));
        }
        Ok(copies)
    }

    fn exprs(&mut self, list: &[Expr]) -> Result<Vec<Copies>, SqlRefusal> {
        list.iter().map(|e| self.expr(e)).collect()
    }

    fn expr_inner(&mut self, e: &Expr) -> Result<Copies, SqlRefusal> {
        match e {
            Expr::Identifier(i) => self.column(None, &lower(i), &i.to_string()),
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [q, c] => self.column(Some(&lower(q)), &lower(c), &format!("{q}.{c}")),
                _ => Err(R::Column(format!(
                    "{} (use table.column)",
                    parts
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(".")
                ))),
            },
            Expr::Value(v) => match &v.value {
                Value::Placeholder(p) => Err(R::Construct(format!("placeholder {p}"))),
                _ => Ok(0),
            },
            Expr::TypedString(_) => Ok(0),
            Expr::Interval(i) => {
                self.expr(&i.value)?;
                Ok(0)
            }
            Expr::Nested(inner) | Expr::UnaryOp { expr: inner, .. } => self.expr(inner),
            Expr::Collate { expr, .. } => self.expr(expr),
            Expr::IsFalse(x)
            | Expr::IsNotFalse(x)
            | Expr::IsTrue(x)
            | Expr::IsNotTrue(x)
            | Expr::IsNull(x)
            | Expr::IsNotNull(x)
            | Expr::IsUnknown(x)
            | Expr::IsNotUnknown(x) => {
                self.expr(x)?;
                Ok(0)
            }
            Expr::IsDistinctFrom(a, b) | Expr::IsNotDistinctFrom(a, b) => {
                self.expr(a)?;
                self.expr(b)?;
                Ok(0)
            }
            Expr::Between {
                expr, low, high, ..
            } => {
                self.expr(expr)?;
                self.expr(low)?;
                self.expr(high)?;
                Ok(0)
            }
            Expr::In { expr, target, .. } => {
                self.expr(expr)?;
                match target {
                    InTarget::List(list) => {
                        self.exprs(list)?;
                    }
                    InTarget::Subquery(q) => {
                        self.query(q)?;
                    }
                    other => return Err(R::Construct(format!("IN {}", kind(other)))),
                }
                Ok(0)
            }
            Expr::BinaryOp { left, op, right } => match operator_cost(op) {
                Some(Cost::Small) => {
                    self.expr(left)?;
                    self.expr(right)?;
                    Ok(0)
                }
                Some(Cost::Sum) => Ok(add(self.expr(left)?, self.expr(right)?)),
                Some(Cost::Search { keeps, .. }) => {
                    self.search(&op.to_string(), left, right, keeps)
                }
                Some(Cost::Regex) => Err(regex_refusal(&format!("the operator {op}"))),
                _ => Err(R::Construct(format!("the operator {op}"))),
            },
            Expr::Like {
                any,
                expr,
                pattern,
                escape_char,
                ..
            }
            | Expr::ILike {
                any,
                expr,
                pattern,
                escape_char,
                ..
            } => {
                let what = if matches!(e, Expr::Like { .. }) {
                    "LIKE"
                } else {
                    "ILIKE"
                };
                if *any {
                    return Err(R::Construct(format!("{what} ANY")));
                }
                if let Some(esc) = escape_char {
                    self.expr(esc)?;
                    if literal_text(esc).is_none_or(|t| t.chars().count() != 1) {
                        return Err(R::Cost(format!(
                            "the ESCAPE of {what} must be a one-character string literal"
                        )));
                    }
                }
                self.search(what, expr, pattern, false)
            }
            Expr::SimilarTo { .. } => Err(regex_refusal("SIMILAR TO")),
            Expr::RLike { .. } => Err(regex_refusal("REGEXP")),
            Expr::AnyOp {
                left,
                compare_op,
                right,
                ..
            }
            | Expr::AllOp {
                left,
                compare_op,
                right,
            } => {
                if operator_cost(compare_op) != Some(Cost::Small) {
                    return Err(R::Construct(format!("the operator {compare_op}")));
                }
                if !matches!(**right, Expr::Subquery(_)) {
                    return Err(R::Construct(
                        "ANY / ALL over something else than a subquery".into(),
                    ));
                }
                self.expr(left)?;
                self.expr(right)?;
                Ok(0)
            }
            Expr::Cast {
                kind: ck,
                expr,
                format,
                ..
            } => {
                if format.is_some() || !matches!(ck, CastKind::Cast | CastKind::DoubleColon) {
                    return Err(R::Construct(format!("{} with a format", kind(ck))));
                }
                self.expr(expr)
            }
            Expr::AtTimeZone {
                timestamp,
                time_zone,
            } => {
                self.expr(timestamp)?;
                self.expr(time_zone)?;
                Ok(0)
            }
            Expr::Extract { expr, .. } | Expr::Ceil { expr, .. } | Expr::Floor { expr, .. } => {
                self.expr(expr)?;
                Ok(0)
            }
            Expr::Position { expr, r#in } => self.search("position", r#in, expr, false),
            Expr::Substring {
                expr,
                substring_from,
                substring_for,
                ..
            } => {
                let c = self.expr(expr)?;
                for p in [substring_from, substring_for].into_iter().flatten() {
                    self.expr(p)?;
                    if !integer_literal(p) {
                        return Err(R::Cost(format!(
                            "the positions of substring must be integer literals, not {p}"
                        )));
                    }
                }
                Ok(c)
            }
            Expr::Trim {
                trim_what,
                expr,
                trim_characters,
                ..
            } => match (trim_what, trim_characters.as_deref()) {
                (None, None) => self.expr(expr),
                (Some(set), None) => self.search("trim", expr, set, true),
                (None, Some([set])) => self.search("trim", expr, set, true),
                _ => Err(R::Construct("this form of TRIM".into())),
            },
            Expr::Function(f) => self.function(f),
            Expr::Case {
                operand,
                conditions,
                else_result,
                ..
            } => {
                if let Some(o) = operand {
                    self.expr(o)?;
                }
                let mut c = 0;
                for w in conditions {
                    self.expr(&w.condition)?;
                    c = c.max(self.expr(&w.result)?);
                }
                if let Some(x) = else_result {
                    c = c.max(self.expr(x)?);
                }
                Ok(c)
            }
            Expr::Exists { subquery, .. } => {
                self.query(subquery)?;
                Ok(0)
            }
            Expr::Subquery(q) => Ok(self.query(q)?.iter().map(|o| o.copies).max().unwrap_or(0)),
            Expr::Tuple(list) => Ok(self.exprs(list)?.into_iter().fold(0, add)),
            other => Err(R::Construct(format!("expression {}", kind(other)))),
        }
    }

    /// Refuses a cost class that is not allowed on this engine.
    fn refused_class(&self, cost: Cost, what: &str) -> Result<(), SqlRefusal> {
        match cost {
            Cost::Regex => Err(regex_refusal(&format!("function {what}"))),
            Cost::ConcatAgg if self.pg() => Err(R::Cost(format!(
                "function {what} is not allowed on PostgreSQL: its result grows with every row it aggregates, and PostgreSQL has no limit on a value's size"
            ))),
            Cost::Grow if self.pg() => Err(R::Cost(format!(
                "function {what} is not allowed on PostgreSQL: its result can be far larger than its arguments, and PostgreSQL has no limit on a value's size"
            ))),
            _ => Ok(()),
        }
    }

    fn function(&mut self, f: &sqlparser::ast::Function) -> Result<Copies, SqlRefusal> {
        let name = match f.name.0.as_slice() {
            [ObjectNamePart::Identifier(i)] => lower(i),
            _ => return Err(R::Function(f.name.to_string())),
        };
        let cost = function_cost(&name);
        // Refused whatever the allowlist says; the refusal says why.
        if let Some(c @ (Cost::Regex | Cost::ConcatAgg | Cost::Grow)) = cost {
            self.refused_class(c, &f.name.to_string())?;
        }
        if !self.policy.functions.contains(&name) {
            return Err(R::Function(f.name.to_string()));
        }
        let Some(cost) = cost else {
            return Err(R::Cost(format!(
                "function {} is not allowed: the guard does not know its cost",
                f.name
            )));
        };
        if !matches!(f.parameters, FunctionArguments::None) || f.uses_odbc_syntax {
            return Err(R::Construct(format!("parameters of {}", f.name)));
        }
        if !f.within_group.is_empty() {
            return Err(R::Construct(format!("WITHIN GROUP in {}", f.name)));
        }
        if let Some(filter) = &f.filter {
            self.expr(filter)?;
        }
        match &f.over {
            Some(WindowType::WindowSpec(spec)) => self.window(spec)?,
            Some(WindowType::NamedWindow(_)) | None => {}
        }
        let mut args: Vec<&Expr> = Vec::new();
        match &f.args {
            FunctionArguments::None => {}
            FunctionArguments::Subquery(_) => {
                return Err(R::Construct(format!(
                    "a subquery as the arguments of {}",
                    f.name
                )))
            }
            FunctionArguments::List(list) => {
                for clause in &list.clauses {
                    match clause {
                        FunctionArgumentClause::OrderBy(order) => {
                            for o in order {
                                self.order_by_expr(o)?;
                            }
                        }
                        FunctionArgumentClause::IgnoreOrRespectNulls(_) => {}
                        other => {
                            return Err(R::Construct(format!("{} in {}", kind(other), f.name)))
                        }
                    }
                }
                for arg in &list.args {
                    let FunctionArg::Unnamed(a) = arg else {
                        return Err(R::Construct(format!("named arguments of {}", f.name)));
                    };
                    match a {
                        FunctionArgExpr::Expr(e) => args.push(e),
                        FunctionArgExpr::Wildcard if name == "count" => {}
                        FunctionArgExpr::QualifiedWildcard(q) if name == "count" => {
                            self.wildcard(Some(q))?;
                        }
                        _ => return Err(R::Construct(format!("* in {}", f.name))),
                    }
                }
            }
        }
        let what = f.name.to_string();
        let arg = |i: usize| -> Result<&Expr, SqlRefusal> {
            args.get(i)
                .copied()
                .ok_or_else(|| R::Construct(format!("{what} with {} arguments", args.len())))
        };
        match cost {
            Cost::Small => {
                for a in &args {
                    self.expr(a)?;
                }
                Ok(0)
            }
            Cost::Same => Ok(args
                .iter()
                .map(|a| self.expr(a))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .max()
                .unwrap_or(0)),
            Cost::Sum => Ok(args
                .iter()
                .map(|a| self.expr(a))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .fold(0, add)),
            Cost::Slice => {
                let c = self.expr(arg(0)?)?;
                for p in &args[1..] {
                    self.expr(p)?;
                    if !integer_literal(p) {
                        return Err(R::Cost(format!(
                            "the positions and lengths of {what} must be integer literals, not {p}"
                        )));
                    }
                }
                Ok(c)
            }
            Cost::Trim if args.len() == 1 => self.expr(args[0]),
            Cost::Trim if args.len() == 2 => self.search(&what, args[0], args[1], true),
            Cost::Trim => Err(R::Construct(format!(
                "{what} with {} arguments",
                args.len()
            ))),
            Cost::Search {
                subject,
                pattern,
                keeps,
            } => {
                let (s, p) = (arg(subject)?, arg(pattern)?);
                let c = self.search(&what, s, p, keeps)?;
                for (i, a) in args.iter().enumerate() {
                    if i != subject && i != pattern {
                        self.expr(a)?;
                    }
                }
                Ok(c)
            }
            Cost::Replace => {
                if args.len() != 3 {
                    return Err(R::Construct(format!(
                        "{what} with {} arguments",
                        args.len()
                    )));
                }
                let (s, p, r) = (args[0], args[1], args[2]);
                let c = self.search(&what, s, p, true)?;
                self.expr(r)?;
                match (literal_text(p), literal_text(r)) {
                    (Some(from), Some(to)) if to.chars().count() <= from.chars().count() => Ok(c),
                    _ if self.pg() => Err(R::Cost(format!(
                        "on PostgreSQL the replacement of {what} must be a string literal no longer than the text it replaces (the result must not grow)"
                    ))),
                    _ => Ok(UNBOUNDED),
                }
            }
            Cost::Translate => {
                if args.len() != 3 {
                    return Err(R::Construct(format!(
                        "{what} with {} arguments",
                        args.len()
                    )));
                }
                let c = self.search(&what, args[0], args[1], true)?;
                self.pattern(&what, args[2])?;
                Ok(c)
            }
            Cost::ConcatAgg | Cost::Grow => {
                for a in &args {
                    self.expr(a)?;
                }
                Ok(UNBOUNDED)
            }
            Cost::Regex => Err(regex_refusal(&format!("function {what}"))),
        }
    }
}

/// Finds any expression, query or FROM item the analyzer did not check.
struct Net<'a> {
    seen: &'a Seen,
    missed: Option<String>,
}

impl Visitor for Net<'_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if !self.seen.queries.contains(&(q as *const Query)) {
            self.missed = Some("a subquery".into());
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        if !self.seen.factors.contains(&(tf as *const TableFactor)) {
            self.missed = Some(format!("table source {}", kind(tf)));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if !self.seen.exprs.contains(&(e as *const Expr)) {
            self.missed = Some(format!("the expression {}", short(&e.to_string())));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_value(&mut self, v: &ValueWithSpan) -> ControlFlow<()> {
        if let Value::Placeholder(p) = &v.value {
            self.missed = Some(format!("placeholder {p}"));
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_MAX_COLUMNS;

    fn schema() -> Schema {
        Schema::default()
            .with_table(
                "users",
                &[
                    "id",
                    "username",
                    "email",
                    "password",
                    "isAdmin",
                    "createdAt",
                    "updatedAt",
                ],
            )
            .with_table(
                "articles",
                &[
                    "id",
                    "publicationName",
                    "author",
                    "title",
                    "description",
                    "url",
                    "urlToImage",
                    "publishedDate",
                    "createdAt",
                    "updatedAt",
                ],
            )
            .with_table(
                "articleapproveds",
                &[
                    "id",
                    "userId",
                    "articleId",
                    "isApproved",
                    "headlineForPdfReport",
                    "textForPdfReport",
                    "createdAt",
                    "updatedAt",
                ],
            )
    }

    fn sqlite(sql: &str) -> Result<String, SqlRefusal> {
        check(sql, SqlDialect::Sqlite, &SqlPolicy::default(), &schema())
    }

    fn pg(sql: &str) -> Result<String, SqlRefusal> {
        check(sql, SqlDialect::Postgres, &SqlPolicy::default(), &schema())
    }

    fn both_refuse(sql: &str) -> (SqlRefusal, SqlRefusal) {
        match (sqlite(sql), pg(sql)) {
            (Err(a), Err(b)) => (a, b),
            other => panic!("{sql}: {other:?}"),
        }
    }

    fn outputs(sql: &str, dialect: SqlDialect) -> Vec<Output> {
        let statement = parse_one(sql, dialect).unwrap();
        check_statement(&statement, dialect, &SqlPolicy::default(), &schema()).unwrap()
    }

    fn wraps(sql: &str, d: SqlDialect) {
        let p = prepare(sql, d, &SqlPolicy::default(), &schema(), CUT);
        assert!(p.is_ok(), "{sql}: {p:?}");
    }

    const CUT: Cut = Cut {
        max_rows: 1000,
        cell_chars: 4096,
    };

    #[test]
    fn ordinary_questions_pass() {
        for sql in [
            "SELECT COUNT(*) FROM Articles;",
            r#"SELECT "id", "title" FROM "Articles" ORDER BY "publishedDate" DESC LIMIT 10"#,
            "SELECT * FROM Articles",
            "SELECT * FROM Articles LIMIT 5",
            "SELECT a.* FROM Articles a",
            "SELECT username, isAdmin FROM Users ORDER BY createdAt",
            "SELECT u.username, COUNT(aa.id) AS n FROM Users u JOIN ArticleApproveds aa ON aa.userId = u.id GROUP BY u.username ORDER BY n DESC",
            "WITH a AS (SELECT id, title FROM Articles) SELECT title FROM a",
            "WITH a AS (SELECT id FROM Articles), b AS (SELECT id FROM a) SELECT * FROM b",
            "SELECT title FROM Articles WHERE id IN (SELECT articleId FROM ArticleApproveds WHERE isApproved)",
            "SELECT CAST(publishedDate AS TEXT), lower(title), coalesce(author, 'n/a') FROM Articles",
            "SELECT 1",
            "SELECT title FROM Articles UNION SELECT username FROM Users",
            "SELECT title FROM Articles WHERE lower(title) LIKE '%climate%'",
            "SELECT COUNT(*) AS n FROM Articles",
            "SELECT publicationName AS p, COUNT(*) AS n FROM Articles GROUP BY p ORDER BY n DESC, p",
            "SELECT a.title, u.username FROM Articles a LEFT JOIN ArticleApproveds aa ON aa.articleId = a.id LEFT JOIN Users u ON u.id = aa.userId WHERE aa.isApproved IS NOT NULL",
            "SELECT x.title FROM (SELECT title, publishedDate FROM Articles) x ORDER BY x.publishedDate",
            "SELECT title FROM Articles a WHERE EXISTS (SELECT 1 FROM ArticleApproveds aa WHERE aa.articleId = a.id)",
            "SELECT title, row_number() OVER (PARTITION BY publicationName ORDER BY publishedDate DESC) AS r FROM Articles",
            "SELECT title FROM Articles WHERE title NOT LIKE 'A%' ESCAPE '!' AND author IS NULL",
            "SELECT substr(title, 1, 20), left(author, 3), length(description) FROM Articles",
            "SELECT title || ' (' || author || ')' AS t FROM Articles",
            "SELECT CASE WHEN isApproved THEN 'yes' ELSE 'no' END AS approved FROM ArticleApproveds",
            "SELECT max(publishedDate), min(title) FROM Articles",
            "SELECT trim(title), upper(author) FROM Articles WHERE publishedDate BETWEEN '2025-01-01' AND '2025-12-31'",
            "WITH c(t) AS (SELECT title FROM Articles) SELECT t FROM c",
            "SELECT t FROM (SELECT title AS t FROM Articles) x WHERE t > 'B'",
            "VALUES (1, 'a'), (2, 'b')",
        ] {
            assert!(sqlite(sql).is_ok(), "{sql}: {:?}", sqlite(sql));
            assert!(pg(sql).is_ok(), "{sql}: {:?}", pg(sql));
        }
        // SQLite only (PostgreSQL has no instr and no group_concat).
        for sql in [
            "SELECT instr(title, 'heater') FROM Articles",
            "SELECT group_concat(title, ', ') FROM Articles",
            "SELECT trim(title, 'xyz') FROM Articles",
        ] {
            assert!(sqlite(sql).is_ok(), "{sql}: {:?}", sqlite(sql));
        }
        for sql in [
            "SELECT strpos(title, 'heater'), position('a' IN title) FROM Articles",
            "SELECT split_part(url, '/', 3), ltrim(title, 'x') FROM Articles",
            "SELECT title FROM Articles WHERE title ILIKE '%fire%'",
            "SELECT now(), current_date",
            r#"SELECT COUNT(*) AS "count" FROM "ArticleApproveds" WHERE "isApproved" IS TRUE"#,
        ] {
            assert!(pg(sql).is_ok(), "{sql}: {:?}", pg(sql));
        }
    }

    #[test]
    fn the_shapes_llms_write_pass() {
        for sql in [
            "SELECT CURRENT_TIMESTAMP",
            "SELECT COUNT(DISTINCT author) AS authors FROM Articles",
            "SELECT DISTINCT author FROM Articles WHERE author IS NOT NULL AND author <> '' ORDER BY author NULLS LAST",
            "SELECT title FROM Articles WHERE publicationName IN ('Daily Ledger', 'Metro Times') AND id NOT IN (SELECT articleId FROM ArticleApproveds)",
            "SELECT author, COUNT(*) AS n FROM Articles GROUP BY author HAVING COUNT(*) > 1 ORDER BY 2 DESC LIMIT 10 OFFSET 5",
            "SELECT a.title FROM Articles AS a WHERE a.id = (SELECT max(id) FROM Articles)",
            "SELECT round(avg(length(title)), 2) AS avg_len, coalesce(max(author), 'none') FROM Articles",
            "SELECT title, rank() OVER w AS r FROM Articles WINDOW w AS (ORDER BY publishedDate DESC)",
            "SELECT title FROM Articles WHERE length(title) > 10 AND upper(substr(title, 1, 1)) = 'R'",
            "SELECT CAST(id AS TEXT) || ': ' || title AS line FROM Articles",
            "SELECT title FROM Articles a JOIN (SELECT articleId, COUNT(*) AS c FROM ArticleApproveds GROUP BY articleId) x ON x.articleId = a.id ORDER BY x.c DESC",
            "SELECT title FROM (SELECT * FROM Articles) sub WHERE sub.author LIKE 'K%'",
            "SELECT publicationName, COUNT(*) FROM Articles GROUP BY 1",
            "SELECT title FROM Articles WHERE (publishedDate > '2025-01-01' OR author IS NULL) AND NOT (id = 2)",
        ] {
            assert!(sqlite(sql).is_ok(), "{sql}: {:?}", sqlite(sql));
            assert!(pg(sql).is_ok(), "{sql}: {:?}", pg(sql));
            wraps(sql, SqlDialect::Sqlite);
            wraps(sql, SqlDialect::Postgres);
        }
        for sql in [
            "SELECT date('now'), strftime('%Y', publishedDate) AS y FROM Articles",
            "SELECT strftime('%Y', publishedDate) AS y, COUNT(*) AS n FROM Articles GROUP BY y ORDER BY y",
            "SELECT title FROM Articles WHERE publishedDate > date('now', '-30 days')",
            "SELECT iif(isApproved, 'yes', 'no') FROM ArticleApproveds",
        ] {
            assert!(sqlite(sql).is_ok(), "{sql}: {:?}", sqlite(sql));
            wraps(sql, SqlDialect::Sqlite);
        }
        for sql in [
            r#"SELECT "title" FROM "Articles" WHERE "publishedDate" > now() - INTERVAL '30 days'"#,
            r#"SELECT EXTRACT(YEAR FROM "publishedDate") AS y, "id"::text FROM "Articles""#,
            r#"SELECT substring("title" FROM 1 FOR 10), trim(BOTH ' ' FROM "title") FROM "Articles""#,
            r#"SELECT date_trunc('month', "createdAt") AS m, COUNT(*) FROM "Articles" GROUP BY m ORDER BY m"#,
            r#"SELECT to_char("publishedDate", 'YYYY-MM') FROM "Articles""#,
            r#"SELECT "title" FROM "Articles" WHERE "id" = ANY (SELECT "articleId" FROM "ArticleApproveds")"#,
        ] {
            assert!(pg(sql).is_ok(), "{sql}: {:?}", pg(sql));
            wraps(sql, SqlDialect::Postgres);
        }
    }

    #[test]
    fn refusals_name_what_was_refused() {
        assert_eq!(
            sqlite("SELECT password FROM Users"),
            Err(R::Column("password".into()))
        );
        assert_eq!(
            sqlite("SELECT email FROM Users"),
            Err(R::Column("users.email".into()))
        );
        assert_eq!(
            sqlite("SELECT u.email FROM Users u"),
            Err(R::Column("u.email".into()))
        );
        assert_eq!(
            sqlite("SELECT * FROM Users"),
            Err(R::Wildcard("users".into()))
        );
        assert_eq!(
            sqlite("SELECT u.* FROM Users u"),
            Err(R::Wildcard("u".into()))
        );
        assert_eq!(
            pg("SELECT row_to_json(u) FROM \"Users\" u"),
            Err(R::Function("row_to_json".into()))
        );
        assert_eq!(
            pg("SELECT coalesce(u) FROM \"Users\" u"),
            Err(R::WholeRow("users".into()))
        );
        assert_eq!(
            sqlite("SELECT * FROM chat_messages"),
            Err(R::Table("chat_messages".into()))
        );
        assert_eq!(
            pg(r#"SELECT "set_config"('default_transaction_read_only','off',false)"#),
            Err(R::Function(r#""set_config""#.into()))
        );
        assert_eq!(
            pg("SELECT pg_catalog.set_config('a','b',false)"),
            Err(R::Function("pg_catalog.set_config".into()))
        );
        assert_eq!(sqlite("SELECT 1; SELECT 2"), Err(R::MultipleStatements));
        assert_eq!(
            sqlite("DELETE FROM Users"),
            Err(R::NotAQuery("DELETE".into()))
        );
        assert!(matches!(
            sqlite("SELECT 1 AS [x']; ATTACH DATABASE 'x' AS s; --']"),
            Err(R::MultipleStatements)
        ));
        assert!(matches!(
            sqlite("-- only a comment"),
            Err(R::Empty) | Err(R::Parse(_))
        ));
        assert_eq!(
            pg("WITH u AS (UPDATE \"Users\" SET \"isAdmin\"=true RETURNING \"id\") SELECT * FROM u"),
            Err(R::Construct("a data-modifying UPDATE".into()))
        );
        assert_eq!(
            pg("SELECT id FROM \"Articles\" FOR UPDATE"),
            Err(R::Construct(
                "a locking clause (FOR UPDATE / FOR SHARE)".into()
            ))
        );
        assert_eq!(
            pg("SELECT id INTO t FROM \"Articles\""),
            Err(R::Construct("SELECT INTO".into()))
        );
    }

    #[test]
    fn cte_names_are_scoped() {
        // A CTE's own name inside its body (no RECURSIVE) is the real table.
        assert_eq!(
            pg("WITH chat_messages AS (SELECT 1 FROM chat_messages) SELECT 1 FROM chat_messages"),
            Err(R::Table("chat_messages".into()))
        );
        // A CTE is not visible outside the query that declares it.
        assert_eq!(
            sqlite("SELECT (WITH secrets AS (SELECT 1) SELECT 1 FROM secrets), (SELECT 1 FROM secrets)"),
            Err(R::Table("secrets".into()))
        );
        // Later CTEs are not visible to earlier ones.
        assert_eq!(
            sqlite("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a"),
            Err(R::Table("b".into()))
        );
        // A CTE shadows the real table of the same name.
        assert!(sqlite("WITH Users AS (SELECT 1 AS email) SELECT email FROM Users").is_ok());
    }

    #[test]
    fn unknown_schema_is_strict() {
        let p = SqlPolicy::default();
        let none = Schema::default();
        for sql in [
            "SELECT * FROM Articles",
            "SELECT title FROM Articles",
            "SELECT a.title FROM Articles a",
            "SELECT updatedAt FROM Users",
        ] {
            assert!(check(sql, SqlDialect::Sqlite, &p, &none).is_err(), "{sql}");
        }
        assert!(check(
            "SELECT COUNT(*) FROM Articles",
            SqlDialect::Sqlite,
            &p,
            &none
        )
        .is_ok());
    }

    #[test]
    fn names_must_resolve() {
        // A column list on a real table's alias renames hidden columns: refused.
        let (a, b) = both_refuse(r#"SELECT c4 AS p FROM "Users" AS u(c1, c2, c3, c4)"#);
        assert!(a.to_string().contains("column list on the alias"), "{a}");
        assert_eq!(a, b);
        both_refuse(
            r#"SELECT x.e FROM (SELECT v.c3 AS e FROM "Articles" a JOIN "Users" AS v(c1, c2, c3) ON v.c1 = a."id") x"#,
        );
        // Unknown names, quoted or not (SQLite would read an unknown "x" as the string 'x').
        for (sql, unknown) in [
            ("SELECT nothere FROM Articles", "nothere"),
            (r#"SELECT "nothere" FROM Articles"#, r#""nothere""#),
            ("SELECT a.nothere FROM Articles a", "a.nothere"),
            (
                "SELECT x.nothere FROM (SELECT title FROM Articles) x",
                "x.nothere",
            ),
            ("SELECT title FROM Articles WHERE nothere = 1", "nothere"),
            (
                "WITH c AS (SELECT title FROM Articles) SELECT id FROM c",
                "id",
            ),
            ("SELECT t FROM Articles", "t"),
        ] {
            assert_eq!(sqlite(sql), Err(R::Unknown(unknown.into())), "{sql}");
            assert_eq!(pg(sql), Err(R::Unknown(unknown.into())), "{sql}");
        }
        // A derived table's column list adds names; a CTE's too.
        assert!(pg("SELECT x.a FROM (SELECT title FROM Articles) AS x(a)").is_ok());
        assert!(sqlite("WITH c(a) AS (SELECT title FROM Articles) SELECT a FROM c").is_ok());
        // A derived table's names hide nothing of the denied columns.
        assert_eq!(
            sqlite("SELECT x.e FROM (SELECT email AS e FROM Users) x"),
            Err(R::Column("users.email".into()))
        );
        // An alias named like a denied column does not open it in WHERE.
        assert_eq!(
            sqlite("SELECT username AS x FROM Users WHERE email LIKE 'a%'"),
            Err(R::Column("users.email".into()))
        );
        // Select aliases resolve in ORDER BY, GROUP BY and WHERE; correlated names resolve.
        assert!(
            sqlite("SELECT title AS t FROM Articles WHERE t LIKE 'R%' GROUP BY t ORDER BY t")
                .is_ok()
        );
        assert!(pg("SELECT u.username FROM \"Users\" u WHERE EXISTS (SELECT 1 FROM \"ArticleApproveds\" aa WHERE aa.\"userId\" = u.id)").is_ok());
        // Qualifiers must be in scope.
        assert_eq!(
            sqlite("SELECT z.title FROM Articles a"),
            Err(R::Column(
                "z.title (no table or alias z in the query)".into()
            ))
        );
        assert!(sqlite("SELECT * FROM Articles a JOIN ArticleApproveds aa USING (id)").is_err());
    }

    #[test]
    fn outputs_are_named_and_counted() {
        let names = |sql: &str| -> Vec<String> {
            outputs(sql, SqlDialect::Sqlite)
                .into_iter()
                .map(|o| o.name)
                .collect()
        };
        assert_eq!(
            names("SELECT title, a.author, COUNT(*) AS n, lower(url) FROM Articles a"),
            ["title", "author", "n", "lower(url)"]
        );
        assert_eq!(names("SELECT * FROM Articles").len(), 10);
        assert_eq!(
            names("SELECT a.*, aa.id FROM Articles a, ArticleApproveds aa").len(),
            11
        );
        assert_eq!(
            names("WITH c AS (SELECT id, title FROM Articles) SELECT * FROM c"),
            ["id", "title"]
        );
        assert_eq!(
            names("SELECT title FROM Articles UNION SELECT username FROM Users"),
            ["title"]
        );
        assert_eq!(
            unique_names(&outputs(
                "SELECT id, id, id FROM Articles",
                SqlDialect::Sqlite
            )),
            ["id", "id_2", "id_3"]
        );
        let wide = format!(
            "SELECT {} FROM Articles",
            vec!["title"; DEFAULT_MAX_COLUMNS + 1].join(", ")
        );
        assert_eq!(
            sqlite(&wide),
            Err(R::TooManyColumns(
                DEFAULT_MAX_COLUMNS + 1,
                DEFAULT_MAX_COLUMNS
            ))
        );
        // `*` counts over the schema: 4 * 10 columns.
        assert!(matches!(
            sqlite("SELECT * FROM Articles a, Articles b, Articles c, Articles d"),
            Err(R::TooManyColumns(40, _))
        ));
    }

    #[test]
    fn the_cost_table_classifies_every_default_function() {
        for f in SqlPolicy::default().functions {
            assert!(
                function_cost(&f).is_some() || ["position", "extract"].contains(&f.as_str()),
                "{f} has no cost"
            );
        }
        assert_eq!(function_cost("instr"), Some(search(0, 1, false)));
        assert_eq!(function_cost("string_agg"), Some(Cost::ConcatAgg));
        assert_eq!(function_cost("repeat"), Some(Cost::Grow));
        assert_eq!(function_cost("regexp_replace"), Some(Cost::Regex));
        assert_eq!(function_cost("load_extension"), None);
        assert!(!SqlPolicy::default().functions.contains("string_agg"));
        assert_eq!(
            operator_cost(&BinaryOperator::StringConcat),
            Some(Cost::Sum)
        );
        assert_eq!(
            operator_cost(&BinaryOperator::PGRegexMatch),
            Some(Cost::Regex)
        );
        assert_eq!(operator_cost(&BinaryOperator::PGLikeMatch), None);
        // A listed function without a known cost is refused.
        let mut p = SqlPolicy::default();
        p.functions.insert("md6".into());
        assert!(matches!(
            check("SELECT md6(title) FROM Articles", SqlDialect::Sqlite, &p, &schema()),
            Err(R::Cost(m)) if m.contains("does not know its cost")
        ));
        // Growth and row-concatenation are refused on PostgreSQL even when listed.
        p.functions.extend(
            [
                "repeat",
                "string_agg",
                "lpad",
                "format",
                "replace",
                "translate",
            ]
            .map(String::from),
        );
        let pgp = |sql: &str| check(sql, SqlDialect::Postgres, &p, &schema());
        for sql in [
            "SELECT repeat(title, 1000) FROM \"Articles\"",
            "SELECT string_agg(title, ',') FROM \"Articles\"",
            "SELECT lpad(title, 100000) FROM \"Articles\"",
            "SELECT format('%s', title) FROM \"Articles\"",
            "SELECT replace(title, 'a', 'aaaa') FROM \"Articles\"",
        ] {
            assert!(
                matches!(pgp(sql), Err(R::Cost(m)) if m.contains("PostgreSQL")),
                "{sql}: {:?}",
                pgp(sql)
            );
        }
        assert!(pgp(
            "SELECT replace(title, 'abc', 'x'), translate(title, 'abc', 'xyz') FROM \"Articles\""
        )
        .is_ok());
        // On SQLite the engine caps them.
        assert!(check(
            "SELECT repeat(title, 2) FROM Articles",
            SqlDialect::Sqlite,
            &p,
            &schema()
        )
        .is_ok());
    }

    #[test]
    fn searches_need_a_short_literal_pattern_and_a_bounded_subject() {
        let long = "a".repeat(MAX_PATTERN_CHARS + 1);
        let at_most = "a".repeat(MAX_PATTERN_CHARS);
        assert!(sqlite(&format!(
            "SELECT title FROM Articles WHERE title LIKE '%{}'",
            &at_most[1..]
        ))
        .is_ok());
        let cases = [
            // The attacker's SQLite query: both strings built by group_concat over a cross join.
            "SELECT instr(h, n) FROM (SELECT group_concat(a.title, '') AS h FROM Articles a, Articles b) x, (SELECT group_concat(title, '') AS n FROM Articles) y".to_string(),
            "SELECT instr(title, author) FROM Articles".into(),
            format!("SELECT instr(title, '{long}') FROM Articles"),
            "SELECT trim(title, (SELECT group_concat(author, '') FROM Articles)) FROM Articles".into(),
            "SELECT title FROM Articles WHERE title LIKE author".into(),
            "SELECT title FROM Articles WHERE title LIKE '%' || author || '%'".into(),
            "SELECT title FROM Articles WHERE (title || author) LIKE '%a%'".into(),
            "SELECT title FROM Articles WHERE group_concat(title) LIKE '%a%'".into(),
            "SELECT title FROM Articles WHERE title LIKE 'a' ESCAPE author".into(),
            "SELECT title FROM Articles WHERE title GLOB author".into(),
            "SELECT substr(title, author) FROM Articles".into(),
        ];
        for sql in &cases {
            assert!(
                matches!(sqlite(sql), Err(R::Cost(_))),
                "{sql}: {:?}",
                sqlite(sql)
            );
        }
        let pg_cases = [
            // The attacker's PostgreSQL query (string_agg is refused before the search is looked at).
            r#"SELECT strpos(h.s, n.s) FROM (SELECT string_agg(title, '') AS s FROM "Articles") h, (SELECT string_agg(title, '') AS s FROM "Articles") n"#.to_string(),
            r#"SELECT strpos(title, author) FROM "Articles""#.into(),
            r#"SELECT position(author IN title) FROM "Articles""#.into(),
            r#"SELECT split_part(title, author, 1) FROM "Articles""#.into(),
            r#"SELECT ltrim(title, author) FROM "Articles""#.into(),
            r#"SELECT trim(BOTH author FROM title) FROM "Articles""#.into(),
            r#"SELECT title FROM "Articles" WHERE title ILIKE author"#.into(),
            r#"SELECT substring(title FROM 'a.*b') FROM "Articles""#.into(),
            r#"SELECT title FROM "Articles" WHERE title ~ 'a+'"#.into(),
            r#"SELECT title FROM "Articles" WHERE title SIMILAR TO '%a%'"#.into(),
            r#"SELECT strpos(title || title, 'a') FROM "Articles""#.into(),
            format!(r#"SELECT strpos(title, '{long}') FROM "Articles""#),
        ];
        for sql in &pg_cases {
            assert!(matches!(pg(sql), Err(R::Cost(_))), "{sql}: {:?}", pg(sql));
        }
        assert!(matches!(
            pg(r#"SELECT title FROM "Articles" WHERE title ~~ 'a'"#),
            Err(R::Construct(_))
        ));
        // The total of all patterns is bounded too.
        let many = (0..5)
            .map(|_| format!("title LIKE '{at_most}'"))
            .collect::<Vec<_>>()
            .join(" OR ");
        assert!(
            matches!(sqlite(&format!("SELECT 1 FROM Articles WHERE {many}")), Err(R::Cost(m)) if m.contains("in all"))
        );
        // Messages say why.
        let m = sqlite("SELECT instr(title, author) FROM Articles")
            .unwrap_err()
            .to_string();
        assert!(m.contains("string literal"), "{m}");
    }

    #[test]
    fn the_copies_bound() {
        let copies = |sql: &str, d: SqlDialect| outputs(sql, d)[0].copies;
        let s = SqlDialect::Sqlite;
        assert_eq!(copies("SELECT title FROM Articles", s), 1);
        assert_eq!(copies("SELECT 'x'", s), 0);
        assert_eq!(copies("SELECT length(title) FROM Articles", s), 0);
        assert_eq!(copies("SELECT title || author || 'x' FROM Articles", s), 2);
        assert_eq!(
            copies("SELECT concat(title, author, url) FROM Articles", s),
            3
        );
        assert_eq!(
            copies("SELECT lower(substr(title, 1, 5)) FROM Articles", s),
            1
        );
        assert_eq!(copies("SELECT coalesce(title, author) FROM Articles", s), 1);
        assert_eq!(
            copies(
                "SELECT CASE WHEN id > 1 THEN title || title ELSE 'x' END FROM Articles",
                s
            ),
            2
        );
        assert_eq!(
            copies("SELECT group_concat(title) FROM Articles", s),
            UNBOUNDED
        );
        assert_eq!(
            copies(
                "SELECT x.t || x.t FROM (SELECT title || title AS t FROM Articles) x",
                s
            ),
            4
        );
        assert_eq!(
            copies(
                "SELECT (SELECT max(title) FROM Articles) || url FROM Articles",
                s
            ),
            2
        );
        assert_eq!(
            copies(
                "WITH c(t) AS (SELECT title || url FROM Articles) SELECT t FROM c",
                s
            ),
            2
        );
        // PostgreSQL: more than MAX_COPIES anywhere is refused.
        let nine = ["title"; 9].join(" || ");
        assert!(matches!(
            pg(&format!("SELECT {nine} FROM \"Articles\"")),
            Err(R::Cost(_))
        ));
        assert!(matches!(
            pg(&format!("SELECT length({nine}) FROM \"Articles\"")),
            Err(R::Cost(_))
        ));
        let eight = ["title"; 8].join(" || ");
        assert!(pg(&format!("SELECT {eight} FROM \"Articles\"")).is_ok());
        assert!(matches!(
            pg("SELECT x.t || x.t || x.t FROM (SELECT title || title || title AS t FROM \"Articles\") x"),
            Err(R::Cost(_))
        ));
        // SQLite caps every value itself: the bound is not enforced there.
        assert!(sqlite(&format!("SELECT {nine} FROM Articles")).is_ok());
    }

    #[test]
    fn the_wrapper_cuts_in_the_engine_and_round_trips() {
        for d in [SqlDialect::Sqlite, SqlDialect::Postgres] {
            let p = prepare(
                "SELECT title AS t, id FROM Articles ORDER BY t DESC LIMIT 2",
                d,
                &SqlPolicy::default(),
                &schema(),
                Cut {
                    max_rows: 10,
                    cell_chars: 100,
                },
            )
            .unwrap();
            assert_eq!(p.columns, ["t", "id"]);
            assert_eq!(
                p.sql,
                "WITH q (c1, c2) AS (SELECT title AS t, id FROM Articles ORDER BY t DESC LIMIT 2) \
                 SELECT CASE WHEN octet_length(CAST(q.c1 AS TEXT)) > 100 THEN NULL ELSE q.c1 END AS v1, \
                 CASE WHEN octet_length(CAST(q.c1 AS TEXT)) > 100 THEN octet_length(CAST(q.c1 AS TEXT)) || ':' || SUBSTR(CAST(q.c1 AS TEXT), 1, 100) END AS t1, \
                 CASE WHEN octet_length(CAST(q.c2 AS TEXT)) > 100 THEN NULL ELSE q.c2 END AS v2, \
                 CASE WHEN octet_length(CAST(q.c2 AS TEXT)) > 100 THEN octet_length(CAST(q.c2 AS TEXT)) || ':' || SUBSTR(CAST(q.c2 AS TEXT), 1, 100) END AS t2 \
                 FROM q LIMIT 11"
            );
            assert_eq!(
                p.canonical,
                "SELECT title AS t, id FROM Articles ORDER BY t DESC LIMIT 2"
            );
            // A query with its own WITH and a set operation wraps too.
            let p = prepare(
                "WITH a AS (SELECT title FROM Articles) SELECT title FROM a UNION SELECT username FROM Users",
                d,
                &SqlPolicy::default(),
                &schema(),
                CUT,
            )
            .unwrap();
            assert!(p.sql.starts_with("WITH q (c1) AS (WITH a AS"), "{}", p.sql);
            assert!(p.sql.ends_with("FROM q LIMIT 1001"), "{}", p.sql);
        }
    }

    #[test]
    fn every_expression_position_is_checked() {
        // Positions the walk covers: window specs, FILTER, aggregate ORDER BY, LIMIT, DISTINCT ON.
        assert_eq!(
            sqlite("SELECT count(*) FILTER (WHERE email = 'x') FROM Users"),
            Err(R::Column("users.email".into()))
        );
        assert_eq!(
            sqlite("SELECT rank() OVER (ORDER BY email) FROM Users"),
            Err(R::Column("users.email".into()))
        );
        assert_eq!(
            pg("SELECT DISTINCT ON (email) username FROM \"Users\""),
            Err(R::Column("users.email".into()))
        );
        assert_eq!(
            sqlite(
                "SELECT title FROM Articles LIMIT (SELECT count(*) FROM Users WHERE email > '')"
            ),
            Err(R::Column("users.email".into()))
        );
        assert!(matches!(
            sqlite("SELECT title FROM Articles LIMIT ?"),
            Err(R::Construct(_))
        ));
    }

    #[test]
    fn the_text_that_runs_is_canonical() {
        assert_eq!(sqlite("select 1 -- hi\n;").unwrap(), "SELECT 1");
        assert_eq!(pg("SELECT $$a'b$$ AS x").unwrap(), "SELECT $$a'b$$ AS x");
    }
}
