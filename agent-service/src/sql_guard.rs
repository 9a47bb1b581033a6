//! The guard in front of custom SQL (the `/sql` path and any SQL an LLM writes): a real parser
//! (`sqlparser`, with the connected engine's dialect) and a walk over the AST against a
//! [`SqlPolicy`]. Pure: no I/O; the executor (`sql_exec`) is the second wall.
//!
//! Accepted is exactly one query (`SELECT`, `WITH`, set operations of selects, `VALUES`) with no
//! data-modifying CTE, no `WITH RECURSIVE`, no `SELECT INTO`, no locking clause, that reads only
//! allowlisted tables (unqualified names; CTE names resolved by scope), only allowed columns (no
//! hidden column anywhere, per-table column allowlists such as `Users(id, username, isAdmin,
//! createdAt)`), no `*` or whole-row reference on a table with a denied column, and only
//! allowlisted functions (matched case-insensitively, quoted or not, never schema-qualified).
//! What runs is the canonical rendering of the checked AST, re-parsed and checked again, so
//! comments, quoting tricks and tokenizer differences never reach the database.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ops::ControlFlow;

use sqlparser::ast::{
    BinaryOperator, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, JoinConstraint,
    JoinOperator, ObjectName, ObjectNamePart, Query, Select, SelectItem,
    SelectItemQualifiedWildcardKind, SetExpr, Statement, TableFactor, TableWithJoins, Value,
    ValueWithSpan, Visit, Visitor,
};
use sqlparser::dialect::{Dialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;

/// Longest query text accepted, in characters.
pub const MAX_SQL_CHARS: usize = 4000;

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

/// Default table allowlist: the News Nexus content tables the tools read, and `Users` limited to
/// four columns. Format of `AGENT_SQL_TABLES`: comma-separated, `Table` or `Table(col col ...)`.
pub const DEFAULT_TABLES: &str = "Articles,ArticleApproveds,Users(id username isAdmin createdAt)";
/// Default hidden columns (`AGENT_SQL_HIDDEN_COLUMNS`), refused in every table.
pub const DEFAULT_HIDDEN_COLUMNS: &str = "password,passwordHash,password_hash,hash,token,accessToken,refreshToken,resetToken,reset_token,secret,apiKey,api_key,salt";
/// Default function allowlist (`AGENT_SQL_FUNCTIONS`): aggregates, window ranking, string,
/// date/time and math functions, `coalesce`, `nullif`. Functions that build large values from
/// small input (`repeat`, `lpad`, `printf`, `zeroblob`, ...) are not in it.
pub const DEFAULT_FUNCTIONS: &str =
    "count,sum,avg,min,max,total,group_concat,string_agg,bool_and,bool_or,every,\
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
        })
    }

    fn hidden(&self, column: &str) -> bool {
        self.hidden_columns.contains(column)
    }
}

/// The columns of the allowed tables as the database has them (lower-cased), used to decide
/// whether `*` or a whole-row reference would expose a denied column. A table missing here is
/// assumed to have one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schema {
    pub columns: BTreeMap<String, BTreeSet<String>>,
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
    #[error("function {0} is not allowed")]
    Function(String),
    #[error("a whole-row reference to {0} is not allowed (it has columns that are not allowed)")]
    WholeRow(String),
    #[error("* on {0} is not allowed (it has columns that are not allowed); name the columns")]
    Wildcard(String),
}

use SqlRefusal as R;

