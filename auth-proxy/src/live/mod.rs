//! Live authorization: keeps the decisions taken at the handshake true while tunnels stay open.
//!
//! [`Live`] holds the revocations in force (an in-memory [`RevocationSet`], so a handshake makes
//! no query) and the state store behind them. [`crate::server::live_service::LiveService`] is the background service that keeps
//! it current: it opens the store, loads it, then re-reads it on every PostgreSQL notification and
//! on a catch-up poll every `live.poll_secs` (a missed notification is a late revocation, never a
//! lost one). A revocation that is new to this replica drops the user cache entries it concerns and
//! closes the open tunnels it kills. The same service refreshes the JWKS set when it goes stale and
//! reloads the configured keys on SIGHUP.
//!
//! Open tunnels ([`crate::live::tunnels`]) are closed with WebSocket close 1008 and the rejection code as
//! the reason ([`Live::close_tunnels`]):
//! - `token_revoked`: by a new revocation, and at registration when one came into force between
//!   the handshake's check and the tunnel's registration ([`Live::tunnel_opened`]);
//! - `token_expired`: at `exp` + leeway. One timer serves every tunnel ([`Expiries`]: the distinct
//!   expiry seconds in a `BTreeSet`, one task sleeping until the earliest); each time it fires, one
//!   pass over the registry closes every tunnel past its `exp`. No task or timer per tunnel.
//! - `user_removed`: every `live.recheck_secs`, the users holding tunnels are re-checked in one
//!   query ([`crate::live::recheck`]); those gone lose their tunnels and their cache entries.
//!
//! Until the store has been read once, handshakes are refused with 503 (the edge cannot tell a
//! revoked token from a good one) and `/readyz` reports not ready.

pub(crate) mod recheck;
pub(crate) mod revocations;
pub(crate) mod store;
pub(crate) mod tunnels;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, OnceCell};
use tracing::{info, warn};

use crate::auth::users::Users;
use crate::clock::now_unix;
use crate::config::{Config, UsersConfig};
use crate::live::recheck::{removed, Recheck};
use crate::live::revocations::{
    matches, Kind, NewRevocation, Revocation, RevocationSet, TokenFacts,
};
use crate::live::store::{StateStore, StoreError};
use crate::live::tunnels::{CloseRequest, TunnelInfo, Tunnels, CLOSE_POLICY_VIOLATION};
use crate::metrics::Metrics;

/// Stores one revocation in the configured state store, without a running edge (the `revoke`
/// command); a running edge learns of it by notification or poll.
pub async fn store_revocation(
    config: &Config,
    new: &NewRevocation,
) -> Result<Revocation, StoreError> {
    let url = config.state_url();
    create_sqlite_dir(&url)?;
    let store = StateStore::open(&url).await?;
    let stored = store.insert(new).await;
    store.close().await;
    stored
}

/// How long to wait before retrying a store that could not be opened.
pub(crate) const RETRY: Duration = Duration::from_secs(1);

/// The revocations in force and the store they come from.
pub struct Live {
    url: String,
    store: OnceCell<StateStore>,
    set: RwLock<Arc<RevocationSet>>,
    loaded: AtomicBool,
    /// Serialises reloads, so two of them never race to apply the same new records.
    reload: tokio::sync::Mutex<()>,
    pub expiries: Expiries,
    /// The open tunnels kept under these revocations, expiries and user re-checks.
    tunnels: Arc<Tunnels>,
    /// The user cache a revocation or a removed user empties.
    users: Arc<Users>,
    metrics: Arc<Metrics>,
    /// `jwt.leeway_secs`: a tunnel closes at `exp` + leeway.
    leeway_secs: u64,
    /// `live.recheck_secs`.
    recheck_secs: u64,
    /// Where the users holding tunnels are re-checked.
    users_config: UsersConfig,
}

