//! The WebSocket endpoint, owned by the edge end to end: a tunnel's life.
//!
//! 1. The request head is read and parsed by [`crate::server::connection`] (a plain handshake,
//!    [`crate::accept::door::own_handshake`]) or by pingora's HTTP/1 codec (anything else).
//! 2. The same decision as plain HTTP: [`Edge::identify_request`] and [`Edge::decide`]. A refusal
//!    is answered here as JSON, before any upstream contact and before the upgrade; or, with
//!    `ws.reject_with = "close"`, as an upgrade the edge completes itself and closes at once.
//! 3. The edge connects the agent, forwards the sanitised handshake with the signed identity
//!    ([`Edge::upstream_edits`] after [`strip_hop_by_hop`]), and reads the agent's answer.
//!    A non-101 answer is passed to the client and the connection closes.
//! 4. On 101 the answer goes to the client, the relay takes both sockets as they are, the tunnel is
//!    registered in [`crate::live::tunnels`] (closable from outside), and [`crate::tunnel::relay`] moves bytes
//!    until one side ends it, the idle timeout, a limit, the drain or the registry closes it.
//! 5. One access line at the end, with the duration and the bytes of each direction.

pub(crate) mod frames;
pub(crate) mod notice;
pub(crate) mod refusal;
pub(crate) mod relay;

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::protocols::http::v1::client::http_req_header_to_wire;
use pingora::protocols::http::ServerSession;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::{info, warn};

use crate::accept::admission::Ticket;
use crate::accept::client_socket::ClientSocket;
use crate::accept::head::{write_upstream_request, RequestHead, RequestView};
use crate::clock::now_unix;
use crate::config::RejectWith;
use crate::decide::answers::{answer_then_close, insert_cors, respond_json};
use crate::decide::edits::apply_edits;
use crate::decide::headers;
use crate::decide::reject::Reject;
use crate::decide::{Edge, RequestCtx};
use crate::forward::dial::CONNECT_TIMEOUT;
use crate::live::tunnels::{CloseRequest, TunnelInfo};
use crate::server::state::AppState;
use crate::tunnel::frames::Limits;
use crate::tunnel::relay::{relay, RelayConfig, RelayCounters};

/// How long the agent may take to answer the handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest handshake answer head read from the agent.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// Largest non-101 answer body passed on to the client.
const MAX_REFUSAL_BODY: usize = 64 * 1024;

/// Headers of a client's handshake the edge cannot police, removed unless allowed.
const EXTENSION_HEADER: &str = "sec-websocket-extensions";

/// The client side of a handshake: the request as read, and its connection.
pub enum Client {
    /// A head the edge parsed itself ([`crate::accept::door::own_handshake`]): the upstream handshake is written
    /// straight from its bytes.
    Head {
        stream: ClientSocket,
        head: RequestHead,
    },
    /// Anything else, parsed by pingora's HTTP/1 codec (its head already read).
    Session(Box<ServerSession>),
}

impl Client {
    /// What the decision reads of the request.
    fn request(&self) -> &(dyn RequestView + Sync) {
        match self {
            Client::Head { head, .. } => head,
            Client::Session(session) => session.req_header(),
        }
    }

    /// The handshake the agent gets: hop-by-hop headers and any the client named in `Connection`
    /// removed, the edge's edits applied ([`Edge::upstream_edits`]), then `Connection: Upgrade`
    /// and `Upgrade: websocket` (the only upgrade forwarded). `None` when it cannot be written.
    fn upstream_handshake(&self, edge: &Edge, ctx: &RequestCtx) -> Option<Vec<u8>> {
        match self {
            Client::Head { head, .. } => {
                let mut edits = edge.upstream_edits(head.method(), head.path(), head.query(), ctx);
                edits.added.push(("connection", "Upgrade".into()));
                edits.added.push(("upgrade", "websocket".into()));
                let nominated = nominated(head.headers().filter_map(|(n, v)| {
                    n.eq_ignore_ascii_case("connection")
                        .then(|| std::str::from_utf8(v).ok())
                        .flatten()
                }));
                let mut drop: Vec<&str> = headers::HOP_BY_HOP.to_vec();
                drop.extend(nominated.iter().map(String::as_str));
                if !edge.config().websocket.allow_extensions {
                    drop.push(EXTENSION_HEADER);
                }
                let mut wire = Vec::with_capacity(head.bytes().len() + 512);
                write_upstream_request(&mut wire, head, &edits, &drop).ok()?;
                Some(wire)
            }
            Client::Session(session) => {
                let mut request = session.req_header().clone();
                strip_hop_by_hop(&mut request);
                if !edge.config().websocket.allow_extensions {
                    request.remove_header(EXTENSION_HEADER);
                }
                let mut edits = edge.upstream_edits(
                    request.method.as_str(),
                    request.uri.path(),
                    request.uri.query(),
                    ctx,
                );
                edits.added.push(("connection", "Upgrade".into()));
                edits.added.push(("upgrade", "websocket".into()));
                apply_edits(&mut request, edits).ok()?;
                http_req_header_to_wire(&request).map(|b| b.to_vec())
            }
        }
    }