/// Checks custom SQL; returns the canonical text to run.
pub fn check(
    sql: &str,
    dialect: SqlDialect,
    policy: &SqlPolicy,
    schema: &Schema,
) -> Result<String, SqlRefusal> {
    if sql.chars().count() > MAX_SQL_CHARS {
        return Err(R::TooLong);
    }
    let statement = parse_one(sql, dialect)?;
    check_statement(&statement, policy, schema)?;
    let canonical = statement.to_string();
    // What runs is the rendering: it must parse back to the same statement and pass again.
    let again = parse_one(&canonical, dialect)?;
    if again.to_string() != canonical {
        return Err(R::Construct(
            "a query whose text does not round-trip".into(),
        ));
    }
    check_statement(&again, policy, schema)?;
    Ok(canonical)
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

/// The policy check of one parsed statement.
pub fn check_statement(
    statement: &Statement,
    policy: &SqlPolicy,
    schema: &Schema,
) -> Result<(), SqlRefusal> {
    let Statement::Query(_) = statement else {
        return Err(R::NotAQuery(statement_kind(statement)));
    };
    let mut scopes = Scopes {
        policy,
        frames: Vec::new(),
        real: HashSet::new(),
        bindings: BTreeMap::new(),
        used: BTreeSet::new(),
        derived: BTreeSet::new(),
    };
    if let ControlFlow::Break(r) = statement.visit(&mut scopes) {
        return Err(r);
    }
    let mut exprs = Exprs {
        policy,
        schema,
        real: &scopes.real,
        bindings: &scopes.bindings,
        used: &scopes.used,
        derived: &scopes.derived,
    };
    match statement.visit(&mut exprs) {
        ControlFlow::Break(r) => Err(r),
        ControlFlow::Continue(()) => Ok(()),
    }
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

/// CTE names visible in one query: those inherited from enclosing queries and its own.
struct Frame {
    inherited: Vec<String>,
    own: Vec<String>,
    cte_bodies: Vec<*const Query>,
}

/// First pass: statement shape, table references resolved against CTE scopes.
struct Scopes<'p> {
    policy: &'p SqlPolicy,
    frames: Vec<Frame>,
    /// Table factors that name real tables.
    real: HashSet<*const TableFactor>,
    /// Qualifier (alias or table name) → the real tables it may stand for.
    bindings: BTreeMap<String, BTreeSet<String>>,
    /// Every real table the query reads.
    used: BTreeSet<String>,
    /// Names of CTEs and aliases of subqueries (qualifiers that are not real tables).
    derived: BTreeSet<String>,
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
    {
        return Err(R::Construct("a dialect-specific SELECT clause".into()));
    }
    Ok(())
}

impl Visitor for Scopes<'_> {
    type Break = SqlRefusal;

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<SqlRefusal> {
        if let Err(r) = check_query_shape(q) {
            return ControlFlow::Break(r);
        }
        let inherited = match self.frames.last() {
            None => Vec::new(),
            Some(top) => {
                let mut v = top.inherited.clone();
                match top.cte_bodies.iter().position(|p| std::ptr::eq(*p, q)) {
                    // A CTE's body sees only the CTEs before it (no recursion).
                    Some(i) => v.extend(top.own[..i].iter().cloned()),
                    None => v.extend(top.own.iter().cloned()),
                }
                v
            }
        };
        if let Some(w) = &q.with {
            self.derived
                .extend(w.cte_tables.iter().map(|c| lower(&c.alias.name)));
        }
        let (own, cte_bodies) = match &q.with {
            Some(w) => (
                w.cte_tables.iter().map(|c| lower(&c.alias.name)).collect(),
                w.cte_tables
                    .iter()
                    .map(|c| &*c.query as *const Query)
                    .collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        self.frames.push(Frame {
            inherited,
            own,
            cte_bodies,
        });
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<SqlRefusal> {
        self.frames.pop();
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<SqlRefusal> {
        match check_select_shape(s) {
            Ok(()) => ControlFlow::Continue(()),
            Err(r) => ControlFlow::Break(r),
        }
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<SqlRefusal> {
        match tf {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                if args.is_some() {
                    return ControlFlow::Break(R::Construct(format!("table function {name}")));
                }
                let Some(key) = single_name(name) else {
                    return ControlFlow::Break(R::Table(format!(
                        "{name} (schema-qualified names are not allowed)"
                    )));
                };
                let visible = self
                    .frames
                    .last()
                    .is_some_and(|f| f.inherited.contains(&key) || f.own.contains(&key));
                if visible {
                    if let Some(a) = alias {
                        self.derived.insert(lower(&a.name));
                    }
                    return ControlFlow::Continue(());
                }
                if !self.policy.tables.contains_key(&key) {
                    return ControlFlow::Break(R::Table(name.to_string()));
                }
                self.real.insert(tf as *const TableFactor);
                self.used.insert(key.clone());
                self.bindings
                    .entry(key.clone())
                    .or_default()
                    .insert(key.clone());
                if let Some(a) = alias {
                    self.bindings.entry(lower(&a.name)).or_default().insert(key);
                }
                ControlFlow::Continue(())
            }
            TableFactor::Derived { alias, .. } => {
                if let Some(a) = alias {
                    self.derived.insert(lower(&a.name));
                }
                ControlFlow::Continue(())
            }
            TableFactor::NestedJoin { .. } => ControlFlow::Continue(()),
            other => ControlFlow::Break(R::Construct(format!("table source {}", kind(other)))),
        }
    }
}

/// Second pass: columns, whole-row references, wildcards, functions and expression kinds.
struct Exprs<'a> {
    policy: &'a SqlPolicy,
    schema: &'a Schema,
    real: &'a HashSet<*const TableFactor>,
    bindings: &'a BTreeMap<String, BTreeSet<String>>,
    used: &'a BTreeSet<String>,
    derived: &'a BTreeSet<String>,
}

impl Exprs<'_> {
    /// True when `column` of `table` may not be read.
    fn column_denied(&self, table: &str, column: &str) -> bool {
        if self.policy.hidden(column) {
            return true;
        }
        let Some(Some(allowed)) = self.policy.tables.get(table) else {
            return false;
        };
        if allowed.contains(column) {
            return false;
        }
        match self.schema.columns.get(table) {
            Some(cols) => cols.contains(column),
            None => true,
        }
    }

    /// True when some column of `table` may not be read (or its columns are unknown).
    fn has_denied(&self, table: &str) -> bool {
        match self.schema.columns.get(table) {
            Some(cols) => cols.iter().any(|c| self.column_denied(table, c)),
            None => true,
        }
    }

    fn unqualified(&self, column: &str, shown: &str) -> Result<(), SqlRefusal> {
        if self.policy.hidden(column) {
            return Err(R::Column(shown.to_string()));
        }
        if let Some(t) = self.used.iter().find(|t| self.column_denied(t, column)) {
            return Err(R::Column(format!("{t}.{shown}")));
        }
        if let Some(ts) = self.bindings.get(column) {
            if let Some(t) = ts.iter().find(|t| self.has_denied(t)) {
                return Err(R::WholeRow(t.clone()));
            }
        }
        Ok(())
    }

    fn qualified(&self, qualifier: &str, column: &str, shown: &str) -> Result<(), SqlRefusal> {
        if self.policy.hidden(column) {
            return Err(R::Column(shown.to_string()));
        }
        match self.bindings.get(qualifier) {
            Some(ts) if ts.iter().any(|t| self.column_denied(t, column)) => {
                Err(R::Column(shown.to_string()))
            }
            None if !self.derived.contains(qualifier) => Err(R::Column(format!(
                "{shown} (no table or alias {qualifier} in the query)"
            ))),
            _ => Ok(()),
        }
    }

    fn qualified_wildcard(&self, qualifier: &ObjectName) -> Result<(), SqlRefusal> {
        let Some(q) = single_name(qualifier) else {
            return Err(R::Construct(format!("{qualifier}.*")));
        };
        match self.bindings.get(&q) {
            Some(ts) => match ts.iter().find(|t| self.has_denied(t)) {
                Some(t) => Err(R::Wildcard(t.clone())),
                None => Ok(()),
            },
            None if self.derived.contains(&q) => Ok(()),
            None => Err(R::Construct(format!(
                "{qualifier}.* (no table or alias {q} in the query)"
            ))),
        }
    }

    /// The real tables a FROM item reads directly (not through subqueries).
    fn direct_tables<'t>(&self, twj: &'t TableWithJoins, out: &mut Vec<&'t TableFactor>) {
        let add = |tf: &'t TableFactor, out: &mut Vec<&'t TableFactor>| match tf {
            TableFactor::NestedJoin {
                table_with_joins, ..
            } => self.direct_tables(table_with_joins, out),
            tf if self.real.contains(&(tf as *const TableFactor)) => out.push(tf),
            _ => {}
        };
        add(&twj.relation, out);
        for j in &twj.joins {
            add(&j.relation, out);
        }
    }

    fn select(&self, s: &Select) -> Result<(), SqlRefusal> {
        for item in &s.projection {
            match item {
                SelectItem::Wildcard(_) => {
                    let mut tables = Vec::new();
                    for twj in &s.from {
                        self.direct_tables(twj, &mut tables);
                    }
                    for tf in tables {
                        if let TableFactor::Table { name, .. } = tf {
                            let key = single_name(name).unwrap_or_default();
                            if self.has_denied(&key) {
                                return Err(R::Wildcard(name.to_string()));
                            }
                        }
                    }
                }
                SelectItem::QualifiedWildcard(
                    SelectItemQualifiedWildcardKind::ObjectName(q),
                    _,
                ) => self.qualified_wildcard(q)?,
                SelectItem::QualifiedWildcard(SelectItemQualifiedWildcardKind::Expr(e), _) => {
                    return Err(R::Construct(format!("{e}.*")))
                }
                _ => {}
            }
        }
        for twj in &s.from {
            for j in &twj.joins {
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
                    JoinConstraint::On(_) | JoinConstraint::None => {}
                    JoinConstraint::Using(cols) => {
                        for col in cols {
                            let name = single_name(col)
                                .ok_or_else(|| R::Construct(format!("USING ({col})")))?;
                            self.unqualified(&name, &col.to_string())?;
                        }
                    }
                    JoinConstraint::UsingAlias(..) => {
                        return Err(R::Construct("USING ... AS".into()))
                    }
                    JoinConstraint::Natural => return Err(R::Construct("NATURAL JOIN".into())),
                }
            }
        }
        Ok(())
    }

    fn function(&self, f: &sqlparser::ast::Function) -> Result<(), SqlRefusal> {
        let name = match f.name.0.as_slice() {
            [ObjectNamePart::Identifier(i)] => lower(i),
            _ => return Err(R::Function(f.name.to_string())),
        };
        if !self.policy.functions.contains(&name) {
            return Err(R::Function(f.name.to_string()));
        }
        if !matches!(f.parameters, FunctionArguments::None) {
            return Err(R::Construct(format!("parameters of {}", f.name)));
        }
        if let FunctionArguments::List(list) = &f.args {
            for arg in &list.args {
                let a = match arg {
                    FunctionArg::Unnamed(a) => a,
                    FunctionArg::Named { arg, .. } | FunctionArg::ExprNamed { arg, .. } => arg,
                };
                match a {
                    FunctionArgExpr::Expr(_) => {}
                    FunctionArgExpr::Wildcard if name == "count" => {}
                    FunctionArgExpr::QualifiedWildcard(q) => {
                        self.qualified_wildcard(q)?;
                    }
                    _ => return Err(R::Construct(format!("* in {}", f.name))),
                }
            }
        }
        Ok(())
    }

    fn expr(&self, e: &Expr) -> Result<(), SqlRefusal> {
        match e {
            Expr::Identifier(i) => self.unqualified(&lower(i), &i.to_string()),
            Expr::CompoundIdentifier(parts) => match parts.as_slice() {
                [q, c] => self.qualified(&lower(q), &lower(c), &format!("{q}.{c}")),
                _ => Err(R::Column(format!(
                    "{} (use table.column)",
                    parts
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join(".")
                ))),
            },
            Expr::Function(f) => self.function(f),
            Expr::BinaryOp {
                op: BinaryOperator::PGCustomBinaryOperator(_),
                ..
            } => Err(R::Construct("OPERATOR(...)".into())),
            Expr::IsFalse(_)
            | Expr::IsNotFalse(_)
            | Expr::IsTrue(_)
            | Expr::IsNotTrue(_)
            | Expr::IsNull(_)
            | Expr::IsNotNull(_)
            | Expr::IsUnknown(_)
            | Expr::IsNotUnknown(_)
            | Expr::IsDistinctFrom(..)
            | Expr::IsNotDistinctFrom(..)
            | Expr::In { .. }
            | Expr::Between { .. }
            | Expr::BinaryOp { .. }
            | Expr::Like { .. }
            | Expr::ILike { .. }
            | Expr::SimilarTo { .. }
            | Expr::AnyOp { .. }
            | Expr::AllOp { .. }
            | Expr::UnaryOp { .. }
            | Expr::Cast { .. }
            | Expr::AtTimeZone { .. }
            | Expr::Extract { .. }
            | Expr::Ceil { .. }
            | Expr::Floor { .. }
            | Expr::Position { .. }
            | Expr::Substring { .. }
            | Expr::Trim { .. }
            | Expr::Collate { .. }
            | Expr::Nested(_)
            | Expr::Value(_)
            | Expr::TypedString(_)
            | Expr::Case { .. }
            | Expr::Exists { .. }
            | Expr::Subquery(_)
            | Expr::Tuple(_)
            | Expr::Interval(_) => Ok(()),
            other => Err(R::Construct(format!("expression {}", kind(other)))),
        }
    }
}

