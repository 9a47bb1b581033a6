//! A client's request head as the edge's own paths read it: parsed once (by httparse, in
//! [`crate::server::connection`]), looked at through [`RequestView`] (the same view the decision takes of
//! pingora's `RequestHeader`), and rewritten straight into the bytes the agent gets
//! ([`write_upstream_request`]) without building a header map.
//!
//! Only heads [`crate::accept::door::eligible`] accepts are kept this way: HTTP/1.1, no body, an
//! origin-form target that `http::Uri` also accepts, no header a proxy must interpret.

use std::ops::Range;

use bytes::Bytes;
use pingora::http::RequestHeader;

use crate::decide::edits::UpstreamEdits;

/// What the decision reads of a request, whichever codec parsed it.
pub trait RequestView {
    fn method(&self) -> &str;
    /// The target's path (before any `?`).
    fn path(&self) -> &str;
    /// The target's query (after the `?`), if any.
    fn query(&self) -> Option<&str>;
    /// The first value of a header (name in any case).
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// The protocol version is HTTP/1.1.
    fn is_http11(&self) -> bool;
    /// What the request's `Upgrade` headers ask for ([`upgrade_of`]).
    fn upgrade(&self) -> Upgrade;

    /// A WebSocket handshake (RFC 6455 section 4.1): HTTP/1.1 `GET` asking to upgrade to
    /// `websocket`. The edge's own tunnel checks the rest (the agent checks the key and version).
    fn is_websocket_handshake(&self) -> bool {
        self.method() == "GET" && self.is_http11() && self.upgrade() == Upgrade::WebSocket
    }

    /// A header's value as text, when it is visible ASCII (as `HeaderValue::to_str` reads it).
    fn header_str(&self, name: &str) -> Option<&str> {
        self.header(name)
            .filter(|v| v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)))
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

impl RequestView for RequestHeader {
    fn method(&self) -> &str {
        self.method.as_str()
    }
    fn path(&self) -> &str {
        self.uri.path()
    }
    fn query(&self) -> Option<&str> {
        self.uri.query()
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.get(name).map(|v| v.as_bytes())
    }
    fn is_http11(&self) -> bool {
        self.version == http::Version::HTTP_11
    }
    fn upgrade(&self) -> Upgrade {
        upgrade_of(self.headers.get_all("upgrade").iter().map(|v| v.as_bytes()))
    }
}

/// What a request asks to upgrade to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upgrade {
    /// No `Upgrade` header.
    None,
    /// A `websocket` token among its `Upgrade` values: served by the edge's own tunnel, and only
    /// on the WebSocket endpoint.
    WebSocket,
    /// Anything else (`h2c`, `TLS/1.0`, ...): declined on every path, the request is served as
    /// plain HTTP/1.1 without its upgrade headers ([`crate::decide::headers::UPGRADE_HEADERS`]).
    Other,
}

/// The one reading of a request's `Upgrade` header values, whichever codec parsed them and
/// whatever the protocol version: `websocket` (any case, a `/version` suffix allowed) among the
/// comma-separated tokens of any of them is [`Upgrade::WebSocket`].
pub fn upgrade_of<'a>(values: impl Iterator<Item = &'a [u8]>) -> Upgrade {
    let mut any = false;
    for value in values {
        any = true;
        let websocket = value.split(|&b| b == b',').any(|token| {
            let token = token.trim_ascii();
            let name = token.split(|&b| b == b'/').next().unwrap_or(token);
            name.trim_ascii().eq_ignore_ascii_case(b"websocket")
        });
        if websocket {
            return Upgrade::WebSocket;
        }
    }
    if any {
        Upgrade::Other
    } else {
        Upgrade::None
    }
}

/// Where the parts of a parsed head lie in its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeadIndex {
    method: Range<usize>,
    target: Range<usize>,
    /// The target's path and query (after the `?`), found once.
    path: Range<usize>,
    query: Option<Range<usize>>,
    headers: Vec<(Range<usize>, Range<usize>)>,
    /// Length of the whole head, its empty line included.
    len: usize,
}

