//! Everything the proxy's services share, built once from the validated config.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shared::identity::Signer;

use crate::admin::recent::Recent;
use crate::auth::jwt::JwtVerifier;
use crate::auth::users::Users;
use crate::config::{Config, ConfigError};
use crate::decide::cors::Origins;
use crate::decide::routes::Routes;
use crate::decide::throttle::Throttle;
use crate::live::tunnels::Tunnels;
use crate::live::Live;
use crate::metrics::Metrics;

pub struct AppState {
    pub config: Config,
    pub routes: Routes,
    pub jwt: JwtVerifier,
    pub users: Arc<Users>,
    pub throttle: Throttle,
    pub signer: Signer,
    pub metrics: Arc<Metrics>,
    pub trusted: Vec<(IpAddr, u8)>,
    pub upstream: SocketAddr,
    pub health: Health,
    /// Open WebSocket tunnels, closable from outside (see [`crate::live::tunnels`]).
    pub tunnels: Arc<Tunnels>,
    pub live: Live,
    /// `cors.allowed_origins`.
    pub cors: Origins,
    /// `ws.allowed_origins`.
    pub ws_origins: Origins,
    /// Requests of the last minutes, for the status page.
    pub recent: Recent,
    pub started: Instant,
}

impl AppState {
    /// A state for unit tests: default settings, test secrets, a Users database that does not
    /// exist (nothing that reaches it may be tested with this).
    #[cfg(test)]
    pub(crate) fn for_tests() -> AppState {
        const SECRET: &str = "0123456789abcdef0123456789abcdef";
        let env = |k: &str| match k {
            "JWT_SECRET" | "IDENTITY_SECRET" => Some(SECRET.to_string()),
            "DATABASE_URL" => Some("sqlite:///nonexistent/x.db".to_string()),
            _ => None,
        };
        AppState::new(Config::load(None, &env).expect("test config")).expect("test state")
    }

    pub fn new(config: Config) -> Result<AppState, ConfigError> {
        let metrics = Arc::new(Metrics::new());
        let users = Arc::new(Users::new(&config.users, metrics.clone()));
        let tunnels = Tunnels::new();
        Ok(AppState {
            routes: Routes::from_config(&config),
            jwt: JwtVerifier::new(&config.jwt)?,
            live: Live::new(&config, tunnels.clone(), users.clone(), metrics.clone()),
            users,
            throttle: Throttle::new(config.throttle.failures_per_minute),
            signer: Signer::new(config.identity.secret.as_bytes()),
            trusted: config.trusted_networks(),
            upstream: config.upstream.parse().map_err(|_| ConfigError {
                setting: "upstream (AUTH_PROXY_UPSTREAM)".into(),
                problem: "not an address".into(),
            })?,
            health: Health::default(),
            tunnels,
            cors: Origins::new(&config.cors.allowed_origins),
            ws_origins: Origins::new(&config.ws.allowed_origins),
            recent: Recent::default(),
            started: Instant::now(),
            metrics,
            config,
        })
    }

    pub fn websocket_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.config.websocket_idle_timeout_secs)
    }
}

/// Readiness inputs, written by the readiness probe and the shutdown watcher.
#[derive(Default)]
pub struct Health {
    draining: AtomicBool,
    database_ok: AtomicBool,
    upstream_ok: AtomicBool,
    state_store_ok: AtomicBool,
    listening: AtomicBool,
}

impl Health {
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
    pub fn set_database(&self, ok: bool) {
        self.database_ok.store(ok, Ordering::Relaxed);
    }
    pub fn set_upstream(&self, ok: bool) {
        self.upstream_ok.store(ok, Ordering::Relaxed);
    }
    pub fn database(&self) -> bool {
        self.database_ok.load(Ordering::Relaxed)
    }
    pub fn upstream(&self) -> bool {
        self.upstream_ok.load(Ordering::Relaxed)
    }
    pub fn set_state_store(&self, ok: bool) {
        self.state_store_ok.store(ok, Ordering::Relaxed);
    }
    /// The state store (revocations) has been read and answers.
    pub fn state_store(&self) -> bool {
        self.state_store_ok.load(Ordering::Relaxed)
    }
    /// The edge listener has accepted a connection (it is bound and served; pingora binds each
    /// service's listeners on that service's own threads, so the admin listener can answer first).
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Relaxed);
    }
    pub fn listening(&self) -> bool {
        self.listening.load(Ordering::Relaxed)
    }
    pub fn is_ready(&self) -> bool {
        !self.is_draining()
            && self.listening()
            && self.database()
            && self.upstream()
            && self.state_store()
    }
}
