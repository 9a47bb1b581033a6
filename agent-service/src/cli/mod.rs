//! The terminal subcommands besides serving: `agent-service chat` ([`chat`]). (`demo-db` writes
//! a News Nexus database, so it lives in `newsnexus::demo_db`.)

pub mod chat;
