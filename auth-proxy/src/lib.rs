//! auth-proxy: the authenticating WebSocket edge, on pingora.
//!
//! # Layout
//!
//! The folders follow a request through the edge (ARCHITECTURE.md draws the same path):
//!
//! - `server/`: start-up, the listeners, the connection loop, the drain, SIGHUP, logging.
//! - `accept/`: admitting a connection (caps, deadlines), reading its request head, choosing its door.
//! - `auth/`: the token, its signature and claims, the keys and JWKS, the user row.
//! - `decide/`: the one decision every door runs, the edits to the forwarded request, the edge's own
//!   answers, and the rules they use (routes, CORS, throttle, hop-by-hop headers).
//! - `forward/`: toward the agent: the lean HTTP path, the pingora-proxy adapter, the strict answer
//!   reader, the connection pool.
//! - `tunnel/`: a WebSocket's handshake, refusal, relay and frame limits.
//! - `live/`: what keeps open tunnels authorized: revocations and their store, the tunnel registry,
//!   expiries and user re-checks.
//! - `admin/`: the admin listener: metrics, probes, the admin API and the status page.
//! - `config/`: every section and its parsing; a leaf that imports nothing of the crate.
//! - `metrics.rs`, `clock.rs`: shared by every stage.
//!
//! Pure logic (token extraction, claim checks, routes, header rules, frame tracking, the SQL of the
//! Users lookup) lives in plain functions with unit tests beside them, apart from the I/O.

mod accept;
mod admin;
mod auth;
mod clock;
mod config;
mod decide;
mod forward;
mod live;
mod metrics;
mod server;
mod tunnel;

pub use clock::now_unix;
pub use config::{Config, ConfigError, UsersConfig};
pub use live::revocations::RevocationRequest;
pub use live::store_revocation;
pub use server::logging;
pub use server::{load_config, run};

/// What the criterion benchmark of the auth path drives directly.
#[doc(hidden)]
pub mod bench {
    pub use crate::auth::jwt::JwtVerifier;
    pub use crate::auth::token;
    pub use crate::auth::users::Users;
    pub use crate::metrics::Metrics;
}

/// The wire-level parsers and writers the fuzz targets drive against strict references.
#[doc(hidden)]
pub mod wire {
    pub use crate::accept::head::{
        bodiless_origin_form, upgrade_of, write_upstream_request, HeadIndex, RequestHead,
        RequestView,
    };
    pub use crate::auth::token::{forwarded_uri_of, strip_token};
    pub use crate::decide::edits::UpstreamEdits;
    pub use crate::forward::answer::{parse_answer, Chunked, ClientSide, Framing, Parsed};
    pub use crate::tunnel::frames::{Advance, FrameTracker, Limits, Violation, HELD_ROOM};
}
