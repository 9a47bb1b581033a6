//! agent-service: the agent backend behind auth-proxy.
//!
//! # Layout
//!
//! Folders, in the order a request meets them:
//!
//! - `api/`: the router and the HTTP handlers: `/health`, `/ready`, `/api/info`, `/metrics`,
//!   `/api/chat/sessions`, `/api/usage`.
//! - `identity/`: the proxy's signed identity, checked on every request but the public ones, and
//!   the nonce replay guard.
//! - `ws/`: one WebSocket connection: the upgrade, then its reader, worker and writer tasks.
//! - `agent/`: the general and SQL agents, and the tools they call.
//! - `llm/`: the LLM providers (`openai`, `ollama`, `offline`) and the provider policy.
//! - `newsnexus/`: the News Nexus database: the article queries, the custom-SQL guard and its
//!   hardened executor, the demo database.
//! - `chat/`: what connections share: the hub, the cross-replica bus, the session store and its
//!   pages, the status log, the usage ledger, the SIGTERM drain.
//! - `config/`: the settings from the environment, one section per part (a leaf: it imports
//!   nothing of the crate).
//! - `cli/`: `agent-service chat`, the terminal client.
//!
//! Files: `state.rs` (the [`AppState`] built once from [`Config`], and the router's sub-states),
//! `server.rs` ([`serve`], the drain on SIGTERM), `metrics.rs` (Prometheus), `logs.rs` (log set-up,
//! error cause chains, the per-answer tally).

mod agent;
mod api;
mod chat;
mod cli;
mod config;
mod identity;
mod llm;
mod logs;
mod metrics;
mod newsnexus;
mod server;
mod state;
mod ws;

pub use api::router;
pub use chat::bus::{lease_key, Bus};
pub use chat::hub::{Hub, Out, Outbound, Refusal};
pub use cli::chat::run as run_chat_client;
pub use config::{Config, ScaleConfig};
pub use logs::init as init_logs;
pub use metrics::Metrics;
pub use newsnexus::demo_db::create as create_demo_db;
pub use newsnexus::Rows;
pub use server::serve;
pub use state::AppState;

/// Custom SQL as the SQL test suites drive it: the settings, the guard and the hardened executor.
pub mod custom_sql {
    pub use crate::config::{SqlPolicy, SqlSettings, DEFAULT_MAX_VALUE_BYTES};
    pub use crate::newsnexus::sql_exec::{
        execute_pg, execute_sqlite, hardened_pg_pool, hardened_sqlite_pool, Capper, SqlError,
    };
    pub use crate::newsnexus::sql_guard::{
        check, parse_one, prepare, Prepared, Schema, SqlDialect,
    };
}
