//! The edge's connection layer: owns each client connection accepted by [`crate::server::listener`].
//!
//! For every connection: admission (per-IP and global caps, see [`crate::accept::admission`]; over a cap
//! the client gets a JSON 429/503 and the connection closes), then, for each request on it, the
//! request head is read here under a deadline (`connections.header_timeout_secs` for the whole head;
//! a slow or silent client gets 408 or is closed). The head decides who serves the request:
//! - the WebSocket endpoint: [`crate::tunnel`], which authenticates, connects the agent and relays
//!   the raw sockets itself;
//! - a plain request without a body ([`crate::accept::door::eligible`]): [`crate::forward::lean`], the lean
//!   path on pingora-core's HTTP/1 sessions and upstream pool;
//! - everything else: pingora-proxy's `HttpProxy` with [`crate::decide::Edge`], handed a session
//!   that starts with the head already read (pingora's pipelined-prefix).
//!
//! Both HTTP paths keep the connection alive for the next request.
//!
//! The connection starts as the accepted socket ([`ClientSocket::Tcp`]) and becomes pingora's stream
//! the first time a request needs pingora's HTTP/1 codec; a tunnel relays it as it is then.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp};
use pingora::protocols::http::ServerSession;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};
use tracing::debug;

use crate::accept::admission::{Admission, Refusal};
use crate::accept::client_socket::ClientSocket;
use crate::accept::door::{self, Door};
use crate::accept::head::{HeadIndex, RequestHead};
use crate::decide::answers::raw_answer;
use crate::decide::reject::Reject;
use crate::decide::Edge;
use crate::forward::lean::Forwarder;
use crate::server::listener::Connections;
use crate::server::state::AppState;
use crate::tunnel::Client;

/// Largest request head accepted (request line and headers).
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers parsed at most (pingora's own limit).
const MAX_HEADERS: usize = 256;
/// How long a kept-alive connection may wait for its next request (pingora's default).
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);
/// How long writing a refusal may take.
const REFUSAL_WRITE: Duration = Duration::from_secs(1);

/// Owns the edge listener's connections.
pub struct EdgeApp {
    state: Arc<AppState>,
    edge: Edge,
    proxy: Arc<HttpProxy<Edge>>,
    forwarder: Forwarder,
    admission: Arc<Admission>,
    /// `auth_proxy_doors_total` by [`Door::index`], resolved once.
    doors: [prometheus::IntCounter; 4],
}

impl EdgeApp {
    pub fn new(state: Arc<AppState>, proxy: HttpProxy<Edge>) -> EdgeApp {
        let c = &state.config.connections;
        let admission = Admission::new(
            c.effective_max_total(),
            c.max_per_ip,
            state.trusted.clone(),
            state.metrics.connections_open.clone(),
        );
        let doors = Door::LABELS.map(|d| state.metrics.doors.with_label_values(&[d]));
        EdgeApp {
            doors,
            edge: Edge::new(state.clone()),
            proxy: Arc::new(proxy),
            forwarder: Forwarder::new(&state),
            admission,
            state,
        }
    }
}

/// What reading a request head gave.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// A whole head (and perhaps bytes after it), the door that serves it ([`crate::accept::door`]) and,
    /// when the edge's own codec reads it (the lean path, a kept handshake), where its parts are.
    Complete {
        bytes: BytesMut,
        door: Door,
        index: Option<HeadIndex>,
    },
    /// A whole head httparse refuses: the edge answers 400 itself.
    Unparsed,
    /// The connection closed (or the service is shutting down) before a request started.
    Closed,
    /// The head did not arrive in time; `started` if some of it did.
    TimedOut { started: bool },
    /// The head is larger than [`MAX_HEAD_BYTES`].
    TooLarge,
}

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A whole head, its door, and where its parts are when the edge's own codec reads it.
    Complete {
        door: Door,
        index: Option<HeadIndex>,
    },
    /// A whole head httparse refuses.
    Unparsed,
}

