//! The one choice of the connection layer: which door serves a request, from its parsed head.
//!
//! Every policy lives in the decision all doors run ([`crate::decide::Edge::decide`]); what a door
//! adds is only how it carries the request. So the choice is made once, here, from two facts that
//! a client cannot make disagree: the route of the raw path and what the `Upgrade` header asks for
//! ([`crate::accept::head::upgrade_of`], the same reading the decision makes).
//!
//! | request | door |
//! |---|---|
//! | a path of the WebSocket endpoint (`/ws`, `/ws/...`), any method or shape | [`Door::Tunnel`] |
//! | a WebSocket handshake (`Upgrade: websocket`) on any other path | [`Door::Tunnel`] (which refuses it: only the endpoint upgrades) |
//! | a plain bodiless `GET`/`HEAD`/`DELETE` ([`eligible`]) | [`Door::Lean`] |
//! | anything else httparse reads (bodies, `Expect`, HTTP/1.0, other upgrades, ...) | [`Door::Proxy`]: pingora-proxy, which never upgrades (the upgrade headers are removed and a 101 is refused) |
//! | a head httparse refuses | [`Door::Refuse`]: 400 `bad_request` from the edge itself |
//!
//! So no request can reach a door that lacks a rule: an upgrade can only ever be completed by the
//! edge's own tunnel, which registers it for live authorization and polices its frames.

use crate::accept::head::{bodiless_origin_form, upgrade_of, Upgrade};
use crate::decide::headers;
use crate::decide::routes::Route;

/// Who serves a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Door {
    /// The edge's own tunnel: the WebSocket endpoint, and any WebSocket handshake (refused off the
    /// endpoint). `own`: the edge's codec keeps the head ([`own_handshake`]);
    /// otherwise pingora's HTTP/1 codec parses it first.
    Tunnel { own: bool },
    /// The lean HTTP path ([`crate::forward::lean`]), on the head as parsed.
    Lean,
    /// pingora-proxy's `HttpProxy` with the edge's phases ([`crate::forward::proxy`]).
    Proxy,
    /// A head the edge cannot read without guessing: answered 400 by the edge.
    Refuse,
}

impl Door {
    /// Every `door` label of `auth_proxy_doors_total`, for resolving metric handles once.
    pub const LABELS: [&'static str; 4] = ["tunnel", "lean", "proxy", "refused"];

    /// The position of the door's label in [`Door::LABELS`].
    pub fn index(self) -> usize {
        match self {
            Door::Tunnel { .. } => 0,
            Door::Lean => 1,
            Door::Proxy => 2,
            Door::Refuse => 3,
        }
    }
}

/// The path of a request target as pingora's codec reads it (`http::Uri`'s path): the origin
/// form's part before `?`, or the path of an absolute-form target. What the route of the door is
/// taken from, so the door and the decision classify the same path.
pub fn target_path(target: &str) -> std::borrow::Cow<'_, str> {
    if target.starts_with('/') {
        return target.split_once('?').map_or(target, |(p, _)| p).into();
    }
    match http::Uri::try_from(target) {
        Ok(uri) => uri.path().to_string().into(),
        Err(_) => target.into(),
    }
}

/// The door of a complete head httparse parsed, on `route` (of [`target_path`]).
pub fn choose(route: Route, req: &httparse::Request) -> Door {
    let upgrade = upgrade_of(
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
            .map(|h| h.value),
    );
    if route == Route::WebSocket || upgrade == Upgrade::WebSocket {
        return Door::Tunnel {
            own: own_handshake(req),
        };
    }
    if eligible(req) {
        Door::Lean
    } else {
        Door::Proxy
    }
}

/// True when the edge's own codec may read a handshake head: HTTP/1.1 `GET` in origin form (a
/// target `http::Uri` accepts), exactly one `Host`, no body. Anything else is parsed by pingora
/// (and refused there when it is no handshake).
pub fn own_handshake(req: &httparse::Request) -> bool {
    req.method == Some("GET") && bodiless_origin_form(req)
}

