//! agent-service: the agent backend behind auth-proxy.
//!
//! Request path: [`identity`] checks the proxy's assertion, [`ws`] speaks the Fluxion00Web
//! protocol with the [`hub`] keeping track of connections, [`agent`] runs the general or SQL agent
//! over [`llm`] providers and [`tools`], and [`status_log`] streams every step to the client.

pub mod agent;
pub mod app;
pub mod bus;
pub mod chat_client;
pub mod config;
pub mod demo_db;
pub mod drain;
pub mod http;
pub mod hub;
pub mod identity;
pub mod llm;
pub mod logs;
pub mod metrics;
pub mod newsnexus;
pub mod replay;
pub mod session_page;
pub mod sessions_api;
pub mod sql_exec;
pub mod sql_guard;
pub mod status_log;
pub mod store;
pub mod tools;
pub mod usage;
pub mod usage_api;
pub mod ws;
