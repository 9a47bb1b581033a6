//! The one decision every door runs, before any upstream contact, and the bookkeeping of a request
//! that goes with it.
//!
//! [`Edge::identify_request`] (request id, client IP, route, CORS origin), then [`Edge::decide`]:
//! the request's shape ([`request_shape`]: raw path, client id, an upgrade off the WebSocket
//! endpoint), drain, public routes, WebSocket origin, token, JWT, revocations, user row (a failure
//! from a throttled IP becomes 429), admin check, WebSocket check. The tunnel
//! ([`crate::tunnel`]), the lean path ([`crate::forward::lean`]) and pingora-proxy
//! ([`crate::forward::proxy`]) each call these two and nothing else to decide; what the forwarded
//! request looks like is [`edits`], the answers the edge gives itself are [`answers`].

pub(crate) mod answers;
pub(crate) mod cors;
pub(crate) mod edits;
pub(crate) mod headers;
pub(crate) mod reject;
pub(crate) mod routes;
pub(crate) mod throttle;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use crate::accept::head::{RequestView, Upgrade};
use crate::auth::token;
use crate::auth::users::User;
use crate::clock::now_unix;
use crate::decide::reject::Reject;
use crate::decide::routes::Route;
use crate::live::revocations::TokenFacts;
use crate::server::state::AppState;

pub struct Edge {
    pub(crate) state: Arc<AppState>,
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

impl Edge {
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
