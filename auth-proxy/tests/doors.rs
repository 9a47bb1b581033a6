//! One policy on every door: the same hostile request, sent in every shape that makes the
//! connection layer pick another door (the edge's own tunnel with its own codec or pingora's, the
//! lean HTTP path, pingora-proxy, and after an earlier request on the same connection), gets the
//! same decision; the agent sees nothing of a refused one; and an upgrade is only ever completed
//! by the edge's own tunnel, which registers it for live authorization and polices its frames.
//!
//! The agent here is hostile: a raw HTTP/1.1 server that records every head it gets, answers
//! every WebSocket handshake and every request carrying `x-answer-101` with a 101, and then records
//! every byte.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const ADMIN_TOKEN: &str = "an-admin-token-of-at-least-32-bytes!!";
const UUID: &str = "6f1c2b1e-0c3a-4f7e-9d7e-2b8f2c1a9e10";
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

/// One connection the agent got: its first request head, and every byte after a 101.
#[derive(Debug, Default, Clone)]
struct AgentConn {
    heads: Vec<String>,
    after_101: Vec<u8>,
}

/// What the hostile agent does in its 101.
#[derive(Clone, Copy, Default)]
struct AgentMode {
    /// Its 101 negotiates `permessage-deflate`, offered or not.
    extension: bool,
}

#[derive(Clone)]
struct Agent {
    port: u16,
    conns: Arc<Mutex<Vec<Arc<Mutex<AgentConn>>>>>,
}

impl Agent {
    async fn start(mode: AgentMode) -> Agent {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let conns: Arc<Mutex<Vec<Arc<Mutex<AgentConn>>>>> = Arc::default();
        let all = conns.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let conn = Arc::new(Mutex::new(AgentConn::default()));
                all.lock().unwrap().push(conn.clone());
                tokio::spawn(serve_agent(socket, conn, mode));
            }
        });
        Agent { port, conns }
    }

    /// Every request head the agent got, in order.
    fn heads(&self) -> Vec<String> {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .flat_map(|c| c.lock().unwrap().heads.clone())
            .collect()
    }

    /// Bytes the agent got after its 101s, all connections together.
    fn upgraded_bytes(&self) -> usize {
        self.conns
            .lock()
            .unwrap()
            .iter()
            .map(|c| c.lock().unwrap().after_101.len())
            .sum()
    }
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 section 4.2.2).
fn accept(key: &str) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let mut sha = Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

fn header_of<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

async fn serve_agent(mut socket: TcpStream, conn: Arc<Mutex<AgentConn>>, mode: AgentMode) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        conn.lock().unwrap().heads.push(head.clone());
        let body_len: usize = header_of(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < body_len {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..body_len);
        let key = header_of(&head, "sec-websocket-key");
        if key.is_some() || header_of(&head, "x-answer-101").is_some() {
            let mut answer =
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    .to_string();
            if let Some(key) = key {
                answer.push_str(&format!("Sec-WebSocket-Accept: {}\r\n", accept(key)));
            }
            if mode.extension {
                answer.push_str("Sec-WebSocket-Extensions: permessage-deflate\r\n");
            }
            answer.push_str("\r\n");
            if socket.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            conn.lock().unwrap().after_101.extend_from_slice(&buf);
            // Record everything from now on.
            loop {
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => conn
                        .lock()
                        .unwrap()
                        .after_101
                        .extend_from_slice(&chunk[..n]),
                }
            }
        }
        let body = br#"{"ok":true}"#;
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            body.len()
        );
        if socket.write_all(answer.as_bytes()).await.is_err()
            || socket.write_all(body).await.is_err()
        {
            return;
        }
    }
}

/// A request in the shape a test gives it; [`shapes`] rewrites it.
#[derive(Clone)]
struct Req {
    method: &'static str,
    target: String,
    headers: Vec<(String, String)>,
}

impl Req {
    fn get(target: impl Into<String>) -> Req {
        Req {
            method: "GET",
            target: target.into(),
            headers: Vec::new(),
        }
    }

