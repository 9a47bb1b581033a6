//! The proxy's Prometheus metrics, in a registry of its own served by the admin listener.
//! Labels carry route classes, statuses and outcome codes only: never user ids, client ids or paths.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::decide::routes::Route;

pub struct Metrics {
    registry: Registry,
    /// Handles of the per-request path.
    pub hot: Hot,
    /// `route` (public, ws, api, admin), `status`.
    pub requests: IntCounterVec,
    /// `outcome` (allow, deny, error), `reason` (ok or the error code).
    pub auth_decisions: IntCounterVec,
    /// `route`.
    pub request_duration: HistogramVec,
    pub user_lookup_duration: Histogram,
    /// Database queries made, by `result` (found, missing, error).
    pub user_lookups: IntCounterVec,
    /// `result` (hit, miss, disabled).
    pub user_cache: IntCounterVec,
    pub websocket_active: IntGauge,
    pub upstream_errors: IntCounter,
    /// Requests being handled now (tunnels included).
    pub in_flight: IntGauge,
    /// Bytes relayed through tunnels, client to agent (`direction="to_upstream"`).
    pub tunnel_bytes_to_upstream: IntCounter,
    /// Bytes relayed through tunnels, agent to client (`direction="to_client"`).
    pub tunnel_bytes_to_client: IntCounter,
    /// How long tunnels stayed open, handshake included.
    pub tunnel_duration: Histogram,
    /// Connections refused at accept by a cap, by `reason` (per_ip, total).
    pub connections_refused: IntCounterVec,
    /// Request heads that did not arrive within the header deadline.
    pub header_timeouts: IntCounter,
    /// Open tunnels closed by the edge, by `reason` (token_revoked, token_expired, user_removed).
    pub tunnels_closed: IntCounterVec,
    /// Revocations that came into force on this replica, by `kind` (user, jti, all).
    pub revocations: IntCounterVec,
    /// Client connections open on the edge listener now.
    pub connections_open: IntGauge,
    /// Requests by the door that served them (`door`: tunnel, lean, proxy, refused).
    pub doors: IntCounterVec,
}

/// Metric handles the per-request path uses, resolved once: a labelled lookup hashes the label
/// values and takes a lock; these are plain atomics.
pub struct Hot {
    /// `auth_decisions{outcome="allow",reason="ok"}`.
    pub allow_ok: IntCounter,
    /// `user_cache{result="hit"}`.
    pub cache_hit: IntCounter,
    /// `request_duration{route}` by [`Route`] index.
    duration: [Histogram; 4],
    /// `requests{route,status}` for the common statuses, by route index then [`HOT_STATUSES`] index.
    requests: [[IntCounter; HOT_STATUSES.len()]; 4],
}

/// Statuses whose request counters are resolved ahead.
const HOT_STATUSES: [u16; 10] = [101, 200, 204, 400, 401, 403, 404, 426, 429, 502];

const ROUTES: [Route; 4] = [Route::Public, Route::WebSocket, Route::Admin, Route::Api];

fn route_index(route: Route) -> usize {
    match route {
        Route::Public => 0,
        Route::WebSocket => 1,
        Route::Admin => 2,
        Route::Api => 3,
    }
}

impl Hot {
    fn new(
        requests: &IntCounterVec,
        duration: &HistogramVec,
        auth: &IntCounterVec,
        cache: &IntCounterVec,
    ) -> Hot {
        Hot {
            allow_ok: auth.with_label_values(&["allow", "ok"]),
            cache_hit: cache.with_label_values(&["hit"]),
            duration: ROUTES.map(|r| duration.with_label_values(&[r.label()])),
            requests: ROUTES.map(|r| {
                HOT_STATUSES.map(|s| requests.with_label_values(&[r.label(), &s.to_string()]))
            }),
        }
    }
}

impl Metrics {
    /// Counts a finished request and observes its time to response, without label lookups for
    /// the common cases.
    pub fn record_request(&self, route: Route, status: u16, to_response_secs: f64) {
        let r = route_index(route);
        match HOT_STATUSES.iter().position(|s| *s == status) {
            Some(i) => self.hot.requests[r][i].inc(),
            None => self
                .requests
                .with_label_values(&[route.label(), &status.to_string()])
                .inc(),
        }
        self.hot.duration[r].observe(to_response_secs);
    }
}

fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
    // Names are unique constants of this module: registration cannot collide.
    r.register(Box::new(m.clone()))
        .expect("metric registers once");
    m
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let tunnel_bytes = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "auth_proxy_tunnel_bytes_total",
                    "Bytes relayed through WebSocket tunnels, by direction",
                ),
                &["direction"],
            )
            .unwrap(),
        );
        let fast = vec![
            0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5, 5.0,
        ];
        let requests = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "auth_proxy_requests_total",
                    "Requests by route class and status",
                ),
                &["route", "status"],
            )
            .unwrap(),
        );
        let auth_decisions = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "auth_proxy_auth_decisions_total",
                    "Authentication decisions by outcome and reason",
                ),
                &["outcome", "reason"],
            )
            .unwrap(),
        );
        let request_duration = reg(
            &r,
            HistogramVec::new(
                HistogramOpts::new(
                    "auth_proxy_request_duration_seconds",
                    "Time from request to response, by route class",
                )
                .buckets(fast.clone()),
                &["route"],
            )
            .unwrap(),
        );
        let user_cache = reg(
            &r,
            IntCounterVec::new(
                Opts::new(
                    "auth_proxy_user_cache_requests_total",
                    "User cache requests by result",
                ),
                &["result"],
            )
            .unwrap(),
        );
        let hot = Hot::new(&requests, &request_duration, &auth_decisions, &user_cache);
        Metrics {
            hot,
            requests,
            auth_decisions,
            request_duration,
            user_lookup_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "auth_proxy_user_lookup_duration_seconds",
                        "Users table query time",
                    )
                    .buckets(fast),
                )
                .unwrap(),
            ),
            user_lookups: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "auth_proxy_user_lookups_total",
                        "Users table queries by result",
                    ),
                    &["result"],
                )
                .unwrap(),
            ),
            user_cache,
            websocket_active: reg(
                &r,
                IntGauge::new(
                    "auth_proxy_websocket_connections_active",
                    "WebSocket tunnels open now",
                )
                .unwrap(),
            ),
            upstream_errors: reg(
                &r,
                IntCounter::new(
                    "auth_proxy_upstream_errors_total",
                    "Requests that failed to reach the upstream",
                )
                .unwrap(),
            ),
            in_flight: reg(
                &r,
                IntGauge::new(
                    "auth_proxy_requests_in_flight",
                    "Requests being handled now",
                )
                .unwrap(),
            ),
            tunnel_bytes_to_upstream: tunnel_bytes.with_label_values(&["to_upstream"]),
            tunnel_bytes_to_client: tunnel_bytes.with_label_values(&["to_client"]),
            tunnel_duration: reg(
                &r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "auth_proxy_tunnel_duration_seconds",
                        "How long WebSocket tunnels stayed open",
                    )
                    .buckets(vec![
                        1.0,
                        10.0,
                        60.0,
                        300.0,
                        900.0,
                        3600.0,
                        4.0 * 3600.0,
                        24.0 * 3600.0,
                    ]),
                )
                .unwrap(),
            ),
            connections_refused: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "auth_proxy_connections_refused_total",
                        "Client connections refused by a connection cap",
                    ),
                    &["reason"],
                )
                .unwrap(),
            ),
            doors: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "auth_proxy_doors_total",
                        "Requests by the door that served them: the edge's tunnel, the lean HTTP path, pingora-proxy, or refused unread",
                    ),
                    &["door"],
                )
                .unwrap(),
            ),
            header_timeouts: reg(
                &r,
                IntCounter::new(
                    "auth_proxy_header_timeouts_total",
                    "Request heads not received within the header deadline",
                )
                .unwrap(),
            ),
            tunnels_closed: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "auth_proxy_tunnels_closed_total",
                        "Open tunnels closed by the edge because their authorization ended, by reason",
                    ),
                    &["reason"],
                )
                .unwrap(),
            ),
            revocations: reg(
                &r,
                IntCounterVec::new(
                    Opts::new(
                        "auth_proxy_revocations_total",
                        "Revocations that came into force on this replica, by kind",
                    ),
                    &["kind"],
                )
                .unwrap(),
            ),
            connections_open: reg(
                &r,
                IntGauge::new(
                    "auth_proxy_connections_open",
                    "Client connections open on the edge listener",
                )
                .unwrap(),
            ),
            registry: r,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_documented_names() {
        let m = Metrics::new();
        m.requests.with_label_values(&["ws", "101"]).inc();
        m.auth_decisions.with_label_values(&["allow", "ok"]).inc();
        m.request_duration.with_label_values(&["ws"]).observe(0.001);
        m.user_lookup_duration.observe(0.001);
        m.user_lookups.with_label_values(&["found"]).inc();
        m.user_cache.with_label_values(&["hit"]).inc();
        m.tunnels_closed.with_label_values(&["token_revoked"]).inc();
        m.revocations.with_label_values(&["user"]).inc();
        m.doors.with_label_values(&["lean"]).inc();
        let text = String::from_utf8(m.render()).unwrap();
        for name in [
            "auth_proxy_requests_total",
            "auth_proxy_auth_decisions_total",
            "auth_proxy_request_duration_seconds",
            "auth_proxy_user_lookup_duration_seconds",
            "auth_proxy_user_lookups_total",
            "auth_proxy_user_cache_requests_total",
            "auth_proxy_websocket_connections_active",
            "auth_proxy_upstream_errors_total",
            "auth_proxy_tunnel_bytes_total",
            "auth_proxy_tunnel_duration_seconds",
            "auth_proxy_header_timeouts_total",
            "auth_proxy_doors_total",
            "auth_proxy_tunnels_closed_total",
            "auth_proxy_revocations_total",
        ] {
            assert!(text.contains(name), "{name} missing");
        }
    }
}
