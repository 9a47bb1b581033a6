//! The registry of live connections, keyed by (user id, client id) and grouped by user, and each
//! connection's bounded outbound queue ([`Outbound`]). Client ids are scoped by user: two users may
//! hold the same client id without affecting each other. A user reconnecting with the same client id
//! replaces the old connection (closed 4002 "replaced"); a user holds at most N connections (4008).
//! Events can go to every connection of a user.
//!
//! With several replicas, a [`Fanout`] (the NATS bus, `bus.rs`) carries per-user events to the
//! other replicas, which deliver them with [`Hub::deliver_local`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use shared::frames::ServerFrame;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What goes out on a socket: a frame, or a close with a code and reason. Kept small (24 bytes):
/// the queue's first block of 32 slots is allocated with the connection and lives as long as it.
#[derive(Debug, Clone)]
pub enum Out {
    Frame(Box<ServerFrame>),
    Close(u16, Box<str>),
}

/// The sending side of one connection's bounded outbound queue. A full queue means the client is
/// not reading: the connection is marked slow and will be closed (1013) rather than buffer more.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Out>,
    slow: CancellationToken,
}

/// The connection is gone or too slow; stop producing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl Outbound {
    pub fn new(capacity: usize) -> (Outbound, mpsc::Receiver<Out>, CancellationToken) {
        let (tx, rx) = mpsc::channel(capacity);
        let slow = CancellationToken::new();
        (
            Outbound {
                tx,
                slow: slow.clone(),
            },
            rx,
            slow,
        )
    }

    pub fn send(&self, frame: ServerFrame) -> Result<(), Gone> {
        self.push(Out::Frame(Box::new(frame)))
    }

    pub fn close(&self, code: u16, reason: &str) -> Result<(), Gone> {
        self.push(Out::Close(code, reason.into()))
    }

    fn push(&self, out: Out) -> Result<(), Gone> {
        match self.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.slow.cancel();
                Err(Gone)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Gone),
        }
    }
}

pub const CLOSE_REPLACED: u16 = 4002;
pub const CLOSE_TOO_MANY: u16 = 4008;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    TooManyConnections,
}

impl Refusal {
    pub fn close(self) -> (u16, &'static str) {
        match self {
            Refusal::TooManyConnections => (CLOSE_TOO_MANY, "too many connections for this user"),
        }
    }
}

struct Entry {
    conn_id: u64,
    out: Outbound,
}

#[derive(Default)]
struct Inner {
    by_client: HashMap<(i64, String), Entry>,
    by_user: HashMap<i64, HashSet<String>>,
    next_conn: u64,
}

/// Carries per-user events to the other replicas.
pub trait Fanout: Send + Sync {
    fn user_frame(&self, user_id: i64, frame: &ServerFrame);
}

pub struct Hub {
    inner: Mutex<Inner>,
    max_per_user: usize,
    fanout: OnceLock<Arc<dyn Fanout>>,
}