    /// pingora's HTTP session of this connection, for the edge's own answers (refusals, errors).
    async fn into_session(self) -> Option<ServerSession> {
        match self {
            Client::Session(session) => Some(*session),
            Client::Head { stream, head } => {
                let mut session = ServerSession::new_http1(stream.into_pingora());
                session.set_pipelined_prefix(BytesMut::from(&head.bytes()[..]));
                session.set_keepalive(None);
                matches!(session.read_request().await, Ok(true)).then_some(session)
            }
        }
    }

    /// The raw connection (nothing is buffered in a session: it has only parsed the head).
    fn into_stream(self) -> Option<ClientSocket> {
        match self {
            Client::Head { stream, .. } => Some(stream),
            Client::Session(session) => match *session {
                ServerSession::H1(s) => Some(ClientSocket::Pingora(s.into_inner())),
                _ => None,
            },
        }
    }
}

/// Header names a request's `Connection` values nominate as hop-by-hop (lower case), except
/// `Host`, `Upgrade` and `Connection` themselves.
fn nominated<'a>(values: impl Iterator<Item = &'a str>) -> Vec<String> {
    headers::connection_tokens(values)
        .map(str::to_ascii_lowercase)
        .filter(|t| !matches!(t.as_str(), "host" | "upgrade" | "connection"))
        .collect()
}

/// Serves one request on the WebSocket endpoint; the connection ends with it.
///
/// The handshake runs in a boxed future of its own (the request, the decision, the agent's
/// answer: a few KiB), freed when it ends. An established tunnel is then relayed by a task of its
/// own, which takes the connection's admission `ticket` along: the connection's task (the
/// connection loop the listener spawned) ends here, so an open tunnel holds only the relay's small
/// state for its whole life.
pub async fn serve(state: &Arc<AppState>, edge: &Edge, client: Client, ticket: Ticket) {
    // A statement of its own: the handshake's box is dropped at its end.
    let established = Box::pin(handshake(state, edge, client)).await;
    if let Some(established) = established {
        // A task of its own, so the connection task's state is freed for the tunnel's life. The
        // task is `run` itself, taking the tunnel boxed: an async block's captures and its
        // callee's arguments each take room in the task, so the tunnel unboxed was held twice.
        tokio::spawn(run(state.clone(), established, ticket));
    }
}

/// Starts a request: in flight, request id, client IP, route. `None` when no request came.
async fn start(edge: &Edge, client: &mut Client) -> Option<RequestCtx> {
    match client {
        Client::Session(session) => {
            let mut ctx = RequestCtx::new();
            edge.begin(&mut ctx);
            let peer = session
                .client_addr()
                .and_then(|a| a.as_inet())
                .map(|a| a.ip());
            edge.identify_request(session.req_header(), peer, &mut ctx);
            Some(ctx)
        }
        Client::Head { stream, head } => {
            let mut ctx = RequestCtx::new();
            edge.begin(&mut ctx);
            edge.identify_request(head, stream.peer_ip(), &mut ctx);
            Some(ctx)
        }
    }
}

