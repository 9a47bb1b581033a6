//! The cross-replica hub over NATS (`AGENT_BUS_URL`). Every replica keeps its own [`Hub`] of local
//! sockets; the bus joins them:
//!
//! - per-user broadcasts (`sessions_changed`, ...) are published on `<ns>.agent.user.<user_id>` and
//!   delivered by every other replica to its local sockets of that user;
//! - opening a client id publishes a `replace`, and the replica holding that (user, client id)
//!   closes its socket with 4002, as on one replica;
//! - the per-user connection limit counts leases in a JetStream key-value bucket
//!   (`<ns>_agent_leases`, one key per (user, client id), max age = the lease TTL). Each replica
//!   refreshes its own leases every TTL/3, so a replica that dies stops counting after one TTL.
//!   Leases are ordered by their stream revision, so two replicas admitting at once agree on who
//!   is over the limit.
//!
//! The bus never stops chat: when NATS is unreachable every operation is skipped at once (the
//! replica falls back to its local hub and limit), `agent_bus_connected` drops to 0, each skipped
//! operation counts in `agent_bus_degraded_total{operation}`, and a WARN is logged when the state
//! changes. Without `AGENT_BUS_URL` the bus is off and the hub is this process only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::frames::ServerFrame;
use tokio::sync::{mpsc, OnceCell};

use crate::chat::hub::{Fanout, Hub, Refusal, CLOSE_REPLACED};
use crate::config::ScaleConfig;
use crate::metrics::Metrics;

/// How long one bus operation may take before the replica goes on without it.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// Broadcasts waiting to be published.
const PUBLISH_QUEUE: usize = 1024;

/// What replicas tell each other.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BusMessage {
    /// Deliver `frame` to every socket of `user_id`.
    Frame {
        origin: String,
        user_id: i64,
        frame: ServerFrame,
    },
    /// `client_id` of `user_id` was opened on `origin`: close it anywhere else (4002).
    Replace {
        origin: String,
        user_id: i64,
        client_id: String,
    },
}

impl BusMessage {
    fn origin(&self) -> &str {
        match self {
            BusMessage::Frame { origin, .. } | BusMessage::Replace { origin, .. } => origin,
        }
    }

    fn user_id(&self) -> i64 {
        match self {
            BusMessage::Frame { user_id, .. } | BusMessage::Replace { user_id, .. } => *user_id,
        }
    }
}

/// The subject of one user's messages.
pub fn user_subject(namespace: &str, user_id: i64) -> String {
    format!("{namespace}.agent.user.{user_id}")
}

/// The lease key of one (user, client id): `<user_id>.<hash>`; client ids are free text, key
/// characters are not.
pub fn lease_key(user_id: i64, client_id: &str) -> String {
    let digest = Sha256::digest(client_id.as_bytes());
    format!("{user_id}.{}", hex::encode(&digest[..16]))
}

/// Given every live lease revision of a user, whether the lease with revision `mine` is within
/// the first `limit` (the oldest leases win).
pub fn within_limit(revisions: &[u64], mine: u64, limit: usize) -> bool {
    revisions.iter().filter(|r| **r < mine).count() < limit
}

/// One local connection's lease.
struct Lease {
    value: String,
    /// The revision of our latest write; `None` while not written (bus down when it opened).
    revision: Option<u64>,
}

struct Nats {
    client: async_nats::Client,
    js: jetstream::Context,
    kv: OnceCell<kv::Store>,
    namespace: String,
    ttl: Duration,
    publish: mpsc::Sender<BusMessage>,
}

pub struct Bus {
    replica: String,
    nats: Option<Nats>,
    metrics: Arc<Metrics>,
    max_per_user: usize,
    leases: Mutex<HashMap<String, Lease>>,
    degraded: AtomicBool,
}

impl Bus {
    /// A bus that is off: the hub is this process only.
    pub fn off(metrics: Arc<Metrics>, max_per_user: usize) -> Arc<Bus> {
        Arc::new(Bus {
            replica: uuid::Uuid::new_v4().simple().to_string(),
            nats: None,
            metrics,
            max_per_user: max_per_user.max(1),
            leases: Mutex::new(HashMap::new()),
            degraded: AtomicBool::new(false),
        })
    }

