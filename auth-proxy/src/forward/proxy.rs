//! pingora-proxy's `ProxyHttp` for plain HTTP, in request order. It decides nothing of its own:
//!
//! 1. `request_filter`: [`Edge::identify_request`]; a CORS preflight from an allowed origin is
//!    answered (204) before anything else; then [`Edge::decide`]. Any failure is answered here, as
//!    JSON, before any upstream contact.
//! 2. `upstream_peer`: the agent.
//! 3. `upstream_request_filter`: [`Edge::prepare_upstream_request`] (see [`crate::decide::edits`]).
//! 4. `response_filter`: the request id on the answer; a 101 is refused (this path never upgrades).
//! 5. `fail_to_proxy`: an unreachable upstream becomes 502 `upstream_unavailable` (JSON).
//! 6. `logging`: the access line and the metrics.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use tracing::warn;

use crate::accept::head::{RequestView, Upgrade};
use crate::decide::answers::{insert_cors, json_response};
use crate::decide::cors;
use crate::decide::reject::Reject;
use crate::decide::routes::Route;
use crate::decide::{Edge, RequestCtx};
use crate::forward::dial::CONNECT_TIMEOUT;

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.begin(ctx);
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        self.identify_request(session.req_header(), peer, ctx);
        // pingora-proxy never upgrades: the door ([`crate::accept::door`]) sends the WebSocket endpoint
        // and every WebSocket handshake to the edge's tunnel, so neither arrives here.
        let belongs_to_tunnel =
            ctx.route == Route::WebSocket || session.req_header().upgrade() == Upgrade::WebSocket;
        debug_assert!(!belongs_to_tunnel, "the door sends upgrades to the tunnel");
        if belongs_to_tunnel {
            return self.reject(session, ctx, Reject::Malformed).await;
        }
        if ctx.cors_origin.is_some() && is_preflight(session.req_header()) {
            return self.answer_preflight(session, ctx).await;
        }
        match self.decide(session.req_header(), ctx).await {
            Ok(()) => Ok(false),
            Err(reject) => self.reject(session, ctx, reject).await,
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        _ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.state.upstream, false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let method = session.req_header().method.clone();
        self.prepare_upstream_request(upstream, &method, ctx)
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.responded = Some(ctx.started.elapsed());
        if resp.status == http::StatusCode::SWITCHING_PROTOCOLS {
            // No upgrade was forwarded (the upgrade headers are removed), so a 101 is an agent
            // switching protocols on its own: refused (502), the client's connection closes.
            ctx.outcome = "upstream_error";
            return Error::e_explain(HTTPStatus(502), "101 to a request without an upgrade");
        }
        resp.insert_header("x-request-id", &ctx.request_id)?;
        insert_cors(resp, ctx)?;
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            HTTPStatus(code) => *code,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    WriteError | ReadError | ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code == 502 {
            self.state.metrics.upstream_errors.inc();
            warn!(request_id = %ctx.request_id, error = ?e.etype(), "upstream unreachable");
        }
        if code > 0 && session.response_written().is_none() {
            let reject = match code {
                502 => Some(Reject::UpstreamUnavailable),
                _ => None,
            };
            let _ = match reject {
                Some(r) => {
                    self.write_json(session, ctx, r.status(), r.body(), None)
                        .await
                }
                None => {
                    let body = if code < 500 {
                        Reject::Malformed.body()
                    } else {
                        shared::error_body::ErrorBody::new(
                            "internal_error",
                            "The proxy failed to handle the request.",
                        )
                        .to_json()
                    };
                    self.write_json(session, ctx, code, body, None).await
                }
            };
            ctx.outcome = if code == 502 {
                "upstream_unavailable"
            } else {
                "error"
            };
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        let req = session.req_header();
        self.finish_request(req.method.as_str(), req.uri.path(), status, ctx);
    }

    /// What pingora prints in its own error lines: never the query string (it may hold the token).
    fn request_summary(&self, session: &Session, ctx: &RequestCtx) -> String {
        let req = session.req_header();
        format!(
            "{} {} request_id={}",
            req.method,
            req.uri.path(),
            ctx.request_id
        )
    }
}

impl Edge {
    /// 204 with the CORS preflight headers, before any authentication.
    async fn answer_preflight(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let origin = ctx.cors_origin.clone().unwrap_or_default();
        let mut h = ResponseHeader::build(204, Some(8))?;
        for (name, value) in cors::preflight_headers(&origin, self.state.config.cors.max_age_secs) {
            h.insert_header(name, value)?;
        }
        h.insert_header("content-length", "0")?;
        h.insert_header("x-request-id", &ctx.request_id)?;
        ctx.outcome = "preflight";
        ctx.responded = Some(ctx.started.elapsed());
        session.write_response_header(Box::new(h), true).await?;
        Ok(true)
    }
    /// Answers with a rejection and ends the request (no upstream contact).
    async fn reject(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        reject: Reject,
    ) -> Result<bool> {
        ctx.outcome = reject.code();
        self.write_json(session, ctx, reject.status(), reject.body(), Some(reject))
            .await?;
        Ok(true)
    }

    async fn write_json(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        body: Vec<u8>,
        reject: Option<Reject>,
    ) -> Result<()> {
        let mut h = json_response(status, body.len(), &ctx.request_id, reject)?;
        insert_cors(&mut h, ctx)?;
        session.set_keepalive(None);
        ctx.responded = Some(ctx.started.elapsed());
        session.write_response_header(Box::new(h), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await
    }
}

/// True when a request is a CORS preflight.
fn is_preflight(req: &RequestHeader) -> bool {
    cors::is_preflight(
        req.method.as_str(),
        req.header_str("origin"),
        req.header_str("access-control-request-method"),
    )
}
