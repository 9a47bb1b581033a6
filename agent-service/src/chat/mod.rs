//! Chat around the connections: the [`hub`] of open connections (by user and client id), its
//! cross-replica [`bus`] over NATS, the session [`store`] with its [`session_page`]s, the
//! [`status_log`] every answer streams, the [`usage`] ledger and quotas, and the SIGTERM [`drain`].

pub mod bus;
pub mod drain;
pub mod hub;
pub mod session_page;
pub mod status_log;
pub mod store;
pub mod usage;