    /// Connects to `AGENT_BUS_URL` if set, hooks the bus into `hub` and starts its tasks. An
    /// unreachable NATS is not an error: the client keeps reconnecting in the background.
    pub async fn start(
        config: &ScaleConfig,
        hub: &Arc<Hub>,
        metrics: Arc<Metrics>,
        max_per_user: usize,
    ) -> anyhow::Result<Arc<Bus>> {
        let Some(url) = &config.bus_url else {
            return Ok(Bus::off(metrics, max_per_user));
        };
        let events = metrics.clone();
        let client = async_nats::ConnectOptions::new()
            .name("agent-service")
            .retry_on_initial_connect()
            .connection_timeout(OP_TIMEOUT)
            .event_callback(move |event| {
                let m = events.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            m.bus_connected.set(1);
                            tracing::info!("bus connected");
                        }
                        async_nats::Event::Disconnected => {
                            m.bus_connected.set(0);
                            tracing::warn!("bus disconnected: replicas fall back to their own hub until it returns");
                        }
                        other => tracing::debug!("bus event: {other}"),
                    }
                }
            })
            .connect(url.as_str())
            .await
            .map_err(|e| anyhow::anyhow!("AGENT_BUS_URL: {e}"))?;
        let (publish, queue) = mpsc::channel(PUBLISH_QUEUE);
        let bus = Arc::new(Bus {
            replica: uuid::Uuid::new_v4().simple().to_string(),
            nats: Some(Nats {
                js: jetstream::new(client.clone()),
                client,
                kv: OnceCell::new(),
                namespace: config.bus_namespace.clone(),
                ttl: config.lease_ttl,
                publish,
            }),
            metrics,
            max_per_user: max_per_user.max(1),
            leases: Mutex::new(HashMap::new()),
            degraded: AtomicBool::new(false),
        });
        hub.set_fanout(bus.clone());
        tokio::spawn(bus.clone().publish_loop(queue));
        tokio::spawn(bus.clone().receive_loop(hub.clone()));
        tokio::spawn(bus.clone().refresh_loop());
        Ok(bus)
    }

    pub fn enabled(&self) -> bool {
        self.nats.is_some()
    }

    /// True while the bus is configured and connected.
    pub fn connected(&self) -> bool {
        self.nats
            .as_ref()
            .is_some_and(|n| n.client.connection_state() == State::Connected)
    }

    /// Counts a skipped operation; logs a WARN when the bus goes from healthy to degraded.
    fn degrade(&self, operation: &str, why: impl std::fmt::Display) {
        self.metrics
            .bus_degraded
            .with_label_values(&[operation])
            .inc();
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                operation,
                "bus unavailable ({why}): this replica serves on its own until it returns"
            );
        }
    }

    fn recovered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!("bus available again");
        }
    }

    /// The lease bucket, once NATS is reachable.
    async fn kv(&self) -> Result<&kv::Store, String> {
        let n = self.nats.as_ref().ok_or("bus off")?;
        if n.client.connection_state() != State::Connected {
            return Err("not connected".into());
        }
        let bucket = format!("{}_agent_leases", n.namespace);
        let init = async {
            if let Ok(store) = n.js.get_key_value(bucket.as_str()).await {
                return Ok(store);
            }
            // The bucket's stream, laid out as `create_key_value` lays it out; created directly
            // because that call's reply does not parse with NATS 2.9 servers.
            n.js.get_or_create_stream(jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                description: Some("agent-service connection leases".into()),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age: n.ttl,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                discard: jetstream::stream::DiscardPolicy::New,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
            n.js.get_key_value(bucket.as_str())
                .await
                .map_err(|e| e.to_string())
        };
        let got = tokio::time::timeout(OP_TIMEOUT, n.kv.get_or_try_init(|| init)).await;
        match got {
            Ok(Ok(store)) => Ok(store),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("timed out".into()),
        }
    }

    /// Takes a slot for a connection already registered in the local hub: writes its lease,
    /// refuses it when the user's leases across replicas exceed the limit, and tells other
    /// replicas to close an older socket with the same client id.
    pub async fn acquire(
        &self,
        user_id: i64,
        client_id: &str,
        conn_id: u64,
    ) -> Result<(), Refusal> {
        if !self.enabled() {
            return Ok(());
        }
        let key = lease_key(user_id, client_id);
        let value = format!("{}/{conn_id}", self.replica);
        let revision = match self.admit(user_id, &key, &value).await {
            Ok(Some(rev)) => Some(rev),
            Ok(None) => return Err(Refusal::TooManyConnections),
            Err(e) => {
                self.degrade("lease", e);
                None
            }
        };
        self.lock_leases().insert(key, Lease { value, revision });
        self.send(BusMessage::Replace {
            origin: self.replica.clone(),
            user_id,
            client_id: client_id.to_string(),
        });
        Ok(())
    }

    /// Writes the lease and checks the limit: `Ok(Some(revision))` admitted, `Ok(None)` over the limit.
    async fn admit(&self, user_id: i64, key: &str, value: &str) -> Result<Option<u64>, String> {
        let kv = self.kv().await?;
        let op = async {
            let rev = kv
                .put(key, value.to_string().into())
                .await
                .map_err(|e| e.to_string())?;
            let revisions = live_revisions(kv, user_id).await?;
            if within_limit(&revisions, rev, self.max_per_user) {
                Ok(Some(rev))
            } else {
                let _ = kv.delete_expect_revision(key, Some(rev)).await;
                Ok(None)
            }
        };
        let result = tokio::time::timeout(OP_TIMEOUT, op)
            .await
            .map_err(|_| "timed out".to_string())?;
        if result.is_ok() {
            self.recovered();
        }
        result
    }

    /// Gives the slot back, unless another connection has taken the key over since.
    pub async fn release(&self, user_id: i64, client_id: &str, conn_id: u64) {
        let key = lease_key(user_id, client_id);
        let value = format!("{}/{conn_id}", self.replica);
        let lease = {
            let mut leases = self.lock_leases();
            match leases.get(&key) {
                Some(l) if l.value == value => leases.remove(&key),
                _ => None,
            }
        };
        let Some(Lease {
            revision: Some(rev),
            ..
        }) = lease
        else {
            return;
        };
        if let Ok(kv) = self.kv().await {
            let _ =
                tokio::time::timeout(OP_TIMEOUT, kv.delete_expect_revision(&key, Some(rev))).await;
        }
    }

    fn lock_leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, Lease>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, msg: BusMessage) {
        let Some(n) = &self.nats else { return };
        if n.client.connection_state() != State::Connected {
            self.degrade("publish", "not connected");
            return;
        }
        if n.publish.try_send(msg).is_err() {
            self.degrade("publish", "publish queue full");
        }
    }

    async fn publish_loop(self: Arc<Self>, mut queue: mpsc::Receiver<BusMessage>) {
        let Some(n) = &self.nats else { return };
        while let Some(msg) = queue.recv().await {
            let subject = user_subject(&n.namespace, msg.user_id());
            let Ok(payload) = serde_json::to_vec(&msg) else {
                continue;
            };
            let sent = tokio::time::timeout(OP_TIMEOUT, n.client.publish(subject, payload.into()));
            if !matches!(sent.await, Ok(Ok(()))) {
                self.degrade("publish", "publish failed");
            }
        }
    }

    async fn receive_loop(self: Arc<Self>, hub: Arc<Hub>) {
        let Some(n) = &self.nats else { return };
        let subject = format!("{}.agent.user.*", n.namespace);
        // Subscribing is queued until the first connection; the client re-subscribes after reconnects.
        let mut sub = match n.client.subscribe(subject).await {
            Ok(s) => s,
            Err(e) => {
                self.degrade("subscribe", e);
                return;
            }
        };
        while let Some(msg) = sub.next().await {
            let Ok(m) = serde_json::from_slice::<BusMessage>(&msg.payload) else {
                tracing::debug!("ignoring a malformed bus message");
                continue;
            };
            if m.origin() == self.replica {
                continue;
            }
            match m {
                BusMessage::Frame { user_id, frame, .. } => {
                    hub.deliver_local(user_id, None, &frame);
                }
                BusMessage::Replace {
                    user_id, client_id, ..
                } => {
                    hub.close_local(user_id, &client_id, CLOSE_REPLACED, "replaced");
                }
            }
        }
    }

    /// Keeps this replica's leases alive (and writes the ones opened while the bus was down).
    async fn refresh_loop(self: Arc<Self>) {
        let Some(n) = &self.nats else { return };
        let mut tick = tokio::time::interval(n.ttl / 3);
        loop {
            tick.tick().await;
            let Ok(kv) = self.kv().await else { continue };
            let snapshot: Vec<(String, String, Option<u64>)> = self
                .lock_leases()
                .iter()
                .map(|(k, l)| (k.clone(), l.value.clone(), l.revision))
                .collect();
            for (key, value, revision) in snapshot {
                let write = async {
                    match revision {
                        Some(rev) => kv.update(&key, value.clone().into(), rev).await.ok(),
                        None => kv.create(&key, value.clone().into()).await.ok(),
                    }
                };
                let new_rev = tokio::time::timeout(OP_TIMEOUT, write).await.ok().flatten();
                let mut leases = self.lock_leases();
                if let Some(l) = leases.get_mut(&key).filter(|l| l.value == value) {
                    // A failed update means the lease expired or was taken over: write it anew next time.
                    l.revision = new_rev;
                }
            }
        }
    }
}

