//! Live authorization: keeps the decisions taken at the handshake true while tunnels stay open.
//!
//! [`Live`] holds the revocations in force (an in-memory [`RevocationSet`], so a handshake makes
//! no query) and the state store behind them. [`LiveService`] is the background service that keeps
//! it current: it opens the store, loads it, then re-reads it on every PostgreSQL notification and
//! on a catch-up poll every `live.poll_secs` (a missed notification is a late revocation, never a
//! lost one). A revocation that is new to this replica drops the user cache entries it concerns and
//! closes the open tunnels it kills. The same service refreshes the JWKS set when it goes stale and
//! reloads the configured keys on SIGHUP.
//!
//! Until the store has been read once, handshakes are refused with 503 (the edge cannot tell a
//! revoked token from a good one) and `/readyz` reports not ready.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::OnceCell;
use tracing::{info, warn};

use crate::config::Config;
use crate::revocations::{Kind, NewRevocation, Revocation, RevocationSet, TokenFacts};
use crate::state::{now_unix, AppState};
use crate::state_store::{StateStore, StoreError};

/// How long to wait before retrying a store that could not be opened.
const RETRY: Duration = Duration::from_secs(1);

/// The revocations in force and the store they come from.
pub struct Live {
    url: String,
    store: OnceCell<StateStore>,
    set: RwLock<Arc<RevocationSet>>,
    loaded: AtomicBool,
    /// Serialises reloads, so two of them never race to apply the same new records.
    reload: tokio::sync::Mutex<()>,
}

