//! Toward the agent: the lean HTTP path, the pingora-proxy adapter, the strict answer reader, the pool.

pub(crate) mod answer;
pub(crate) mod dial;
pub(crate) mod lean;
pub(crate) mod pool;
pub(crate) mod proxy;