/// Looks at the bytes read so far: `None` while the head is incomplete.
pub fn parse_head(bytes: &[u8], routes: &crate::decide::routes::Routes) -> Option<Parsed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(bytes) {
        Ok(httparse::Status::Complete(len)) => {
            let route = routes.classify(&door::target_path(req.path.unwrap_or("/")));
            let door = door::choose(route, &req);
            let own = matches!(door, Door::Lean | Door::Tunnel { own: true });
            let index = own.then(|| HeadIndex::of(bytes, &req, len)).flatten();
            Some(Parsed::Complete { door, index })
        }
        Ok(httparse::Status::Partial) => None,
        Err(_) => head_ended(bytes).then_some(Parsed::Unparsed),
    }
}

/// True once the bytes hold the end of a head (an empty line).
fn head_ended(bytes: &[u8]) -> bool {
    bytes.windows(4).any(|w| w == b"\r\n\r\n") || bytes.windows(2).any(|w| w == b"\n\n")
}

/// Reads one request head from `stream`, after the bytes already read (`carry`: what followed the
/// last request): the first byte may take `first_byte_wait`, the whole head `header_timeout` from
/// the start (a new connection) or from its first byte (a kept-alive one).
async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    carry: BytesMut,
    fresh: bool,
    header_timeout: Duration,
    shutdown: &ShutdownWatch,
    routes: &crate::decide::routes::Routes,
) -> Head {
    let mut bytes = carry;
    let accepted = Instant::now();
    if bytes.is_empty() {
        bytes.reserve(2048);
        let mut shutdown = shutdown.clone();
        let first_wait = if fresh {
            header_timeout
        } else {
            KEEPALIVE_IDLE
        };
        let first = tokio::select! {
            biased;
            r = timeout(first_wait, stream.read_buf(&mut bytes)) => r,
            _ = shutdown.wait_for(|down| *down) => return Head::Closed,
        };
        match first {
            Err(_) => return Head::TimedOut { started: false },
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
            Ok(Ok(_)) => {}
        }
    }
    let deadline = if fresh { accepted } else { Instant::now() } + header_timeout;
    loop {
        match parse_head(&bytes, routes) {
            Some(Parsed::Complete { door, index }) => return Head::Complete { bytes, door, index },
            Some(Parsed::Unparsed) => return Head::Unparsed,
            None => {}
        }
        if bytes.len() >= MAX_HEAD_BYTES {
            return Head::TooLarge;
        }
        if bytes.capacity() == bytes.len() {
            bytes.reserve(bytes.len());
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut bytes)).await {
            Err(_) => return Head::TimedOut { started: true },
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Closed,
            Ok(Ok(_)) => {}
        }
    }
}

/// Who serves a request, with what the edge's own codec needs of its head.
enum Path {
    /// The edge's tunnel; the head's parts when the edge's own codec reads it.
    Tunnel(Option<HeadIndex>),
    Lean(HeadIndex),
    Proxy,
}

/// pingora's HTTP/1 session of the connection with the request head (in `bytes`, whole) read;
/// `None` when pingora's codec refuses it (answered with the edge's JSON 400, then closed).
async fn read_with_pingora(stream: ClientSocket, bytes: BytesMut) -> Option<ServerSession> {
    let mut session = ServerSession::new_http1(stream.into_pingora());
    session.set_pipelined_prefix(bytes);
    match session.read_request().await {
        Ok(true) => Some(session),
        Ok(false) => None,
        Err(_) => {
            let r = Reject::Malformed;
            let body = r.body();
            let request_id = uuid::Uuid::new_v4().to_string();
            if let Ok(header) =
                crate::decide::answers::json_response(r.status(), body.len(), &request_id, None)
            {
                let _ = timeout(
                    REFUSAL_WRITE,
                    session.write_error_response(header, body.into()),
                )
                .await;
                let _ = timeout(REFUSAL_WRITE, session.finish()).await;
            }
            None
        }
    }
}

