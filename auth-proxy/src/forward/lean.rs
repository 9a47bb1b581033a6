//! The lean HTTP path: a plain request forwarded by the edge's own small HTTP/1 code, with a pool
//! of kept-alive agent connections, without pingora-proxy's per-request machinery or header maps.
//!
//! pingora-proxy runs every request through a general state machine (cache phases, retries,
//! subrequests, a request-body task joined to a response task over a channel, module filters) and
//! turns every head into an `http::HeaderMap` and back. The edge's plain API traffic needs none of
//! it: a request without a body, an answer to copy back. [`eligible`] picks those requests from
//! the head [`crate::server::connection`] has already parsed (httparse); [`Forwarder::serve`] then makes
//! the same decision as every other path ([`Edge::decide`], through [`crate::accept::head::RequestView`]),
//! applies the same edits ([`Edge::upstream_edits`]) while writing the agent's head straight from
//! the client's bytes ([`crate::accept::head::write_upstream_request`]), takes a pooled agent connection
//! ([`crate::forward::pool`]), and copies the answer back with its head rewritten the same way
//! ([`crate::forward::answer`], which also keeps its framing: `Content-Length`, chunked, or a
//! close-delimited body turned into chunks). The edge's own refusals and errors on this path are
//! written by pingora's codec, as on every other path.
//!
//! Everything else (request bodies, `Expect`, upgrades outside the WebSocket endpoint, HTTP/1.0,
//! CORS preflights, connection-nominated headers, absolute-form targets) stays on pingora-proxy
//! with [`crate::decide::Edge`], so the unusual cases keep pingora's well-trodden handling.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::warn;

use crate::accept::client_socket::stream_peer_ip;
use crate::accept::head::{write_upstream_request, RequestHead, RequestView};
use crate::decide::answers::respond_json;
use crate::decide::reject::Reject;
use crate::decide::{Edge, RequestCtx};
use crate::forward::answer::{
    parse_answer, push_chunk, Answer, BadAnswer, Chunked, ClientSide, Framing, Parsed, LAST_CHUNK,
};
use crate::forward::dial::CONNECT_TIMEOUT;
use crate::forward::pool::UpstreamPool;
use crate::server::state::AppState;

/// How many times a request is sent again on a fresh connection when a pooled one turns out to
/// be closed (the agent restarted, or closed it while idle) before anything reached the client.
const STALE_RETRIES: usize = 2;

/// Most agent connections kept alive for the lean path at once.
const POOL_CAPACITY: usize = 256;
/// Room for the agent's answer read at once.
const READ_CHUNK: usize = 16 * 1024;

/// The agent as an upstream of the lean path, and its pool of kept-alive connections.
pub struct Forwarder {
    upstream: SocketAddr,
    pool: UpstreamPool,
}

/// How one attempt at the upstream ended, when it did not give an answer to copy.
enum Failed {
    /// Nothing came back on a pooled connection: worth another try on a fresh one.
    Stale,
    /// The agent could not be reached, broke off, or answered something unusable.
    Unreachable(String),
}

/// The agent's answer head, read: the connection, the parsed head and the bytes read after it.
struct Answered {
    upstream: TcpStream,
    answer: Answer,
    rest: BytesMut,
}

impl Forwarder {
    pub fn new(state: &AppState) -> Forwarder {
        Forwarder {
            upstream: state.upstream,
            pool: UpstreamPool::new(POOL_CAPACITY),
        }
    }

    /// Serves one request on the lean path; returns the client connection when it may carry the
    /// next request. `closing`: the connection ends after this request whatever the client asks.
    pub async fn serve(
        &self,
        state: &Arc<AppState>,
        edge: &Edge,
        client: Stream,
        head: RequestHead,
        closing: bool,
    ) -> Option<Stream> {
        let mut ctx = RequestCtx::new();
        edge.begin(&mut ctx);
        edge.identify_request(&head, stream_peer_ip(&client), &mut ctx);
        let decided = Box::pin(edge.decide(&head, &mut ctx)).await;
        let keep_alive = !closing && !head.wants_close() && !state.health.is_draining();
        let (status, client) = match decided {
            Err(reject) => {
                ctx.outcome = reject.code();
                let (status, body) = (reject.status(), reject.body());
                let status = refuse(client, &head, &mut ctx, status, body, Some(reject)).await;
                (status, None)
            }
            Ok(()) => {
                self.forward(state, edge, client, &head, &mut ctx, keep_alive)
                    .await
            }
        };
        edge.finish_request(head.method(), head.path(), status, &mut ctx);
        client
    }

