//! The whole stack as an operator runs it: a News Nexus SQLite file, the real `agent-service` and
//! `auth-proxy` binaries as child processes on free loopback ports, and helpers to talk to them.
//!
//! The binaries are the ones `cargo test --workspace` builds next to this test binary
//! (`target/<profile>/`); when they are missing, [`Stack::start`] builds them with cargo first.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use test_support::{
    hand_over, news_nexus_token, sqlite_fixture, sqlite_url, Port, TEST_IDENTITY_SECRET,
    TEST_JWT_SECRET,
};

/// How long a process gets to become ready.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The proxy's drain grace in these tests.
pub const PROXY_GRACE_SECS: u64 = 5;

/// The directory holding the workspace's binaries for this profile.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test binary>
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

fn ensure_binaries() {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let dir = bin_dir();
        if dir.join("auth-proxy").exists() && dir.join("agent-service").exists() {
            return;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let target_dir = dir.parent().expect("target dir");
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--bins",
            "-p",
            "auth-proxy",
            "-p",
            "agent-service",
            "--target-dir",
        ])
        .arg(target_dir);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "building the binaries failed");
    });
}

/// A started process whose output goes to a file the test can read afterwards.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    fn spawn(cmd: &mut Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).expect("create log file");
        let err = out.try_clone().expect("clone log file");
        let child = cmd
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("spawn process");
        Proc { child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends a signal (SIGTERM, SIGKILL, ...).
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) with a pid we own and a valid signal number has no memory effects.
        unsafe {
            libc::kill(self.pid(), sig);
        }
    }

    /// Waits for the exit, at most `limit`; `None` if still running.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Both services, on a fresh News Nexus SQLite file.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pub agent: Option<Proc>,
    pub proxy: Option<Proc>,
    pub agent_port: u16,
    pub proxy_port: u16,
    pub admin_port: u16,
    /// The agent's, the edge's and the admin ports, held for the stack's life: each (re)started
    /// process gets a listener on its port, so a port is never released between two starts.
    ports: [Port; 3],
    pub http: reqwest::Client,
    /// Extra agent environment (store, bus, provider settings of a scale-out test).
    pub agent_env: Vec<(String, String)>,
    /// Extra lines of auth-proxy's TOML config.
    pub proxy_toml: String,
}

/// Settings a test adds to the defaults.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// Extra environment of agent-service.
    pub agent_env: Vec<(String, String)>,
    /// Extra lines of auth-proxy's TOML config.
    pub proxy_toml: String,
}

impl Stack {
    /// Starts agent-service then auth-proxy and waits until both are ready.
    pub async fn start() -> Stack {
        let mut stack = Stack::new(Vec::new()).await;
        stack.start_agent().await;
        stack.start_proxy().await;
        stack
    }

    /// [`Stack::start`] with extra settings.
    pub async fn start_with(options: StackOptions) -> Stack {
        let mut stack = Stack::new(options.agent_env).await;
        stack.proxy_toml = options.proxy_toml;
        stack.start_agent().await;
        stack.start_proxy().await;
        stack
    }

    /// A stack (one pod) whose agent gets `agent_env` on top of the defaults; nothing started yet.
    pub async fn new(agent_env: Vec<(String, String)>) -> Stack {
        ensure_binaries();
        let dir = tempfile::tempdir().expect("temp dir");
        let db = sqlite_fixture(dir.path(), "newsnexus.db").await;
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("http client");
        let ports = [Port::new(), Port::new(), Port::new()];
        let [agent_port, proxy_port, admin_port] = [0, 1, 2].map(|i| ports[i].port);
        Stack {
            db_url: sqlite_url(&db),
            dir,
            agent: None,
            proxy: None,
            agent_port,
            proxy_port,
            admin_port,
            ports,
            http,
            agent_env,
            proxy_toml: String::new(),
        }
    }

    /// (Re)starts agent-service on its port and waits for `/health`.
    pub async fn start_agent(&mut self) {
        self.spawn_agent();
        self.wait_agent().await;
    }

