//! The registry of open WebSocket tunnels, so that any tunnel can be closed from outside the relay
//! with a WebSocket close code and reason (revoked tokens, deleted users, expiry, drain).
//!
//! API (stable; other modules build on it):
//! - [`Tunnels::open`]`(TunnelInfo) -> TunnelLease`: registers a tunnel when its relay starts.
//! - [`TunnelLease::closed`]`().await -> CloseRequest`: resolves once someone asks this tunnel to close;
//!   the relay selects on it next to its sockets, sends a close frame with that code and reason to the
//!   client and ends the tunnel. It never resolves otherwise (cancel-safe: poll it again after a
//!   `select!` picked another branch).
//! - [`Tunnels::close_where`]`(|info| .., CloseRequest) -> usize`: asks every open tunnel whose info
//!   matches to close; returns how many were asked. A tunnel is asked at most once.
//! - [`Tunnels::close_all`], [`Tunnels::len`], [`Tunnels::snapshot`] for drain, metrics and admin views.
//! - Dropping the lease removes the tunnel from the registry (the relay ending for any reason).
//!
//! The registry is sharded by tunnel id so opening and closing tunnels on different workers rarely
//! meets on one lock; each entry is the tunnel's info and a one-shot sender (a few hundred bytes).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::oneshot;

/// WebSocket close code: the endpoint is going away (server shutdown).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// WebSocket close code: a message was too big to process.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// WebSocket close code: a policy was violated (for example, authorization revoked).
pub const CLOSE_POLICY_VIOLATION: u16 = 1008;

/// A close frame's payload may hold at most 125 bytes: 2 for the code, so 123 for the reason.
pub const MAX_CLOSE_REASON_BYTES: usize = 123;

const SHARDS: usize = 16;

/// What the edge knows about an open tunnel, for deciding from outside whether to close it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelInfo {
    /// The user the tunnel was authenticated as.
    pub user_id: i64,
    /// The token's `iat` (issued at, Unix seconds), when it had one.
    pub iat: Option<u64>,
    /// The token's `exp` (expiry, Unix seconds), when it had one.
    pub exp: Option<u64>,
    /// The token's `jti`, when it had one.
    pub jti: Option<String>,
    /// The edge's request id of the handshake.
    pub request_id: String,
    /// When the tunnel opened (Unix seconds).
    pub opened_at: u64,
}

/// A request to close a tunnel: the WebSocket close code and reason sent to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseRequest {
    pub code: u16,
    pub reason: String,
}

impl CloseRequest {
    /// A close request; the reason is cut (at a character boundary) to fit a close frame.
    pub fn new(code: u16, reason: impl Into<String>) -> CloseRequest {
        let mut reason = reason.into();
        if reason.len() > MAX_CLOSE_REASON_BYTES {
            let mut end = MAX_CLOSE_REASON_BYTES;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.truncate(end);
        }
        CloseRequest { code, reason }
    }

    /// 1001 "server shutting down": what a draining edge sends.
    pub fn going_away() -> CloseRequest {
        CloseRequest::new(CLOSE_GOING_AWAY, "server shutting down")
    }
}

struct Entry {
    info: Arc<TunnelInfo>,
    /// Taken when the tunnel is asked to close, so it is asked once.
    close: Option<oneshot::Sender<CloseRequest>>,
}

/// The open tunnels. Shared by the relay (through [`TunnelLease`]) and whoever closes tunnels.
pub struct Tunnels {
    shards: [Mutex<HashMap<u64, Entry>>; SHARDS],
    next_id: AtomicU64,
}

impl Default for Tunnels {
    fn default() -> Self {
        Tunnels {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
        }
    }
}

impl Tunnels {
    pub fn new() -> Arc<Tunnels> {
        Arc::new(Tunnels::default())
    }

    fn shard(&self, id: u64) -> MutexGuard<'_, HashMap<u64, Entry>> {
        // A panic while holding a shard cannot leave an entry half-written: take the map anyway.
        self.shards[(id as usize) % SHARDS]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an open tunnel; it stays registered until the lease is dropped.
    pub fn open(self: &Arc<Self>, info: TunnelInfo) -> TunnelLease {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let info = Arc::new(info);
        self.shard(id).insert(
            id,
            Entry {
                info: info.clone(),
                close: Some(tx),
            },
        );
        TunnelLease {
            id,
            info,
            closed: rx,
            tunnels: self.clone(),
        }
    }

    /// Asks every open tunnel whose info matches `pred` to close with `request`. Returns how many
    /// tunnels were asked (a tunnel already asked is not counted again).
    pub fn close_where(&self, pred: impl Fn(&TunnelInfo) -> bool, request: CloseRequest) -> usize {
        let mut asked = 0;
        for shard in 0..SHARDS {
            let mut map = self.shard(shard as u64);
            for entry in map.values_mut() {
                if entry.close.is_some() && pred(&entry.info) {
                    if let Some(tx) = entry.close.take() {
                        // The receiver lives as long as the lease, which removes the entry first.
                        let _ = tx.send(request.clone());
                        asked += 1;
                    }
                }
            }
        }
        asked
    }

