//! The request head the edge keeps (the lean path, a kept handshake): its view reads what
//! httparse read, and the head written for the agent is one well-formed HTTP/1.1 request with the
//! edited target, none of the headers the edits drop, each added header once, and nothing a
//! client header could smuggle (a second request, a split header, the token).
#![no_main]

use auth_proxy::wire::{bodiless_origin_form, upgrade_of, write_upstream_request, HeadIndex, RequestHead, RequestView};
use auth_proxy::wire::UpstreamEdits;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(len)) = req.parse(data) else {
        return;
    };
    // Only heads the edge keeps: the others go to pingora's codec.
    if !bodiless_origin_form(&req) {
        return;
    }
    let index = HeadIndex::of(data, &req, len).expect("httparse's parts lie in its buffer");
    assert_eq!(index.len(), len);
    let head = RequestHead::new(Bytes::copy_from_slice(&data[..len]), index);

    // The view reads what httparse read.
    let target = req.path.unwrap();
    assert_eq!(head.method(), req.method.unwrap());
    assert_eq!(head.target(), target);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    assert_eq!(head.path(), path);
    assert_eq!(head.query(), query);
    assert_eq!(head.headers().count(), req.headers.len());
    for h in req.headers.iter() {
        let first = req
            .headers
            .iter()
            .find(|o| o.name.eq_ignore_ascii_case(h.name))
            .unwrap();
        assert_eq!(head.header(h.name), Some(first.value));
    }
    let upgrade = upgrade_of(
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("upgrade"))
            .map(|h| h.value),
    );
    assert_eq!(head.upgrade(), upgrade);

    // The head written for the agent.
    let stripped = query.and_then(auth_proxy::wire::strip_token);
    let new_target = auth_proxy::wire::forwarded_uri_of(path, stripped.as_deref());
    let edits = UpstreamEdits {
        target: Some(new_target.clone()),
        strip_authorization: true,
        peer_trusted: data[0] & 1 == 1,
        added: vec![
            ("x-user-id", "7".into()),
            ("x-identity-assertion", "v1.0.7.mac".into()),
            ("x-request-id", "r-1".into()),
            ("x-forwarded-for", "127.0.0.1".into()),
        ],
    };
    let mut out = Vec::new();
    write_upstream_request(&mut out, &head, &edits, &["connection"]).expect("valid added values");
    let mut again = [httparse::EMPTY_HEADER; 80];
    let mut up = httparse::Request::new(&mut again);
    match up.parse(&out) {
        Ok(httparse::Status::Complete(n)) => assert_eq!(n, out.len(), "one request, nothing after"),
        other => panic!("the written head does not parse: {other:?}"),
    }
    assert_eq!(up.method, req.method);
    assert_eq!(up.path, Some(new_target.as_str()));
    assert_eq!(up.version, Some(1));
    // No `token` parameter left, as the agent's query parser (form-urlencoded) reads it.
    if let Some((_, q)) = new_target.split_once('?') {
        assert!(form_urlencoded::parse(q.as_bytes()).all(|(k, _)| k != "token"), "{q}");
    }
    for h in up.headers.iter() {
        let name = h.name;
        assert!(!name.eq_ignore_ascii_case("authorization"), "{name}");
        assert!(!name.eq_ignore_ascii_case("connection"), "{name}");
        assert!(!name.eq_ignore_ascii_case("upgrade"), "{name}");
        if shared_reserved(name) {
            let added = edits.added.iter().any(|(n, v)| *n == name && v.as_bytes() == h.value);
            assert!(added, "a client identity header reached the agent: {name}");
        }
    }
    for (name, value) in &edits.added {
        let n = up.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
        assert_eq!(n, 1, "{name} once");
        assert!(up.headers.iter().any(|h| h.name == *name && h.value == value.as_bytes()));
    }
});

/// The identity prefixes the edge reserves (`x-user-*`, `x-auth-*`, `x-identity-*`, any spelling).
fn shared_reserved(name: &str) -> bool {
    let lower: String = name
        .chars()
        .map(|c| if c == '_' { '-' } else { c.to_ascii_lowercase() })
        .collect();
    ["x-user-", "x-auth-", "x-identity-"]
        .iter()
        .any(|p| lower.starts_with(p))
}
