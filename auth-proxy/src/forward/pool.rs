//! Kept-alive connections to the agent for the lean HTTP path ([`crate::forward::lean`]).
//!
//! pingora's own pool is general (many peers, an LRU, a spawned task per idle connection watching
//! it, a `getpeername` per reuse). The lean path has one upstream, so this pool is a stack: the
//! most recently released connection is taken first (the one most likely still open), and a
//! connection is checked when it is taken, not watched while it waits: one non-blocking read must
//! find nothing to read (the agent closing it shows as end-of-file, an answer nobody asked for as
//! data: both are dropped). Connections idle longer than [`IDLE_MAX`] are dropped when met; at most
//! `capacity` wait at once. A connection the agent closes between the check and the request is the
//! caller's to retry (see `forward.rs`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;

/// How long a connection may wait in the pool (below the usual keep-alive timeouts of HTTP
/// servers, so the agent rarely closes one the edge is about to use).
pub const IDLE_MAX: Duration = Duration::from_secs(30);

/// The pool of one upstream.
pub struct UpstreamPool {
    idle: Mutex<Vec<(TcpStream, Instant)>>,
    capacity: usize,
}

impl UpstreamPool {
    pub fn new(capacity: usize) -> UpstreamPool {
        UpstreamPool {
            idle: Mutex::new(Vec::new()),
            capacity,
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<(TcpStream, Instant)>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An open, quiet connection, if one waits.
    pub fn take(&self) -> Option<TcpStream> {
        loop {
            let (mut stream, since) = self.idle().pop()?;
            if since.elapsed() <= IDLE_MAX && is_quiet(&mut stream) {
                return Some(stream);
            }
        }
    }

    /// Keeps a connection whose last answer was read completely (or drops it when full).
    pub fn put(&self, stream: TcpStream) {
        let mut idle = self.idle();
        if idle.len() < self.capacity {
            idle.push((stream, Instant::now()));
        }
    }

    /// How many connections wait.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.idle().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// True when a read would block: the connection is open and nothing unexpected was sent on it.
fn is_quiet(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    let mut buf = ReadBuf::new(&mut byte);
    let mut cx = Context::from_waker(Waker::noop());
    let mut read = std::future::poll_fn(|cx| Pin::new(&mut *stream).poll_read(cx, &mut buf));
    matches!(Pin::new(&mut read).poll(&mut cx), Poll::Pending)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        (client, server)
    }

    async fn pair() -> (TcpStream, TcpStream) {
        tcp_pair().await
    }

    /// The client side once the runtime has seen it become readable (the server closed or wrote),
    /// as a pooled connection is when the agent acted on it while it waited.
    async fn after_readable(client: TcpStream) -> TcpStream {
        tokio::time::timeout(Duration::from_secs(5), client.readable())
            .await
            .expect("readable in time")
            .unwrap();
        client
    }

    #[tokio::test]
    async fn an_open_quiet_connection_comes_back() {
        let pool = UpstreamPool::new(4);
        let (client, _server) = pair().await;
        pool.put(client);
        assert!(pool.take().is_some());
        assert!(pool.take().is_none(), "taken once");
    }

    #[tokio::test]
    async fn a_connection_the_upstream_closed_or_wrote_on_is_dropped() {
        let pool = UpstreamPool::new(4);
        let (closed, server) = tcp_pair().await;
        drop(server);
        let (chatty, mut server2) = tcp_pair().await;
        server2.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        pool.put(after_readable(closed).await);
        pool.put(after_readable(chatty).await);
        assert!(pool.take().is_none());
        assert!(pool.is_empty());
    }

    #[tokio::test]
    async fn the_pool_keeps_at_most_its_capacity_and_gives_the_newest_first() {
        let pool = UpstreamPool::new(2);
        let addr = |s: &TcpStream| s.local_addr().unwrap();
        let mut servers = Vec::new();
        let mut addrs = Vec::new();
        for _ in 0..3 {
            let (client, server) = pair().await;
            servers.push(server);
            addrs.push(addr(&client));
            pool.put(client);
        }
        assert_eq!(pool.len(), 2, "the third is dropped");
        assert_eq!(addr(&pool.take().unwrap()), addrs[1]);
        assert_eq!(addr(&pool.take().unwrap()), addrs[0]);
        assert!(pool.take().is_none());
    }
}
