//! The background service that keeps live authorization current ([`crate::live`]): it opens and
//! loads the state store (readiness waits for it), follows PostgreSQL notifications, polls every
//! `live.poll_secs` as a catch-up and purges expired records, runs the expiry timer and the user
//! re-check, refreshes the JWKS set when it goes stale and reloads the configured keys on SIGHUP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{info, warn};

use crate::live::RETRY;
use crate::server::state::AppState;

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
            match self.state.live.reload().await {
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
        match live.reload().await {
            Ok(()) => self.state.health.set_state_store(true),
            Err(e) => {
                self.state.health.set_state_store(false);
                warn!(error = %e, "state store poll failed");
                return;
            }
        }
        if let Err(e) = live.purge().await {
            warn!(error = %e, "purging expired revocations failed");
        }
    }

    /// Reloads the static keys from the configuration file (SIGHUP).
    fn reload_keys(&self) {
        let env = |name: &str| std::env::var(name).ok();
        let result = super::load_config(self.config_path.clone(), &env)
            .and_then(|config| self.state.jwt.reload(&config.jwt));
        match result {
            Ok(()) => info!("SIGHUP: keys reloaded"),
            Err(e) => warn!(error = %e, "SIGHUP: keys not reloaded, the old ones stay"),
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
        let (expiring, rechecking) = (self.state.clone(), self.state.clone());
        let tasks = [
            tokio::spawn(async move { expiring.live.expire_tunnels().await }),
            tokio::spawn(async move { rechecking.live.recheck_users().await }),
        ];
        let state = self.state.clone();
        let notifications = tokio::spawn(async move {
            loop {
                if let Err(e) = state.live.follow_notifications().await {
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
        for t in tasks {
            t.abort();
        }
    }
}