    /// Starts agent-service without waiting (to start several at once).
    pub fn spawn_agent(&mut self) {
        let data = self.dir.path().join("agent-data");
        static STARTS: AtomicUsize = AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let log = self.dir.path().join(format!("agent-{n}.log"));
        let mut cmd = Command::new(bin_dir().join("agent-service"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AGENT_LISTEN", format!("127.0.0.1:{}", self.agent_port))
            .env("IDENTITY_SECRET", TEST_IDENTITY_SECRET)
            .env("DATABASE_URL", &self.db_url)
            .env("LLM_PROVIDER", "offline")
            .env("AGENT_DATA_DIR", &data)
            .env("RUST_LOG", "info");
        cmd.envs(self.agent_env.iter().map(|(k, v)| (k, v)));
        let listener = self.ports[0].listener();
        hand_over(&mut cmd, &[("agent", &listener)]);
        self.agent = Some(Proc::spawn(&mut cmd, log));
    }

    /// Waits until the agent answers `/health`.
    pub async fn wait_agent(&mut self) {
        let url = format!("http://127.0.0.1:{}/health", self.agent_port);
        wait_ready(&self.http, &url, self.agent.as_mut().expect("agent")).await;
    }

    /// Starts auth-proxy in front of the agent and waits for `/readyz`.
    pub async fn start_proxy(&mut self) {
        let config = self.dir.path().join("auth-proxy.toml");
        std::fs::write(
            &config,
            format!(
                "shutdown_grace_secs = {PROXY_GRACE_SECS}\n{}\n",
                self.proxy_toml
            ),
        )
        .expect("write config");
        let mut cmd = Command::new(bin_dir().join("auth-proxy"));
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .arg("--config")
            .arg(&config)
            .env("JWT_SECRET", TEST_JWT_SECRET)
            .env("IDENTITY_SECRET", TEST_IDENTITY_SECRET)
            .env("DATABASE_URL", &self.db_url)
            .env(
                "AUTH_PROXY_LISTEN",
                format!("127.0.0.1:{}", self.proxy_port),
            )
            .env(
                "AUTH_PROXY_ADMIN_LISTEN",
                format!("127.0.0.1:{}", self.admin_port),
            )
            .env(
                "AUTH_PROXY_UPSTREAM",
                format!("127.0.0.1:{}", self.agent_port),
            )
            .env("AUTH_PROXY_DATA_DIR", self.dir.path().join("edge-data"))
            .env("RUST_LOG", "info");
        let (edge, admin) = (self.ports[1].listener(), self.ports[2].listener());
        hand_over(&mut cmd, &[("edge", &edge), ("admin", &admin)]);
        self.proxy = Some(Proc::spawn(&mut cmd, self.dir.path().join("proxy.log")));
        drop((edge, admin));
        let url = format!("http://127.0.0.1:{}/readyz", self.admin_port);
        wait_ready(&self.http, &url, self.proxy.as_mut().expect("proxy")).await;
    }

    pub fn token(&self, user_id: i64) -> String {
        news_nexus_token(TEST_JWT_SECRET, user_id)
    }

    /// `http://127.0.0.1:<proxy>/<path>`
    pub fn edge(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.proxy_port, path)
    }

    /// `ws://127.0.0.1:<proxy>/<path>`
    pub fn edge_ws(&self, path: &str) -> String {
        format!("ws://127.0.0.1:{}{}", self.proxy_port, path)
    }

    /// The edge's WebSocket URL for a new client id, with a token for `user_id`.
    pub fn session_url(&self, user_id: i64) -> String {
        self.edge_ws(&format!(
            "/ws/{}?token={}",
            uuid::Uuid::new_v4(),
            self.token(user_id)
        ))
    }

    /// A chat socket through the edge for `user_id`, its welcome frame already read.
    pub async fn open_session(&self, user_id: i64) -> (ws::Socket, serde_json::Value) {
        let mut socket = ws::connect(&self.session_url(user_id), &[])
            .await
            .expect("handshake through the edge");
        let welcome = ws::next(&mut socket).await.expect("welcome");
        (socket, welcome)
    }

    pub fn agent_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.agent_port, path)
    }

    /// The value of one un-labelled metric (or the sum of a labelled family) from a `/metrics` page.
    pub async fn metric(&self, metrics_url: &str, name: &str) -> f64 {
        let text = self
            .http
            .get(metrics_url)
            .send()
            .await
            .expect("scrape")
            .text()
            .await
            .expect("body");
        metric_value(&text, name)
    }
}

