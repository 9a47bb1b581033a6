//! The lean HTTP path: a plain request forwarded by the edge's own small HTTP/1 code, with a pool
//! of kept-alive agent connections, without pingora-proxy's per-request machinery or header maps.
//!
//! pingora-proxy runs every request through a general state machine (cache phases, retries,
//! subrequests, a request-body task joined to a response task over a channel, module filters) and
//! turns every head into an `http::HeaderMap` and back. The edge's plain API traffic needs none of
//! it: a request without a body, an answer to copy back. [`eligible`] picks those requests from
//! the head [`crate::connection`] has already parsed (httparse); [`Forwarder::serve`] then makes
//! the same decision as every other path ([`Edge::decide`], through [`crate::head::RequestView`]),
//! applies the same edits ([`Edge::upstream_edits`]) while writing the agent's head straight from
//! the client's bytes ([`crate::head::write_upstream_request`]), takes a pooled agent connection
//! ([`crate::upstream_pool`]), and copies the answer back with its head rewritten the same way
//! ([`crate::answer`], which also keeps its framing: `Content-Length`, chunked, or a
//! close-delimited body turned into chunks). The edge's own refusals and errors on this path are
//! written by pingora's codec, as on every other path.
//!
//! Everything else (request bodies, `Expect`, upgrades outside the WebSocket endpoint, HTTP/1.0,
//! CORS preflights, connection-nominated headers, absolute-form targets) stays on pingora-proxy
//! with [`crate::proxy::Edge`], so the unusual cases keep pingora's well-trodden handling.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use pingora::protocols::http::ServerSession;
use pingora::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tracing::warn;

use crate::answer::{
    parse_answer, push_chunk, Answer, BadAnswer, Chunked, ClientSide, Framing, Parsed, LAST_CHUNK,
};
use crate::client_socket::stream_peer_ip;
use crate::head::{bodiless_origin_form, write_upstream_request, RequestHead, RequestView};
use crate::proxy::{respond_json, Edge, RequestCtx, CONNECT_TIMEOUT};
use crate::reject::Reject;
use crate::state::AppState;
use crate::upstream_pool::UpstreamPool;

/// How many times a request is sent again on a fresh connection when a pooled one turns out to
/// be closed (the agent restarted, or closed it while idle) before anything reached the client.
const STALE_RETRIES: usize = 2;

/// True when a request head may take the lean path: `GET`, `HEAD` or `DELETE`, a bodiless
/// HTTP/1.1 head in origin form ([`crate::head::bodiless_origin_form`]), and no header that asks a
/// proxy for more than forwarding (`Upgrade`, `Expect`, `TE`, `Trailer`, `Keep-Alive`, `Proxy-*`,
/// `HTTP2-Settings`, or a `Connection` other than `keep-alive` / `close`).
pub fn eligible(req: &httparse::Request) -> bool {
    if !matches!(req.method, Some("GET" | "HEAD" | "DELETE")) || !bodiless_origin_form(req) {
        return false;
    }
    req.headers.iter().all(|h| {
        let name = h.name;
        if name.eq_ignore_ascii_case("connection") {
            let v = h.value.trim_ascii();
            return v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close");
        }
        ![
            "upgrade",
            "expect",
            "te",
            "trailer",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authenticate",
            "http2-settings",
        ]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n))
    })
}

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
            .map(crate::cors::response_headers)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn check(head: &str) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(head.as_bytes()).unwrap().is_complete(), "{head}");
        eligible(&req)
    }

    #[test]
    fn plain_requests_without_a_body_take_the_lean_path() {
        assert!(check("GET /api/x?token=t HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(check(
            "HEAD /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nConnection: keep-alive\r\n\r\n"
        ));
        assert!(check(
            "DELETE /api/chat/sessions/1 HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        ));
    }

    #[test]
    fn anything_unusual_stays_on_pingora_proxy() {
        for head in [
            "GET /api/x HTTP/1.0\r\nHost: a\r\n\r\n",
            "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n",
            "OPTIONS /api/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /api/x HTTP/1.1\r\n\r\n",
            "GET /api/x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET http://a/api/x HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
            "GET /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /api/x HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
            "GET /api/x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
            "GET /api/x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-User-Id\r\n\r\n",
            "GET /api/x HTTP/1.1\r\nHost: a\r\nKeep-Alive: timeout=5\r\n\r\n",
            "GET /api/x HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
            "GET /api/x#top HTTP/1.1\r\nHost: a\r\n\r\n",
        ] {
            assert!(!check(head), "{head}");
        }
    }
}