    /// Forwards an allowed request and copies the answer back. Returns the status the client got
    /// (0 when it got none) and the client connection when it may carry the next request.
    async fn forward(
        &self,
        state: &AppState,
        edge: &Edge,
        client: Stream,
        head: &RequestHead,
        ctx: &mut RequestCtx,
        keep_alive: bool,
    ) -> (u16, Option<Stream>) {
        let edits = edge.upstream_edits(head.method(), head.path(), head.query(), ctx);
        let mut wire = Vec::with_capacity(head.bytes().len() + 512);
        // Hop-by-hop: the agent connection's own keep-alive is the pool's business.
        if write_upstream_request(&mut wire, head, &edits, &["connection"]).is_err() {
            let r = Reject::Malformed;
            ctx.outcome = "error";
            return (
                refuse(client, head, ctx, r.status(), r.body(), None).await,
                None,
            );
        }
        let cors = ctx
            .cors_origin
            .as_deref()
            .map(crate::decide::cors::response_headers)
            .unwrap_or_default();
        let side = ClientSide {
            head_request: head.method() == "HEAD",
            keep_alive,
            request_id: &ctx.request_id,
            cors: &cors,
        };
        let mut failure = String::new();
        for attempt in 0..=STALE_RETRIES {
            match self.exchange(&wire, &side, attempt > 0).await {
                Ok(answered) => {
                    ctx.responded = Some(ctx.started.elapsed());
                    let status = answered.answer.status;
                    let client = self.copy_answer(client, answered, keep_alive, ctx).await;
                    return (status, client);
                }
                Err(Failed::Stale) if attempt < STALE_RETRIES => continue,
                Err(Failed::Stale) => failure = "pooled connection closed".into(),
                Err(Failed::Unreachable(e)) => failure = e,
            }
            break;
        }
        state.metrics.upstream_errors.inc();
        warn!(request_id = %ctx.request_id, error = %failure, "upstream unreachable");
        ctx.outcome = "upstream_unavailable";
        let r = Reject::UpstreamUnavailable;
        (
            refuse(client, head, ctx, r.status(), r.body(), None).await,
            None,
        )
    }

    /// One attempt: a connection (pooled unless `fresh`), the request head, the answer's head.
    async fn exchange(
        &self,
        wire: &[u8],
        side: &ClientSide<'_>,
        fresh: bool,
    ) -> Result<Answered, Failed> {
        let pooled = if fresh { None } else { self.pool.take() };
        let reused = pooled.is_some();
        let mut upstream = match pooled {
            Some(stream) => stream,
            None => self.connect().await.map_err(Failed::Unreachable)?,
        };
        let broke = |what: String, got: usize| {
            if reused && got == 0 {
                Failed::Stale
            } else {
                Failed::Unreachable(what)
            }
        };
        if let Err(e) = upstream.write_all(wire).await {
            return Err(broke(e.kind().to_string(), 0));
        }
        let mut bytes = BytesMut::with_capacity(READ_CHUNK);
        let mut got = 0;
        loop {
            match upstream.read_buf(&mut bytes).await {
                Ok(0) => return Err(broke("closed before answering".into(), got)),
                Ok(n) => got += n,
                Err(e) => return Err(broke(e.kind().to_string(), got)),
            }
            loop {
                match parse_answer(&bytes, side) {
                    Ok(Parsed::Partial) => break,
                    Ok(Parsed::Interim(n)) => {
                        let _ = bytes.split_to(n);
                    }
                    Ok(Parsed::Final(answer)) => {
                        let _ = bytes.split_to(answer.head_len);
                        return Ok(Answered {
                            upstream,
                            answer,
                            rest: bytes,
                        });
                    }
                    Err(BadAnswer(why)) => return Err(Failed::Unreachable(why.into())),
                }
            }
        }
    }

