//! The edge's decisions and pingora-proxy's `ProxyHttp` for plain HTTP, in request order.
//!
//! 1. `request_filter`: [`Edge::identify_request`] (request id, client IP, route, CORS origin); a
//!    CORS preflight from an allowed origin is answered (204) before anything else; then
//!    [`Edge::decide`]: raw-path check (dot-segments, encoded separators: 400 `bad_request`), drain,
//!    public routes, WebSocket origin, token, JWT, revocations, user row (a failure from a throttled
//!    IP becomes 429), admin check, WebSocket check. Any failure is answered here, as JSON, before
//!    any upstream contact and before the upgrade.
//!    The WebSocket endpoint runs the same two functions in [`crate::tunnel`], which owns its
//!    connections (see [`crate::connection`]).
//! 2. `upstream_peer`: the agent.
//! 3. `upstream_request_filter`: [`Edge::prepare_upstream_request`]: strip the token and
//!    `Authorization`, delete every client identity header (dashed or underscored) and, unless the
//!    peer is a trusted proxy, `Forwarded`, `X-Real-IP`, `X-Forwarded-Host/Port`; inject the signed
//!    identity (bound to method, path and query), request id and forwarded headers.
//! 4. `response_filter`: the request id on the answer.
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
use shared::identity::{BoundRequest, Identity};
use tracing::{info, warn};

use crate::cors;
use crate::head::{RequestView, Upgrade};
use crate::headers;
use crate::reject::Reject;
use crate::revocations::TokenFacts;
use crate::routes::{self, Route};
use crate::state::{now_unix, AppState};
use crate::throttle;
use crate::token;
use crate::users::User;

/// How long connecting to the upstream may take.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

pub struct Edge {
    state: Arc<AppState>,
}

impl Edge {
    pub fn new(state: Arc<AppState>) -> Edge {
        Edge { state }
    }

    /// The edge's settings.
    pub(crate) fn config(&self) -> &crate::config::Config {
        &self.state.config
    }
}

/// What the edge learns about one request as it goes.
pub struct RequestCtx {
    pub(crate) started: Instant,
    pub(crate) responded: Option<Duration>,
    pub(crate) request_id: String,
    pub(crate) peer: Option<IpAddr>,
    pub(crate) client_ip: Option<IpAddr>,
    pub(crate) forwarded_for: Option<String>,
    pub(crate) route: Route,
    pub(crate) outcome: &'static str,
    pub(crate) user: Option<User>,
    /// The verified token's user id, `iat`, `exp` and `jti` (for the tunnel registry).
    pub(crate) token: Option<TokenFacts>,
    pub(crate) in_flight: bool,
    /// The request's `Origin`, when CORS is on and it is an allowed one.
    pub(crate) cors_origin: Option<String>,
    /// Already counted for the status page (a tunnel is counted when it opens, not when it ends).
    pub(crate) counted_recent: bool,
}

impl RequestCtx {
    pub fn new() -> RequestCtx {
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
            token: None,
            in_flight: false,
            cors_origin: None,
            counted_recent: false,
        }
    }
}

impl Default for RequestCtx {
    fn default() -> Self {
        RequestCtx::new()
    }
}

/// How a client request changes on its way to the agent (see [`Edge::upstream_edits`]). One policy
/// for both codecs: pingora's header map and the lean path's head writer ([`crate::head`]).
pub struct UpstreamEdits {
    /// The target to forward instead of the client's (the token stripped); `None` keeps it.
    pub target: Option<String>,
    /// `Authorization` is dropped (the default; `forward_credentials` keeps it).
    pub strip_authorization: bool,
    /// The peer is a trusted proxy: its forwarding headers are kept.
    pub peer_trusted: bool,
    /// Headers the edge sets; any the client sent under these names are dropped.
    pub added: Vec<(&'static str, String)>,
}

impl UpstreamEdits {
    /// True for a client header that must not reach the agent: a reserved identity header (any
    /// spelling), `Authorization` when stripped, a forwarding header only the edge or a trusted
    /// proxy may send, an upgrade header (only the tunnel upgrades, and it sets its own), or one
    /// the edge sets itself.
    pub fn drops(&self, name: &str) -> bool {
        (self.strip_authorization && name.eq_ignore_ascii_case("authorization"))
            || shared::identity::is_reserved_header(name)
            || headers::forwarding_dropped(name, self.peer_trusted)
            || headers::is_upgrade_header(name)
            || self.added.iter().any(|(n, _)| name.eq_ignore_ascii_case(n))
    }
}

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
        // pingora-proxy never upgrades: the door ([`crate::door`]) sends the WebSocket endpoint
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
    /// The request the upstream gets: the token and `Authorization` stripped (unless
    /// `forward_credentials`), client identity and upgrade headers deleted, the signed identity,
    /// request id and forwarded headers added ([`Edge::upstream_edits`], applied to pingora's
    /// header map by [`apply_edits`]).
    pub(crate) fn prepare_upstream_request(
        &self,
        upstream: &mut RequestHeader,
        method: &http::Method,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let edits = self.upstream_edits(
            method.as_str(),
            upstream.uri.path(),
            upstream.uri.query(),
            ctx,
        );
        apply_edits(upstream, edits)
    }

