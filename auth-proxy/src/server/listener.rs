//! The listeners and their accept loop, run as pingora background services: the edge's and the
//! admin listener's.
//!
//! pingora's listening service would wrap every accepted socket in its own stream at once; the edge
//! accepts itself so that a WebSocket tunnel can relay the socket as accepted
//! ([`crate::accept::client_socket`]). pingora still runs the service: its runtime and worker threads, the
//! shutdown watch (the loop stops accepting and drops the listener when the drain starts), and the
//! grace period that follows. The admin listener's connections go to pingora's HTTP server app as
//! they are accepted. Both sockets exist before pingora starts: handed over by whoever started the
//! process ([`shared::listen`], systemd socket activation, names `edge` and `admin`) or bound
//! here, so a taken address fails the start-up with a clear error.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use pingora::apps::ServerApp;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tracing::{error, info};

use crate::accept::client_socket::pingora_stream;

/// Pending connections the kernel queues (pingora's listener uses the same).
const BACKLOG: i32 = 65535;
/// How long accepting pauses when the process is out of descriptors (they are freed as
/// connections end; accepting again at once would spin).
const OUT_OF_DESCRIPTORS_PAUSE: Duration = Duration::from_millis(100);

/// The listening socket called `name`: the one handed over at start ([`shared::listen`]), or one
/// bound to `addr` ([`bind`]).
pub fn listen(name: &str, addr: &str) -> anyhow::Result<std::net::TcpListener> {
    let inherited = shared::listen::take(name)
        .with_context(|| format!("the {name} listener handed over at start"))?;
    match inherited {
        Some(listener) => {
            listener.set_nonblocking(true)?;
            delay_first_ack(&SockRef::from(&listener));
            Ok(listener)
        }
        None => bind(addr),
    }
}

/// Binds a listening socket: address reuse (a restart does not wait for old
/// connections' `TIME_WAIT`), non-blocking, close-on-exec.
pub fn bind(addr: &str) -> anyhow::Result<std::net::TcpListener> {
    let addr: SocketAddr = addr
        .parse()
        .with_context(|| format!("listen address {addr:?} is not IP:port"))?;
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    // As pingora's listener: address reuse, and an IPv6 address left to the system's dual-stack
    // default.
    socket.set_reuse_address(true)?;
    socket
        .bind(&addr.into())
        .with_context(|| format!("cannot listen on {addr}"))?;
    socket.listen(BACKLOG)?;
    delay_first_ack(&SockRef::from(&socket));
    Ok(socket.into())
}

/// Accepted connections start with delayed acknowledgements, as on HAProxy's HTTP listeners: the
/// client's request is acknowledged by the edge's answer (a 101, a refusal) instead of a bare ACK
/// of its own: one packet fewer per handshake. The kernel itself moves a connection that answers
/// promptly to delayed acknowledgements, so this changes only how a connection's first request is
/// acknowledged. An optimisation: a kernel that refuses it changes nothing else.
fn delay_first_ack(socket: &SockRef<'_>) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket.set_tcp_quickack(false) {
        tracing::debug!(error = %e, "delayed acknowledgements not set on the listener");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = socket;
}

/// What a listener does with the connections it accepts.
#[async_trait]
pub trait Connections: Send + Sync + 'static {
    /// Serves one accepted connection to its end.
    async fn serve(self: Arc<Self>, socket: TcpStream, peer: SocketAddr, shutdown: ShutdownWatch);

    /// After the listener has closed.
    async fn cleanup(&self) {}
}

/// The admin listener's connections, served by pingora's HTTP server app (keep-alive included).
pub struct HttpConnections<A>(pub Arc<A>);

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> Connections for HttpConnections<A> {
    async fn serve(self: Arc<Self>, socket: TcpStream, peer: SocketAddr, shutdown: ShutdownWatch) {
        let mut stream = pingora_stream(socket, peer);
        while let Some(reused) = self.0.process_new(stream, &shutdown).await {
            stream = reused;
        }
    }
}

/// The accept loop of one listener.
pub struct Listener<C> {
    /// `edge` or `admin`, for the log.
    name: &'static str,
    connections: Arc<C>,
    /// Taken by the service when it starts.
    listener: Mutex<Option<std::net::TcpListener>>,
}

impl<C: Connections> Listener<C> {
    pub fn new(name: &'static str, connections: C, listener: std::net::TcpListener) -> Listener<C> {
        Listener {
            name,
            connections: Arc::new(connections),
            listener: Mutex::new(Some(listener)),
        }
    }
}

#[async_trait]
impl<C: Connections> BackgroundService for Listener<C> {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.listener.lock().map(|mut l| l.take());
        let Some(listener) = taken.ok().flatten() else {
            error!(listener = self.name, "a listener was started twice");
            return;
        };
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                error!(listener = self.name, error = %e, "cannot register the listener");
                return;
            }
        };
        loop {
            let accepted = tokio::select! {
                biased;
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        break;
                    }
                    continue;
                }
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((socket, peer)) => {
                    let _ = socket.set_nodelay(true);
                    let connections = self.connections.clone();
                    tokio::spawn(connections.serve(socket, peer, shutdown.clone()));
                }
                Err(e) => accept_failed(e).await,
            }
        }
        info!("{} listener closed", self.name);
        drop(listener);
        self.connections.cleanup().await;
    }
}

/// A failed `accept`: logged; out of descriptors, accepting pauses briefly.
async fn accept_failed(e: std::io::Error) {
    error!(error = %e, "accept failed");
    if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
        tokio::time::sleep(OUT_OF_DESCRIPTORS_PAUSE).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binding_a_taken_address_says_which() {
        let first = bind("127.0.0.1:0").unwrap();
        let taken = first.local_addr().unwrap().to_string();
        let error = bind(&taken).unwrap_err();
        assert!(format!("{error:#}").contains(&taken), "{error:#}");
        assert!(bind("localhost:80").is_err(), "not IP:port");
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[test]
    fn accepted_connections_start_with_delayed_acknowledgements() {
        let listener = bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        listener.set_nonblocking(false).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        // TCP_QUICKACK reads false while the connection delays its acknowledgements.
        assert!(!Socket::from(accepted).tcp_quickack().unwrap());
        let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let _client = std::net::TcpStream::connect(plain.local_addr().unwrap()).unwrap();
        let (accepted, _) = plain.accept().unwrap();
        assert!(
            Socket::from(accepted).tcp_quickack().unwrap(),
            "the kernel's default differs"
        );
    }
}