    fn header(mut self, name: &str, value: &str) -> Req {
        self.headers.push((name.into(), value.into()));
        self
    }

    fn websocket(self) -> Req {
        self.header("Upgrade", "websocket")
            .header("Connection", "Upgrade")
            .header("Sec-WebSocket-Key", KEY)
            .header("Sec-WebSocket-Version", "13")
    }

    fn wire(&self, version: &str, target: &str, extra: &[(&str, &str)], body: &str) -> Vec<u8> {
        let mut out = format!("{} {target} {version}\r\nHost: 127.0.0.1\r\n", self.method);
        for (n, v) in &self.headers {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        for (n, v) in extra {
            out.push_str(&format!("{n}: {v}\r\n"));
        }
        if !body.is_empty() {
            out.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        out.push_str("\r\n");
        out.push_str(body);
        out.into_bytes()
    }
}

/// The shapes of one request, each of which makes the connection layer choose another door or
/// another codec for the same request: (name, bytes before it on the same connection, the
/// request's bytes).
fn shapes(r: &Req) -> Vec<(&'static str, Vec<u8>, Vec<u8>)> {
    // The authority agrees with `Host` (one that does not is refused by pingora's codec).
    let absolute = format!("http://127.0.0.1{}", r.target);
    let upper = Req {
        headers: r
            .headers
            .iter()
            .map(|(n, v)| (n.to_uppercase(), v.clone()))
            .collect(),
        ..r.clone()
    };
    let before = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".to_vec();
    vec![
        (
            "origin form",
            vec![],
            r.wire("HTTP/1.1", &r.target, &[], ""),
        ),
        (
            "absolute form",
            vec![],
            r.wire("HTTP/1.1", &absolute, &[], ""),
        ),
        ("HTTP/1.0", vec![], r.wire("HTTP/1.0", &r.target, &[], "")),
        (
            "a Keep-Alive header",
            vec![],
            r.wire("HTTP/1.1", &r.target, &[("Keep-Alive", "timeout=5")], ""),
        ),
        ("a body", vec![], r.wire("HTTP/1.1", &r.target, &[], "hi")),
        (
            "Expect: 100-continue",
            vec![],
            r.wire("HTTP/1.1", &r.target, &[("Expect", "100-continue")], ""),
        ),
        (
            "upper-case names",
            vec![],
            upper.wire("HTTP/1.1", &r.target, &[], ""),
        ),
        (
            "after a request on the same connection",
            before,
            r.wire("HTTP/1.1", &r.target, &[], ""),
        ),
    ]
}

/// An answer read off a raw connection: status, head, body.
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn code(&self) -> String {
        serde_json::from_str::<Value>(&self.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

/// Reads one answer (a 100 Continue is skipped); `None` when the connection ended first.
async fn read_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Answer> {
    let mut chunk = [0u8; 4096];
    loop {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            match tokio::time::timeout(STEP, s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return None,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no answer in {STEP:?}"),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end);
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if status == 100 {
            continue;
        }
        let len: usize = header_of(&head, "content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while buf.len() < len && status != 101 {
            match tokio::time::timeout(STEP, s.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => panic!("no body in {STEP:?}"),
            }
        }
        let take = len.min(buf.len());
        let body = String::from_utf8_lossy(&buf[..take]).into_owned();
        buf.drain(..take);
        return Some(Answer { status, head, body });
    }
}

/// Sends `before` (and reads its answer) then `request` on one connection; returns the answer to
/// `request` and the connection.
async fn send(proxy: &Proxy, before: &[u8], request: &[u8]) -> (Answer, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let mut buf = Vec::new();
    if !before.is_empty() {
        s.write_all(before).await.unwrap();
        let first = read_answer(&mut s, &mut buf)
            .await
            .expect("the first answer");
        assert_eq!(first.status, 200, "{}", first.head);
    }
    s.write_all(request).await.unwrap();
    let answer = read_answer(&mut s, &mut buf).await.expect("an answer");
    (answer, s)
}

async fn start_proxy(db: &str, agent: &Agent, toml: &str) -> Proxy {
    let mut opts = ProxyOptions::new(db, agent.port).toml(&format!(
        "{toml}\n[throttle]\nfailures_per_minute = 100000\n"
    ));
    opts.env = vec![("AUTH_PROXY_ADMIN_TOKEN".into(), ADMIN_TOKEN.into())];
    Proxy::start(opts).await
}

async fn revoke_user(proxy: &Proxy, id: i64) {
    let r = http_client()
        .post(format!(
            "http://127.0.0.1:{}/admin/revocations",
            proxy.admin_port
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"user_id": id, "reason": "stolen laptop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
}

/// Waits (within [`STEP`]) until the edge refuses `token` as revoked.
async fn until_revoked(proxy: &Proxy, token: &str) {
    let started = Instant::now();
    loop {
        let r = http_client()
            .get(proxy.url(&format!("/api/x?token={token}")))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 401 && r.text().await.unwrap().contains("token_revoked") {
            return;
        }
        assert!(started.elapsed() < STEP, "the revocation never took effect");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn token(id: i64, iat: i64) -> String {
    token_with_claims(TEST_JWT_SECRET, json!({"id": id, "iat": iat}))
}

fn now() -> i64 {
    test_support::now_unix() as i64
}

/// The doors' counters, by label.
async fn doors(proxy: &Proxy) -> Vec<(String, f64)> {
    let (_, text) = proxy.admin("/metrics").await;
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("auth_proxy_doors_total{door=\"")?;
            let (door, value) = rest.split_once("\"} ")?;
            Some((door.to_string(), value.parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_hostile_request_gets_the_same_decision_through_every_door() {
    let (_dir, db) = sqlite_db().await;
    let agent = Agent::start(AgentMode::default()).await;
    let proxy = start_proxy(
        &db,
        &agent,
        "public_prefixes = [\"/static/\"]\n[ws]\nallowed_origins = [\"https://app.example\"]\n",
    )
    .await;
    // User 2's tokens issued up to now are revoked; user 1's token is fine.
    let revoked = token(2, now() - 10);
    revoke_user(&proxy, 2).await;
    until_revoked(&proxy, &revoked).await;
    let good = token(1, now() - 10);
    let future = token(1, now() + 3600);

    let ws = |path: &str, t: &str| Req::get(format!("{path}?token={t}")).websocket();
    let cases: Vec<(&str, Req, u16, &str)> = vec![
        (
            "an id with ~",
            ws(&format!("/ws/{UUID}~x"), &good),
            400,
            "invalid_client_id",
        ),
        (
            "an encoded id",
            ws("/ws/%41", &good),
            400,
            "invalid_client_id",
        ),
        (
            "an encoded dash",
            ws("/ws/a%2Db", &good),
            400,
            "invalid_client_id",
        ),
        (
            "an id with :",
            ws("/ws/a:b", &good),
            400,
            "invalid_client_id",
        ),
        (
            "an id with @",
            ws("/ws/a@b", &good),
            400,
            "invalid_client_id",
        ),
        (
            "an id with +",
            ws("/ws/a+b", &good),
            400,
            "invalid_client_id",
        ),
        (
            "an id with ;",
            ws("/ws/a;b", &good),
            400,
            "invalid_client_id",
        ),
        (
            "a second segment",
            ws("/ws/a/b", &good),
            400,
            "invalid_client_id",
        ),
        ("no id", ws("/ws/", &good), 400, "invalid_client_id"),
        (
            "an id of 129",
            ws(&format!("/ws/{}", "x".repeat(129)), &good),
            400,
            "invalid_client_id",
        ),
        (
            "a handshake on /health without a token",
            Req::get("/health").websocket(),
            400,
            "upgrade_not_allowed",
        ),
        (
            "a handshake on a public prefix",
            Req::get("/static/app.js").websocket(),
            400,
            "upgrade_not_allowed",
        ),
        (
            "a handshake on the API",
            ws("/api/chat/sessions", &good),
            400,
            "upgrade_not_allowed",
        ),
        (
            "a handshake on /WS/",
            ws("/WS/a", &good),
            400,
            "upgrade_not_allowed",
        ),
        (
            "a revoked user's handshake",
            ws("/ws/a", &revoked),
            401,
            "token_revoked",
        ),
        (
            "a revoked user's API call",
            Req::get(format!("/api/chat/sessions?token={revoked}")),
            401,
            "token_revoked",
        ),
        (
            "a token issued in an hour",
            ws("/ws/a", &future),
            401,
            "token_not_yet_valid",
        ),
        (
            "an API call with a token issued in an hour",
            Req::get(format!("/api/x?token={future}")),
            401,
            "token_not_yet_valid",
        ),
        (
            "a handshake from another origin",
            ws("/ws/a", &good).header("Origin", "https://evil.example"),
            403,
            "origin_not_allowed",
        ),
        (
            "a dot-segment",
            Req::get(format!("/static/../api/x?token={good}")),
            400,
            "bad_request",
        ),
        (
            "no token on the API",
            Req::get("/api/x"),
            401,
            "missing_token",
        ),
        (
            "no token on the endpoint",
            Req::get("/ws/a").websocket(),
            401,
            "missing_token",
        ),
    ];
    let before = doors(&proxy).await;
    for (what, req, status, code) in &cases {
        for (shape, prefix, bytes) in shapes(req) {
            let heads = agent.heads().len();
            let (answer, _conn) = send(&proxy, &prefix, &bytes).await;
            assert_eq!(
                (answer.status, answer.code().as_str()),
                (*status, *code),
                "{what}, {shape}: {}{}\n{}",
                answer.head,
                answer.body,
                proxy.output()
            );
            let seen = agent.heads().len() - heads - usize::from(!prefix.is_empty());
            assert_eq!(seen, 0, "{what}, {shape}: the agent saw it");
        }
    }
    // Every door of the connection layer was taken (the plain-API cases alone take the lean path
    // and pingora-proxy; the WebSocket ones the tunnel with both codecs).
    let after = doors(&proxy).await;
    for door in ["tunnel", "lean", "proxy"] {
        let count =
            |v: &[(String, f64)]| v.iter().find(|(d, _)| d == door).map_or(0.0, |(_, n)| *n);
        assert!(count(&after) > count(&before), "door {door} never taken");
    }
    // A head httparse refuses is answered by the edge itself, as JSON; so is one pingora's codec
    // refuses (an authority that disagrees with Host), on the tunnel's door and pingora-proxy's.
    let heads = agent.heads().len();
    for head in [
        "GET /a b HTTP/1.1\r\nHost: x\r\n\r\n".to_string(),
        format!("GET http://elsewhere/ws/a?token={good} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"),
        "POST http://elsewhere/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\n\r\nhi".to_string(),
        "POST /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nhi".to_string(),
    ] {
        let (answer, _) = send(&proxy, &[], head.as_bytes()).await;
        assert_eq!(
            (answer.status, answer.code().as_str()),
            (400, "bad_request"),
            "{head}: {}",
            answer.head
        );
    }
    assert_eq!(agent.heads().len(), heads);
    assert!(doors(&proxy)
        .await
        .iter()
        .any(|(d, n)| d == "refused" && *n >= 1.0));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_door_but_the_tunnel_switches_protocols() {
    let (_dir, db) = sqlite_db().await;
    let agent = Agent::start(AgentMode::default()).await;
    let proxy = start_proxy(&db, &agent, "").await;
    let good = token(1, now() - 10);
    // h2c (what curl --http2 and Java's HttpClient send on http://), TLS/1.0, or no upgrade at all,
    // to an agent that switches protocols whenever asked: the edge never forwards the upgrade, and a
    // 101 it did not ask for is refused.
    let h2c = |r: Req| {
        r.header("Upgrade", "h2c")
            .header("Connection", "Upgrade, HTTP2-Settings")
            .header("HTTP2-Settings", "AAMAAABkAARAAAAAAAIAAAAA")
    };
    let cases = [
        ("h2c on /health", h2c(Req::get("/health"))),
        (
            "h2c on the API",
            h2c(Req::get(format!("/api/x?token={good}"))),
        ),
        (
            "TLS/1.0 on the API",
            Req::get(format!("/api/x?token={good}"))
                .header("Upgrade", "TLS/1.0")
                .header("Connection", "Upgrade"),
        ),
    ];
    for (what, req) in cases {
        for (shape, prefix, bytes) in shapes(&req) {
            let heads = agent.heads().len();
            let (answer, _) = send(&proxy, &prefix, &bytes).await;
            assert_eq!(answer.status, 200, "{what}, {shape}: {}", answer.head);
            let got = agent.heads();
            let head = got.last().expect("forwarded");
            assert!(got.len() > heads);
            for gone in ["upgrade", "http2-settings"] {
                assert!(header_of(head, gone).is_none(), "{what}, {shape}: {head}");
            }
            let connection = header_of(head, "connection")
                .unwrap_or("")
                .to_ascii_lowercase();
            assert!(!connection.contains("upgrade"), "{what}, {shape}: {head}");
            // The same request with an agent that answers 101 anyway.
            let hostile = req.clone().header("X-Answer-101", "yes");
            let bytes = hostile.wire(
                if shape == "HTTP/1.0" {
                    "HTTP/1.0"
                } else {
                    "HTTP/1.1"
                },
                &hostile.target,
                &[],
                "",
            );
            let (answer, _) = send(&proxy, &[], &bytes).await;
            assert_eq!(
                (answer.status, answer.code().as_str()),
                (502, "upstream_unavailable"),
                "{what}, {shape}: {}",
                answer.head
            );
        }
    }
    assert_eq!(
        agent.upgraded_bytes(),
        0,
        "nothing passed a 101 but the tunnel's"
    );
}

/// A client handshake written raw; the socket after the edge's 101.
async fn open(proxy: &Proxy, request: &[u8]) -> WebSocketStream<TcpStream> {
    let (answer, socket) = send(proxy, &[], request).await;
    assert_eq!(answer.status, 101, "{}{}", answer.head, answer.body);
    WebSocketStream::from_raw_socket(socket, Role::Client, None).await
}

async fn expect_close(s: &mut WebSocketStream<TcpStream>, limit: Duration) -> u16 {
    let started = Instant::now();
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, s.next()).await {
            Err(_) => panic!("no close within {limit:?}"),
            Ok(Some(Ok(Message::Close(Some(f))))) => return u16::from(f.code),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("ended without a close frame: {other:?}"),
        }
    }
}

async fn active_tunnels(proxy: &Proxy) -> f64 {
    proxy
        .metric("auth_proxy_websocket_connections_active")
        .await
}

async fn tunnels_reach(proxy: &Proxy, n: f64) {
    let started = Instant::now();
    while active_tunnels(proxy).await != n {
        assert!(
            started.elapsed() < STEP,
            "tunnels: {}",
            active_tunnels(proxy).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_accepted_handshake_is_a_registered_policed_tunnel() {
    let (_dir, db) = sqlite_db().await;
    let agent = Agent::start(AgentMode::default()).await;
    let proxy = start_proxy(&db, &agent, "[websocket]\nmax_frame_bytes = 1000\n").await;
    let good = token(1, now() - 10);
    let req = Req::get(format!("/ws/{UUID}?token={good}")).websocket();
    let absolute = format!("http://127.0.0.1{}", req.target);
    // The edge's own codec, and pingora's (an absolute-form target).
    let own = req.wire("HTTP/1.1", &req.target, &[], "");
    let theirs = req.wire("HTTP/1.1", &absolute, &[], "");
    let mut a = open(&proxy, &own).await;
    let mut b = open(&proxy, &theirs).await;
    tunnels_reach(&proxy, 2.0).await;
    // Both carry bytes to the agent (a masked 2-byte text frame: 8 bytes).
    for s in [&mut a, &mut b] {
        let before = agent.upgraded_bytes();
        s.send(Message::Text("hi".into())).await.unwrap();
        let started = Instant::now();
        while agent.upgraded_bytes() < before + 8 {
            assert!(
                started.elapsed() < STEP,
                "the frame never reached the agent"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // Revoking the user closes both within the state store's poll.
    revoke_user(&proxy, 1).await;
    for s in [&mut a, &mut b] {
        assert_eq!(expect_close(s, STEP).await, 1008);
    }
    tunnels_reach(&proxy, 0.0).await;

    // Frame limits on both codecs: a 70,000-byte frame header, one byte at a time: not a byte of
    // it reaches the agent, and the client gets 1009.
    let fresh = token(1, now() + 2);
    let req = Req::get(format!("/ws/{UUID}?token={fresh}")).websocket();
    let absolute = format!("http://127.0.0.1{}", req.target);
    for bytes in [
        req.wire("HTTP/1.1", &req.target, &[], ""),
        req.wire("HTTP/1.1", &absolute, &[], ""),
    ] {
        let (answer, mut s) = send(&proxy, &[], &bytes).await;
        assert_eq!(answer.status, 101, "{}{}", answer.head, proxy.output());
        s.set_nodelay(true).unwrap();
        let before = agent.upgraded_bytes();
        let mut frame = vec![0x82, 0x80 | 127];
        frame.extend_from_slice(&70_000u64.to_be_bytes());
        frame.extend_from_slice(&[1, 2, 3, 4]);
        for byte in &frame {
            if s.write_all(&[*byte]).await.is_err() {
                break;
            }
            s.flush().await.ok();
            tokio::task::yield_now().await;
        }
        let mut ws = WebSocketStream::from_raw_socket(s, Role::Client, None).await;
        assert_eq!(expect_close(&mut ws, STEP).await, 1009);
        assert_eq!(
            agent.upgraded_bytes(),
            before,
            "header bytes reached the agent"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn extensions_the_edge_cannot_police_are_removed() {
    let (_dir, db) = sqlite_db().await;
    let agent = Agent::start(AgentMode::default()).await;
    let proxy = start_proxy(&db, &agent, "").await;
    let good = token(1, now() - 10);
    let req = Req::get(format!("/ws/{UUID}?token={good}"))
        .websocket()
        .header(
            "Sec-WebSocket-Extensions",
            "permessage-deflate; client_max_window_bits",
        );
    let absolute = format!("http://127.0.0.1{}", req.target);
    for bytes in [
        req.wire("HTTP/1.1", &req.target, &[], ""),
        req.wire("HTTP/1.1", &absolute, &[], ""),
    ] {
        let (answer, mut s) = send(&proxy, &[], &bytes).await;
        assert_eq!(answer.status, 101);
        let head = agent.heads().last().cloned().unwrap();
        assert!(
            header_of(&head, "sec-websocket-extensions").is_none(),
            "{head}"
        );
        // A compressed frame (RSV1) anyway: a protocol error, closed with 1002.
        let before = agent.upgraded_bytes();
        s.write_all(&[0xC1, 0x85, 1, 2, 3, 4, 9, 9, 9, 9, 9])
            .await
            .unwrap();
        let mut ws = WebSocketStream::from_raw_socket(s, Role::Client, None).await;
        assert_eq!(expect_close(&mut ws, STEP).await, 1002);
        assert_eq!(agent.upgraded_bytes(), before);
    }

    // An agent that negotiates an extension the edge removed is refused.
    let agent = Agent::start(AgentMode { extension: true }).await;
    let proxy = start_proxy(&db, &agent, "").await;
    let (answer, _) = send(&proxy, &[], &req.wire("HTTP/1.1", &req.target, &[], "")).await;
    assert_eq!(
        (answer.status, answer.code().as_str()),
        (502, "upstream_unavailable")
    );

    // Allowed explicitly: the offer reaches the agent, and the start-up warns.
    let agent = Agent::start(AgentMode { extension: true }).await;
    let proxy = start_proxy(&db, &agent, "[websocket]\nallow_extensions = true\n").await;
    let (answer, _) = send(&proxy, &[], &req.wire("HTTP/1.1", &req.target, &[], "")).await;
    assert_eq!(answer.status, 101);
    let head = agent.heads().last().cloned().unwrap();
    assert!(
        header_of(&head, "sec-websocket-extensions").is_some(),
        "{head}"
    );
    proxy.output_with("websocket.allow_extensions is on").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn no_log_level_prints_a_token() {
    let (_dir, db) = sqlite_db().await;
    let agent = Agent::start(AgentMode::default()).await;
    let mut opts = ProxyOptions::new(&db, agent.port);
    opts.env = vec![("RUST_LOG".into(), "trace".into())];
    let proxy = Proxy::start(opts).await;
    let secret_token = token(1, now() - 10);
    let signature = secret_token.rsplit('.').next().unwrap().to_string();
    let bearer = format!("Bearer {secret_token}");
    let requests: Vec<Vec<u8>> = vec![
        // Malformed heads (pingora used to print these raw at debug).
        format!("GET /api/x?token={secret_token} bad HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\n\r\n").into_bytes(),
        format!("GET /api/x?token={secret_token} HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\nBad Header\r\n\r\n").into_bytes(),
        // Through pingora-proxy (a body), the lean path, and pingora's codec for a handshake.
        format!("POST /api/x?token={secret_token} HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi").into_bytes(),
        format!("GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: {bearer}\r\n\r\n").into_bytes(),
        format!("GET http://a/ws/a?token={secret_token} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n").into_bytes(),
    ];
    for r in requests {
        let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        s.write_all(&r).await.unwrap();
        let mut buf = Vec::new();
        let _ = read_answer(&mut s, &mut buf).await;
    }
    let out = proxy.output_with("bytes_to_upstream").await;
    assert!(
        out.contains("sqlx::query"),
        "the level was really trace:\n{out}"
    );
    assert!(!out.contains(&signature), "a token in the log:\n{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_lists_revocations_only_to_an_admin_token_caller() {
    let (_dir, db) = sqlite_db().await;
    let agent = Agent::start(AgentMode::default()).await;
    let proxy = start_proxy(&db, &agent, "").await;
    revoke_user(&proxy, 4242).await;
    let url = format!("http://127.0.0.1:{}/status", proxy.admin_port);
    let page = http_client().get(&url).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("4242") && !html.contains("stolen laptop"),
        "{html}"
    );
    assert!(
        html.contains(r#"id="tunnels-open""#),
        "the rest of the page is there"
    );
    let wrong = http_client()
        .get(&url)
        .bearer_auth("not-the-token")
        .send()
        .await
        .unwrap();
    assert!(!wrong.text().await.unwrap().contains("4242"));
    let bearer = http_client()
        .get(&url)
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    let html = bearer.text().await.unwrap();
    assert!(
        html.contains("4242") && html.contains("stolen laptop"),
        "{html}"
    );
    // A browser: Basic authentication with the admin token as the password.
    let signin = format!("http://127.0.0.1:{}/status/signin", proxy.admin_port);
    let challenge = http_client().get(&signin).send().await.unwrap();
    assert_eq!(challenge.status().as_u16(), 401);
    assert!(challenge.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Basic"));
    let basic = http_client()
        .get(&signin)
        .basic_auth("operator", Some(ADMIN_TOKEN))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status().as_u16(), 200);
    assert!(basic.text().await.unwrap().contains("4242"));
    // The sign-in form: a cookie for /status, only for the right token.
    let no_redirects = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(STEP)
        .build()
        .unwrap();
    let wrong = no_redirects
        .post(&signin)
        .form(&[("admin_token", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 401);
    assert!(wrong.headers().get("set-cookie").is_none());
    let signed = no_redirects
        .post(&signin)
        .form(&[("admin_token", ADMIN_TOKEN)])
        .send()
        .await
        .unwrap();
    assert_eq!(signed.status().as_u16(), 303);
    let cookie = signed.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_string();
    let page = http_client()
        .get(&url)
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert!(page.text().await.unwrap().contains("4242"));
    assert!(!pair.contains(ADMIN_TOKEN), "the cookie is not the token");
}
