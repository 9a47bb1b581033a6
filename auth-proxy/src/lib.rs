//! auth-proxy: the authenticating WebSocket edge, on pingora.
//!
//! The request path, in the order a request meets it, is in [`proxy`]; the rest are the pieces it
//! calls. Pure logic ([`token`], [`jwt`], [`routes`], [`headers`], [`reject`], the SQL in [`users`])
//! is kept apart from I/O and unit-tested on its own.

pub mod admin;
pub mod admin_api;
pub mod admission;
pub mod answer;
pub mod client_socket;
pub mod config;
pub mod connection;
pub mod cors;
pub mod dial;
pub mod door;
pub mod forward;
pub mod head;
pub mod headers;
pub mod jwks;
pub mod jwt;
pub mod keys;
pub mod listener;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod recent;
pub mod recheck;
pub mod reject;
pub mod relay;
pub mod revocations;
pub mod routes;
pub mod server;
pub mod state;
pub mod state_store;
pub mod status_page;
pub mod throttle;
pub mod token;
pub mod tunnel;
pub mod tunnels;
pub mod upstream_pool;
pub mod users;
pub mod verified;
pub mod ws_refusal;
pub mod wsframe;
