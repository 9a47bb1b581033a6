//! Test harness: the real `auth-proxy` binary in front of an in-test upstream that records every
//! request it receives (method, URI, headers) and echoes WebSocket messages.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, Method, Uri};
use axum::response::IntoResponse;
use axum::routing::any;
use axum::Router;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

#[allow(unused_imports)]
pub use test_support::{
    news_nexus_token, token_with_claims, TEST_IDENTITY_SECRET, TEST_JWT_SECRET,
};

pub const STEP: Duration = Duration::from_secs(15);

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HashMap<String, Vec<String>>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

#[derive(Clone, Default)]
pub struct Upstream {
    pub port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

fn record(seen: &Mutex<Vec<Seen>>, method: &Method, uri: &Uri, headers: &HeaderMap) {
    let mut map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in headers {
        map.entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        uri: uri.to_string(),
        headers: map,
    });
}

async fn ws_route(
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> impl IntoResponse {
    record(&seen, &method, &uri, &headers);
    ws.on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.next().await {
        let reply = match msg {
            AxMessage::Text(t) => AxMessage::Text(t),
            AxMessage::Binary(b) => AxMessage::Binary(b),
            AxMessage::Close(_) => return,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            return;
        }
    }
}

async fn other_route(
    State(seen): State<Arc<Mutex<Vec<Seen>>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> impl IntoResponse {
    record(&seen, &method, &uri, &headers);
    axum::Json(serde_json::json!({"status": "healthy", "path": uri.path()}))
}

impl Upstream {
    /// Serves on a free loopback port until the test ends.
    pub async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/ws/{id}", any(ws_route))
            .fallback(other_route)
            .with_state(seen.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Upstream { port, seen }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("the upstream saw a request")
    }
}

/// The proxy as a child process.
pub struct Proxy {
    child: Child,
    pub port: u16,
    pub admin_port: u16,
    pub log: PathBuf,
    /// The edge and admin ports, held by the test (the process gets listeners on them).
    _ports: [test_support::Port; 2],
    _dir: tempfile::TempDir,
}

pub struct ProxyOptions {
    pub database_url: String,
    pub upstream_port: u16,
    pub toml: String,
    pub wait_ready: bool,
    pub env: Vec<(String, String)>,
}

impl ProxyOptions {
    pub fn new(database_url: &str, upstream_port: u16) -> ProxyOptions {
        ProxyOptions {
            database_url: database_url.to_string(),
            upstream_port,
            toml: "[throttle]\nfailures_per_minute = 100000\n".into(),
            wait_ready: true,
            env: Vec::new(),
        }
    }

    pub fn toml(mut self, toml: &str) -> Self {
        self.toml = toml.to_string();
        self
    }

    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }
}

impl Proxy {
    pub async fn start(opts: ProxyOptions) -> Proxy {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("auth-proxy.toml");
        std::fs::write(&config, &opts.toml).unwrap();
        let log = dir.path().join("proxy.log");
        let out = std::fs::File::create(&log).unwrap();
        let ports = [test_support::Port::new(), test_support::Port::new()];
        let (port, admin_port) = (ports[0].port, ports[1].port);
        let (edge, admin) = (ports[0].listener(), ports[1].listener());
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_auth-proxy"));
        cmd.env_clear()
            .arg("--config")
            .arg(&config)
            .env("JWT_SECRET", TEST_JWT_SECRET)
            .env("IDENTITY_SECRET", TEST_IDENTITY_SECRET)
            .env("DATABASE_URL", &opts.database_url)
            .env("AUTH_PROXY_LISTEN", format!("127.0.0.1:{port}"))
            .env("AUTH_PROXY_ADMIN_LISTEN", format!("127.0.0.1:{admin_port}"))
            .env(
                "AUTH_PROXY_UPSTREAM",
                format!("127.0.0.1:{}", opts.upstream_port),
            )
            .env("AUTH_PROXY_DATA_DIR", dir.path().join("data"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out));
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        test_support::hand_over(&mut cmd, &[("edge", &edge), ("admin", &admin)]);
        let child = cmd.spawn().expect("spawn auth-proxy");
        // The process holds the listeners now: they close when it does.
        drop((edge, admin));
        let mut proxy = Proxy {
            child,
            port,
            admin_port,
            log,
            _ports: ports,
            _dir: dir,
        };
        let path = if opts.wait_ready {
            "/readyz"
        } else {
            "/healthz"
        };
        proxy.wait_admin(path).await;
        if !opts.wait_ready {
            // Not ready on purpose (a dead database or upstream): wait for the edge listener
            // itself, which pingora binds on its own threads, after the admin listener may answer.
            proxy.wait_listening().await;
        }
        proxy
    }

    async fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the edge listener on {} never accepted:\n{}",
                self.port,
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn wait_admin(&mut self, path: &str) {
        let url = format!("http://127.0.0.1:{}{path}", self.admin_port);
        let client = http_client();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(&url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("auth-proxy exited with {status}:\n{}", self.output());
            }
            assert!(
                Instant::now() < deadline,
                "{url} not ready:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The configuration file the proxy was started with (rewrite it, then send SIGHUP).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("auth-proxy.toml")
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The output once it contains `needle` (the proxy writes its log from a thread of its own,
    /// so a line can land just after the answer that caused it); fails after [`STEP`].
    pub async fn output_with(&self, needle: &str) -> String {
        let deadline = Instant::now() + STEP;
        loop {
            let out = self.output();
            if out.contains(needle) {
                return out;
            }
            assert!(Instant::now() < deadline, "{needle:?} never logged:\n{out}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{path_and_query}", self.port)
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://127.0.0.1:{}{path_and_query}", self.port)
    }

    pub async fn admin(&self, path: &str) -> (u16, String) {
        let r = http_client()
            .get(format!("http://127.0.0.1:{}{path}", self.admin_port))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// The sum of a metric family's samples.
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = self.admin("/metrics").await;
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder().timeout(STEP).build().unwrap()
}

pub type Socket = test_support::ws::Socket;

/// A WebSocket handshake; on refusal, the status, body and headers.
pub async fn ws_connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<Socket, test_support::ws::Refusal> {
    test_support::ws::handshake(url, headers, STEP).await
}

/// Sends a text message and waits for its echo.
pub async fn echo_round_trip(socket: &mut Socket, text: &str) -> String {
    tokio::time::timeout(STEP, socket.send(Message::Text(text.to_string().into())))
        .await
        .unwrap()
        .unwrap();
    loop {
        match tokio::time::timeout(STEP, socket.next())
            .await
            .expect("echo in time")
        {
            Some(Ok(Message::Text(t))) => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// A SQLite News Nexus fixture in a temp dir; returns (dir guard, sqlite URL).
pub async fn sqlite_db() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = test_support::sqlite_fixture(dir.path(), "newsnexus.db").await;
    (dir, test_support::sqlite_url(&path))
}

pub fn sqlite_path(url: &str) -> &Path {
    Path::new(url.trim_start_matches("sqlite://"))
}
