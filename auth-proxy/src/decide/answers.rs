//! The answers the edge gives itself, JSON with the request id and `no-store`, written once for
//! every path: pingora-proxy's session, the lean path and the tunnel's refusals.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;

use crate::decide::cors;
use crate::decide::reject::Reject;
use crate::decide::RequestCtx;

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
    if let Some(secs) = reject.and_then(Reject::retry_after) {
        h.insert_header("retry-after", secs)?;
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

/// The bytes of the edge's JSON answer written straight to a socket, before any HTTP session
/// exists (the connection layer's 408, 429, 431, 503 and its 400 for a head it cannot read):
/// the same body, `no-store` and `Retry-After` as [`json_response`], and `Connection: close`.
pub fn raw_answer(reject: Reject) -> Vec<u8> {
    let body = reject.body();
    let status = reject.status();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n",
        body.len()
    )
    .into_bytes();
    if let Some(secs) = reject.retry_after() {
        out.extend_from_slice(format!("retry-after: {secs}\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_layer_answers_are_the_decision_answers() {
        let wire = raw_answer(Reject::ConnectionsPerIp);
        let text = String::from_utf8(wire).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nretry-after: 5"), "{head}");
        assert!(head.contains("\r\nconnection: close"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "too_many_connections");
        let text = String::from_utf8(raw_answer(Reject::HeadTooLarge)).unwrap();
        assert!(text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"));
        assert!(!text.contains("retry-after"));
    }
}