/// The handshake: the decision, the agent's answer, and on a 101 that answer written to the client.
/// `None` when it ended without a tunnel (answered and logged here).
async fn handshake(
    state: &Arc<AppState>,
    edge: &Edge,
    mut client: Client,
) -> Option<Box<Established>> {
    let mut ctx = start(edge, &mut client).await?;
    let method = http::Method::from_bytes(client.request().method().as_bytes()).ok()?;
    let path = client.request().path().to_string();
    // Boxed: the decision's future (cache, database) is large and is not kept for the tunnel's life.
    let decided = Box::pin(edge.decide(client.request(), &mut ctx)).await;
    let answered = match decided {
        Err(reject) => Answer::Refuse(reject),
        Ok(()) => match Box::pin(open(state, edge, &client, &mut ctx)).await {
            Opened::Tunnel {
                upstream,
                head,
                rest,
            } => {
                let tunnel = Tunnel {
                    upstream,
                    head,
                    rest,
                    method,
                    path,
                };
                return established(edge, client.into_stream(), tunnel, ctx).await;
            }
            Opened::Refused { status, head, body } => {
                Box::pin(pass_refusal(client, head, body)).await;
                edge.finish_request(method.as_str(), &path, status, &mut ctx);
                return None;
            }
            Opened::Failed(error) => Answer::Unreachable(error),
            Opened::Unwritable => Answer::BadRequest,
        },
    };
    // Boxed, like the other rare branches: pingora's session stays out of the handshake's future.
    let status = Box::pin(answer_client(state, client, &mut ctx, answered)).await;
    edge.finish_request(method.as_str(), &path, status, &mut ctx);
    None
}

/// The agent's refusal of the upgrade, passed to the client as it is; then the connection closes.
async fn pass_refusal(client: Client, head: Vec<u8>, body: Vec<u8>) {
    if let Some(mut client) = client.into_stream() {
        let _ = timeout(HANDSHAKE_TIMEOUT, async {
            client.write_all(&head).await?;
            client.write_all(&body).await?;
            client.flush().await?;
            client.shutdown().await
        })
        .await;
    }
}

/// The edge's own answer on pingora's session of the connection; returns its status.
async fn answer_client(
    state: &AppState,
    client: Client,
    ctx: &mut RequestCtx,
    answered: Answer,
) -> u16 {
    match client.into_session().await {
        Some(mut session) => {
            let status = answer(state, &mut session, ctx, answered).await;
            finish(session).await;
            status
        }
        None => 0,
    }
}

/// The edge's own answer to a handshake that does not become a tunnel.
enum Answer {
    Refuse(Reject),
    /// The agent could not be reached (why).
    Unreachable(String),
    /// The upstream handshake could not be written.
    BadRequest,
}

/// Gives the edge's own answer; returns its status (0 when nothing could be written).
async fn answer(
    state: &AppState,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    answer: Answer,
) -> u16 {
    match answer {
        Answer::Refuse(reject) => refuse(state, session, ctx, reject).await,
        Answer::Unreachable(error) => {
            state.metrics.upstream_errors.inc();
            warn!(request_id = %ctx.request_id, error, "upstream unreachable");
            ctx.outcome = "upstream_unavailable";
            let r = Reject::UpstreamUnavailable;
            respond_json(session, ctx, r.status(), r.body(), None).await
        }
        Answer::BadRequest => {
            let r = Reject::Malformed;
            ctx.outcome = "error";
            respond_json(session, ctx, r.status(), r.body(), None).await
        }
    }
}

/// What became of the handshake with the agent.
enum Opened {
    /// The agent answered 101: its socket, its answer's head for the client (with the request
    /// id), and the bytes it sent after the head.
    Tunnel {
        upstream: TcpStream,
        head: Vec<u8>,
        rest: Bytes,
    },
    /// The agent refused the upgrade: its answer, passed to the client as it is.
    Refused {
        status: u16,
        head: Vec<u8>,
        body: Vec<u8>,
    },
    /// The agent could not be reached or did not answer (why).
    Failed(String),
    /// The handshake for the agent could not be written.
    Unwritable,
}

/// An accepted handshake, ready to relay.
struct Tunnel {
    upstream: TcpStream,
    head: Vec<u8>,
    rest: Bytes,
    method: http::Method,
    path: String,
}

