//! agent-service: the agent backend behind auth-proxy.
//!
//! Request path: [`identity`] checks the proxy's assertion, [`ws`] speaks the Fluxion00Web
//! protocol with the [`hub`] keeping track of connections, [`agent`] runs the general or SQL agent
//! over [`llm`] providers and [`tools`], and [`status_log`] streams every step to the client.

pub mod agent;
pub mod api;
pub mod chat;
pub mod cli;
pub mod config;
pub mod identity;
pub mod llm;
pub mod logs;
pub mod metrics;
pub mod newsnexus;
pub mod server;
pub mod state;
pub mod ws;

pub use api::router;
pub use chat::{bus, hub};
pub use newsnexus::{sql_exec, sql_guard};
pub use state::AppState;
