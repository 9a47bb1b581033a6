//! Test harness: the agent-service router served in-process on a free port over a real News Nexus
//! database, fake LLM servers speaking the OpenAI and Ollama wire formats, and a WebSocket client
//! that signs its handshake the way auth-proxy does.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_service::{router, AppState, Config};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::post;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use shared::identity::{BoundRequest, Identity, Signer};
use test_support::{now_unix, TEST_IDENTITY_SECRET};
use tokio_tungstenite::tungstenite::Message;

pub const STEP: Duration = Duration::from_secs(15);

pub struct Agent {
    pub port: u16,
    pub state: Arc<AppState>,
    /// Holds the agent's own store file; removed with the agent.
    _store_dir: tempfile::TempDir,
}

impl Agent {
    /// Serves the agent on `database_url` with extra environment settings.
    pub async fn start(database_url: &str, extra: &[(&str, String)]) -> Agent {
        let mut env: HashMap<String, String> = HashMap::new();
        env.insert("IDENTITY_SECRET".into(), TEST_IDENTITY_SECRET.into());
        env.insert("DATABASE_URL".into(), database_url.into());
        env.insert("LLM_TIMEOUT_SECS".into(), "5".into());
        // These tests exercise every provider; the provider policy has its own tests.
        env.insert("LLM_ALLOWED".into(), "offline,openai,ollama".into());
        // Each agent gets its own store file, removed with it, unless the test names one.
        let store_dir = test_support::temp_dir();
        let store = store_dir.path().join("agent-store.db");
        env.insert(
            "AGENT_STORE_URL".into(),
            format!("sqlite://{}?mode=rwc", store.display()),
        );
        for (k, v) in extra {
            env.insert(k.to_string(), v.clone());
        }
        let config = Config::load(&|k| env.get(k).cloned()).expect("config");
        let state = Arc::new(AppState::new(config).await.expect("state"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = router(state.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        Agent {
            port,
            state,
            _store_dir: store_dir,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Connects as a user, with headers signed like auth-proxy's.
    pub async fn connect(
        &self,
        user: &Identity,
        client_id: &str,
        query: &str,
    ) -> Result<Socket, (u16, String)> {
        let path = format!("/ws/{client_id}");
        let headers = identity_headers(user, "GET", &format!("{path}{query}"), now_unix());
        let url = format!("ws://127.0.0.1:{}{path}{query}", self.port);
        ws_connect(&url, &headers).await
    }
}

/// Reads the welcome and the session frame; returns the session id.
pub async fn greeted(s: &mut Socket) -> String {
    let welcome = frame(s).await;
    assert_eq!(welcome["type"], "system", "{welcome}");
    let session = frame(s).await;
    assert_eq!(session["type"], "session", "{session}");
    session["session_id"].as_str().unwrap().to_string()
}

pub fn ada() -> Identity {
    Identity {
        user_id: 1,
        username: "ada".into(),
        is_admin: true,
    }
}

pub fn grace() -> Identity {
    Identity {
        user_id: 2,
        username: "grace".into(),
        is_admin: false,
    }
}

pub fn identity_headers(
    user: &Identity,
    method: &str,
    path: &str,
    at: u64,
) -> Vec<(String, String)> {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    Signer::new(TEST_IDENTITY_SECRET)
        .sign(user, BoundRequest::new(method, path, query), at)
        .pairs()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Sends `method path_and_query` to the agent with the given identity headers (as they are, so a
/// test can replay them) and an optional JSON body; returns the status and the JSON answer.
pub async fn send_signed(
    port: u16,
    method: &str,
    path_and_query: &str,
    headers: &[(String, String)],
    body: Option<Value>,
) -> (u16, Value) {
    let url = format!("http://127.0.0.1:{port}{path_and_query}");
    let mut req = reqwest::Client::new()
        .request(method.parse().unwrap(), url)
        .timeout(STEP);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

pub type Socket = test_support::ws::Socket;

/// A handshake through `test_support::ws`, with the refusal's status and body.
pub async fn ws_connect(url: &str, headers: &[(String, String)]) -> Result<Socket, (u16, String)> {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    test_support::ws::handshake(url, &headers, STEP)
        .await
        .map_err(|(status, body, _)| (status, body))
}

pub async fn send(s: &mut Socket, v: Value) {
    tokio::time::timeout(STEP, s.send(Message::Text(v.to_string().into())))
        .await
        .unwrap()
        .unwrap();
}

/// The next message: a JSON frame, or the close code.
pub enum Next {
    Frame(Value),
    Closed(Option<u16>),
}

pub async fn next(s: &mut Socket) -> Next {
    loop {
        match tokio::time::timeout(STEP, s.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(Message::Text(t))) => return Next::Frame(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(c))) => return Next::Closed(c.map(|c| u16::from(c.code))),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return Next::Closed(None),
        }
    }
}

pub async fn frame(s: &mut Socket) -> Value {
    match next(s).await {
        Next::Frame(f) => f,
        Next::Closed(c) => panic!("closed ({c:?}) while waiting for a frame"),
    }
}

pub async fn closed_with(s: &mut Socket) -> Option<u16> {
    loop {
        if let Next::Closed(c) = next(s).await {
            return c;
        }
    }
}

/// Frames up to and including `typing:false`.
pub async fn answer(s: &mut Socket) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let f = frame(s).await;
        let done = f["type"] == "typing" && f["content"] == false;
        frames.push(f);
        if done {
            return frames;
        }
    }
}

pub fn kinds(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f["type"].as_str().unwrap().to_string())
        .collect()
}

pub fn stages(frames: &[Value]) -> Vec<String> {
    frames
        .iter()
        .filter(|f| f["type"] == "agent_progress")
        .map(|f| f["stage"].as_str().unwrap().to_string())
        .collect()
}

pub fn stage<'a>(frames: &'a [Value], name: &str) -> Vec<&'a Value> {
    frames.iter().filter(|f| f["stage"] == name).collect()
}

/// A fake LLM server: answers each request with the next scripted (status, body) and records
/// every request body and its headers.
#[derive(Clone, Default)]
pub struct FakeLlm {
    pub port: u16,
    script: Arc<Mutex<VecDeque<(u16, Value)>>>,
    pub received: Arc<Mutex<Vec<(HeaderMap, Value)>>>,
}

async fn fake_handler(
    State(fake): State<FakeLlm>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> impl IntoResponse {
    fake.received.lock().unwrap().push((headers, body));
    let (status, reply) = fake
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or((500, Value::Null));
    (StatusCode::from_u16(status).unwrap(), Json(reply))
}

impl FakeLlm {
    pub async fn start(script: Vec<(u16, Value)>) -> FakeLlm {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut fake = FakeLlm {
            port: listener.local_addr().unwrap().port(),
            ..FakeLlm::default()
        };
        fake.script = Arc::new(Mutex::new(script.into()));
        let app = Router::new()
            .route("/v1/chat/completions", post(fake_handler))
            .route("/api/chat", post(fake_handler))
            .with_state(fake.clone());
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        fake
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn requests(&self) -> Vec<(HeaderMap, Value)> {
        self.received.lock().unwrap().clone()
    }
}

/// Characters of everything in a recorded request's messages: contents plus tool call names and
/// arguments (the definition of `prompt_chars`).
pub fn sent_chars(body: &Value) -> u64 {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let content = m["content"].as_str().map_or(0, |c| c.chars().count());
            let calls: usize = m["tool_calls"].as_array().map_or(0, |calls| {
                calls
                    .iter()
                    .map(|c| {
                        c["function"]["name"].as_str().unwrap_or("").chars().count()
                            + c["function"]["arguments"]
                                .as_str()
                                .unwrap_or("")
                                .chars()
                                .count()
                    })
                    .sum()
            });
            (content + calls) as u64
        })
        .sum()
}