/// True when a request head may take the lean path: `GET`, `HEAD` or `DELETE`, a bodiless
/// HTTP/1.1 head in origin form ([`crate::accept::head::bodiless_origin_form`]), and no header that asks a
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
        !(headers::is_hop_by_hop(name) || name.eq_ignore_ascii_case("expect"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::decide::routes::Routes;

    fn door(head: &str) -> Door {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(head.as_bytes()).unwrap().is_complete(), "{head}");
        let path = target_path(req.path.unwrap());
        choose(
            Routes::from_config(&Config::default()).classify(&path),
            &req,
        )
    }

    const WS: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\n";

    #[test]
    fn every_request_on_the_endpoint_takes_the_tunnel_whatever_its_shape() {
        for (head, own) in [
            (format!("GET /ws/a HTTP/1.1\r\nHost: a\r\n{WS}\r\n"), true),
            (format!("GET /ws/a~x HTTP/1.1\r\nHost: a\r\n{WS}\r\n"), true),
            (format!("GET /ws/%41 HTTP/1.1\r\nHost: a\r\n{WS}\r\n"), true),
            (format!("GET /ws/a/b HTTP/1.1\r\nHost: a\r\n{WS}\r\n"), true),
            (format!("GET /ws HTTP/1.1\r\nHost: a\r\n{WS}\r\n"), true),
            (
                format!("GET http://a/ws/a HTTP/1.1\r\nHost: a\r\n{WS}\r\n"),
                false,
            ),
            (format!("GET /ws/a HTTP/1.0\r\nHost: a\r\n{WS}\r\n"), false),
            (
                format!("GET /ws/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n{WS}\r\n"),
                false,
            ),
            (
                format!("GET /ws/a HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n{WS}\r\nhi"),
                false,
            ),
            (format!("POST /ws/a HTTP/1.1\r\nHost: a\r\n{WS}\r\n"), false),
            ("GET /ws/a HTTP/1.1\r\nHost: a\r\n\r\n".into(), true),
            (
                "GET /ws/a HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\n\r\n".into(),
                true,
            ),
            (
                "GET /ws/a HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n".into(),
                true,
            ),
        ] {
            assert_eq!(door(&head), Door::Tunnel { own }, "{head}");
        }
    }

    #[test]
    fn a_websocket_handshake_anywhere_takes_the_tunnel() {
        for head in [
            format!("GET /health HTTP/1.1\r\nHost: a\r\n{WS}\r\n"),
            format!("GET /api/info HTTP/1.1\r\nHost: a\r\n{WS}\r\n"),
            format!("GET /api/x HTTP/1.1\r\nHost: a\r\n{WS}\r\n"),
            "GET /WS/a HTTP/1.1\r\nHost: a\r\nupgrade: WebSocket\r\n\r\n".into(),
            "GET /health HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, websocket\r\n\r\n".into(),
            format!("POST /health HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n{WS}\r\n"),
            format!("GET /health HTTP/1.0\r\n{WS}\r\n"),
        ] {
            assert!(matches!(door(&head), Door::Tunnel { .. }), "{head}");
        }
    }

    #[test]
    fn plain_requests_take_the_lean_path_or_pingora_proxy() {
        assert_eq!(door("GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n"), Door::Lean);
        assert_eq!(door("GET /health HTTP/1.1\r\nHost: a\r\n\r\n"), Door::Lean);
        for head in [
            "GET /health HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
            "GET /api/x HTTP/1.0\r\nHost: a\r\n\r\n",
            "POST /api/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi",
            "GET /api/x HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
        ] {
            assert_eq!(door(head), Door::Proxy, "{head}");
        }
    }

    #[test]
    fn the_route_is_taken_from_the_path_pingora_reads() {
        assert_eq!(target_path("/ws/a?token=t"), "/ws/a");
        assert_eq!(target_path("http://a/ws/a?token=t"), "/ws/a");
        assert_eq!(target_path("http://a"), "/");
        assert_eq!(target_path("*"), "*");
        assert_eq!(
            door("GET http://a/ws/a HTTP/1.1\r\nHost: a\r\n\r\n"),
            Door::Tunnel { own: false }
        );
    }

    #[test]
    fn labels_and_indexes_agree() {
        let labels: Vec<&str> = [
            Door::Tunnel { own: true },
            Door::Lean,
            Door::Proxy,
            Door::Refuse,
        ]
        .iter()
        .map(|d| Door::LABELS[d.index()])
        .collect();
        assert_eq!(labels, ["tunnel", "lean", "proxy", "refused"]);
    }

    fn own(head: &str) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        assert!(req.parse(head.as_bytes()).unwrap().is_complete(), "{head}");
        own_handshake(&req)
    }

    #[test]
    fn plain_handshakes_are_read_by_the_edge_and_the_rest_by_pingora() {
        assert!(own(
            "GET /ws/a?token=t HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        ));
        assert!(own(
            "GET /ws/a HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"
        ));
        for head in [
            "POST /ws/a HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /ws/a HTTP/1.0\r\nHost: a\r\n\r\n",
            "GET /ws/a HTTP/1.1\r\n\r\n",
            "GET /ws/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "GET http://a/ws/a HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /ws/a#f HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET /ws/a HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n\r\n",
            "GET /ws/a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            assert!(!own(head), "{head}");
        }
    }

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