impl Live {
    pub fn new(config: &Config) -> Live {
        Live {
            url: config.state_url(),
            store: OnceCell::new(),
            set: RwLock::new(Arc::new(RevocationSet::default())),
            loaded: AtomicBool::new(false),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// True once the store has been read.
    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The revocations in force now.
    pub fn current(&self) -> Arc<RevocationSet> {
        match self.set.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The kind of revocation that kills this token, if any.
    pub fn check(&self, token: &TokenFacts) -> Option<Kind> {
        self.current().check(token)
    }

    /// The store, opened on first use (in whichever runtime asks first).
    pub async fn store(&self) -> Result<&StateStore, StoreError> {
        self.store
            .get_or_try_init(|| async {
                create_sqlite_dir(&self.url)?;
                StateStore::open(&self.url).await
            })
            .await
    }

    /// Reads the store once before the services start (on a connection of its own, closed after),
    /// so the edge answers its first handshake knowing the revocations. Gives up after `limit`;
    /// the live service then keeps trying.
    pub async fn preload(&self, limit: Duration) -> Result<(), StoreError> {
        let read = async {
            create_sqlite_dir(&self.url)?;
            let store = StateStore::open(&self.url).await?;
            let records = store.list().await;
            store.close().await;
            records
        };
        let records = tokio::time::timeout(limit, read)
            .await
            .map_err(|_| StoreError("timed out".into()))??;
        info!(revocations = records.len(), "revocations loaded");
        if let Ok(mut s) = self.set.write() {
            *s = Arc::new(RevocationSet::new(records));
        }
        self.loaded.store(true, Ordering::Release);
        Ok(())
    }

    /// Stores a revocation and applies it here at once; other replicas learn of it by
    /// notification or poll.
    pub async fn revoke(
        &self,
        state: &AppState,
        new: &NewRevocation,
    ) -> Result<Revocation, StoreError> {
        let stored = self.store().await?.insert(new).await?;
        self.reload(state).await?;
        Ok(stored)
    }

    /// Re-reads the store, swaps the set in, and applies what is new since the last read.
    pub async fn reload(&self, state: &AppState) -> Result<(), StoreError> {
        let _one_at_a_time = self.reload.lock().await;
        let records = self.store().await?.list().await?;
        let next = Arc::new(RevocationSet::new(records));
        let previous = self.current();
        if let Ok(mut s) = self.set.write() {
            *s = next.clone();
        }
        if self.loaded.swap(true, Ordering::AcqRel) {
            for r in next.added_since(&previous) {
                apply(state, r).await;
            }
        } else {
            info!(revocations = next.len(), "revocations loaded");
        }
        Ok(())
    }
}

/// What a new revocation changes on this replica: the user cache and the metrics (open tunnels are
/// closed by the tunnel registry's owner through [`kills`]).
async fn apply(state: &AppState, r: &Revocation) {
    state
        .metrics
        .revocations
        .with_label_values(&[r.kind.as_str()])
        .inc();
    match (r.kind, r.user_id) {
        (Kind::User, Some(id)) => state.users.forget(id).await,
        (Kind::All, _) => state.users.forget_all(),
        _ => {}
    }
    info!(
        id = r.id,
        kind = r.kind.as_str(),
        user_id = r.user_id,
        "revocation in force"
    );
}

/// True when `r` kills a tunnel opened with a token of these facts.
pub fn kills(r: &Revocation, token: &TokenFacts) -> bool {
    crate::revocations::matches(r, token)
}

fn create_sqlite_dir(url: &str) -> Result<(), StoreError> {
    match sqlite_dir(url) {
        Some(dir) => std::fs::create_dir_all(&dir)
            .map_err(|e| StoreError(format!("cannot create {}: {e}", dir.display()))),
        None => Ok(()),
    }
}

/// The directory of a `sqlite://` URL's file, to create before opening it.
fn sqlite_dir(url: &str) -> Option<PathBuf> {
    let path = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next()?;
    if path.is_empty() || path == ":memory:" {
        return None;
    }
    PathBuf::from(path)
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
}

/// The background service: store loading, notifications, catch-up poll, purge, JWKS refresh,
/// SIGHUP key reload.
pub struct LiveService {
    state: Arc<AppState>,
    config_path: Option<PathBuf>,
}

impl LiveService {
    pub fn new(state: Arc<AppState>, config_path: Option<PathBuf>) -> LiveService {
        LiveService { state, config_path }
    }

    /// Opens and reads the store, retrying until it answers.
    async fn load(&self, shutdown: &mut ShutdownWatch) -> bool {
        loop {
            match self.state.live.reload(&self.state).await {
                Ok(()) => {
                    self.state.health.set_state_store(true);
                    return true;
                }
                Err(e) => {
                    self.state.health.set_state_store(false);
                    warn!(error = %e, "state store unavailable; handshakes get 503 until it answers");
                }
            }
            tokio::select! {
                _ = shutdown.changed() => return false,
                _ = tokio::time::sleep(RETRY) => {}
            }
        }
    }

    async fn poll_once(&self) {
        let live = &self.state.live;
        match live.reload(&self.state).await {
            Ok(()) => self.state.health.set_state_store(true),
            Err(e) => {
                self.state.health.set_state_store(false);
                warn!(error = %e, "state store poll failed");
                return;
            }
        }
        let leeway = self.state.config.jwt.leeway_secs as i64;
        if let Ok(store) = live.store().await {
            if let Err(e) = store.purge(now_unix() as i64 - leeway).await {
                warn!(error = %e, "purging expired revocations failed");
            }
        }
    }

    /// Reloads the static keys from the configuration file (SIGHUP).
    fn reload_keys(&self) {
        let env = |name: &str| std::env::var(name).ok();
        let result = Config::load(self.config_path.clone(), &env)
            .and_then(|config| self.state.jwt.reload(&config));
        match result {
            Ok(()) => info!("SIGHUP: keys reloaded"),
            Err(e) => warn!(error = %e, "SIGHUP: keys not reloaded, the old ones stay"),
        }
    }
}

/// Re-reads the store on every notification (PostgreSQL). Returns when the connection is lost.
async fn follow_notifications(state: &AppState) -> Result<(), StoreError> {
    let Some(mut listener) = state.live.store().await?.listen().await? else {
        return std::future::pending().await;
    };
    info!("listening for revocations");
    // A notification sent while this connection was away is found by the next poll.
    loop {
        listener
            .recv()
            .await
            .map_err(|e| StoreError(e.to_string()))?;
        if let Err(e) = state.live.reload(state).await {
            warn!(error = %e, "reload after a notification failed");
        }
    }
}

#[async_trait]
impl BackgroundService for LiveService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot handle SIGHUP; keys reload needs a restart");
                None
            }
        };
        if !self.load(&mut shutdown).await {
            return;
        }
        let state = self.state.clone();
        let notifications = tokio::spawn(async move {
            loop {
                if let Err(e) = follow_notifications(&state).await {
                    warn!(error = %e, "revocation notifications lost; polling until reconnected");
                }
                tokio::time::sleep(RETRY).await;
            }
        });
        let mut poll = tokio::time::interval(Duration::from_secs(self.state.config.live.poll_secs));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        let mut jwks_at = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.changed() => break,
                _ = poll.tick() => self.poll_once().await,
                _ = tokio::time::sleep_until(jwks_at), if self.state.jwt.jwks().is_some() => {
                    if let Some(jwks) = self.state.jwt.jwks() {
                        jwks_at = tokio::time::Instant::now() + jwks.refresh_if_stale().await;
                    }
                }
                Some(()) = async { hangup.as_mut()?.recv().await } => self.reload_keys(),
            }
        }
        notifications.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_directories() {
        assert_eq!(
            sqlite_dir("sqlite:///var/lib/x/state.db?mode=rwc"),
            Some(PathBuf::from("/var/lib/x"))
        );
        assert_eq!(
            sqlite_dir("sqlite://./data/auth-proxy-state.db"),
            Some(PathBuf::from("./data"))
        );
        assert_eq!(sqlite_dir("sqlite:state.db"), None);
        assert_eq!(sqlite_dir("sqlite::memory:"), None);
        assert_eq!(sqlite_dir("postgres://h/db"), None);
    }
}
