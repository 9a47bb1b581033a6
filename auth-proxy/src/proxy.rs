//! The edge itself: a pingora `ProxyHttp` that reads top to bottom in request order.
//!
//! 1. `request_filter`: request id and client IP; public routes pass; otherwise throttle, token,
//!    JWT, user row, admin check, WebSocket check. Any failure is answered here, as JSON, before any
//!    upstream contact and before the upgrade.
//! 2. `upstream_peer`: the agent, with the tunnel idle timeout for WebSockets.
//! 3. `upstream_request_filter`: strip the token and `Authorization`, delete every client identity
//!    header, inject the signed identity, request id and forwarded headers.
//! 4. `response_filter`: count an opened tunnel.
//! 5. `fail_to_proxy`: an unreachable upstream becomes 502 `upstream_unavailable` (JSON).
//! 6. `logging`: the access line and the metrics.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use shared::identity::Identity;
use tracing::{info, warn};

use crate::headers;
use crate::reject::Reject;
use crate::routes::Route;
use crate::state::{now_unix, AppState};
use crate::token;
use crate::users::User;

/// How long connecting to the upstream may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Edge {
    state: Arc<AppState>,
}

impl Edge {
    pub fn new(state: Arc<AppState>) -> Edge {
        Edge { state }
    }
}

/// What the proxy learns about one request as it goes.
pub struct RequestCtx {
    started: Instant,
    responded: Option<Duration>,
    request_id: String,
    peer: Option<IpAddr>,
    client_ip: Option<IpAddr>,
    forwarded_for: Option<String>,
    route: Route,
    outcome: &'static str,
    user: Option<User>,
    tunnel_open: bool,
    in_flight: bool,
}

