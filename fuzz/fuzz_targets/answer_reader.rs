//! The lean path's strict answer reader: a final answer's head for the client is one well-formed
//! response head whose framing says what the agent's did (never both `Content-Length` and
//! `Transfer-Encoding`), and the chunked body follower agrees with a strict reference decoder
//! however the body is split into reads.
#![no_main]

use auth_proxy::wire::{parse_answer, Chunked, ClientSide, Framing, Parsed};
use libfuzzer_sys::fuzz_target;

/// What a strict chunked decoder (RFC 9112 section 7.1) makes of a whole body.
#[derive(Debug, PartialEq, Eq)]
enum Body {
    /// It ends after this many bytes.
    Ends(usize),
    /// It does not end within the bytes.
    Incomplete,
    Invalid,
}

fn line_end(b: &[u8], mut i: usize) -> Result<usize, Body> {
    // Any byte but a bare LF, up to CR LF; returns the index of the CR.
    loop {
        match b.get(i) {
            None => return Err(Body::Incomplete),
            Some(b'\r') => break,
            Some(b'\n') => return Err(Body::Invalid),
            Some(_) => i += 1,
        }
    }
    match b.get(i + 1) {
        None => Err(Body::Incomplete),
        Some(b'\n') => Ok(i),
        Some(_) => Err(Body::Invalid),
    }
}

fn reference(b: &[u8]) -> Body {
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && b[i].is_ascii_hexdigit() {
            i += 1;
            if i - start > 15 {
                return Body::Invalid;
            }
        }
        if i == b.len() {
            return Body::Incomplete;
        }
        if i == start {
            return Body::Invalid;
        }
        let size = u64::from_str_radix(std::str::from_utf8(&b[start..i]).unwrap(), 16).unwrap();
        if matches!(b[i], b';' | b' ' | b'\t') {
            i += 1;
        } else if b[i] != b'\r' {
            return Body::Invalid;
        }
        let cr = match line_end(b, i) {
            Ok(cr) => cr,
            Err(e) => return e,
        };
        i = cr + 2;
        if size == 0 {
            loop {
                let start = i;
                let cr = match line_end(b, i) {
                    Ok(cr) => cr,
                    Err(e) => return e,
                };
                i = cr + 2;
                if cr == start {
                    return Body::Ends(i);
                }
            }
        }
        if ((b.len() - i) as u64) < size {
            return Body::Incomplete;
        }
        i += size as usize;
        match (b.get(i), b.get(i + 1)) {
            (None, _) | (Some(b'\r'), None) => return Body::Incomplete,
            (Some(b'\r'), Some(b'\n')) => i += 2,
            _ => return Body::Invalid,
        }
    }
}

/// The chunked follower fed in reads of 1..=`split` bytes.
fn follow(body: &[u8], split: usize) -> Body {
    let mut c = Chunked::new();
    let mut at = 0;
    let mut step = 1;
    while at < body.len() {
        let n = step.min(body.len() - at);
        step = step % split + 1;
        match c.advance(&body[at..at + n]) {
            Err(_) => return Body::Invalid,
            Ok(k) => {
                assert!(k <= n);
                at += k;
                if c.is_done() {
                    return Body::Ends(at);
                }
                assert_eq!(k, n, "only the end stops it early");
            }
        }
    }
    Body::Incomplete
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, bytes)) = data.split_first() else {
        return;
    };
    let cors = [("access-control-allow-origin", "https://app.example".to_string())];
    let side = ClientSide {
        head_request: flags & 1 == 1,
        keep_alive: flags & 2 == 2,
        request_id: "r-1",
        cors: if flags & 4 == 4 { &cors } else { &[] },
    };
    let split = usize::from(flags >> 4) + 1;
    match parse_answer(bytes, &side) {
        Ok(Parsed::Final(a)) => {
            assert!(a.head_len <= bytes.len());
            let mut headers = [httparse::EMPTY_HEADER; 160];
            let mut resp = httparse::Response::new(&mut headers);
            match resp.parse(&a.client_head) {
                Ok(httparse::Status::Complete(n)) => assert_eq!(n, a.client_head.len()),
                other => panic!("the client's head does not parse: {other:?}"),
            }
            assert_eq!(resp.code, Some(a.status));
            let count = |name: &str| {
                resp.headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case(name))
                    .count()
            };
            assert!(count("content-length") == 0 || count("transfer-encoding") == 0);
            assert_eq!(count("x-request-id"), 1);
            // The client reads the framing the edge followed: the codings of every
            // Transfer-Encoding, in order, end in one `chunked`.
            let codings: Vec<String> = resp
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case("transfer-encoding"))
                .flat_map(|h| String::from_utf8_lossy(h.value).split(',').map(|c| c.trim().to_ascii_lowercase()).collect::<Vec<_>>())
                .filter(|c| !c.is_empty())
                .collect();
            match a.framing {
                Framing::Chunked | Framing::UntilClose => {
                    assert_eq!(codings.last().map(String::as_str), Some("chunked"), "{codings:?}");
                    assert_eq!(codings.iter().filter(|c| *c == "chunked").count(), 1);
                    assert_eq!(count("content-length"), 0);
                }
                Framing::Length(_) => assert_eq!(count("transfer-encoding"), 0),
                Framing::Empty => {}
            }
            if a.framing == Framing::Chunked {
                let body = &bytes[a.head_len..];
                // Below the follower's line limit, so the reference need not model it.
                if body.len() < 8000 {
                    let want = reference(body);
                    assert_eq!(follow(body, 1 << 20), want, "whole body");
                    assert_eq!(follow(body, split), want, "split into reads of 1..={split}");
                }
            }
        }
        Ok(Parsed::Interim(n)) => assert!(n <= bytes.len()),
        Ok(Parsed::Partial) | Err(_) => {}
    }
});
