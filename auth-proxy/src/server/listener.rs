//! The edge's listener and accept loop, run as a pingora background service.
//!
//! pingora's listening service would wrap every accepted socket in its own stream at once; the edge
//! accepts itself so that a WebSocket tunnel can relay the socket as accepted
//! ([`crate::accept::client_socket`]). pingora still runs the service: its runtime and worker threads, the
//! shutdown watch (the loop stops accepting and drops the listener when the drain starts), and the
//! grace period that follows. The socket is bound before pingora starts, so a taken address fails
//! the start-up with a clear error.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;
use tracing::{error, info};

use crate::server::connection::EdgeApp;

/// Pending connections the kernel queues (pingora's listener uses the same).
const BACKLOG: i32 = 65535;
/// How long accepting pauses when the process is out of descriptors (they are freed as
/// connections end; accepting again at once would spin).
const OUT_OF_DESCRIPTORS_PAUSE: Duration = Duration::from_millis(100);

/// Binds the edge's listening socket: address reuse (a restart does not wait for old
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
    delay_first_ack(&socket);
    Ok(socket.into())
}

/// Accepted connections start with delayed acknowledgements, as on HAProxy's HTTP listeners: the
/// client's request is acknowledged by the edge's answer (a 101, a refusal) instead of a bare ACK
/// of its own: one packet fewer per handshake. The kernel itself moves a connection that answers
/// promptly to delayed acknowledgements, so this changes only how a connection's first request is
/// acknowledged. An optimisation: a kernel that refuses it changes nothing else.
fn delay_first_ack(socket: &Socket) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = socket.set_tcp_quickack(false) {
        tracing::debug!(error = %e, "delayed acknowledgements not set on the listener");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = socket;
}

/// The accept loop of the edge listener.
pub struct EdgeListener {
    app: Arc<EdgeApp>,
    /// Taken by the service when it starts.
    listener: Mutex<Option<std::net::TcpListener>>,
}

impl EdgeListener {
    pub fn new(app: EdgeApp, listener: std::net::TcpListener) -> EdgeListener {
        EdgeListener {
            app: Arc::new(app),
            listener: Mutex::new(Some(listener)),
        }
    }
}

#[async_trait]
impl BackgroundService for EdgeListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let taken = self.listener.lock().map(|mut l| l.take());
        let Some(listener) = taken.ok().flatten() else {
            error!("the edge listener was started twice");
            return;
        };
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                error!(error = %e, "cannot register the edge listener");
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
                    let app = self.app.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move { app.serve(socket, peer, &shutdown).await });
                }
                Err(e) => accept_failed(e).await,
            }
        }
        info!("edge listener closed");
        drop(listener);
        self.app.cleanup().await;
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