impl Live {
    /// Live authorization over `tunnels`: the state store of `live.state_url` (or `data_dir`), the
    /// user cache it empties and the metrics it counts in.
    pub fn new(
        config: &Config,
        tunnels: Arc<Tunnels>,
        users: Arc<Users>,
        metrics: Arc<Metrics>,
    ) -> Live {
        Live {
            url: config.state_url(),
            store: OnceCell::new(),
            set: RwLock::new(Arc::new(RevocationSet::default())),
            loaded: AtomicBool::new(false),
            reload: tokio::sync::Mutex::new(()),
            expiries: Expiries::default(),
            tunnels,
            users,
            metrics,
            leeway_secs: config.jwt.leeway_secs,
            recheck_secs: config.live.recheck_secs,
            users_config: config.users.clone(),
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
    pub async fn revoke(&self, new: &NewRevocation) -> Result<Revocation, StoreError> {
        let stored = self.store().await?.insert(new).await?;
        self.reload().await?;
        Ok(stored)
    }

    /// Re-reads the store, swaps the set in, and applies what is new since the last read.
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _one_at_a_time = self.reload.lock().await;
        let records = self.store().await?.list().await?;
        let next = Arc::new(RevocationSet::new(records));
        let previous = self.current();
        if let Ok(mut s) = self.set.write() {
            *s = next.clone();
        }
        if self.loaded.swap(true, Ordering::AcqRel) {
            for r in next.added_since(&previous) {
                self.apply(r).await;
            }
        } else {
            info!(revocations = next.len(), "revocations loaded");
        }
        Ok(())
    }
}

impl Live {
    /// What a new revocation changes on this replica: the user cache, the open tunnels it kills, the
    /// metrics.
    async fn apply(&self, r: &Revocation) {
        self.metrics
            .revocations
            .with_label_values(&[r.kind.as_str()])
            .inc();
        match (r.kind, r.user_id) {
            (Kind::User, Some(id)) => self.users.forget(id).await,
            (Kind::All, _) => self.users.forget_all(),
            _ => {}
        }
        let closed = self.close_tunnels("token_revoked", |t| matches(r, &facts_of(t)));
        info!(
            id = r.id,
            kind = r.kind.as_str(),
            user_id = r.user_id,
            tunnels_closed = closed,
            "revocation in force"
        );
    }

    /// Closes the open tunnels matching `which` with close 1008 and `reason`; counts them.
    pub fn close_tunnels(
        &self,
        reason: &'static str,
        which: impl Fn(&TunnelInfo) -> bool,
    ) -> usize {
        let n = self
            .tunnels
            .close_where(which, CloseRequest::new(CLOSE_POLICY_VIOLATION, reason));
        if n > 0 {
            self.metrics
                .tunnels_closed
                .with_label_values(&[reason])
                .inc_by(n as u64);
            info!(tunnels = n, reason, "closed open tunnels");
        }
        n
    }

    /// Called once a tunnel is registered: closes it at once if a revocation came into force since its
    /// handshake was checked, and schedules its expiry.
    pub fn tunnel_opened(&self, t: &TunnelInfo) {
        if self.check(&facts_of(t)).is_some() {
            self.close_tunnels("token_revoked", |other| std::ptr::eq(other, t));
        }
        if let Some(exp) = t.exp {
            self.expiries.schedule(exp.saturating_add(self.leeway_secs));
        }
    }

    /// The expiry timer: sleeps until the earliest deadline, then closes every tunnel past its `exp`.
    pub async fn expire_tunnels(&self) {
        let leeway = self.leeway_secs;
        let expiries = &self.expiries;
        loop {
            let wait = expiries
                .next()
                .map_or(Duration::from_secs(3600), until_unix);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = expiries.wake.notified() => continue,
            }
            let now = now_unix();
            if expiries.take_due(now) {
                self.close_expired(now, leeway);
            }
        }
    }

    /// One pass over the registry: closes every tunnel whose `exp` + leeway is at or before `now`.
    pub fn close_expired(&self, now: u64, leeway: u64) -> usize {
        self.close_tunnels("token_expired", |t| {
            t.exp.is_some_and(|exp| exp.saturating_add(leeway) <= now)
        })
    }

    /// Every `live.recheck_secs`: one query for the users holding tunnels; closes the tunnels of those
    /// gone.
    pub async fn recheck_users(&self) {
        let recheck = match Recheck::new(&self.users_config) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "cannot re-check users with open tunnels");
                return;
            }
        };
        let mut tick = tokio::time::interval(Duration::from_secs(self.recheck_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let holders: HashSet<i64> = self.tunnels.snapshot().iter().map(|t| t.user_id).collect();
            if holders.is_empty() {
                continue;
            }
            let ids: Vec<i64> = holders.iter().copied().collect();
            let present = match recheck.present(&ids).await {
                Ok(p) => p,
                Err(e) => {
                    warn!(error = %e, "re-check of users with open tunnels failed; none closed");
                    continue;
                }
            };
            let gone: HashSet<i64> = removed(&holders, &present).into_iter().collect();
            for id in &gone {
                self.users.forget(*id).await;
            }
            if !gone.is_empty() {
                self.close_tunnels("user_removed", |t| gone.contains(&t.user_id));
            }
        }
    }

    /// Re-reads the store on every notification (PostgreSQL). Returns when the connection is lost.
    pub async fn follow_notifications(&self) -> Result<(), StoreError> {
        let Some(mut listener) = self.store().await?.listen().await? else {
            return std::future::pending().await;
        };
        info!("listening for revocations");
        // What was announced while this connection was away is read now.
        self.reload().await?;
        loop {
            listener
                .recv()
                .await
                .map_err(|e| StoreError(e.to_string()))?;
            if let Err(e) = self.reload().await {
                warn!(error = %e, "reload after a notification failed");
            }
        }
    }

    /// Drops the records whose tokens have expired by themselves (`exp` + leeway in the past);
    /// returns how many.
    pub async fn purge(&self) -> Result<u64, StoreError> {
        let leeway = self.leeway_secs as i64;
        self.store().await?.purge(now_unix() as i64 - leeway).await
    }
}