impl Visitor for Exprs<'_> {
    type Break = SqlRefusal;

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<SqlRefusal> {
        match self.select(s) {
            Ok(()) => ControlFlow::Continue(()),
            Err(r) => ControlFlow::Break(r),
        }
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<SqlRefusal> {
        match self.expr(e) {
            Ok(()) => ControlFlow::Continue(()),
            Err(r) => ControlFlow::Break(r),
        }
    }

    fn pre_visit_value(&mut self, v: &ValueWithSpan) -> ControlFlow<SqlRefusal> {
        match &v.value {
            Value::Placeholder(p) => ControlFlow::Break(R::Construct(format!("placeholder {p}"))),
            _ => ControlFlow::Continue(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Schema {
        let cols = |l: &str| names(l);
        Schema {
            columns: [
                ("users", cols("id username email password isAdmin createdAt updatedAt")),
                ("articles", cols("id publicationName author title description url urlToImage publishedDate createdAt updatedAt")),
                ("articleapproveds", cols("id userId articleId isApproved headlineForPdfReport textForPdfReport createdAt updatedAt")),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }
    }

    fn sqlite(sql: &str) -> Result<String, SqlRefusal> {
        check(sql, SqlDialect::Sqlite, &SqlPolicy::default(), &schema())
    }

    fn pg(sql: &str) -> Result<String, SqlRefusal> {
        check(sql, SqlDialect::Postgres, &SqlPolicy::default(), &schema())
    }

    #[test]
    fn ordinary_questions_pass() {
        for sql in [
            "SELECT COUNT(*) FROM Articles;",
            r#"SELECT "id", "title" FROM "Articles" ORDER BY "publishedDate" DESC LIMIT 10"#,
            "SELECT * FROM Articles",
            "SELECT a.* FROM Articles a",
            "SELECT username, isAdmin FROM Users ORDER BY createdAt",
            "SELECT u.username, COUNT(aa.id) AS n FROM Users u JOIN ArticleApproveds aa ON aa.userId = u.id GROUP BY u.username ORDER BY n DESC",
            "WITH a AS (SELECT id, title FROM Articles) SELECT title FROM a",
            "WITH a AS (SELECT id FROM Articles), b AS (SELECT id FROM a) SELECT * FROM b",
            "SELECT title FROM Articles WHERE id IN (SELECT articleId FROM ArticleApproveds WHERE isApproved)",
            "SELECT CAST(publishedDate AS TEXT), lower(title), coalesce(author, 'n/a') FROM Articles",
            "SELECT 1",
            "SELECT title FROM Articles UNION SELECT username FROM Users",
        ] {
            assert!(sqlite(sql).is_ok(), "{sql}: {:?}", sqlite(sql));
            assert!(pg(sql).is_ok(), "{sql}: {:?}", pg(sql));
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
            Err(R::Wildcard("Users".into()))
        );
        assert_eq!(
            sqlite("SELECT u.* FROM Users u"),
            Err(R::Wildcard("users".into()))
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
    }

    #[test]
    fn unknown_schema_is_strict() {
        let p = SqlPolicy::default();
        let none = Schema::default();
        assert!(check("SELECT * FROM Articles", SqlDialect::Sqlite, &p, &none).is_err());
        assert!(check("SELECT title FROM Articles", SqlDialect::Sqlite, &p, &none).is_ok());
        assert!(check("SELECT updatedAt FROM Users", SqlDialect::Sqlite, &p, &none).is_err());
    }

    #[test]
    fn the_text_that_runs_is_canonical() {
        assert_eq!(sqlite("select 1 -- hi\n;").unwrap(), "SELECT 1");
        assert_eq!(pg("SELECT $$a'b$$ AS x").unwrap(), "SELECT $$a'b$$ AS x");
    }

    #[test]
    fn policy_parses_and_names_errors() {
        let p = SqlPolicy::default();
        assert_eq!(p.tables["users"].as_ref().unwrap().len(), 4);
        assert_eq!(p.tables["articles"], None);
        assert!(p.functions.contains("count") && !p.functions.contains("load_extension"));
        assert!(SqlPolicy::parse("Users(", "", "").is_err());
        assert!(SqlPolicy::parse("", "", "").is_err());
        assert!(SqlPolicy::parse("a;b", "", "").is_err());
        let q = SqlPolicy::parse("Users(id,username), Articles", "pw", "count").unwrap();
        assert_eq!(q.tables.len(), 2);
        assert!(q.hidden_columns.contains("pw"));
    }
}