/// The edge's JSON answer ([`raw_answer`]) written straight to the socket, then the connection
/// closes.
async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, reject: Reject) {
    let out = raw_answer(reject);
    let _ = timeout(REFUSAL_WRITE, async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        stream.shutdown().await?;
        // Lingering close: read what the client still sends, so closing with unread bytes does
        // not reset the connection before the client has read the answer.
        let mut sink = [0u8; 1024];
        let mut left = MAX_HEAD_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await? {
                0 => break,
                n => left = left.saturating_sub(n),
            }
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
}

impl EdgeApp {
    /// Serves one accepted connection until it closes, becomes a tunnel, or the edge shuts down.
    pub async fn serve(
        self: &Arc<Self>,
        socket: TcpStream,
        peer: SocketAddr,
        shutdown: &ShutdownWatch,
    ) {
        let mut stream = ClientSocket::Tcp(socket, peer);
        let m = &self.state.metrics;
        // Held for the connection's life (handed to the relay's task when it becomes a tunnel).
        let ticket = match self.admission.admit(Some(peer.ip())) {
            Ok(ticket) => ticket,
            Err(refusal) => {
                m.connections_refused
                    .with_label_values(&[refusal.label()])
                    .inc();
                let reject = match refusal {
                    Refusal::PerIp => Reject::ConnectionsPerIp,
                    Refusal::Total => Reject::ConnectionsTotal,
                };
                Box::pin(answer_and_close(&mut stream, reject)).await;
                return;
            }
        };
        let header_timeout = Duration::from_secs(self.state.config.connections.header_timeout_secs);
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut fresh = true;
        // Bytes read after the last request's head (a pipelined next request).
        let mut carry = BytesMut::new();
        loop {
            // Boxed, like every other step below: the connection's own future stays small for
            // the life of a tunnel.
            let (mut bytes, path) = match Box::pin(read_head(
                &mut stream,
                std::mem::take(&mut carry),
                fresh,
                header_timeout,
                shutdown,
                &self.state.routes,
            ))
            .await
            {
                Head::Complete { bytes, door, index } => {
                    self.doors[door.index()].inc();
                    let path = match (door, index) {
                        (Door::Tunnel { .. }, index) => Path::Tunnel(index),
                        (Door::Lean, Some(index)) => Path::Lean(index),
                        _ => Path::Proxy,
                    };
                    (bytes, path)
                }
                Head::Unparsed => {
                    self.doors[Door::Refuse.index()].inc();
                    let r = Reject::Malformed;
                    Box::pin(answer_and_close(&mut stream, r)).await;
                    return;
                }
                Head::Closed => return,
                Head::TimedOut { started } => {
                    m.header_timeouts.inc();
                    if started {
                        Box::pin(answer_and_close(&mut stream, Reject::HeadTimeout)).await;
                    }
                    debug!(started, "request head timed out");
                    return;
                }
                Head::TooLarge => {
                    Box::pin(answer_and_close(&mut stream, Reject::HeadTooLarge)).await;
                    return;
                }
            };
            // Each path's future is boxed: an open tunnel must not carry the size of the HTTP
            // paths' futures (nor they each other's) for its whole life.
            let tunnel = match path {
                Path::Lean(index) => {
                    let head = RequestHead::split_from(&mut bytes, index);
                    carry = bytes;
                    let closing = *shutdown.borrow();
                    let client = stream.into_pingora();
                    let serve =
                        self.forwarder
                            .serve(&self.state, &self.edge, client, head, closing);
                    let Some(kept) = Box::pin(serve).await else {
                        return;
                    };
                    stream = ClientSocket::Pingora(kept);
                    fresh = false;
                    continue;
                }
                Path::Tunnel(Some(index)) => {
                    // The connection ends with the tunnel: nothing after the head is kept.
                    let head = RequestHead::split_from(&mut bytes, index);
                    let client = Client::Head { stream, head };
                    let serve = crate::tunnel::serve(&self.state, &self.edge, client, ticket);
                    Box::pin(serve).await;
                    return;
                }
                Path::Tunnel(None) => true,
                Path::Proxy => false,
            };
            // pingora's HTTP/1 codec reads the head first, here: a head it refuses (an ambiguous
            // authority, conflicting lengths, ...) gets the edge's JSON 400 on every door.
            let Some(session) = Box::pin(read_with_pingora(stream, bytes.clone())).await else {
                return;
            };
            if tunnel {
                let client = Client::Session(Box::new(session));
                let serve = crate::tunnel::serve(&self.state, &self.edge, client, ticket);
                Box::pin(serve).await;
                return;
            }
            // pingora-proxy reads the head itself: a new session on the same stream, with the
            // same bytes (the head was read from them alone, nothing from the socket).
            let ServerSession::H1(read) = session else {
                return;
            };
            let mut session = ServerSession::new_http1(read.into_inner());
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None => session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) }),
            }
            session.set_pipelined_prefix(bytes);
            let Some(reused) = Box::pin(self.proxy.process_new_http(session, shutdown)).await
            else {
                return;
            };
            let (next, next_settings) = reused.consume();
            stream = ClientSocket::Pingora(next);
            settings = next_settings;
            fresh = false;
        }
    }

    /// When the listener has closed: pingora-proxy's own clean-up.
    pub async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