impl HeadIndex {
    /// Records where httparse found each part in `buf` (the bytes it parsed).
    pub fn of(buf: &[u8], req: &httparse::Request, len: usize) -> Option<HeadIndex> {
        let at = |s: &[u8]| {
            let start = (s.as_ptr() as usize).checked_sub(buf.as_ptr() as usize)?;
            (start + s.len() <= buf.len()).then_some(start..start + s.len())
        };
        let headers = req
            .headers
            .iter()
            .map(|h| Some((at(h.name.as_bytes())?, at(h.value)?)))
            .collect::<Option<Vec<_>>>()?;
        let target = at(req.path?.as_bytes())?;
        let (path, query) = match buf[target.clone()].iter().position(|&b| b == b'?') {
            Some(q) => (
                target.start..target.start + q,
                Some(target.start + q + 1..target.end),
            ),
            None => (target.clone(), None),
        };
        Some(HeadIndex {
            method: at(req.method?.as_bytes())?,
            target,
            path,
            query,
            headers,
            len,
        })
    }

    /// Length of the head in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A request head the edge keeps itself: its bytes and where its parts are.
#[derive(Debug, Clone)]
pub struct RequestHead {
    bytes: Bytes,
    index: HeadIndex,
}

impl RequestHead {
    /// `bytes` are exactly the head `index` was taken of (nothing after it).
    pub fn new(bytes: Bytes, index: HeadIndex) -> RequestHead {
        RequestHead { bytes, index }
    }

    /// Takes the head `index` describes off the front of `bytes` (what follows stays there).
    pub fn split_from(bytes: &mut bytes::BytesMut, index: HeadIndex) -> RequestHead {
        RequestHead::new(bytes.split_to(index.len()).freeze(), index)
    }

    /// Parses a complete head (for tests and tools; the edge parses in [`crate::server::connection`]).
    pub fn parse(bytes: &[u8]) -> Option<RequestHead> {
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        let httparse::Status::Complete(len) = req.parse(bytes).ok()? else {
            return None;
        };
        let index = HeadIndex::of(bytes, &req, len)?;
        Some(RequestHead::new(
            Bytes::copy_from_slice(&bytes[..len]),
            index,
        ))
    }

    /// The head's bytes, as the client sent them.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    fn text(&self, r: &Range<usize>) -> &str {
        // httparse only yields method, target and names of visible ASCII.
        std::str::from_utf8(&self.bytes[r.clone()]).unwrap_or("")
    }

    /// The request target as sent (origin form).
    pub fn target(&self) -> &str {
        self.text(&self.index.target)
    }

    /// Every header, in order, with the name as sent.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.index
            .headers
            .iter()
            .map(|(n, v)| (self.text(n), &self.bytes[v.clone()]))
    }

    /// True when the client asked to close the connection after this request.
    pub fn wants_close(&self) -> bool {
        self.headers().any(|(n, v)| {
            n.eq_ignore_ascii_case("connection")
                && v.split(|&b| b == b',')
                    .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
        })
    }
}

impl RequestView for RequestHead {
    fn method(&self) -> &str {
        self.text(&self.index.method)
    }
    fn path(&self) -> &str {
        self.text(&self.index.path)
    }
    fn query(&self) -> Option<&str> {
        self.index.query.as_ref().map(|q| self.text(q))
    }
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.index
            .headers
            .iter()
            .find(|(n, _)| self.bytes[n.clone()].eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| &self.bytes[v.clone()])
    }
    fn is_http11(&self) -> bool {
        // Kept heads are HTTP/1.1 ([`bodiless_origin_form`]).
        true
    }
    fn upgrade(&self) -> Upgrade {
        upgrade_of(
            self.headers()
                .filter(|(n, _)| n.eq_ignore_ascii_case("upgrade"))
                .map(|(_, v)| v),
        )
    }
}

