//! The edge's own tunnel relay, through the real binary, with a raw WebSocket client that controls
//! every frame and reads at its own pace: bytes exact both ways under backpressure, fragments with
//! control frames between them, the frame and message size limits, and the close frame on drain.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::timeout;

const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// A masked client frame.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    let len = payload.len();
    if len < 126 {
        f.push(0x80 | len as u8);
    } else if len <= 0xffff {
        f.push(0x80 | 126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(0x80 | 127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A WebSocket handshake for `path`.
fn handshake(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A raw WebSocket client.
struct Raw {
    r: BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: tokio::net::tcp::OwnedWriteHalf,
}

impl Raw {
    async fn connect(proxy: &Proxy, path: &str) -> Raw {
        let stream = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        let (r, w) = stream.into_split();
        let mut raw = Raw {
            r: BufReader::new(r),
            w,
        };
        raw.send(handshake(path).as_bytes()).await;
        let head = raw.head().await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        raw
    }

    /// An answer's head, up to its empty line.
    async fn head(&mut self) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let b = timeout(STEP, self.r.read_u8()).await.unwrap().unwrap();
            head.push(b);
        }
        String::from_utf8(head).unwrap()
    }

    async fn send(&mut self, bytes: &[u8]) {
        timeout(STEP, self.w.write_all(bytes))
            .await
            .unwrap()
            .unwrap();
    }

    /// The next frame: (fin, opcode, payload).
    async fn frame(&mut self) -> (bool, u8, Vec<u8>) {
        timeout(STEP, async {
            let b0 = self.r.read_u8().await?;
            let b1 = self.r.read_u8().await?;
            assert_eq!(b1 & 0x80, 0, "frames from the server are not masked");
            let len = match b1 & 0x7f {
                126 => u64::from(self.r.read_u16().await?),
                127 => self.r.read_u64().await?,
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            self.r.read_exact(&mut payload).await?;
            Ok::<_, std::io::Error>((b0 & 0x80 != 0, b0 & 0x0f, payload))
        })
        .await
        .expect("a frame in time")
        .expect("a frame")
    }

    /// The next text frame's payload; skips other frames.
    async fn text(&mut self) -> Vec<u8> {
        loop {
            let (_, op, payload) = self.frame().await;
            if op == OP_TEXT {
                return payload;
            }
        }
    }

    /// The close frame's code and reason; skips other frames.
    async fn close_code(&mut self) -> (u16, String) {
        loop {
            let (_, op, payload) = self.frame().await;
            if op == OP_CLOSE {
                let code = u16::from_be_bytes([payload[0], payload[1]]);
                return (code, String::from_utf8_lossy(&payload[2..]).into_owned());
            }
        }
    }

    /// True once the server has closed the connection (EOF), reading what remains.
    async fn ends(&mut self) -> bool {
        let mut sink = Vec::new();
        matches!(
            timeout(STEP, self.r.read_to_end(&mut sink)).await,
            Ok(Ok(_))
        )
    }
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Peak resident memory of a process (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn start(toml: &str) -> (tempfile::TempDir, Upstream, Proxy, String) {
    let (dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let toml = format!("{toml}\n[throttle]\nfailures_per_minute = 100000\n");
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port).toml(&toml)).await;
    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    (dir, upstream, proxy, format!("/ws/raw?token={token}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_megabytes_each_way_arrive_exactly_with_a_slow_reader_and_bounded_memory() {
    let (_dir, _upstream, proxy, path) = start("").await;
    let mut raw = Raw::connect(&proxy, &path).await;
    let before = peak_rss_kib(proxy.pid());
    let sent = pattern(10 << 20, 7);
    // The client writes all 10 MB before it reads anything: the agent's echo backs up behind it.
    raw.send(&frame(true, OP_BINARY, &sent)).await;
    let (fin, op, echoed) = raw.frame().await;
    assert!(fin);
    assert_eq!(op, OP_BINARY);
    assert_eq!(echoed.len(), sent.len());
    assert!(echoed == sent, "the echo differs from what was sent");
    let growth = peak_rss_kib(proxy.pid()).saturating_sub(before);
    assert!(
        growth < 4 * 1024,
        "the proxy's peak memory grew by {growth} KiB relaying 10 MB each way: it buffered messages"
    );
    assert!(proxy.metric("auth_proxy_tunnel_bytes_total").await >= 2.0 * sent.len() as f64);
}

#[tokio::test(flavor = "multi_thread")]
async fn fragments_with_control_frames_between_them_pass_through() {
    let (_dir, _upstream, proxy, path) =
        start("[websocket]\nmax_frame_bytes = 100\nmax_message_bytes = 1000\n").await;
    let mut raw = Raw::connect(&proxy, &path).await;
    let mut bytes = frame(false, OP_TEXT, b"hello, ");
    bytes.extend(frame(true, OP_PING, b"p1"));
    bytes.extend(frame(false, 0x0, b"fragmented "));
    bytes.extend(frame(true, OP_PING, b"p2"));
    bytes.extend(frame(true, 0x0, b"world"));
    // Split at odd places so frame headers straddle writes.
    for piece in bytes.chunks(5) {
        raw.send(piece).await;
    }
    let mut pongs = Vec::new();
    let text = loop {
        let (fin, op, payload) = raw.frame().await;
        match op {
            OP_PONG => pongs.push(payload),
            OP_TEXT => {
                assert!(fin);
                break String::from_utf8(payload).unwrap();
            }
            other => panic!("unexpected opcode {other}"),
        }
    };
    assert_eq!(text, "hello, fragmented world");
    assert_eq!(pongs.first().map(Vec::as_slice), Some(&b"p1"[..]));
    // The tunnel is still usable.
    raw.send(&frame(true, OP_TEXT, b"again")).await;
    assert_eq!(raw.text().await, b"again");
}

/// A handshake that follows a plain request on the same connection: the connection went through
/// pingora's codec first, and its socket is taken back for the tunnel.
#[tokio::test(flavor = "multi_thread")]
async fn a_handshake_after_a_request_on_the_same_connection_becomes_a_tunnel() {
    let (_dir, _upstream, proxy, path) = start("").await;
    let stream = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let (r, w) = stream.into_split();
    let mut raw = Raw {
        r: BufReader::new(r),
        w,
    };
    raw.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await;
    let head = raw.head().await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap())
        })
        .expect("a content-length");
    let mut body = vec![0u8; length];
    timeout(STEP, raw.r.read_exact(&mut body))
        .await
        .unwrap()
        .unwrap();
    raw.send(handshake(&path).as_bytes()).await;
    let head = raw.head().await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    raw.send(&frame(true, OP_TEXT, b"same connection")).await;
    assert_eq!(raw.text().await, b"same connection");
}

#[tokio::test(flavor = "multi_thread")]
async fn frames_and_messages_over_the_limits_close_with_1009() {
    let (_dir, upstream, proxy, path) =
        start("[websocket]\nmax_frame_bytes = 1024\nmax_message_bytes = 4096\n").await;

    let mut raw = Raw::connect(&proxy, &path).await;
    raw.send(&frame(true, OP_TEXT, &[b'a'; 1024])).await;
    let (_, op, payload) = raw.frame().await;
    assert_eq!((op, payload.len()), (OP_TEXT, 1024), "at the limit passes");
    raw.send(&frame(true, OP_BINARY, &[1; 1025])).await;
    assert_eq!(raw.close_code().await.0, 1009);
    assert!(raw.ends().await, "the proxy closes the tunnel");

    let mut raw = Raw::connect(&proxy, &path).await;
    let mut bytes = frame(false, OP_BINARY, &[2; 1000]);
    for _ in 0..3 {
        bytes.extend(frame(false, 0x0, &[2; 1000]));
    }
    bytes.extend(frame(true, 0x0, &[2; 1000])); // the fifth fragment crosses 4096
    raw.send(&bytes).await;
    let (code, reason) = raw.close_code().await;
    assert_eq!((code, reason.as_str()), (1009, "message too big"));
    assert!(raw.ends().await);
    assert_eq!(
        upstream.count(),
        2,
        "both handshakes reached the agent, nothing else"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_drain_sends_close_1001_to_open_tunnels_before_the_grace_ends() {
    let (_dir, _upstream, mut proxy, path) = start("shutdown_grace_secs = 2\n").await;
    let mut raw = Raw::connect(&proxy, &path).await;
    raw.send(&frame(true, OP_TEXT, b"before")).await;
    assert_eq!(raw.frame().await.2, b"before");
    // SAFETY: kill(2) on our own child with a valid signal.
    unsafe {
        libc::kill(proxy.pid() as i32, libc::SIGTERM);
    }
    let (code, reason) = raw.close_code().await;
    assert_eq!((code, reason.as_str()), (1001, "server shutting down"));
    raw.send(&frame(true, OP_CLOSE, &1001u16.to_be_bytes()))
        .await;
    assert!(raw.ends().await);
    let status = proxy.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status}:\n{}", proxy.output());
    let log = proxy.output();
    assert!(
        log.contains("bytes_to_upstream") && log.contains("closed_by_edge"),
        "one access line per tunnel with its bytes and end:\n{log}"
    );
}

/// With `ws.close_frame`, every close the edge makes on its own is preceded by the filled template:
/// here a message over the limit (1009) and the drain (1001).
#[tokio::test(flavor = "multi_thread")]
async fn with_a_close_frame_template_a_limit_and_the_drain_say_why_first() {
    let toml = "shutdown_grace_secs = 2\n[websocket]\nmax_frame_bytes = 1024\n\
                [ws]\nclose_frame = '{\"type\":\"error\",\"content\":\"{message}\"}'\n";
    let (_dir, _upstream, mut proxy, path) = start(toml).await;
    let content = |payload: Vec<u8>| -> String {
        let v: serde_json::Value = serde_json::from_slice(&payload).expect("a JSON notice");
        v["content"].as_str().unwrap_or_default().to_string()
    };

    let mut raw = Raw::connect(&proxy, &path).await;
    raw.send(&frame(true, OP_BINARY, &[1; 1025])).await;
    let (fin, op, payload) = raw.frame().await;
    assert_eq!((fin, op), (true, OP_TEXT));
    assert_eq!(
        content(payload),
        "That message was too large to send; the chat was closed."
    );
    assert_eq!(
        raw.close_code().await,
        (1009, "message too big".to_string())
    );

    let mut raw = Raw::connect(&proxy, &path).await;
    raw.send(&frame(true, OP_TEXT, b"before")).await;
    assert_eq!(raw.frame().await.2, b"before");
    // SAFETY: kill(2) on our own child with a valid signal.
    unsafe {
        libc::kill(proxy.pid() as i32, libc::SIGTERM);
    }
    let (_, op, payload) = raw.frame().await;
    assert_eq!(op, OP_TEXT);
    assert_eq!(content(payload), "The server is restarting; reconnecting…");
    assert_eq!(
        raw.close_code().await,
        (1001, "server shutting down".to_string())
    );
    raw.send(&frame(true, OP_CLOSE, &1001u16.to_be_bytes()))
        .await;
    assert!(raw.ends().await);
    let status = proxy.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(status.success(), "{status}:\n{}", proxy.output());
}