fn header_str<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            responded: None,
            request_id: String::new(),
            peer: None,
            client_ip: None,
            forwarded_for: None,
            route: Route::Api,
            outcome: "",
            user: None,
            tunnel_open: false,
            in_flight: false,
        }
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        self.state.metrics.in_flight.inc();
        ctx.in_flight = true;
        self.identify_request(session, ctx);
        if self.state.health.is_draining() {
            return self.reject(session, ctx, Reject::ShuttingDown).await;
        }
        if ctx.route == Route::Public {
            ctx.outcome = "public";
            return Ok(false);
        }
        match self.authenticate(session, ctx).await {
            Ok(user) => {
                self.state
                    .metrics
                    .auth_decisions
                    .with_label_values(&["allow", "ok"])
                    .inc();
                if ctx.route == Route::WebSocket {
                    let idle = self.state.websocket_idle_timeout();
                    session.as_downstream_mut().set_read_timeout(Some(idle));
                }
                ctx.outcome = "ok";
                ctx.user = Some(user);
                Ok(false)
            }
            Err(reject) => {
                self.record_rejection(ctx, reject);
                self.reject(session, ctx, reject).await
            }
        }
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let mut peer = HttpPeer::new(self.state.upstream, false, String::new());
        peer.options.connection_timeout = Some(CONNECT_TIMEOUT);
        if ctx.route == Route::WebSocket {
            let idle = self.state.websocket_idle_timeout();
            peer.options.read_timeout = Some(idle);
            peer.options.idle_timeout = Some(idle);
        }
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !self.state.config.forward_credentials {
            let uri = token::forwarded_uri(upstream.uri.path(), upstream.uri.query());
            upstream.set_uri(
                uri.parse()
                    .map_err(|_| Error::explain(HTTPStatus(400), "bad request URI"))?,
            );
            upstream.remove_header("authorization");
        }
        sanitise(upstream)?;
        if let Some(user) = &ctx.user {
            let identity = Identity {
                user_id: user.id,
                username: user.username.clone(),
                is_admin: user.is_admin,
            };
            let method = session.req_header().method.as_str();
            let signed = self
                .state
                .signer
                .sign(&identity, method, upstream.uri.path(), now_unix());
            for (name, value) in signed.pairs() {
                upstream.insert_header(name, value)?;
            }
        }
        upstream.insert_header("x-request-id", &ctx.request_id)?;
        if let Some(peer) = ctx.peer {
            let xff =
                headers::forwarded_for(peer, ctx.forwarded_for.as_deref(), &self.state.trusted);
            upstream.insert_header("x-forwarded-for", xff)?;
        }
        upstream.insert_header("x-forwarded-proto", "http")?;
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.responded = Some(ctx.started.elapsed());
        if resp.status.as_u16() == 101 && !ctx.tunnel_open {
            ctx.tunnel_open = true;
            self.state.metrics.websocket_active.inc();
        }
        resp.insert_header("x-request-id", &ctx.request_id)?;
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
                    let (error, message) = if code < 500 {
                        ("bad_request", "The request could not be parsed.")
                    } else {
                        ("internal_error", "The proxy failed to handle the request.")
                    };
                    let body = shared::error_body::ErrorBody::new(error, message).to_json();
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
        let m = &self.state.metrics;
        let status = session
            .response_written()
            .map(|r| r.status.as_u16())
            .unwrap_or(0);
        m.requests
            .with_label_values(&[ctx.route.label(), &status.to_string()])
            .inc();
        let to_response = ctx.responded.unwrap_or_else(|| ctx.started.elapsed());
        m.request_duration
            .with_label_values(&[ctx.route.label()])
            .observe(to_response.as_secs_f64());
        if ctx.tunnel_open {
            m.websocket_active.dec();
        }
        if ctx.in_flight {
            m.in_flight.dec();
        }
        let req = session.req_header();
        info!(
            target: "access",
            method = %req.method,
            path = req.uri.path(),
            status,
            outcome = ctx.outcome,
            user_id = ctx.user.as_ref().map(|u| u.id),
            client_ip = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            duration_ms = to_response.as_secs_f64() * 1000.0,
            session_ms = ctx.started.elapsed().as_millis() as u64,
            request_id = %ctx.request_id,
            "request"
        );
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
    /// Request id, client IP and route class.
    fn identify_request(&self, session: &Session, ctx: &mut RequestCtx) {
        let req = session.req_header();
        ctx.request_id = headers::request_id(req.headers.get("x-request-id").map(|v| v.as_bytes()));
        ctx.route = self.state.routes.classify(req.uri.path());
        ctx.forwarded_for = header_str(req, "x-forwarded-for").map(str::to_string);
        ctx.peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.client_ip = ctx
            .peer
            .map(|p| headers::client_ip(p, ctx.forwarded_for.as_deref(), &self.state.trusted));
    }

    /// Throttle, token, JWT, user row, admin and upgrade checks, in that order.
    async fn authenticate(
        &self,
        session: &Session,
        ctx: &RequestCtx,
    ) -> std::result::Result<User, Reject> {
        let s = &self.state;
        if let Some(ip) = &ctx.client_ip {
            if s.throttle.is_throttled(ip) {
                return Err(Reject::RateLimited);
            }
        }
        let req = session.req_header();
        let authorization = req.headers.get("authorization").map(|v| v.as_bytes());
        let token = token::extract(req.uri.query(), authorization, s.config.max_token_bytes)?;
        let user_id = s.jwt.verify(&token, now_unix())?;
        let user = match s.users.get(user_id).await {
            Ok(Some(user)) => user,
            Ok(None) => return Err(Reject::UnknownUser),
            Err(e) => {
                warn!(request_id = %ctx.request_id, error = %e, "user lookup failed");
                return Err(Reject::AuthUnavailable);
            }
        };
        if ctx.route == Route::Admin && !user.is_admin {
            return Err(Reject::Forbidden);
        }
        if ctx.route == Route::WebSocket && !session.is_upgrade_req() {
            return Err(Reject::WebSocketRequired);
        }
        Ok(user)
    }

    fn record_rejection(&self, ctx: &RequestCtx, reject: Reject) {
        let outcome = if reject.status() >= 500 {
            "error"
        } else {
            "deny"
        };
        self.state
            .metrics
            .auth_decisions
            .with_label_values(&[outcome, reject.code()])
            .inc();
        if reject.is_auth_failure() {
            if let Some(ip) = &ctx.client_ip {
                self.state.throttle.record_failure(ip);
            }
        }
        if let Reject::InvalidToken(reason) = reject {
            let ip = ctx.client_ip.map(|ip| ip.to_string()).unwrap_or_default();
            warn!(client_ip = %ip, reason, request_id = %ctx.request_id, "malformed or invalid token");
        }
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
        let mut h = ResponseHeader::build(status, Some(6))?;
        h.insert_header("content-type", "application/json")?;
        h.insert_header("content-length", body.len().to_string())?;
        h.insert_header("cache-control", "no-store")?;
        h.insert_header("x-request-id", &ctx.request_id)?;
        if let Some(challenge) = reject.and_then(Reject::challenge) {
            h.insert_header("www-authenticate", challenge)?;
        }
        if reject == Some(Reject::RateLimited) {
            h.insert_header("retry-after", "60")?;
        }
        session.set_keepalive(None);
        ctx.responded = Some(ctx.started.elapsed());
        session.write_response_header(Box::new(h), false).await?;
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await
    }
}

/// Deletes every reserved identity header and any `Connection` token naming one.
fn sanitise(upstream: &mut RequestHeader) -> Result<()> {
    let names = headers::reserved_present(upstream.headers.keys().map(|k| k.as_str()));
    for name in names {
        upstream.remove_header(&name);
    }
    if let Some(conn) = header_str(upstream, "connection").map(str::to_string) {
        match headers::clean_connection(&conn) {
            Some(clean) if clean != conn => {
                upstream.insert_header("connection", clean)?;
            }
            Some(_) => {}
            None => {
                upstream.remove_header("connection");
            }
        }
    }
    Ok(())
}