/// True for a request target in origin form that pingora's own parser (`http::Uri`) would take as
/// it is, without a fragment: the decision must see the same path whichever codec parsed it.
pub fn origin_form(target: &str) -> bool {
    target.starts_with('/')
        && !target.contains('#')
        && http::uri::PathAndQuery::try_from(target).is_ok()
}

/// True for an HTTP/1.1 head in origin form ([`origin_form`]) with exactly one `Host` and no body
/// (`Content-Length` absent or 0, no `Transfer-Encoding`): what every head the edge's own code
/// reads must be (the lean path, [`crate::accept::door::eligible`]; the WebSocket endpoint,
/// [`crate::accept::door::own_handshake`]).
pub fn bodiless_origin_form(req: &httparse::Request) -> bool {
    if req.version != Some(1) || !req.path.is_some_and(origin_form) {
        return false;
    }
    let mut hosts = 0;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding")
            || (h.name.eq_ignore_ascii_case("content-length") && h.value.trim_ascii() != b"0")
        {
            return false;
        }
    }
    hosts == 1
}

/// A header the edge would set has a value no header may carry (its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidValue(pub &'static str);

/// A header value the edge may write: no control characters but tab (what `HeaderValue` accepts,
/// minus obs-text, which the edge never produces).
pub fn valid_value(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
}

