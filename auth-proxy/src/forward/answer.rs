//! The agent's answer on the lean path ([`crate::forward::lean`]): its head parsed (httparse), its
//! framing decided the way RFC 9112 section 6.3 decides it, and the head the client gets written
//! straight from the agent's bytes.
//!
//! The agent is trusted, but its answer is still read strictly, so that a confused agent cannot
//! desynchronise the client connection: an answer with both `Transfer-Encoding` and
//! `Content-Length`, conflicting or malformed lengths, a coding that does not end in `chunked`, a
//! 101 to a plain request or a malformed chunked body is refused (the client gets 502 when nothing
//! was sent yet; otherwise its connection closes).
//!
//! The client's head: the agent's status line (as HTTP/1.1) and headers in their order and
//! spelling, minus hop-by-hop ones (`Connection`, `Keep-Alive`, `Proxy-Connection` and any header
//! `Connection` names) and those the edge sets; then `Transfer-Encoding: chunked` for a
//! close-delimited body (sent as chunks, so the client connection stays usable), `Connection:
//! close` when the client connection ends after this answer, `X-Request-Id`, and the CORS headers.

use crate::accept::head::push_header;
use crate::decide::headers;

/// Largest answer head read from the agent.
pub const MAX_ANSWER_HEAD: usize = 64 * 1024;
/// Headers parsed at most in an answer head.
const MAX_ANSWER_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) or trailer line accepted.
const MAX_CHUNK_LINE: usize = 8 * 1024;

/// Why an answer was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadAnswer(pub &'static str);

/// How the answer's body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (a `HEAD` request, 204, 304).
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked: ends with the last chunk and the trailers (see [`Chunked`]).
    Chunked,
    /// Ends when the agent closes the connection.
    UntilClose,
}

/// A final answer's head, ready for the client.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    /// Length of the agent's head in the bytes parsed.
    pub head_len: usize,
    pub framing: Framing,
    /// The agent connection may carry another request once the body is read.
    pub reusable: bool,
    /// The head the client gets.
    pub client_head: Vec<u8>,
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub enum Parsed {
    /// The head is not complete yet.
    Partial,
    /// An interim answer (100, 103) of this many bytes: skipped, the final one follows.
    Interim(usize),
    Final(Answer),
}

/// What the client's side adds to the answer.
#[derive(Debug, Clone, Copy)]
pub struct ClientSide<'a> {
    /// The request was `HEAD`: the answer has no body, whatever its headers say.
    pub head_request: bool,
    /// The client connection stays open after this answer.
    pub keep_alive: bool,
    pub request_id: &'a str,
    /// The CORS headers to add (from [`crate::decide::cors::response_headers`]), if any.
    pub cors: &'a [(&'static str, String)],
}

/// Parses the agent's answer head from the start of `bytes`.
pub fn parse_answer(bytes: &[u8], client: &ClientSide) -> Result<Parsed, BadAnswer> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_ANSWER_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(bytes) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if bytes.len() < MAX_ANSWER_HEAD => {
            return Ok(Parsed::Partial)
        }
        Ok(httparse::Status::Partial) => return Err(BadAnswer("answer head too large")),
        Err(_) => return Err(BadAnswer("malformed answer head")),
    };
    let status = resp.code.unwrap_or(0);
    match status {
        // httparse reads any three digits; the client gets only a status HTTP defines.
        0..=99 | 600.. => return Err(BadAnswer("status code out of range")),
        101 => return Err(BadAnswer("101 to a plain request")),
        100..=199 => return Ok(Parsed::Interim(head_len)),
        _ => {}
    }
    let facts = Facts::of(resp.headers)?;
    let framing = framing(status, client.head_request, &facts)?;
    let keep_alive_by_default = resp.version == Some(1);
    let reusable = framing != Framing::UntilClose
        && if keep_alive_by_default {
            !facts.close
        } else {
            facts.keep_alive
        };
    let client_head = client_head(&resp, head_len, framing, &facts, client);
    Ok(Parsed::Final(Answer {
        status,
        head_len,
        framing,
        reusable,
        client_head,
    }))
}

/// What the answer's headers say about framing and the connection.
#[derive(Debug, Default)]
struct Facts<'h> {
    length: Option<u64>,
    /// `Transfer-Encoding` present; `chunked_last` when its last coding is `chunked`.
    coded: bool,
    chunked_last: bool,
    /// A `chunked` coding was seen (in any `Transfer-Encoding`).
    chunked_seen: bool,
    close: bool,
    keep_alive: bool,
    /// Header names `Connection` nominates (hop-by-hop for this answer).
    nominated: Vec<&'h str>,
}