    async fn connect(&self) -> Result<TcpStream, String> {
        match timeout(CONNECT_TIMEOUT, TcpStream::connect(self.upstream)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(e)) => Err(e.kind().to_string()),
            Err(_) => Err("connect timeout".into()),
        }
    }

    /// Writes the answer's head and body to the client, following the body's framing; the agent
    /// connection goes back to the pool when the body ended cleanly. Returns the client
    /// connection when it may carry the next request.
    async fn copy_answer(
        &self,
        mut client: Stream,
        answered: Answered,
        keep_alive: bool,
        ctx: &mut RequestCtx,
    ) -> Option<Stream> {
        let Answered {
            mut upstream,
            answer,
            rest,
        } = answered;
        let mut body = BodyCopy::new(answer.framing);
        let mut out = answer.client_head;
        let mut bytes = rest;
        loop {
            let clean = match body.take(&bytes, &mut out) {
                Ok(clean) => clean,
                Err(BadAnswer(why)) => {
                    ctx.outcome = "upstream_error";
                    warn!(request_id = %ctx.request_id, error = why, "upstream answer broken off");
                    return None;
                }
            };
            if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
                return None;
            }
            out.clear();
            if body.done {
                if clean && answer.reusable {
                    self.pool.put(upstream);
                }
                return keep_alive.then_some(client);
            }
            bytes.clear();
            bytes.reserve(READ_CHUNK);
            match upstream.read_buf(&mut bytes).await {
                Ok(0) if answer.framing == Framing::UntilClose => {
                    out.extend_from_slice(LAST_CHUNK);
                    if client.write_all(&out).await.is_err() || client.flush().await.is_err() {
                        return None;
                    }
                    return keep_alive.then_some(client);
                }
                Ok(0) | Err(_) => {
                    ctx.outcome = "upstream_error";
                    warn!(request_id = %ctx.request_id, "upstream answer broken off");
                    return None;
                }
                Ok(_) => {}
            }
        }
    }
}

/// Follows an answer's body through the bytes read from the agent.
struct BodyCopy {
    framing: Framing,
    /// Bytes still to pass (for [`Framing::Length`]).
    left: u64,
    chunked: Chunked,
    done: bool,
}

impl BodyCopy {
    fn new(framing: Framing) -> BodyCopy {
        let left = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        BodyCopy {
            framing,
            left,
            chunked: Chunked::new(),
            done: matches!(framing, Framing::Empty | Framing::Length(0)),
        }
    }

    /// Appends to `out` what of `bytes` belongs to the body (re-framed when close-delimited).
    /// Returns false when the agent sent bytes after the body's end (its connection is not
    /// reused).
    fn take(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<bool, BadAnswer> {
        let used = match self.framing {
            Framing::Empty => 0,
            Framing::Length(_) => {
                let n = self.left.min(bytes.len() as u64) as usize;
                self.left -= n as u64;
                self.done = self.left == 0;
                out.extend_from_slice(&bytes[..n]);
                n
            }
            Framing::Chunked => {
                let n = self.chunked.advance(bytes)?;
                self.done = self.chunked.is_done();
                out.extend_from_slice(&bytes[..n]);
                n
            }
            Framing::UntilClose => {
                push_chunk(out, bytes);
                bytes.len()
            }
        };
        Ok(used == bytes.len())
    }
}

/// The edge's own answer on this path (a refusal or an error), written by pingora's HTTP/1 codec
/// as on every other path; the connection closes after it. Returns the status (0 if not written).
/// Boxed: pingora's session and its futures stay out of the lean path's own future, which is
/// moved (and sized) once per request.
fn refuse<'a>(
    client: Stream,
    head: &'a RequestHead,
    ctx: &'a mut RequestCtx,
    status: u16,
    body: Vec<u8>,
    reject: Option<Reject>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = u16> + Send + 'a>> {
    Box::pin(async move {
        let mut session = ServerSession::new_http1(client);
        session.set_pipelined_prefix(BytesMut::from(&head.bytes()[..]));
        if !matches!(session.read_request().await, Ok(true)) {
            return 0;
        }
        respond_json(&mut session, ctx, status, body, reject).await
    })
}