impl Hub {
    pub fn new(max_per_user: usize) -> Hub {
        Hub {
            inner: Mutex::new(Inner::default()),
            max_per_user: max_per_user.max(1),
            fanout: OnceLock::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a connection; returns its id. An older connection with the same client id and user
    /// is told to close (4002) and replaced.
    pub fn register(&self, client_id: &str, user_id: i64, out: Outbound) -> Result<u64, Refusal> {
        let mut g = self.lock();
        let key = (user_id, client_id.to_string());
        let replacing = g.by_client.contains_key(&key);
        let held = g.by_user.get(&user_id).map_or(0, HashSet::len);
        if !replacing && held >= self.max_per_user {
            return Err(Refusal::TooManyConnections);
        }
        g.next_conn += 1;
        let conn_id = g.next_conn;
        if let Some(old) = g.by_client.insert(key, Entry { conn_id, out }) {
            let _ = old.out.close(CLOSE_REPLACED, "replaced");
        }
        g.by_user
            .entry(user_id)
            .or_default()
            .insert(client_id.to_string());
        Ok(conn_id)
    }

    /// Removes a connection, unless it was already replaced by a newer one.
    pub fn unregister(&self, client_id: &str, user_id: i64, conn_id: u64) {
        let mut g = self.lock();
        let key = (user_id, client_id.to_string());
        if g.by_client.get(&key).is_none_or(|e| e.conn_id != conn_id) {
            return;
        }
        g.by_client.remove(&key);
        if let Some(set) = g.by_user.get_mut(&user_id) {
            set.remove(client_id);
            if set.is_empty() {
                g.by_user.remove(&user_id);
            }
        }
    }

    /// Sends a frame to every connection of a user; returns how many took it.
    pub fn send_to_user(&self, user_id: i64, frame: &ServerFrame) -> usize {
        self.send_to_user_except(user_id, None, frame)
    }

    /// Sends a frame to every connection of a user but `except` (the one that caused the event,
    /// whose frame order must stay the documented one), here and on the other replicas.
    pub fn send_to_user_except(
        &self,
        user_id: i64,
        except: Option<&str>,
        frame: &ServerFrame,
    ) -> usize {
        if let Some(f) = self.fanout.get() {
            f.user_frame(user_id, frame);
        }
        self.deliver_local(user_id, except, frame)
    }

    /// Sets where per-user events also go (once, at start).
    pub fn set_fanout(&self, fanout: Arc<dyn Fanout>) {
        let _ = self.fanout.set(fanout);
    }

    /// Closes the user's local connection with this client id (it was opened on another replica).
    pub fn close_local(&self, user_id: i64, client_id: &str, code: u16, reason: &str) -> bool {
        let g = self.lock();
        g.by_client
            .get(&(user_id, client_id.to_string()))
            .is_some_and(|e| e.out.close(code, reason).is_ok())
    }

    /// Tells every local connection to close (drain).
    pub fn close_all(&self, code: u16, reason: &str) -> usize {
        let g = self.lock();
        g.by_client
            .values()
            .filter(|e| e.out.close(code, reason).is_ok())
            .count()
    }

    /// Sends a frame to this process's connections of a user but `except`.
    pub fn deliver_local(&self, user_id: i64, except: Option<&str>, frame: &ServerFrame) -> usize {
        let g = self.lock();
        let Some(clients) = g.by_user.get(&user_id) else {
            return 0;
        };
        clients
            .iter()
            .filter(|c| Some(c.as_str()) != except)
            .filter_map(|c| g.by_client.get(&(user_id, c.clone())))
            .filter(|e| e.out.send(frame.clone()).is_ok())
            .count()
    }

    pub fn count(&self) -> usize {
        self.lock().by_client.len()
    }

    pub fn count_for(&self, user_id: i64) -> usize {
        self.lock().by_user.get(&user_id).map_or(0, HashSet::len)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_queued_item_is_small() {
        assert_eq!(std::mem::size_of::<super::Out>(), 24);
    }

    use super::*;

    #[test]
    fn replacement_ownership_and_limits() {
        let hub = Hub::new(2);
        let (a, mut a_rx, _) = Outbound::new(8);
        let (b, _b_rx, _) = Outbound::new(8);
        let first = hub.register("c1", 1, a).unwrap();
        let second = hub.register("c1", 1, b.clone()).unwrap();
        assert!(matches!(a_rx.try_recv(), Ok(Out::Close(4002, _))));
        hub.unregister("c1", 1, first);
        assert_eq!(
            hub.count(),
            1,
            "a replaced connection does not unregister its successor"
        );
        hub.register("c2", 1, b.clone()).unwrap();
        assert_eq!(
            hub.register("c3", 1, b.clone()),
            Err(Refusal::TooManyConnections)
        );
        assert_eq!(hub.send_to_user(1, &ServerFrame::Pong), 2);
        hub.unregister("c1", 1, second);
        assert_eq!(hub.count_for(1), 1);
    }

    #[test]
    fn client_ids_are_scoped_by_user() {
        let hub = Hub::new(2);
        let (a, mut a_rx, _) = Outbound::new(8);
        let (b, mut b_rx, _) = Outbound::new(8);
        let ada = hub.register("ada-laptop-1", 1, a).unwrap();
        let other = hub.register("ada-laptop-1", 2, b).unwrap();
        assert!(a_rx.try_recv().is_err(), "ada's connection is untouched");
        assert_eq!(hub.count(), 2);
        assert_eq!(hub.send_to_user(1, &ServerFrame::Pong), 1);
        assert!(matches!(a_rx.try_recv(), Ok(Out::Frame(_))));
        assert!(
            b_rx.try_recv().is_err(),
            "user 2 gets none of user 1's frames"
        );
        hub.unregister("ada-laptop-1", 2, ada);
        assert_eq!(hub.count(), 2, "another user's conn id removes nothing");
        hub.unregister("ada-laptop-1", 2, other);
        assert_eq!(hub.count_for(1), 1);
        assert_eq!(hub.count_for(2), 0);
    }
}
