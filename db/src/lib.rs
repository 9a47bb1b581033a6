//! One database layer for SQLite and PostgreSQL, shared by auth-proxy (the `Users` lookup) and
//! agent-service (the News Nexus tools and the chat store).
//!
//! # API
//!
//! - [`Engine`]: which engine a URL names ([`Engine::of_url`]), identifier quoting
//!   ([`Engine::quote`]) and the engine's positional placeholder ([`Engine::placeholder`]);
//!   [`check_identifier`] validates configured table/column names.
//! - [`Options`] + [`Pool`]: a pool from a `sqlite:` or `postgres://` URL, read-only or read-write
//!   ([`Access`]), with a pool size, an acquire timeout and an optional statement timeout.
//!   [`Pool::connect_lazy`] makes no connection until first use (a service starts while its
//!   database is down); [`Pool::connect`] checks one connection at once.
//!   - read-only: SQLite opens with `mode=ro`; PostgreSQL sessions run with
//!     `default_transaction_read_only=on`.
//!   - read-write: SQLite creates the file if missing and uses WAL with `synchronous=FULL` and
//!     foreign keys on (a committed write survives a crash).
//!   - statement timeout: PostgreSQL's `statement_timeout`, set at connection start; callers bound
//!     the whole call (acquire + query) with [`timed`].
//! - SQL text is written once with `$1`, `$2`, ... placeholders for both engines: sqlx's SQLite
//!   driver binds `$N` by number, so nothing is rewritten (and a `'$1'` literal stays a literal).
//! - [`with_pool!`]: runs one expression against the engine's typed pool (`sqlx::SqlitePool` or
//!   `sqlx::PgPool`), for typed queries (`query_as`, transactions).
//! - [`bind_json`] binds a JSON value to any sqlx query; [`row_to_json`] turns any row into a JSON
//!   object, [`cell_to_json`] one cell (text read from the row's own bytes); [`Pool::fetch_json`] /
//!   [`Pool::execute_json`] do both for SQL with JSON arguments.
//! - [`Migrations`] + [`Pool::migrate`]: sqlx's `migrate!` with one folder per engine, safe when
//!   two processes start at once (PostgreSQL: sqlx's advisory lock; SQLite: the whole run inside one
//!   `BEGIN IMMEDIATE` transaction, so the second process waits and then finds nothing to do).
//! - [`Error`]: what callers map to their own errors (503 `auth_unavailable`, tool errors, store
//!   errors); [`Error::is_unavailable`] tells an outage from a failed query.

mod engine;
mod error;
mod json;
mod pool;

pub use engine::{check_identifier, Engine};
pub use error::{timed, Error};
pub use json::{bind_json, cell_to_json, row_to_json};
pub use pool::{Access, Migrations, Options, Pool};

#[doc(hidden)]
pub use sqlx as __sqlx;
