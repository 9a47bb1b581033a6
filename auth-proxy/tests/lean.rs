//! The lean HTTP path (plain requests without a body, `crate::forward`) through the real binary,
//! against an in-test HTTP/1 upstream whose wire behaviour each test chooses: agent connections
//! are pooled across requests, a pooled connection the agent closed is replaced without the client
//! noticing, a close-delimited HTTP/1.0 answer reaches a kept-alive client whole, a chunked answer
//! passes through whole and keeps its agent connection, an ambiguous answer is refused, pipelined
//! requests are answered in order, `Connection: close` is honoured, `HEAD` answers carry no body,
//! and requests with a body still go through pingora-proxy.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// How the test upstream answers.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// HTTP/1.1, `Content-Length`, the connection kept open.
    KeepAlive,
    /// As `KeepAlive`, but the upstream closes the connection right after each answer, without
    /// saying so (an agent restarting, or closing idle connections).
    CloseSilently,
    /// HTTP/1.0 with a body delimited by closing the connection.
    Http10,
    /// HTTP/1.1, a chunked body with an extension and a trailer, written in two parts.
    Chunked,
    /// An answer with both `Transfer-Encoding` and `Content-Length` (a desynchronisation risk).
    Ambiguous,
}

/// One request as the upstream read it.
#[derive(Clone, Debug)]
struct Got {
    head: String,
    body: Vec<u8>,
}

#[derive(Clone)]
struct RawUpstream {
    port: u16,
    /// Connections that carried at least one request.
    connections: Arc<AtomicUsize>,
    got: Arc<Mutex<Vec<Got>>>,
}

