//! The connection layer under abuse, through the real binary: a request head that trickles in is cut
//! at the header deadline (408), a silent connection is closed, one IP cannot hold more than its
//! share of connections (429), and the global cap answers 503 instead of failing `accept`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

async fn start(toml: &str) -> (tempfile::TempDir, Upstream, Proxy) {
    let (dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let toml = format!("{toml}\n[throttle]\nfailures_per_minute = 100000\n");
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port).toml(&toml)).await;
    (dir, upstream, proxy)
}

/// Everything the server sends until it closes the connection.
async fn read_all(stream: &mut TcpStream) -> String {
    let mut out = Vec::new();
    timeout(STEP, stream.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

/// A connection that has sent part of a request head and holds its place.
async fn parked(proxy: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\n").await.unwrap();
    s
}

/// Waits until the proxy counts `n` open client connections.
async fn open_connections(proxy: &Proxy, n: f64) {
    let deadline = Instant::now() + STEP;
    while proxy.metric("auth_proxy_connections_open").await != n {
        assert!(Instant::now() < deadline, "never {n} open connections");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn health_status(proxy: &Proxy) -> u16 {
    http_client()
        .get(proxy.url("/health"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trickling_request_head_is_cut_at_the_deadline_with_408() {
    let (_dir, upstream, proxy) = start("[connections]\nheader_timeout_secs = 1\n").await;
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let started = Instant::now();
    s.write_all(b"GET /api/x HTTP/1.1\r\n").await.unwrap();
    // One header line every 200 ms: each read is quick, the whole head is not.
    let mut answer = String::new();
    for i in 0..50 {
        let line = format!("x-slow-{i}: y\r\n");
        if s.write_all(line.as_bytes()).await.is_err() {
            break;
        }
        let mut buf = [0u8; 512];
        if let Ok(Ok(n)) = timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
            answer.push_str(&read_all(&mut s).await);
            break;
        }
    }
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(answer.contains("\"request_timeout\""), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut near the deadline"
    );
    assert_eq!(upstream.count(), 0);
    assert!(proxy.metric("auth_proxy_header_timeouts_total").await >= 1.0);

    // A silent connection is closed without an answer.
    let mut silent = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    assert_eq!(read_all(&mut silent).await, "");
    // Normal requests are unaffected.
    assert_eq!(health_status(&proxy).await, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn one_ip_cannot_hold_more_than_its_connection_cap() {
    let (_dir, _upstream, proxy) =
        start("[connections]\nheader_timeout_secs = 30\nmax_per_ip = 3\n").await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(parked(&proxy).await);
    }
    open_connections(&proxy, 3.0).await;
    let mut over = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let answer = read_all(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer:?}");
    assert!(answer.contains("\"too_many_connections\""), "{answer}");
    drop(over);

    // Closing one gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + STEP;
    while health_status(&proxy).await != 200 {
        assert!(Instant::now() < deadline, "the place was never freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(proxy.metric("auth_proxy_connections_refused_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_global_cap_answers_503_instead_of_failing_accept() {
    let (_dir, _upstream, proxy) =
        start("[connections]\nheader_timeout_secs = 30\nmax_per_ip = 100\nmax_total = 4\n").await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(parked(&proxy).await);
    }
    open_connections(&proxy, 4.0).await;
    for _ in 0..3 {
        let mut over = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
        let answer = read_all(&mut over).await;
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
        assert!(answer.contains("\"too_many_connections\""), "{answer}");
    }
    // The held connections are still served.
    let mut first = held.remove(0);
    first
        .write_all(b"Host: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    assert!(read_all(&mut first).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn open_tunnels_count_against_the_cap_until_they_close() {
    // The relay runs in a task of its own after the 101; the connection's admission ticket goes
    // with it, so a tunnel holds its place for its whole life and gives it back when it ends.
    let (_dir, _upstream, proxy) = start("[connections]\nmax_per_ip = 2\n").await;
    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    let url = proxy.ws_url(&format!("/ws/a?token={token}"));
    let mut tunnels = Vec::new();
    for _ in 0..2 {
        tunnels.push(ws_connect(&url, &[]).await.expect("a tunnel opens"));
    }
    open_connections(&proxy, 2.0).await;
    let mut over = TcpStream::connect(("127.0.0.1", proxy.port)).await.unwrap();
    let answer = read_all(&mut over).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer:?}");
    assert_eq!(
        echo_round_trip(&mut tunnels[0], "still relayed").await,
        "still relayed"
    );
    drop(tunnels.pop());
    open_connections(&proxy, 1.0).await;
}