    /// Asks every open tunnel to close.
    pub fn close_all(&self, request: CloseRequest) -> usize {
        self.close_where(|_| true, request)
    }

    /// How many tunnels are open.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        (0..SHARDS).map(|s| self.shard(s as u64).len()).sum()
    }

    /// The info of every open tunnel (for admin views and periodic checks).
    pub fn snapshot(&self) -> Vec<Arc<TunnelInfo>> {
        let mut all = Vec::new();
        for shard in 0..SHARDS {
            all.extend(self.shard(shard as u64).values().map(|e| e.info.clone()));
        }
        all
    }
}

/// One open tunnel's place in the registry. Dropping it unregisters the tunnel.
pub struct TunnelLease {
    id: u64,
    info: Arc<TunnelInfo>,
    closed: oneshot::Receiver<CloseRequest>,
    tunnels: Arc<Tunnels>,
}

impl TunnelLease {
    pub fn info(&self) -> &TunnelInfo {
        &self.info
    }

    /// Resolves with the close request once this tunnel is asked to close; pending until then.
    /// Cancel-safe.
    #[cfg(test)]
    pub async fn closed(&mut self) -> CloseRequest {
        match (&mut self.closed).await {
            Ok(request) => request,
            // The sender only goes away with the entry, which only the lease removes.
            Err(_) => std::future::pending().await,
        }
    }

    /// Poll form of [`TunnelLease::closed`], for relays written as a poll function.
    pub fn poll_closed(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<CloseRequest> {
        use std::future::Future;
        match std::pin::Pin::new(&mut self.closed).poll(cx) {
            std::task::Poll::Ready(Ok(request)) => std::task::Poll::Ready(request),
            _ => std::task::Poll::Pending,
        }
    }

    /// The close request, if one has arrived (without waiting).
    #[cfg(test)]
    pub fn try_closed(&mut self) -> Option<CloseRequest> {
        self.closed.try_recv().ok()
    }
}

impl Drop for TunnelLease {
    fn drop(&mut self) {
        self.tunnels.shard(self.id).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn info(user_id: i64, jti: &str) -> TunnelInfo {
        TunnelInfo {
            user_id,
            iat: Some(100),
            exp: Some(200),
            jti: Some(jti.to_string()),
            request_id: format!("req-{jti}"),
            opened_at: 150,
        }
    }

    #[tokio::test]
    async fn close_where_reaches_matching_tunnels_only() {
        let tunnels = Tunnels::new();
        let mut a = tunnels.open(info(1, "a"));
        let mut b = tunnels.open(info(2, "b"));
        let mut c = tunnels.open(info(1, "c"));
        assert_eq!(tunnels.len(), 3);

        let asked = tunnels.close_where(|i| i.user_id == 1, CloseRequest::new(4001, "revoked"));
        assert_eq!(asked, 2);
        let want = CloseRequest::new(4001, "revoked");
        assert_eq!(a.closed().await, want);
        assert_eq!(c.closed().await, want);
        assert_eq!(b.try_closed(), None);
        let waiting = tokio::time::timeout(Duration::from_millis(20), b.closed()).await;
        assert!(waiting.is_err(), "an unmatched tunnel is not closed");
    }

    #[tokio::test]
    async fn a_tunnel_is_asked_once() {
        let tunnels = Tunnels::new();
        let mut a = tunnels.open(info(1, "a"));
        assert_eq!(tunnels.close_all(CloseRequest::going_away()), 1);
        assert_eq!(
            tunnels.close_all(CloseRequest::new(4001, "again")),
            0,
            "already asked"
        );
        assert_eq!(a.closed().await, CloseRequest::going_away());
    }

    #[test]
    fn dropping_the_lease_unregisters() {
        let tunnels = Tunnels::new();
        let a = tunnels.open(info(1, "a"));
        let b = tunnels.open(info(2, "b"));
        assert_eq!(tunnels.snapshot().len(), 2);
        drop(a);
        assert_eq!(tunnels.len(), 1);
        assert_eq!(tunnels.snapshot()[0].jti.as_deref(), Some("b"));
        assert_eq!(b.info().user_id, 2);
        drop(b);
        assert!(tunnels.len() == 0);
        assert_eq!(tunnels.close_all(CloseRequest::going_away()), 0);
    }

    #[tokio::test]
    async fn closed_is_cancel_safe() {
        let tunnels = Tunnels::new();
        let mut a = tunnels.open(info(1, "a"));
        for _ in 0..3 {
            let r = tokio::time::timeout(Duration::from_millis(1), a.closed()).await;
            assert!(r.is_err());
        }
        tunnels.close_where(
            |i| i.jti.as_deref() == Some("a"),
            CloseRequest::new(1008, "x"),
        );
        assert_eq!(a.closed().await.code, 1008);
    }

    #[test]
    fn reason_is_cut_to_fit_a_close_frame() {
        let long = "é".repeat(100); // 200 bytes
        let r = CloseRequest::new(1000, long);
        assert!(r.reason.len() <= MAX_CLOSE_REASON_BYTES);
        assert_eq!(r.reason.len(), 122, "cut at a character boundary");
        assert_eq!(CloseRequest::new(1000, "short").reason, "short");
    }
}