/// Sums every sample of `name` (with or without labels) in a Prometheus text page.
pub fn metric_value(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn wait_ready(http: &reqwest::Client, url: &str, proc: &mut Proc) {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        if let Ok(r) = http.get(url).send().await {
            if r.status().is_success() {
                return;
            }
        }
        if let Ok(Some(status)) = proc.child.try_wait() {
            panic!(
                "process exited with {status} before {url} was ready:\n{}",
                proc.output()
            );
        }
        assert!(
            Instant::now() < deadline,
            "{url} not ready within {READY_TIMEOUT:?}:\n{}",
            proc.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A WebSocket client speaking the front end's JSON frames.
pub mod ws {
    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use serde_json::Value;
    use tokio_tungstenite::tungstenite::Message;

    pub use test_support::ws::Socket;

    /// How long one frame may take to arrive.
    pub const FRAME_TIMEOUT: Duration = Duration::from_secs(15);

    /// Connects; on a refused handshake returns the HTTP status and body.
    pub async fn connect(url: &str, headers: &[(&str, &str)]) -> Result<Socket, (u16, String)> {
        test_support::ws::handshake(url, headers, FRAME_TIMEOUT)
            .await
            .map_err(|(status, body, _)| (status, body))
    }

    pub async fn send(socket: &mut Socket, frame: Value) {
        let fut = socket.send(Message::Text(frame.to_string().into()));
        tokio::time::timeout(FRAME_TIMEOUT, fut)
            .await
            .expect("send timed out")
            .expect("send");
    }

    /// The next JSON text frame; `None` when the socket closed.
    pub async fn next(socket: &mut Socket) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, socket.next())
                .await
                .expect("no frame in time")?;
            match msg {
                Ok(Message::Text(t)) => return Some(serde_json::from_str(&t).expect("JSON frame")),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// Reads until the socket closes; the close code, if the peer sent one.
    pub async fn closed_with(socket: &mut Socket) -> Option<u16> {
        loop {
            let msg = tokio::time::timeout(FRAME_TIMEOUT, socket.next())
                .await
                .expect("no close in time");
            match msg {
                Some(Ok(Message::Close(c))) => return c.map(|c| u16::from(c.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Frames up to and including `typing:false` (the end of one answer).
    pub async fn until_idle(socket: &mut Socket) -> Vec<Value> {
        let mut frames = Vec::new();
        while let Some(f) = next(socket).await {
            let done = f["type"] == "typing" && f["content"] == false;
            frames.push(f);
            if done {
                break;
            }
        }
        frames
    }
}

/// A fake OpenAI-compatible LLM server: counts the requests it receives and answers each one with
/// a short completion (with token usage). While held ([`FakeLlm::hold`]), answers wait until
/// [`FakeLlm::release`].
pub mod fake_llm {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Instant;

    use axum::extract::State;
    use axum::routing::post;
    use axum::{Json, Router};
    use serde_json::{json, Value};
    use tokio::sync::{watch, Notify};

    #[derive(Clone)]
    pub struct FakeLlm {
        pub port: u16,
        requests: Arc<AtomicUsize>,
        arrivals: Arc<Mutex<Vec<Instant>>>,
        arrived: Arc<Notify>,
        held: Arc<watch::Sender<bool>>,
    }

    /// The completion every request gets.
    pub const ANSWER: &str = "There are 3 approved articles.";

    async fn complete(State(f): State<FakeLlm>, Json(_body): Json<Value>) -> Json<Value> {
        f.arrivals.lock().unwrap().push(Instant::now());
        f.requests.fetch_add(1, Ordering::SeqCst);
        f.arrived.notify_waiters();
        let mut held = f.held.subscribe();
        let _ = held.wait_for(|h| !*h).await;
        Json(json!({
            "choices": [{"message": {"role": "assistant", "content": ANSWER}}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 7}
        }))
    }

    impl FakeLlm {
        pub async fn start() -> FakeLlm {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let fake = FakeLlm {
                port: listener.local_addr().unwrap().port(),
                requests: Arc::default(),
                arrivals: Arc::default(),
                arrived: Arc::default(),
                held: Arc::new(watch::channel(false).0),
            };
            let app = Router::new()
                .route("/v1/chat/completions", post(complete))
                .with_state(fake.clone());
            tokio::spawn(async move {
                axum::serve(listener, app).await.ok();
            });
            fake
        }

        /// `URL_BASE_OPENAI` for the agent.
        pub fn base(&self) -> String {
            format!("http://127.0.0.1:{}/v1", self.port)
        }

        pub fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }

        /// When the `n`th request (from 0) arrived.
        pub fn arrival(&self, n: usize) -> Option<Instant> {
            self.arrivals.lock().unwrap().get(n).copied()
        }

        /// Makes answers wait until [`FakeLlm::release`].
        pub fn hold(&self) {
            self.held.send_replace(true);
        }

        pub fn release(&self) {
            self.held.send_replace(false);
        }

        /// Waits (bounded) until at least `n` requests have arrived.
        pub async fn wait_for_requests(&self, n: usize, limit: std::time::Duration) {
            let wait = async {
                loop {
                    let arrived = self.arrived.notified();
                    if self.requests() >= n {
                        return;
                    }
                    arrived.await;
                }
            };
            tokio::time::timeout(limit, wait)
                .await
                .expect("the LLM request arrived in time");
        }
    }
}

/// Headless Chromium (Debian's `chromium`) driven through `chromedriver` (Debian's
/// `chromium-driver`) with fantoccini. Without both on PATH a test is skipped with a message,
/// unless `REQUIRE_BROWSER=1` (CI sets it; `scripts/prereqs.sh` installs both).
pub mod browser {
    use std::net::TcpStream;
    use std::path::PathBuf;
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use fantoccini::{Client, ClientBuilder, Locator};
    use serde_json::json;

    fn on_path(name: &str) -> Option<PathBuf> {
        std::env::var_os("PATH")?
            .to_str()?
            .split(':')
            .map(|d| PathBuf::from(d).join(name))
            .find(|p| p.is_file())
    }

    /// chromedriver as a child process, killed on drop.
    pub struct Driver(Child);

    impl Drop for Driver {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// Starts chromedriver on a port it picks itself (`--port=0`) and returns it with the port it
    /// reports ("... started successfully on port N.").
    fn start_driver(chromedriver: &PathBuf) -> (Driver, u16) {
        let mut child = Command::new(chromedriver)
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let stdout = child.stdout.take().expect("chromedriver's stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(port) = line
                    .split("started successfully on port ")
                    .nth(1)
                    .and_then(|rest| rest.trim_end_matches('.').trim().parse::<u16>().ok())
                {
                    let _ = tx.send(port);
                }
            }
        });
        let port = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("chromedriver did not report its port");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        (Driver(child), port)
    }

    /// A WebDriver session with headless Chromium (keep the [`Driver`] alive as long as it), or
    /// `None` (test skipped) when the browser is not installed and not required.
    pub async fn open() -> Option<(Driver, Client)> {
        let (Some(chromium), Some(chromedriver)) = (on_path("chromium"), on_path("chromedriver"))
        else {
            assert!(
                std::env::var("REQUIRE_BROWSER").as_deref() != Ok("1"),
                "REQUIRE_BROWSER=1 but chromium or chromedriver is not on PATH (scripts/prereqs.sh installs them)"
            );
            eprintln!("SKIPPED: chromium and chromedriver are not on PATH (apt-get install chromium chromium-driver)");
            return None;
        };
        let (driver, port) = start_driver(&chromedriver);
        let caps = json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1000"]
            }
        });
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.as_object().unwrap().clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a WebDriver session with headless Chromium");
        Some((driver, client))
    }

    /// The text of the element with `id`, or "" when the page (mid-reload) has none.
    pub async fn text_of(client: &Client, id: &str) -> String {
        match client.find(Locator::Id(id)).await {
            Ok(el) => el.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Waits (at most `limit`) until the element with `id` shows `needle`.
    pub async fn wait_for_text(client: &Client, id: &str, needle: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        while !text_of(client, id).await.contains(needle) {
            assert!(
                Instant::now() < deadline,
                "#{id} never showed {needle:?} (last: {:?})",
                text_of(client, id).await
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