/// The request the agent gets, as bytes: the request line with the edited target, the client's
/// headers in their order and spelling minus those `edits` drops and the `hop_by_hop` ones, then
/// the headers the edge sets. `Err` when a value the edge would set is not a valid header value.
pub fn write_upstream_request(
    out: &mut Vec<u8>,
    head: &RequestHead,
    edits: &UpstreamEdits,
    hop_by_hop: &[&str],
) -> Result<(), InvalidValue> {
    if let Some((name, _)) = edits.added.iter().find(|(_, v)| !valid_value(v)) {
        return Err(InvalidValue(name));
    }
    let target = edits.target.as_deref().unwrap_or(head.target());
    out.extend_from_slice(head.method().as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in head.headers() {
        if hop_by_hop.iter().any(|h| name.eq_ignore_ascii_case(h)) || edits.drops(name) {
            continue;
        }
        push_header(out, name, value);
    }
    for (name, value) in &edits.added {
        push_header(out, name, value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    Ok(())
}

/// `name: value\r\n`.
pub fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> RequestHead {
        RequestHead::parse(s.as_bytes()).expect("a complete head")
    }

    #[test]
    fn the_view_reads_target_and_headers() {
        let h = head(
            "GET /api/x?token=t&a=1 HTTP/1.1\r\nHost: a\r\nX-Thing:  v \r\nx-thing: w\r\n\r\n",
        );
        assert_eq!(h.method(), "GET");
        assert_eq!(h.path(), "/api/x");
        assert_eq!(h.query(), Some("token=t&a=1"));
        assert_eq!(h.header("x-thing"), Some(&b"v"[..]), "the first value");
        assert_eq!(h.header("HOST"), Some(&b"a"[..]));
        assert_eq!(h.header("origin"), None);
        assert_eq!(h.upgrade(), Upgrade::None);
        assert_eq!(h.headers().count(), 3);
        let plain = head("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(plain.path(), "/");
        assert_eq!(plain.query(), None);
        let empty = head("GET /a? HTTP/1.1\r\nHost: a\r\n\r\n");
        assert_eq!(empty.path(), "/a");
        assert_eq!(empty.query(), Some(""));
    }

    #[test]
    fn upgrade_tokens_are_read_one_way() {
        let of = |values: &[&str]| upgrade_of(values.iter().map(|v| v.as_bytes()));
        assert_eq!(of(&[]), Upgrade::None);
        for ws in [
            "websocket",
            "WebSocket",
            " websocket ",
            "h2c, websocket",
            "websocket/13",
        ] {
            assert_eq!(of(&[ws]), Upgrade::WebSocket, "{ws}");
        }
        assert_eq!(of(&["h2c", "WEBSOCKET"]), Upgrade::WebSocket, "any value");
        for other in ["h2c", "TLS/1.0", "", "websockets", "web socket"] {
            assert_eq!(of(&[other]), Upgrade::Other, "{other}");
        }
        let h = head("GET /ws/a HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nupgrade: websocket\r\n\r\n");
        assert_eq!(h.upgrade(), Upgrade::WebSocket);
        let mut r = RequestHeader::build("GET", b"/ws/a", None).unwrap();
        r.append_header("upgrade", "h2c").unwrap();
        assert_eq!(r.upgrade(), Upgrade::Other);
        r.append_header("upgrade", "WebSocket").unwrap();
        assert_eq!(r.upgrade(), Upgrade::WebSocket);
        assert!(r.is_websocket_handshake());
        r.set_version(http::Version::HTTP_10);
        assert!(!r.is_websocket_handshake());
    }

    #[test]
    fn header_text_must_be_visible_ascii() {
        let h = RequestHead::parse(b"GET / HTTP/1.1\r\nHost: a\r\nOrigin: http://\xc3\xa9\r\n\r\n")
            .unwrap();
        assert!(h.header("origin").is_some());
        assert_eq!(h.header_str("origin"), None);
        assert_eq!(h.header_str("host"), Some("a"));
    }

    #[test]
    fn connection_close_is_seen_among_tokens() {
        assert!(head("GET / HTTP/1.1\r\nHost: a\r\nConnection: Close\r\n\r\n").wants_close());
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n").wants_close());
        assert!(!head("GET / HTTP/1.1\r\nHost: a\r\n\r\n").wants_close());
    }

    fn edits(target: Option<&str>, added: &[(&'static str, &str)]) -> UpstreamEdits {
        UpstreamEdits {
            target: target.map(str::to_string),
            strip_authorization: true,
            peer_trusted: false,
            added: added.iter().map(|(n, v)| (*n, v.to_string())).collect(),
        }
    }

    #[test]
    fn the_upstream_head_keeps_order_and_spelling_and_drops_what_the_edge_owns() {
        let h = head(
            "GET /api/x?token=t&a=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nAuthorization: Bearer t\r\n\
             X-User-Id: 999\r\nx_user_id: 998\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
             Connection: keep-alive\r\nX-Request-Id: theirs\r\nX-Custom: kept\r\n\r\n",
        );
        let e = edits(
            Some("/api/x?a=1"),
            &[
                ("x-user-id", "1"),
                ("x-request-id", "r-1"),
                ("x-forwarded-for", "127.0.0.1"),
            ],
        );
        let mut out = Vec::new();
        write_upstream_request(&mut out, &h, &e, &["connection"]).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /api/x?a=1 HTTP/1.1\r\nHost: a\r\nAccept: */*\r\nX-Custom: kept\r\n\
             x-user-id: 1\r\nx-request-id: r-1\r\nx-forwarded-for: 127.0.0.1\r\n\r\n"
        );
    }

    #[test]
    fn an_unchanged_target_is_forwarded_as_sent() {
        let h = head("DELETE /api/s/1 HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut out = Vec::new();
        write_upstream_request(&mut out, &h, &edits(None, &[]), &["connection"]).unwrap();
        assert_eq!(out, b"DELETE /api/s/1 HTTP/1.1\r\nHost: a\r\n\r\n");
    }

    #[test]
    fn a_value_that_would_split_the_head_is_refused() {
        let h = head("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut out = Vec::new();
        let e = edits(None, &[("x-user-name", "a\r\nx-user-admin: true")]);
        assert!(write_upstream_request(&mut out, &h, &e, &[]).is_err());
    }
}
