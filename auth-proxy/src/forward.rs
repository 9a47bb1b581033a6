//! The lean HTTP path: a plain request forwarded on pingora-core's HTTP/1 sessions and connector,
//! with a pool of kept-alive agent connections, without pingora-proxy's per-request machinery.
//!
//! pingora-proxy runs every request through a general state machine (cache phases, retries,
//! subrequests, a request-body task joined to a response task over a channel, module filters).
//! The edge's plain API traffic needs none of it: a request without a body, a response to copy
//! back. [`eligible`] picks those requests from the head [`crate::connection`] has already parsed;
//! [`Forwarder::serve`] then makes the same decision as every other path ([`Edge::decide`]),
//! prepares the upstream request the same way ([`Edge::prepare_upstream_request`], after dropping
//! the hop-by-hop `Connection`), takes a pooled agent connection ([`crate::upstream_pool`]), writes
//! the head, and copies the answer back through pingora's codecs (which keep the framing:
//! `Content-Length`, chunked, or a close-delimited body turned into chunks, as pingora-proxy does).
//!
//! Everything else (request bodies, `Expect`, upgrades outside the WebSocket endpoint, HTTP/1.0,
//! CORS preflights, connection-nominated headers, absolute-form targets) stays on pingora-proxy
//! with [`crate::proxy::Edge`], so the unusual cases keep pingora's well-trodden handling.

use std::sync::Arc;

use pingora::apps::{HttpPersistentSettings, ReusedHttpStream};
use pingora::connectors::TransportConnector;
use pingora::http::ResponseHeader;
use pingora::prelude::HttpPeer;
use pingora::protocols::http::v1::client::HttpSession as UpstreamSession;
use pingora::protocols::http::ServerSession;
use shared::error_body::ErrorBody;
use tracing::warn;

use crate::proxy::{insert_cors, respond_json, start_request, Edge, RequestCtx, CONNECT_TIMEOUT};
use crate::reject::Reject;
use crate::state::AppState;
use crate::upstream_pool::UpstreamPool;

/// How many times a request is sent again on a fresh connection when a pooled one turns out to
/// be closed (the agent restarted, or closed it while idle) before anything reached the client.
const STALE_RETRIES: usize = 2;