impl Fanout for Bus {
    fn user_frame(&self, user_id: i64, frame: &ServerFrame) {
        self.send(BusMessage::Frame {
            origin: self.replica.clone(),
            user_id,
            frame: frame.clone(),
        });
    }
}

/// The revisions of a user's live leases (deleted ones excluded). The caller has just written
/// one, so the listing is never empty and ends at the entry with no messages pending.
async fn live_revisions(kv: &kv::Store, user_id: i64) -> Result<Vec<u64>, String> {
    let mut watch = kv
        .watch_with_history(format!("{user_id}.>"))
        .await
        .map_err(|e| e.to_string())?;
    let mut revisions = Vec::new();
    while let Some(entry) = watch.next().await {
        let entry = entry.map_err(|e| e.to_string())?;
        if entry.operation == kv::Operation::Put {
            revisions.push(entry.revision);
        }
        if entry.delta == 0 {
            break;
        }
    }
    Ok(revisions)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_valid_and_scoped_by_user() {
        let k = lease_key(7, "tab 1 / ünïcode.*>");
        assert!(k.starts_with("7."));
        assert!(k
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
        assert_ne!(lease_key(7, "a"), lease_key(8, "a"));
        assert_eq!(lease_key(7, "a"), lease_key(7, "a"));
        assert_eq!(user_subject("fluxion", -3), "fluxion.agent.user.-3");
    }

    #[test]
    fn the_oldest_leases_win() {
        assert!(within_limit(&[5], 5, 1));
        assert!(!within_limit(&[3, 5], 5, 1));
        assert!(within_limit(&[3, 5], 3, 1));
        assert!(within_limit(&[3, 5, 9], 5, 2));
        assert!(!within_limit(&[3, 5, 9], 9, 2));
    }

    #[test]
    fn messages_round_trip() {
        let m = BusMessage::Frame {
            origin: "r1".into(),
            user_id: 4,
            frame: ServerFrame::SessionsChanged,
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<BusMessage>(&text).unwrap(), m);
        let r: BusMessage = serde_json::from_str(
            r#"{"kind":"replace","origin":"r2","user_id":4,"client_id":"tab"}"#,
        )
        .unwrap();
        assert_eq!(r.user_id(), 4);
        assert_eq!(r.origin(), "r2");
    }
}