#[async_trait::async_trait]
impl Connections for EdgeApp {
    async fn serve(self: Arc<Self>, socket: TcpStream, peer: SocketAddr, shutdown: ShutdownWatch) {
        EdgeApp::serve(&self, socket, peer, &shutdown).await
    }

    async fn cleanup(&self) {
        EdgeApp::cleanup(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::decide::routes::Routes;

    fn routes() -> Routes {
        Routes::from_config(&Config::default())
    }

    #[test]
    fn heads_are_classified_when_complete() {
        let r = routes();
        let partial = BytesMut::from(&b"GET /ws/a?token=x HTTP/1.1\r\nHost: a\r\n"[..]);
        assert_eq!(parse_head(&partial, &r), None);
        let ws = BytesMut::from(&b"GET /ws/a?token=x HTTP/1.1\r\nHost: a\r\n\r\n"[..]);
        assert!(matches!(
            parse_head(&ws, &r),
            Some(Parsed::Complete {
                door: Door::Tunnel { own: true },
                index: Some(_)
            })
        ));
        let post = BytesMut::from(&b"POST /ws/a HTTP/1.1\r\nHost: a\r\n\r\n"[..]);
        assert_eq!(
            parse_head(&post, &r),
            Some(Parsed::Complete {
                door: Door::Tunnel { own: false },
                index: None
            }),
            "pingora's codec reads (and the tunnel refuses) what is no handshake"
        );
        let api =
            BytesMut::from(&b"POST /api/x HTTP/1.1\r\nHost: a\r\ncontent-length: 3\r\n\r\nabc"[..]);
        assert_eq!(
            parse_head(&api, &r),
            Some(Parsed::Complete {
                door: Door::Proxy,
                index: None
            })
        );
        let get = BytesMut::from(&b"GET /api/x?token=t HTTP/1.1\r\nHost: a\r\n\r\n"[..]);
        let Some(Parsed::Complete {
            door: Door::Lean,
            index: Some(index),
        }) = parse_head(&get, &r)
        else {
            panic!("a lean head");
        };
        assert_eq!(index.len(), get.len());
    }

    #[test]
    fn unparsable_heads_are_refused_once_complete() {
        let r = routes();
        let bad = BytesMut::from(&b"GET /a b HTTP/1.1\r\nHost: a\r\n"[..]);
        assert_eq!(parse_head(&bad, &r), None, "wait for the end of the head");
        let bad = BytesMut::from(&b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"[..]);
        assert_eq!(parse_head(&bad, &r), Some(Parsed::Unparsed));
    }
}
