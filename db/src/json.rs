//! JSON values in and out of SQL, written once for every sqlx database: [`bind_json`] binds an
//! argument, [`row_to_json`] turns a row into a JSON object, [`cell_to_json`] one cell.

use serde_json::{Map, Value};
use sqlx::query::Query;
use sqlx::{Column, ColumnIndex, Database, Decode, Encode, Row, Type};

/// Binds one JSON value: integers as BIGINT, other numbers as DOUBLE, strings as TEXT, booleans
/// as BOOLEAN, `null` as a NULL, and arrays/objects as their JSON text.
pub fn bind_json<'q, DB>(
    q: Query<'q, DB, <DB as Database>::Arguments<'q>>,
    v: &Value,
) -> Query<'q, DB, <DB as Database>::Arguments<'q>>
where
    DB: Database,
    i64: Encode<'q, DB> + Type<DB>,
    f64: Encode<'q, DB> + Type<DB>,
    bool: Encode<'q, DB> + Type<DB>,
    String: Encode<'q, DB> + Type<DB>,
    Option<String>: Encode<'q, DB> + Type<DB>,
{
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(i) => q.bind(i),
            None => q.bind(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => q.bind(s.clone()),
        Value::Bool(b) => q.bind(*b),
        Value::Null => q.bind(None::<String>),
        other => q.bind(other.to_string()),
    }
}

/// A value decodable from any column of `DB`.
pub trait Decodes<DB: Database>: for<'r> Decode<'r, DB> + Type<DB> {}
impl<DB: Database, T: for<'r> Decode<'r, DB> + Type<DB>> Decodes<DB> for T {}

/// Returns column `i` as JSON from the first type in the list the column's type is compatible with.
macro_rules! first_decodable {
    ($row:expr, $i:expr, $($ty:ty => $to_json:expr),+ $(,)?) => {{
        $(
            if let Ok(v) = $row.try_get::<Option<$ty>, _>($i) {
                return v.map($to_json).unwrap_or(Value::Null);
            }
        )+
    }};
}

/// Cell `i` of a row as JSON: text (read from the row's own bytes: the one copy made is the
/// JSON string), integers, floats, booleans, dates and timestamps (as text); `"<binary>"` for
/// bytes and `"<unsupported type>"` for anything else (NUMERIC, arrays ...).
pub fn cell_to_json<R>(row: &R, i: usize) -> Value
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> &'r str: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decodes<R::Database>,
    i32: Decodes<R::Database>,
    i16: Decodes<R::Database>,
    f64: Decodes<R::Database>,
    f32: Decodes<R::Database>,
    bool: Decodes<R::Database>,
    Vec<u8>: Decodes<R::Database>,
    chrono::NaiveDate: Decodes<R::Database>,
    chrono::DateTime<chrono::Utc>: Decodes<R::Database>,
    chrono::NaiveDateTime: Decodes<R::Database>,
{
    if let Ok(v) = row.try_get::<Option<&str>, _>(i) {
        return v.map(Value::from).unwrap_or(Value::Null);
    }
    // Order matters where types overlap: SQLite integers also decode as booleans and i32.
    first_decodable!(row, i,
        i64 => Value::from,
        i32 => Value::from,
        i16 => Value::from,
        f64 => Value::from,
        f32 => Value::from,
        bool => Value::from,
        chrono::NaiveDate => |d: chrono::NaiveDate| Value::from(d.to_string()),
        chrono::DateTime<chrono::Utc> => |d: chrono::DateTime<chrono::Utc>| Value::from(d.to_rfc3339()),
        chrono::NaiveDateTime => |d: chrono::NaiveDateTime| Value::from(d.to_string()),
        Vec<u8> => |_| Value::from("<binary>"),
    );
    Value::from("<unsupported type>")
}

/// A row as a JSON object keyed by column name, each cell as [`cell_to_json`] reads it.
pub fn row_to_json<R>(row: &R) -> Map<String, Value>
where
    R: Row,
    usize: ColumnIndex<R>,
    for<'r> &'r str: Decode<'r, R::Database> + Type<R::Database>,
    i64: Decodes<R::Database>,
    i32: Decodes<R::Database>,
    i16: Decodes<R::Database>,
    f64: Decodes<R::Database>,
    f32: Decodes<R::Database>,
    bool: Decodes<R::Database>,
    Vec<u8>: Decodes<R::Database>,
    chrono::NaiveDate: Decodes<R::Database>,
    chrono::DateTime<chrono::Utc>: Decodes<R::Database>,
    chrono::NaiveDateTime: Decodes<R::Database>,
{
    row.columns()
        .iter()
        .enumerate()
        .map(|(i, col)| (col.name().to_string(), cell_to_json(row, i)))
        .collect()
}