/// True when a request head may take the lean path: HTTP/1.1, `GET`, `HEAD` or `DELETE` in
/// origin form, exactly one `Host`, no body (`Content-Length` absent or 0, no
/// `Transfer-Encoding`), and no header that asks a proxy for more than forwarding (`Upgrade`,
/// `Expect`, `TE`, `Trailer`, `Keep-Alive`, `Proxy-*`, `HTTP2-Settings`, or a `Connection` other
/// than `keep-alive` / `close`).
pub fn eligible(req: &httparse::Request) -> bool {
    if req.version != Some(1) || !matches!(req.method, Some("GET" | "HEAD" | "DELETE")) {
        return false;
    }
    if !req.path.is_some_and(|p| p.starts_with('/')) {
        return false;
    }
    let mut hosts = 0;
    for h in req.headers.iter() {
        let name = h.name;
        let value = || std::str::from_utf8(h.value).unwrap_or("").trim();
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            if value() != "0" {
                return false;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            let v = value();
            if !v.eq_ignore_ascii_case("keep-alive") && !v.eq_ignore_ascii_case("close") {
                return false;
            }
        } else if [
            "transfer-encoding",
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
        {
            return false;
        }
    }
    hosts == 1
}

/// Most agent connections kept alive for the lean path at once.
const POOL_CAPACITY: usize = 256;

/// The agent as an upstream of the lean path, and its pool of kept-alive connections.
pub struct Forwarder {
    /// Makes new connections (pingora's connect, timeouts and socket options).
    transport: TransportConnector,
    pool: UpstreamPool,
    peer: HttpPeer,
}

/// How one attempt at the upstream ended, when it did not give an answer to copy.
enum Failed {
    /// Nothing reached the client; the connection was a pooled one: worth one more try.
    Stale,
    /// The agent could not be reached or broke off before its answer's head.
    Unreachable(String),
}

impl Forwarder {
    pub fn new(state: &AppState) -> Forwarder {
        let mut peer = HttpPeer::new(state.upstream, false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        Forwarder {
            transport: TransportConnector::new(None),
            pool: UpstreamPool::new(POOL_CAPACITY),
            peer,
        }
    }

    /// Serves one request on the lean path; returns the client connection when it may carry the
    /// next request.
    pub async fn serve(
        &self,
        state: &Arc<AppState>,
        edge: &Edge,
        mut session: ServerSession,
    ) -> Option<ReusedHttpStream> {
        let mut ctx = start_request(edge, &mut session).await?;
        let decided = Box::pin(edge.decide(session.req_header(), &mut ctx)).await;
        let (status, reusable) = match decided {
            Err(reject) => {
                ctx.outcome = reject.code();
                let status = respond_json(
                    &mut session,
                    &mut ctx,
                    reject.status(),
                    reject.body(),
                    Some(reject),
                )
                .await;
                (status, false)
            }
            Ok(()) => self.forward(state, edge, &mut session, &mut ctx).await,
        };
        let req = session.req_header();
        edge.finish_request(&req.method, req.uri.path(), status, &mut ctx);
        if !reusable {
            return None;
        }
        let settings = HttpPersistentSettings::for_session(&session);
        let reusable = session.finish().await.ok().flatten()?;
        Some(ReusedHttpStream::from_reusable_stream(reusable, settings))
    }

    /// Forwards an allowed request and copies the answer back. Returns the status the client got
    /// (0 when it got none) and whether the client connection is still in a reusable state.
    async fn forward(
        &self,
        state: &AppState,
        edge: &Edge,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
    ) -> (u16, bool) {
        let mut request = session.req_header().clone();
        // Hop-by-hop: the agent connection's own keep-alive is the pool's business.
        request.remove_header("connection");
        let method = request.method.clone();
        if edge
            .prepare_upstream_request(&mut request, &method, ctx)
            .is_err()
        {
            let body = ErrorBody::new("bad_request", "The request could not be parsed.").to_json();
            ctx.outcome = "error";
            return (respond_json(session, ctx, 400, body, None).await, false);
        }
        let mut upstream = None;
        for attempt in 0..=STALE_RETRIES {
            match self.exchange(&request, attempt > 0).await {
                Ok(up) => {
                    upstream = Some(up);
                    break;
                }
                Err(Failed::Stale) if attempt < STALE_RETRIES => continue,
                Err(Failed::Stale) => {
                    return self
                        .unreachable(state, session, ctx, "pooled connection closed")
                        .await
                }
                Err(Failed::Unreachable(e)) => {
                    return self.unreachable(state, session, ctx, &e).await;
                }
            }
        }
        let Some(upstream) = upstream else {
            return (0, false);
        };
        self.copy_answer(session, upstream, ctx).await
    }

    /// One attempt: a connection (pooled unless `fresh`), the request head, the answer's head.
    async fn exchange(
        &self,
        request: &pingora::http::RequestHeader,
        fresh: bool,
    ) -> Result<UpstreamSession, Failed> {
        let pooled = if fresh { None } else { self.pool.take() };
        let reused = pooled.is_some();
        let stream = match pooled {
            Some(stream) => stream,
            None => self
                .transport
                .new_stream(&self.peer)
                .await
                .map_err(|e| Failed::Unreachable(e.etype().as_str().to_string()))?,
        };
        let mut up = UpstreamSession::new_with_options(stream, &self.peer);
        let failed = |e: pingora::BError| {
            if reused {
                Failed::Stale
            } else {
                Failed::Unreachable(e.etype().as_str().to_string())
            }
        };
        up.write_request_header(Box::new(request.clone()))
            .await
            .map_err(failed)?;
        loop {
            up.read_response().await.map_err(failed)?;
            match up.get_status().map(|s| s.as_u16()) {
                // Interim answers (100, 103) are not passed on; the final one follows.
                Some(s) if (100..200).contains(&s) && s != 101 => continue,
                Some(101) => {
                    return Err(Failed::Unreachable("101 to a plain request".into()));
                }
                _ => return Ok(up),
            }
        }
    }

    /// Writes the agent's answer to the client (with the request id and CORS headers) and copies
    /// its body; the agent connection goes back to the pool when the body ended cleanly.
    async fn copy_answer(
        &self,
        session: &mut ServerSession,
        mut up: UpstreamSession,
        ctx: &mut RequestCtx,
    ) -> (u16, bool) {
        let Some(mut header) = up.resp_header().map(|h| Box::new(h.clone())) else {
            return (0, false);
        };
        let status = header.status.as_u16();
        let head_request = session.req_header().method == http::Method::HEAD;
        if prepare_answer(&mut header, head_request, ctx).is_err() {
            return (0, false);
        }
        ctx.responded = Some(ctx.started.elapsed());
        if session.write_response_header(header).await.is_err() {
            return (status, false);
        }
        let ServerSession::H1(downstream) = session else {
            return (status, false);
        };
        loop {
            match up.read_body_ref().await {
                Ok(Some(chunk)) => {
                    if downstream.write_body(chunk).await.is_err() {
                        return (status, false);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    ctx.outcome = "upstream_error";
                    warn!(request_id = %ctx.request_id, error = e.etype().as_str(), "upstream answer broken off");
                    return (status, false);
                }
            }
        }
        self.release(up).await;
        (status, true)
    }

    /// Returns a finished agent connection to the pool (or closes it).
    async fn release(&self, mut up: UpstreamSession) {
        up.respect_keepalive();
        if let Some(stream) = up.reuse().await {
            self.pool.put(stream);
        }
    }

    /// 502 `upstream_unavailable`, as pingora-proxy's path answers it.
    async fn unreachable(
        &self,
        state: &AppState,
        session: &mut ServerSession,
        ctx: &mut RequestCtx,
        error: &str,
    ) -> (u16, bool) {
        state.metrics.upstream_errors.inc();
        warn!(request_id = %ctx.request_id, error, "upstream unreachable");
        ctx.outcome = "upstream_unavailable";
        let r = Reject::UpstreamUnavailable;
        (
            respond_json(session, ctx, r.status(), r.body(), None).await,
            false,
        )
    }
}

/// The agent's answer as the client gets it: the request id and CORS headers added, and a
/// close-delimited body (HTTP/1.0 style) announced as chunked so the client connection can be
/// kept alive, as pingora-proxy does.
pub fn prepare_answer(
    header: &mut ResponseHeader,
    head_request: bool,
    ctx: &RequestCtx,
) -> pingora::Result<()> {
    let status = header.status.as_u16();
    let no_body = head_request || matches!(status, 204 | 304);
    if !no_body
        && header.headers.get("transfer-encoding").is_none()
        && header.headers.get("content-length").is_none()
    {
        header.set_version(http::Version::HTTP_11);
        header.insert_header("transfer-encoding", "chunked")?;
    }
    header.insert_header("x-request-id", &ctx.request_id)?;
    insert_cors(header, ctx)
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
        ] {
            assert!(!check(head), "{head}");
        }
    }

    #[test]
    fn a_close_delimited_answer_is_sent_chunked_with_the_request_id() {
        let mut ctx = RequestCtx::new();
        ctx.request_id = "r-1".into();
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.set_version(http::Version::HTTP_10);
        prepare_answer(&mut h, false, &ctx).unwrap();
        assert_eq!(h.headers.get("transfer-encoding").unwrap(), "chunked");
        assert_eq!(h.version, http::Version::HTTP_11);
        assert_eq!(h.headers.get("x-request-id").unwrap(), "r-1");

        for (status, head) in [(204, false), (304, false), (200, true)] {
            let mut h = ResponseHeader::build(status, None).unwrap();
            prepare_answer(&mut h, head, &ctx).unwrap();
            assert!(h.headers.get("transfer-encoding").is_none(), "{status}");
        }
        let mut h = ResponseHeader::build(200, None).unwrap();
        h.insert_header("content-length", "3").unwrap();
        prepare_answer(&mut h, false, &ctx).unwrap();
        assert!(h.headers.get("transfer-encoding").is_none());
    }
}