impl<'h> Facts<'h> {
    fn of(headers: &[httparse::Header<'h>]) -> Result<Facts<'h>, BadAnswer> {
        let mut f = Facts::default();
        for h in headers {
            let value = std::str::from_utf8(h.value).map_err(|_| BadAnswer("non-ASCII framing"));
            if h.name.eq_ignore_ascii_case("content-length") {
                for v in value?.split(',') {
                    let n = parse_length(v.trim()).ok_or(BadAnswer("bad content-length"))?;
                    if f.length.is_some_and(|l| l != n) {
                        return Err(BadAnswer("conflicting content-length"));
                    }
                    f.length = Some(n);
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                f.coded = true;
                let value = value?;
                let codings = value.split(',').map(str::trim).filter(|t| !t.is_empty());
                for coding in codings.clone() {
                    if coding.eq_ignore_ascii_case("chunked") {
                        // RFC 9112 section 6.1: chunked is applied once, and last.
                        if f.chunked_seen {
                            return Err(BadAnswer("chunked applied more than once"));
                        }
                        f.chunked_seen = true;
                    }
                }
                if let Some(last) = codings.clone().next_back() {
                    f.chunked_last = last.eq_ignore_ascii_case("chunked");
                }
            } else if h.name.eq_ignore_ascii_case("connection") {
                for token in headers::connection_tokens(std::iter::once(value?)) {
                    if token.eq_ignore_ascii_case("close") {
                        f.close = true;
                    } else if token.eq_ignore_ascii_case("keep-alive") {
                        f.keep_alive = true;
                    } else {
                        f.nominated.push(token);
                    }
                }
            }
        }
        if f.coded && f.length.is_some() {
            return Err(BadAnswer("both transfer-encoding and content-length"));
        }
        Ok(f)
    }
}

/// A `Content-Length` value: decimal digits only.
fn parse_length(v: &str) -> Option<u64> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

fn framing(status: u16, head_request: bool, f: &Facts) -> Result<Framing, BadAnswer> {
    if head_request || matches!(status, 204 | 304) {
        return Ok(Framing::Empty);
    }
    match (f.coded, f.length) {
        (true, _) if f.chunked_last => Ok(Framing::Chunked),
        (true, _) => Err(BadAnswer("transfer-encoding not ending in chunked")),
        (false, Some(n)) => Ok(Framing::Length(n)),
        (false, None) => Ok(Framing::UntilClose),
    }
}

/// Headers of the agent's answer the client never gets from it: hop-by-hop, or set by the edge.
fn dropped(name: &str, f: &Facts, client: &ClientSide) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "x-request-id",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
        || f.nominated.iter().any(|h| name.eq_ignore_ascii_case(h))
        || client
            .cors
            .iter()
            .any(|(h, _)| *h != "vary" && name.eq_ignore_ascii_case(h))
}

fn client_head(
    resp: &httparse::Response,
    head_len: usize,
    framing: Framing,
    f: &Facts,
    client: &ClientSide,
) -> Vec<u8> {
    // Room for the head, what the edge adds, and a small body, so writing it rarely reallocates.
    let added: usize = client.cors.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    let mut out = Vec::with_capacity(head_len + added + client.request_id.len() + 128 + 1024);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(resp.code.unwrap_or(0).to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for h in resp.headers.iter() {
        if !dropped(h.name, f, client) {
            push_header(&mut out, h.name, h.value);
        }
    }
    if framing == Framing::UntilClose {
        push_header(&mut out, "transfer-encoding", b"chunked");
    }
    if !client.keep_alive {
        push_header(&mut out, "connection", b"close");
    }
    push_header(&mut out, "x-request-id", client.request_id.as_bytes());
    for (name, value) in client.cors {
        push_header(&mut out, name, value.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// Where a chunked body ends, found while its bytes pass through unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunked {
    state: ChunkState,
    /// Bytes of the current size or trailer line.
    line: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Hex digits of a chunk size (`digits` so far).
    Size {
        value: u64,
        digits: u8,
    },
    /// A chunk extension, up to the line's CR.
    Extension {
        value: u64,
    },
    /// The LF ending a size line.
    SizeLf {
        value: u64,
    },
    /// Chunk data still to pass.
    Data(u64),
    DataCr,
    DataLf,
    /// A trailer line (`line` bytes so far; empty: the end of the body).
    Trailer,
    TrailerLf {
        empty: bool,
    },
    Done,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked {
            state: ChunkState::Size {
                value: 0,
                digits: 0,
            },
            line: 0,
        }
    }

    /// True once the last chunk and the trailers have passed.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Follows `bytes`; returns how many belong to the body (all of them unless it ended inside).
    pub fn advance(&mut self, bytes: &[u8]) -> Result<usize, BadAnswer> {
        let mut i = 0;
        while i < bytes.len() {
            if let ChunkState::Data(left) = self.state {
                let take = left.min((bytes.len() - i) as u64);
                i += take as usize;
                self.state = if take == left {
                    ChunkState::DataCr
                } else {
                    ChunkState::Data(left - take)
                };
                continue;
            }
            if self.state == ChunkState::Done {
                break;
            }
            self.step(bytes[i])?;
            i += 1;
        }
        Ok(i)
    }

    fn step(&mut self, b: u8) -> Result<(), BadAnswer> {
        use ChunkState::*;
        let bad = |why| Err(BadAnswer(why));
        self.line += 1;
        if self.line > MAX_CHUNK_LINE {
            return bad("chunk line too long");
        }
        self.state = match (self.state, b) {
            (Size { value, digits }, b) if b.is_ascii_hexdigit() => {
                if digits >= 15 {
                    return bad("chunk size too large");
                }
                let d = (b as char).to_digit(16).unwrap_or(0) as u64;
                Size {
                    value: value * 16 + d,
                    digits: digits + 1,
                }
            }
            (Size { value, digits }, b';' | b' ' | b'\t') if digits > 0 => Extension { value },
            (Size { value, digits }, b'\r') if digits > 0 => SizeLf { value },
            (Size { .. }, _) => return bad("malformed chunk size"),
            (Extension { value }, b'\r') => SizeLf { value },
            (Extension { .. }, b'\n') => return bad("bare LF in chunk extension"),
            (Extension { value }, _) => Extension { value },
            (SizeLf { value }, b'\n') => {
                self.line = 0;
                if value == 0 {
                    Trailer
                } else {
                    Data(value)
                }
            }
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => {
                self.line = 0;
                Size {
                    value: 0,
                    digits: 0,
                }
            }
            (Trailer, b'\r') => TrailerLf {
                empty: self.line == 1,
            },
            (Trailer, b'\n') => return bad("bare LF in trailer"),
            (Trailer, _) => Trailer,
            (TrailerLf { empty }, b'\n') => {
                self.line = 0;
                if empty {
                    Done
                } else {
                    Trailer
                }
            }
            _ => return bad("malformed chunked body"),
        };
        Ok(())
    }
}

/// One chunk of a close-delimited body, re-framed for the client.
pub fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// The end of a re-framed close-delimited body.
pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    fn side<'a>(cors: &'a [(&'static str, String)]) -> ClientSide<'a> {
        ClientSide {
            head_request: false,
            keep_alive: true,
            request_id: "r-1",
            cors,
        }
    }

    fn answer(head: &str, client: &ClientSide) -> Result<Answer, BadAnswer> {
        match parse_answer(head.as_bytes(), client)? {
            Parsed::Final(a) => Ok(a),
            other => panic!("not final: {other:?}"),
        }
    }

    fn text(a: &Answer) -> String {
        String::from_utf8(a.client_head.clone()).unwrap()
    }

    #[test]
    fn a_plain_answer_keeps_its_headers_and_gets_the_request_id() {
        let raw = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nX-Request-Id: agent\r\nConnection: keep-alive\r\n\r\nhello";
        let a = answer(raw, &side(&[])).unwrap();
        assert_eq!(a.head_len, raw.len() - 5);
        assert_eq!(a.status, 200);
        assert_eq!(a.framing, Framing::Length(5));
        assert!(a.reusable);
        assert_eq!(
            text(&a),
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nx-request-id: r-1\r\n\r\n"
        );
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let f = |h: &str| answer(h, &side(&[])).map(|a| a.framing);
        assert_eq!(
            f("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"),
            Ok(Framing::Empty)
        );
        assert_eq!(f("HTTP/1.1 304 Not Modified\r\n\r\n"), Ok(Framing::Empty));
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            f("HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\n\r\n"),
            Ok(Framing::Length(7))
        );
        assert_eq!(f("HTTP/1.0 200 OK\r\n\r\n"), Ok(Framing::UntilClose));
        let head = ClientSide {
            head_request: true,
            ..side(&[])
        };
        let a = answer("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n", &head).unwrap();
        assert_eq!(a.framing, Framing::Empty);
        assert!(text(&a).contains("Content-Length: 11\r\n"));
    }

    #[test]
    fn answers_that_could_desynchronise_the_client_are_refused() {
        for head in [
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3, 4\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: +3\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(parse_answer(head.as_bytes(), &side(&[])).is_err(), "{head}");
        }
    }

    #[test]
    fn interim_answers_are_skipped_and_partial_heads_wait() {
        let s = side(&[]);
        let both = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let Ok(Parsed::Interim(n)) = parse_answer(both.as_bytes(), &s) else {
            panic!("interim");
        };
        assert_eq!(answer(&both[n..], &s).unwrap().status, 200);
        assert!(matches!(
            parse_answer(b"HTTP/1.1 200 OK\r\nContent-Le", &s),
            Ok(Parsed::Partial)
        ));
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}", "a".repeat(MAX_ANSWER_HEAD));
        assert!(parse_answer(huge.as_bytes(), &s).is_err());
    }

    #[test]
    fn chunked_twice_is_refused() {
        let s = side(&[]);
        for head in [
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n",
        ] {
            assert!(
                matches!(parse_answer(head.as_bytes(), &s), Err(BadAnswer(_))),
                "{head}"
            );
        }
    }

    #[test]
    fn a_status_outside_100_to_599_is_refused() {
        let s = side(&[]);
        for head in [
            "HTTP/1.1 055 X\r\n\r\n",
            "HTTP/1.1 000 X\r\n\r\n",
            "HTTP/1.1 600 X\r\n\r\n",
        ] {
            assert!(
                matches!(parse_answer(head.as_bytes(), &s), Err(BadAnswer(_))),
                "{head}"
            );
        }
        assert!(matches!(
            parse_answer(b"HTTP/1.1 599 X\r\nContent-Length: 0\r\n\r\n", &s),
            Ok(Parsed::Final(_))
        ));
    }

    #[test]
    fn connection_management_stays_hop_by_hop() {
        let a = answer(
            "HTTP/1.1 200 OK\r\nConnection: close, X-Internal\r\nX-Internal: secret\r\nKeep-Alive: timeout=5\r\nContent-Length: 0\r\n\r\n",
            &ClientSide {
                keep_alive: false,
                ..side(&[])
            },
        )
        .unwrap();
        assert!(!a.reusable, "the agent asked to close");
        assert_eq!(
            text(&a),
            "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nconnection: close\r\nx-request-id: r-1\r\n\r\n"
        );
        let old = answer("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", &side(&[])).unwrap();
        assert!(!old.reusable, "HTTP/1.0 without keep-alive");
        let old = answer(
            "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n",
            &side(&[]),
        )
        .unwrap();
        assert!(old.reusable);
        assert!(text(&old).starts_with("HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn a_close_delimited_body_is_announced_as_chunked() {
        let a = answer(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n",
            &side(&[]),
        )
        .unwrap();
        assert_eq!(a.framing, Framing::UntilClose);
        assert!(!a.reusable);
        assert!(text(&a).contains("transfer-encoding: chunked\r\n"));
        let mut out = Vec::new();
        push_chunk(&mut out, b"hello world");
        push_chunk(&mut out, b"");
        out.extend_from_slice(LAST_CHUNK);
        assert_eq!(out, b"b\r\nhello world\r\n0\r\n\r\n");
    }

    #[test]
    fn cors_headers_replace_the_agents_and_vary_is_added() {
        let cors = crate::decide::cors::response_headers("https://app.example");
        let a = answer(
            "HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\nVary: Accept\r\nContent-Length: 0\r\n\r\n",
            &side(&cors),
        )
        .unwrap();
        let t = text(&a);
        assert!(!t.contains("Access-Control-Allow-Origin: *"), "{t}");
        assert!(
            t.contains("access-control-allow-origin: https://app.example\r\n"),
            "{t}"
        );
        assert!(
            t.contains("Vary: Accept\r\n") && t.contains("vary: Origin\r\n"),
            "{t}"
        );
    }

    fn follow(body: &[u8], split: usize) -> Result<(usize, bool), BadAnswer> {
        let mut c = Chunked::new();
        let first = c.advance(&body[..split])?;
        assert_eq!(first, split, "nothing after the end yet");
        let second = c.advance(&body[split..])?;
        Ok((first + second, c.is_done()))
    }

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_do_at_any_split() {
        let body = b"5;name=v\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: t\r\n\r\n";
        let mut with_next = body.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        for split in 0..body.len() {
            assert_eq!(
                follow(body, split),
                Ok((body.len(), true)),
                "split at {split}"
            );
        }
        let mut c = Chunked::new();
        assert_eq!(c.advance(&with_next), Ok(body.len()), "stops at the end");
        assert!(c.is_done());
        let mut c = Chunked::new();
        assert_eq!(c.advance(b"3\r\nabc\r\n"), Ok(8));
        assert!(!c.is_done());
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for body in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloX\r\n",
            b"5\nhello\r\n",
            b"fffffffffffffffff\r\n",
            b"0\r\nX: t\n\r\n",
        ] {
            let mut c = Chunked::new();
            assert!(
                c.advance(body).is_err(),
                "{:?}",
                String::from_utf8_lossy(body)
            );
        }
        let mut c = Chunked::new();
        let long = vec![b';'; MAX_CHUNK_LINE + 2];
        assert!(c.advance(b"1").is_ok());
        assert!(c.advance(&long).is_err());
    }
}