/// Connects the agent and forwards the handshake; on a 101, its answer is passed to the client
/// by [`run`].
async fn open(state: &AppState, edge: &Edge, client: &Client, ctx: &mut RequestCtx) -> Opened {
    let Some(wire) = client.upstream_handshake(edge, ctx) else {
        return Opened::Unwritable;
    };
    // The handshake's first write waits for the connect and reports its failure.
    let mut upstream = match crate::forward::dial::connect(state.upstream) {
        Ok(s) => s,
        Err(e) => return Opened::Failed(e.kind().to_string()),
    };
    match timeout(CONNECT_TIMEOUT, upstream.write_all(&wire)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Opened::Failed(e.kind().to_string()),
        Err(_) => return Opened::Failed("connect timeout".into()),
    }
    let (answer, bytes) = match timeout(HANDSHAKE_TIMEOUT, read_response_head(&mut upstream)).await
    {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Opened::Failed(e),
        Err(_) => return Opened::Failed("handshake timeout".into()),
    };
    ctx.responded = Some(ctx.started.elapsed());
    let AnswerHead {
        len: head_len,
        status,
        extensions,
    } = answer;
    if status == 101 && extensions && !state.config.websocket.allow_extensions {
        // The client's offer was removed: an extension now would be one the edge cannot police.
        return Opened::Failed("the agent answered with an extension that was not offered".into());
    }
    let head = with_request_id(&bytes[..head_len], &ctx.request_id);
    let rest = bytes.freeze().slice(head_len..);
    if status == 101 {
        return Opened::Tunnel {
            upstream,
            head,
            rest,
        };
    }
    // The agent refused the upgrade: pass its answer on (bounded), then close.
    ctx.outcome = "upstream_refused";
    let mut body = rest.to_vec();
    let _ = timeout(HANDSHAKE_TIMEOUT, async {
        let mut buf = [0u8; 4096];
        while body.len() < MAX_REFUSAL_BODY {
            match upstream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    Opened::Refused { status, head, body }
}

/// A tunnel ready to relay: the agent's 101 has reached the client.
struct Established {
    client: ClientSocket,
    upstream: TcpStream,
    /// What the agent sent after its 101, still to be passed to the client.
    rest: Vec<u8>,
    method: http::Method,
    path: String,
    ctx: RequestCtx,
}

/// Writes the agent's 101 to the client; `None` (logged) when the client is gone.
async fn established(
    edge: &Edge,
    client: Option<ClientSocket>,
    t: Tunnel,
    mut ctx: RequestCtx,
) -> Option<Box<Established>> {
    let Tunnel {
        upstream,
        head,
        rest,
        method,
        path,
    } = t;
    let Some(mut client) = client else {
        edge.finish_request(method.as_str(), &path, 0, &mut ctx);
        return None;
    };
    let written = timeout(HANDSHAKE_TIMEOUT, async {
        client.write_all(&head).await?;
        client.flush().await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) {
        edge.finish_request(method.as_str(), &path, 0, &mut ctx);
        return None;
    }
    Some(Box::new(Established {
        client,
        upstream,
        rest: rest.to_vec(),
        method,
        path,
        ctx,
    }))
}

/// Relays an open tunnel until it ends, then logs it.
/// The admission ticket is held until the tunnel ends.
async fn run(state: Arc<AppState>, e: Box<Established>, ticket: Ticket) {
    let edge = &Edge::new(state.clone());
    let state = &*state;
    let Established {
        client,
        upstream,
        rest,
        method,
        path,
        mut ctx,
    } = *e;
    let m = &state.metrics;
    m.websocket_active.inc();
    let token = ctx.token.take().unwrap_or_default();
    edge.count_recent(&mut ctx);
    let mut lease = state.tunnels.open(TunnelInfo {
        user_id: ctx.user.as_ref().map_or(0, |u| u.id),
        iat: token.iat.map(|t| t.max(0) as u64),
        exp: token.exp.map(|t| t.max(0) as u64),
        jti: token.jti,
        request_id: ctx.request_id.clone(),
        opened_at: now_unix(),
    });
    state.live.tunnel_opened(lease.info());
    if state.health.is_draining() {
        state.tunnels.close_where(
            |i| i.request_id == ctx.request_id,
            CloseRequest::going_away(),
        );
    }
    let ws = &state.config.websocket;
    let config = RelayConfig {
        to_upstream: Limits {
            max_frame: ws.max_frame_bytes,
            max_message: ws.max_message_bytes,
            reserved_bits: ws.allow_extensions,
        },
        idle: state.websocket_idle_timeout(),
        notice: crate::tunnel::notice::template(&state.config.ws),
    };
    let counters = RelayCounters {
        to_upstream: &m.tunnel_bytes_to_upstream,
        to_client: &m.tunnel_bytes_to_client,
    };
    // The socket as accepted is relayed as it is; pingora's stream (a handshake pingora's codec
    // read) gives its socket back, so an open tunnel keeps no stream state for its life.
    let end = match client.into_tcp() {
        Ok(client) => relay(client, upstream, rest, &mut lease, config, counters).await,
        Err(client) => relay(client, upstream, rest, &mut lease, config, counters).await,
    };
    drop(lease);
    m.websocket_active.dec();
    let lifetime = ctx.started.elapsed();
    m.tunnel_duration.observe(lifetime.as_secs_f64());
    let to_response = ctx.responded.unwrap_or(lifetime);
    m.record_request(ctx.route, 101, to_response.as_secs_f64());
    edge.end(&mut ctx);
    info!(
        target: "access",
        method = %method,
        path,
        status = 101u16,
        outcome = ctx.outcome,
        user_id = ctx.user.as_ref().map(|u| u.id),
        client_ip = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
        duration_ms = to_response.as_secs_f64() * 1000.0,
        session_ms = lifetime.as_millis() as u64,
        bytes_to_upstream = end.to_upstream,
        bytes_to_client = end.to_client,
        end = end.reason.label(),
        request_id = %ctx.request_id,
        "tunnel"
    );
    drop(ticket);
}

/// Removes from a handshake for the agent the hop-by-hop headers and any header the client named
/// in `Connection` (the edits then add `Connection: Upgrade` and `Upgrade: websocket`, the only
/// upgrade forwarded). The same policy the edge's own codec applies to a kept head.
pub fn strip_hop_by_hop(req: &mut RequestHeader) {
    let connection = req.headers.get_all("connection");
    let named = nominated(connection.iter().filter_map(|v| v.to_str().ok()));
    for name in named.iter().map(String::as_str).chain(headers::HOP_BY_HOP) {
        req.remove_header(name);
    }
}

/// What the agent's answer head says.
struct AnswerHead {
    /// Length of the head in bytes.
    len: usize,
    status: u16,
    /// It carries `Sec-WebSocket-Extensions`.
    extensions: bool,
}

/// Reads the agent's answer head, and all bytes read so far.
async fn read_response_head(upstream: &mut TcpStream) -> Result<(AnswerHead, BytesMut), String> {
    let mut bytes = BytesMut::with_capacity(1024);
    loop {
        match upstream.read_buf(&mut bytes).await {
            Ok(0) => return Err("closed before answering".into()),
            Ok(_) => {}
            Err(e) => return Err(e.kind().to_string()),
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&bytes) {
            Ok(httparse::Status::Complete(n)) => {
                let answer = AnswerHead {
                    len: n,
                    status: resp.code.unwrap_or(0),
                    extensions: resp
                        .headers
                        .iter()
                        .any(|h| h.name.eq_ignore_ascii_case(EXTENSION_HEADER)),
                };
                return Ok((answer, bytes));
            }
            Ok(httparse::Status::Partial) if bytes.len() < MAX_RESPONSE_HEAD => {}
            Ok(httparse::Status::Partial) => return Err("answer head too large".into()),
            Err(e) => return Err(format!("bad answer: {e}")),
        }
    }
}

/// The agent's answer head with the edge's `x-request-id` added before its end.
fn with_request_id(head: &[u8], request_id: &str) -> Vec<u8> {
    let end = if head.ends_with(b"\r\n\r\n") {
        head.len() - 2
    } else {
        head.len() - 1
    };
    let mut out = Vec::with_capacity(head.len() + 20 + request_id.len());
    out.extend_from_slice(&head[..end]);
    out.extend_from_slice(b"x-request-id: ");
    out.extend_from_slice(request_id.as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&head[end..]);
    out
}

/// A refused handshake: JSON before the upgrade, or with `ws.reject_with = "close"` (and a valid
/// `Sec-WebSocket-Key`) an upgrade completed here, never upstream, then the optional text frame and
/// the close frame (see [`crate::tunnel::refusal`]). Returns the HTTP status the refusal stands for, so
/// metrics and the access line are those of an HTTP refusal.
async fn refuse(
    state: &AppState,
    session: &mut ServerSession,
    ctx: &mut RequestCtx,
    reject: Reject,
) -> u16 {
    let ws = &state.config.ws;
    let key = session
        .req_header()
        .headers
        .get("sec-websocket-key")
        .map(|v| v.as_bytes());
    let accept = refusal::accept_key(key).filter(|_| ws.reject_with == RejectWith::Close);
    let Some(accept) = accept else {
        return respond_json(session, ctx, reject.status(), reject.body(), Some(reject)).await;
    };
    let Ok(header) = upgrade_answer(&accept, ctx) else {
        return 0;
    };
    let template = Some(ws.reject_frame.as_str()).filter(|t| !t.is_empty());
    answer_then_close(session, ctx, header, refusal::frames(reject, template)).await;
    reject.status()
}

/// The 101 the edge itself answers when it refuses with a close frame.
fn upgrade_answer(accept: &str, ctx: &RequestCtx) -> pingora::Result<ResponseHeader> {
    let mut h = ResponseHeader::build(101, Some(6))?;
    h.insert_header("upgrade", "websocket")?;
    h.insert_header("connection", "Upgrade")?;
    h.insert_header("sec-websocket-accept", accept)?;
    h.insert_header("x-request-id", &ctx.request_id)?;
    insert_cors(&mut h, ctx)?;
    Ok(h)
}

/// Ends the client's connection after an answer.
async fn finish(session: ServerSession) {
    let _ = timeout(Duration::from_secs(1), session.finish()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_handshake_for_the_agent_keeps_only_the_websocket_upgrade() {
        let mut req = RequestHeader::build("GET", b"/ws/a", None).unwrap();
        req.insert_header("connection", "keep-alive, Upgrade, X-Secret")
            .unwrap();
        req.insert_header("upgrade", "websocket").unwrap();
        req.insert_header("x-secret", "s").unwrap();
        req.insert_header("keep-alive", "timeout=5").unwrap();
        req.insert_header("sec-websocket-key", "abc").unwrap();
        strip_hop_by_hop(&mut req);
        assert!(req.headers.get("x-secret").is_none());
        assert!(req.headers.get("keep-alive").is_none());
        assert!(req.headers.get("connection").is_none());
        assert!(req.headers.get("upgrade").is_none());
        assert_eq!(req.headers.get("sec-websocket-key").unwrap(), "abc");
    }

    #[test]
    fn connection_nominates_hop_by_hop_headers_but_not_the_upgrade_itself() {
        let named = nominated(["keep-alive, Upgrade, X-Secret", " host ,, connection"].into_iter());
        assert_eq!(named, vec!["keep-alive", "x-secret"]);
    }

    #[test]
    fn the_request_id_goes_into_the_answer_head() {
        let head = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
        let out = with_request_id(head, "r-1");
        assert_eq!(
            out,
            b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nx-request-id: r-1\r\n\r\n"
        );
    }
}

/// The futures made once per request are moved (into a box or a task) when they start, so their
/// size is paid on every request: rare branches (pingora's session for the edge's own answers, a
/// key fetch, a user lookup that misses the cache) are boxed out of them.
#[cfg(test)]
mod future_sizes {
    use super::*;

    /// Bounds in a test (debug) build, with room above what they are (1.8, 1.5 and 1.0 KiB); the
    /// branches they were boxed out of took them to 6.5, 3.1 and 3.0 KiB. The tunnel's task future
    /// is 1.3 KiB; with the tunnel unboxed it held the tunnel's state twice.
    #[tokio::test]
    async fn the_per_request_futures_stay_small() {
        let state = Arc::new(AppState::for_tests());
        let edge = Edge::new(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let socket = || async { ClientSocket::Tcp(TcpStream::connect(addr).await.unwrap(), addr) };
        let stream = || async { socket().await.into_pingora() };
        let head = RequestHead::parse(b"GET /ws/a HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();

        let client = Client::Head {
            stream: socket().await,
            head: head.clone(),
        };
        let handshake = handshake(&state, &edge, client);
        assert!(
            size_of_val(&handshake) <= 2560,
            "{}",
            size_of_val(&handshake)
        );
        drop(handshake);

        let forwarder = crate::forward::lean::Forwarder::new(&state);
        let lean = forwarder.serve(&state, &edge, stream().await, head.clone(), false);
        assert!(size_of_val(&lean) <= 2560, "{}", size_of_val(&lean));
        drop(lean);

        let mut ctx = RequestCtx::new();
        let decide = edge.decide(&head, &mut ctx);
        assert!(size_of_val(&decide) <= 1536, "{}", size_of_val(&decide));
        drop(decide);

        // The open tunnel's task, held for the tunnel's whole life: the tunnel is boxed, so its
        // state is held once (it was held twice, by the spawned block and by `run`).
        let upstream = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let established = Box::new(Established {
            client: socket().await,
            upstream,
            rest: Vec::new(),
            method: http::Method::GET,
            path: "/ws/a".into(),
            ctx,
        });
        let admission = crate::accept::admission::Admission::new(
            10,
            10,
            Vec::new(),
            prometheus::IntGauge::new("open", "open").unwrap(),
        );
        let ticket = admission.admit(None).unwrap();
        let tunnel = run(state.clone(), established, ticket);
        assert!(size_of_val(&tunnel) <= 1536, "{}", size_of_val(&tunnel));
    }
}