/// The token facts a tunnel was opened with.
pub fn facts_of(t: &TunnelInfo) -> TokenFacts {
    let secs = |v: Option<u64>| v.map(|v| v.min(i64::MAX as u64) as i64);
    TokenFacts {
        user_id: t.user_id,
        iat: secs(t.iat),
        exp: secs(t.exp),
        jti: t.jti.clone(),
    }
}

/// The distinct seconds (unix) at which some open tunnel's token expires (`exp` + leeway), and the
/// wake-up of the one task that waits for the earliest.
#[derive(Default)]
pub struct Expiries {
    due: Mutex<BTreeSet<u64>>,
    wake: Notify,
}

impl Expiries {
    fn due(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        self.due.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a deadline; wakes the timer task when it is the new earliest.
    pub fn schedule(&self, at: u64) {
        let mut due = self.due();
        let earlier = due.first().is_none_or(|first| at < *first);
        due.insert(at);
        drop(due);
        if earlier {
            self.wake.notify_one();
        }
    }

    /// The earliest deadline.
    pub fn next(&self) -> Option<u64> {
        self.due().first().copied()
    }

    /// Removes the deadlines at or before `now`; true when there were some.
    pub fn take_due(&self, now: u64) -> bool {
        let mut due = self.due();
        let later = due.split_off(&(now.saturating_add(1)));
        let any = !due.is_empty();
        *due = later;
        any
    }
}

/// How long until the unix second `at` begins.
fn until_unix(at: u64) -> Duration {
    (UNIX_EPOCH + Duration::from_secs(at))
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiries_keep_distinct_seconds_in_order() {
        let e = Expiries::default();
        e.schedule(30);
        e.schedule(10);
        e.schedule(30);
        e.schedule(20);
        assert_eq!(e.next(), Some(10));
        assert!(!e.take_due(9));
        assert!(e.take_due(20));
        assert_eq!(e.next(), Some(30));
        assert!(e.take_due(u64::MAX));
        assert_eq!(e.next(), None);
    }

    #[test]
    fn tunnel_facts_round_trip() {
        let t = TunnelInfo {
            user_id: 2,
            iat: Some(100),
            exp: Some(200),
            jti: Some("j".into()),
            request_id: "r".into(),
            opened_at: 100,
        };
        let f = facts_of(&t);
        assert_eq!(
            (f.user_id, f.iat, f.exp, f.jti.as_deref()),
            (2, Some(100), Some(200), Some("j"))
        );
    }

    #[tokio::test]
    async fn one_pass_closes_the_expired_among_ten_thousand_tunnels() {
        let state = crate::server::state::AppState::for_tests();
        let mut leases = Vec::new();
        for i in 0..10_000u64 {
            leases.push(state.tunnels.open(TunnelInfo {
                user_id: 1,
                iat: Some(0),
                exp: match i % 3 {
                    0 => Some(1_000),
                    1 => Some(2_000),
                    _ => None,
                },
                jti: None,
                request_id: i.to_string(),
                opened_at: 0,
            }));
        }
        assert_eq!(state.live.close_expired(999, 0), 0);
        assert_eq!(state.live.close_expired(1_000, 0), 3_334);
        // Already asked ones are not asked again; the leeway delays the rest.
        assert_eq!(state.live.close_expired(1_500, 600), 0);
        assert_eq!(state.live.close_expired(2_000, 0), 3_333);
        let closed = leases.iter_mut().filter_map(|l| l.try_closed()).count();
        assert_eq!(closed, 6_667);
        assert_eq!(
            state
                .metrics
                .tunnels_closed
                .with_label_values(&["token_expired"])
                .get(),
            6_667
        );
    }

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