impl RawUpstream {
    async fn start(mode: Mode) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = RawUpstream {
            port: listener.local_addr().unwrap().port(),
            connections: Arc::default(),
            got: Arc::default(),
        };
        let me = up.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(me.clone().serve(socket, mode));
            }
        });
        up
    }

    async fn serve(self, socket: TcpStream, mode: Mode) {
        let mut socket = BufReader::new(socket);
        let mut first = true;
        loop {
            let mut head = String::new();
            loop {
                let mut line = String::new();
                match socket.read_line(&mut line).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let length = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            let mut body = vec![0u8; length];
            if socket.read_exact(&mut body).await.is_err() {
                return;
            }
            if std::mem::take(&mut first) {
                // Counted at its first request: the proxy's readiness probe connects without one.
                self.connections.fetch_add(1, Ordering::SeqCst);
            }
            let is_head = head.starts_with("HEAD ");
            self.got.lock().unwrap().push(Got {
                head,
                body: body.clone(),
            });
            let payload = if body.is_empty() {
                b"hello world".to_vec()
            } else {
                body
            };
            let s = socket.get_mut();
            if mode == Mode::Chunked {
                let first =
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6;x=1\r\nhello \r\n";
                let rest = b"5\r\nworld\r\n0\r\nx-checksum: 1\r\n\r\n";
                if s.write_all(first).await.is_err() || s.flush().await.is_err() {
                    return;
                }
                // Let the first part travel on its own (a body split across reads).
                tokio::task::yield_now().await;
                if s.write_all(rest).await.is_err() {
                    return;
                }
                continue;
            }
            let mut answer = match mode {
                Mode::Http10 => b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\n".to_vec(),
                Mode::Ambiguous => format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: {}\r\n\r\n",
                    payload.len()
                )
                .into_bytes(),
                _ => format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
                    payload.len()
                )
                .into_bytes(),
            };
            if !is_head {
                answer.extend_from_slice(&payload);
            }
            if s.write_all(&answer).await.is_err() {
                return;
            }
            if mode != Mode::KeepAlive && mode != Mode::Ambiguous {
                let _ = s.shutdown().await;
                return;
            }
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

async fn start(mode: Mode) -> (tempfile::TempDir, RawUpstream, Proxy, String) {
    let (dir, url) = sqlite_db().await;
    let upstream = RawUpstream::start(mode).await;
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port).no_wait()).await;
    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    (dir, upstream, proxy, token)
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_connections_are_pooled_and_requests_are_rewritten() {
    let (_dir, upstream, proxy, token) = start(Mode::KeepAlive).await;
    let client = http_client();
    for i in 0..20 {
        let r = client
            .get(proxy.url(&format!("/api/items?n={i}&token={token}")))
            .header("x-user-id", "999")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        assert!(r.headers().get("x-request-id").is_some());
        assert_eq!(r.text().await.unwrap(), "hello world");
    }
    let got = upstream.got();
    assert_eq!(got.len(), 20);
    for g in &got {
        let head = g.head.to_ascii_lowercase();
        assert!(!head.contains("token="), "token forwarded: {head}");
        assert!(head.contains("x-user-id: 1\r\n"), "{head}");
        assert!(!head.contains("x-user-id: 999"), "{head}");
        assert!(head.contains("x-identity-assertion: "), "{head}");
        assert!(!head.contains("\r\nconnection:"), "{head}");
    }
    let connections = upstream.connections.load(Ordering::SeqCst);
    assert!(
        connections <= 2,
        "20 sequential requests used {connections} agent connections"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pooled_connection_the_agent_closed_is_replaced_unnoticed() {
    let (_dir, upstream, proxy, token) = start(Mode::CloseSilently).await;
    let client = http_client();
    for i in 0..10 {
        let r = client
            .get(proxy.url(&format!("/api/items?n={i}&token={token}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "request {i}: {}", proxy.output());
        assert_eq!(r.text().await.unwrap(), "hello world");
    }
    assert_eq!(upstream.got().len(), 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_close_delimited_answer_reaches_a_kept_alive_client_whole() {
    let (_dir, _upstream, proxy, token) = start(Mode::Http10).await;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    for _ in 0..2 {
        let req = format!("GET /api/old?token={token} HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let answer = read_chunked_answer(&mut s).await;
        assert!(answer.0.starts_with("HTTP/1.1 200"), "{}", answer.0);
        assert!(
            answer
                .0
                .to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{}",
            answer.0
        );
        assert_eq!(answer.1, "hello world");
    }
}

/// Reads an answer's head, up to its empty line.
async fn read_answer_head(r: &mut (impl AsyncBufReadExt + Unpin)) -> String {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        tokio::time::timeout(STEP, r.read_line(&mut line))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(!line.is_empty(), "closed mid-answer: {head}");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    head
}

/// Reads one chunked answer: its head and its decoded body (extensions and trailers skipped).
async fn read_chunked_answer(s: &mut TcpStream) -> (String, String) {
    let mut r = BufReader::new(s);
    let head = read_answer_head(&mut r).await;
    let mut body = String::new();
    loop {
        let mut size = String::new();
        r.read_line(&mut size).await.unwrap();
        let digits = size.trim().split(';').next().unwrap_or("");
        let n = usize::from_str_radix(digits, 16).expect("chunk size");
        if n == 0 {
            // Trailers, up to the empty line.
            loop {
                let mut line = String::new();
                r.read_line(&mut line).await.unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            break;
        }
        let mut chunk = vec![0u8; n + 2];
        r.read_exact(&mut chunk).await.unwrap();
        body.push_str(std::str::from_utf8(&chunk[..n]).unwrap());
    }
    (head, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn head_answers_have_no_body_and_bodies_still_go_through() {
    let (_dir, upstream, proxy, token) = start(Mode::KeepAlive).await;
    let client = http_client();
    let r = client
        .head(proxy.url(&format!("/api/items?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("content-length").unwrap(), "11");
    assert_eq!(r.bytes().await.unwrap().len(), 0);

    // A request with a body takes pingora-proxy's path, on the same client connection pool.
    let r = client
        .post(proxy.url(&format!("/api/items?token={token}")))
        .body("the body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "the body");
    let got = upstream.got();
    assert_eq!(got.len(), 2);
    assert!(
        got[0].head.starts_with("HEAD /api/items HTTP/1.1"),
        "{got:?}"
    );
    assert_eq!(got[1].body, b"the body");

    // After both, a plain GET on the lean path again.
    let r = client
        .get(proxy.url(&format!("/api/items?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "hello world");
}

/// Reads one answer with a `Content-Length` body: its head and its body.
async fn read_sized_answer(r: &mut BufReader<&mut TcpStream>) -> (String, String) {
    let head = read_answer_head(r).await;
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("content-length")
                .then(|| value.trim().parse::<usize>().ok())?
        })
        .expect("a content-length");
    let mut body = vec![0u8; length];
    tokio::time::timeout(STEP, r.read_exact(&mut body))
        .await
        .expect("body in time")
        .unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunked_answer_passes_whole_and_its_agent_connection_is_reused() {
    let (_dir, upstream, proxy, token) = start(Mode::Chunked).await;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    for _ in 0..3 {
        let req = format!("GET /api/c?token={token} HTTP/1.1\r\nHost: x\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let (head, body) = read_chunked_answer(&mut s).await;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains("x-request-id: "), "{head}");
        assert_eq!(body, "hello world");
    }
    assert_eq!(upstream.got().len(), 3);
    assert_eq!(
        upstream.connections.load(Ordering::SeqCst),
        1,
        "the body's end was found, so its connection went back to the pool"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_with_both_lengths_is_refused_not_relayed() {
    let (_dir, _upstream, proxy, token) = start(Mode::Ambiguous).await;
    let r = http_client()
        .get(proxy.url(&format!("/api/x?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "upstream_unavailable", "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pipelined_requests_are_answered_in_order_and_close_is_honoured() {
    let (_dir, upstream, proxy, token) = start(Mode::KeepAlive).await;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let both = format!(
        "GET /api/one?token={token} HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /api/two?token={token} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    s.write_all(both.as_bytes()).await.unwrap();
    let mut r = BufReader::new(&mut s);
    let (first, body) = read_sized_answer(&mut r).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(
        !first.to_ascii_lowercase().contains("connection: close"),
        "{first}"
    );
    assert_eq!(body, "hello world");
    let (second, body) = read_sized_answer(&mut r).await;
    assert!(second.contains("connection: close\r\n"), "{second}");
    assert_eq!(body, "hello world");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(STEP, r.read_to_end(&mut rest))
        .await
        .expect("closed in time")
        .unwrap();
    assert_eq!(n, 0, "nothing after the last answer, then the end");
    let got = upstream.got();
    assert_eq!(got.len(), 2);
    assert!(got[0].head.starts_with("GET /api/one "), "{}", got[0].head);
    assert!(got[1].head.starts_with("GET /api/two "), "{}", got[1].head);
}