    /// How a request changes on its way to the agent, whichever codec writes it: the target
    /// without the token, the client headers to drop, and the headers the edge sets (the signed
    /// identity bound to method, path and the forwarded query; request id; forwarded headers).
    pub(crate) fn upstream_edits(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        ctx: &RequestCtx,
    ) -> UpstreamEdits {
        let strip = !self.state.config.forward_credentials;
        let stripped_query = if strip {
            query.and_then(token::strip_token)
        } else {
            None
        };
        let (target, query) = match (strip, query) {
            (true, Some(_)) => (
                Some(token::forwarded_uri_of(path, stripped_query.as_deref())),
                stripped_query.as_deref(),
            ),
            _ => (None, query),
        };
        let mut added: Vec<(&'static str, String)> = Vec::with_capacity(7);
        if let Some(user) = &ctx.user {
            let identity = Identity {
                user_id: user.id,
                username: user.username.clone(),
                is_admin: user.is_admin,
            };
            let bound = BoundRequest::new(method, path, query);
            let signed = self.state.signer.sign(&identity, bound, now_unix());
            added.extend(signed.into_pairs());
        }
        added.push(("x-request-id", ctx.request_id.clone()));
        if let Some(peer) = ctx.peer {
            let xff =
                headers::forwarded_for(peer, ctx.forwarded_for.as_deref(), &self.state.trusted);
            added.push(("x-forwarded-for", xff));
        }
        added.push(("x-forwarded-proto", "http".to_string()));
        UpstreamEdits {
            target,
            strip_authorization: strip,
            peer_trusted: ctx
                .peer
                .is_some_and(|p| headers::in_networks(p, &self.state.trusted)),
            added,
        }
    }

    /// A request starts: it counts as in flight (the drain waits for it) until [`Edge::end`].
    pub(crate) fn begin(&self, ctx: &mut RequestCtx) {
        self.state.metrics.in_flight.inc();
        ctx.in_flight = true;
    }

    /// A request (or tunnel) ends.
    pub(crate) fn end(&self, ctx: &mut RequestCtx) {
        if ctx.in_flight {
            self.state.metrics.in_flight.dec();
            ctx.in_flight = false;
        }
    }

    /// A request is answered: its metrics, its access line, and it is no longer in flight.
    pub(crate) fn finish_request(
        &self,
        method: &str,
        path: &str,
        status: u16,
        ctx: &mut RequestCtx,
    ) {
        let to_response = ctx.responded.unwrap_or_else(|| ctx.started.elapsed());
        self.state
            .metrics
            .record_request(ctx.route, status, to_response.as_secs_f64());
        self.end(ctx);
        self.count_recent(ctx);
        info!(
            target: "access",
            method = %method,
            path,
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

    /// Request id, client IP and route class.
    pub(crate) fn identify_request<R: RequestView + ?Sized>(
        &self,
        req: &R,
        peer: Option<IpAddr>,
        ctx: &mut RequestCtx,
    ) {
        ctx.request_id = headers::request_id(
            req.header("x-request-id"),
            self.state.config.trust_client_request_id,
        );
        ctx.route = self.state.routes.classify(req.path());
        ctx.forwarded_for = req.header_str("x-forwarded-for").map(str::to_string);
        ctx.peer = peer;
        ctx.client_ip = ctx
            .peer
            .map(|p| headers::client_ip(p, ctx.forwarded_for.as_deref(), &self.state.trusted));
        ctx.cors_origin = self
            .state
            .cors
            .matching(req.header_str("origin"))
            .map(str::to_string);
    }

    /// Counts the request once for the status page's last minutes.
    pub(crate) fn count_recent(&self, ctx: &mut RequestCtx) {
        if !ctx.counted_recent {
            ctx.counted_recent = true;
            self.state
                .recent
                .record(ctx.route.label(), ctx.outcome, now_unix());
        }
    }

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

    /// The edge's decision on a request, before any upstream contact: `Ok` forwards it (public, or
    /// authenticated with `ctx.user` set), `Err` is the answer to give instead. Counts the decision.
    pub(crate) async fn decide<R: RequestView + Sync + ?Sized>(
        &self,
        req: &R,
        ctx: &mut RequestCtx,
    ) -> std::result::Result<(), Reject> {
        if let Err(reject) = request_shape(req, ctx.route) {
            ctx.outcome = reject.code();
            return Err(reject);
        }
        if self.state.health.is_draining() {
            ctx.outcome = Reject::ShuttingDown.code();
            return Err(Reject::ShuttingDown);
        }
        if ctx.route == Route::Public {
            ctx.outcome = "public";
            return Ok(());
        }
        if ctx.route == Route::WebSocket
            && !self
                .state
                .ws_origins
                .permits_handshake(req.header_str("origin"))
        {
            let reject = Reject::OriginNotAllowed;
            self.record_rejection(ctx, reject);
            ctx.outcome = reject.code();
            return Err(reject);
        }
        match self.authenticate(req, ctx).await {
            Ok((user, token)) => {
                self.state.metrics.hot.allow_ok.inc();
                ctx.outcome = "ok";
                ctx.user = Some(user);
                ctx.token = Some(token);
                Ok(())
            }
            Err(reject) => {
                self.record_rejection(ctx, reject);
                ctx.outcome = reject.code();
                Err(reject)
            }
        }
    }

    /// Token, JWT, revocation, user row, admin and upgrade checks, in that order. The throttle
    /// only turns a failure into 429: a token that verifies for a known user is never refused by it.
    async fn authenticate<R: RequestView + Sync + ?Sized>(
        &self,
        req: &R,
        ctx: &RequestCtx,
    ) -> std::result::Result<(User, TokenFacts), Reject> {
        let s = &self.state;
        let throttled = || ctx.client_ip.is_some_and(|ip| s.throttle.is_throttled(&ip));
        let authorization = req.header("authorization");
        let token = token::extract(req.query(), authorization, s.config.max_token_bytes)
            .map_err(|p| throttle::verdict(p.into(), throttled()))?;
        let facts = s
            .jwt
            .verify_fetching(&token, now_unix())
            .await
            .map_err(|e| throttle::verdict(e.into(), throttled()))?;
        if !s.live.is_loaded() {
            return Err(Reject::AuthUnavailable);
        }
        if s.live.check(&facts).is_some() {
            return Err(Reject::TokenRevoked);
        }
        let user = match s.users.get(facts.user_id).await {
            Ok(Some(user)) => user,
            Ok(None) => return Err(throttle::verdict(Reject::UnknownUser, throttled())),
            Err(e) => {
                warn!(request_id = %ctx.request_id, error = %e, "user lookup failed");
                return Err(Reject::AuthUnavailable);
            }
        };
        if s.routes.requires_admin(req.path()) && !user.is_admin {
            return Err(Reject::Forbidden);
        }
        if ctx.route == Route::WebSocket && !req.is_websocket_handshake() {
            return Err(Reject::WebSocketRequired);
        }
        Ok((user, facts))
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
        if reject.is_auth_failure() || reject == Reject::RateLimited {
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

/// The checks on a request's shape that come before anything else, on every path: the raw path
/// ([`routes::check_raw_path`]), the client id of the WebSocket endpoint ([`shared::client_id`]),
/// and a WebSocket handshake anywhere but on that endpoint (only the edge's own tunnel upgrades).
pub(crate) fn request_shape<R: RequestView + ?Sized>(
    req: &R,
    route: Route,
) -> std::result::Result<(), Reject> {
    if routes::check_raw_path(req.path()).is_err() {
        return Err(Reject::BadPath);
    }
    match route {
        Route::WebSocket => match shared::client_id::of_path(req.path()) {
            Some(Ok(_)) => Ok(()),
            _ => Err(Reject::InvalidClientId),
        },
        _ if req.upgrade() == Upgrade::WebSocket => Err(Reject::UpgradeNotAllowed),
        _ => Ok(()),
    }
}

/// The header of a JSON answer the edge gives itself (a rejection or an error), with the request id,
/// `no-store`, and the challenge or `Retry-After` a rejection calls for.
pub(crate) fn json_response(
    status: u16,
    body_len: usize,
    request_id: &str,
    reject: Option<Reject>,
) -> Result<ResponseHeader> {
    let mut h = ResponseHeader::build(status, Some(6))?;
    h.insert_header("content-type", "application/json")?;
    h.insert_header("content-length", body_len.to_string())?;
    h.insert_header("cache-control", "no-store")?;
    h.insert_header("x-request-id", request_id)?;
    if let Some(challenge) = reject.and_then(Reject::challenge) {
        h.insert_header("www-authenticate", challenge)?;
    }
    if reject == Some(Reject::RateLimited) {
        h.insert_header("retry-after", "60")?;
    }
    Ok(h)
}

/// A JSON answer from the edge on a session the edge owns (the WebSocket endpoint, the lean
/// path); the connection closes after it. Returns its status (0 when nothing could be written).
pub(crate) async fn respond_json(
    session: &mut pingora::protocols::http::ServerSession,
    ctx: &mut RequestCtx,
    status: u16,
    body: Vec<u8>,
    reject: Option<Reject>,
) -> u16 {
    let Ok(mut header) = json_response(status, body.len(), &ctx.request_id, reject) else {
        return 0;
    };
    if insert_cors(&mut header, ctx).is_err() {
        return 0;
    }
    answer_then_close(session, ctx, header, Bytes::from(body)).await;
    status
}

/// Writes the edge's own final answer on a session the edge owns; the connection closes after it.
pub(crate) async fn answer_then_close(
    session: &mut pingora::protocols::http::ServerSession,
    ctx: &mut RequestCtx,
    header: ResponseHeader,
    body: Bytes,
) {
    session.set_keepalive(None);
    ctx.responded = Some(ctx.started.elapsed());
    if session
        .write_response_header(Box::new(header))
        .await
        .is_ok()
    {
        let _ = session.write_response_body(body, true).await;
    }
}

/// Applies [`UpstreamEdits`] to pingora's header map: the target, the client headers they drop,
/// `Connection` tokens naming identity or upgrade headers, then the headers the edge sets.
pub(crate) fn apply_edits(upstream: &mut RequestHeader, edits: UpstreamEdits) -> Result<()> {
    if let Some(target) = &edits.target {
        upstream.set_uri(
            target
                .parse()
                .map_err(|_| Error::explain(HTTPStatus(400), "bad request URI"))?,
        );
    }
    let dropped: Vec<String> = upstream
        .headers
        .keys()
        .map(|k| k.as_str())
        .filter(|k| edits.drops(k))
        .map(str::to_string)
        .collect();
    for name in dropped {
        upstream.remove_header(&name);
    }
    clean_connection_header(upstream)?;
    for (name, value) in edits.added {
        upstream.insert_header(name, value)?;
    }
    Ok(())
}

/// True when a request is a CORS preflight.
fn is_preflight(req: &RequestHeader) -> bool {
    cors::is_preflight(
        req.method.as_str(),
        req.header_str("origin"),
        req.header_str("access-control-request-method"),
    )
}

/// The CORS headers of an answer to an allowed origin (`Vary` is appended to any there is).
pub(crate) fn insert_cors(h: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    if let Some(origin) = &ctx.cors_origin {
        for (name, value) in cors::response_headers(origin) {
            if name == "vary" {
                h.append_header(name, value)?;
            } else {
                h.insert_header(name, value)?;
            }
        }
    }
    Ok(())
}

/// Drops any `Connection` token naming a reserved identity header (and the header when nothing is
/// left): a client must not make a proxy on the way delete the edge's identity headers.
fn clean_connection_header(upstream: &mut RequestHeader) -> Result<()> {
    if let Some(conn) = upstream.header_str("connection").map(str::to_string) {
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
