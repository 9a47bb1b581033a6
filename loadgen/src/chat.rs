//! Scenarios of the Fluxion00Web chat protocol (JSON text frames with a `type`), against any server
//! that speaks it: agent-service (directly or through the edge) or Fluxion00API.
//!
//! - [`welcome`]: connect, read the first frame (the `system` welcome), close cleanly (send a close
//!   frame, wait for the server's and for the end of the stream), repeat. The latency is connect to
//!   welcome; the rate counts whole cycles.
//! - [`chat`]: C connections, each reads its welcome, then (all together, once every connection is
//!   open) sends M `user_message`s one after the other, each time waiting for its `agent_message`
//!   and then the `typing: false` that closes the answer. The latency is `user_message` sent to
//!   `agent_message` received; the rate counts answers over the messaging phase only. The frames of
//!   each answer are tallied: the status log (`agent_progress`) by stage, whether each LLM call is
//!   reported with its prompt and response characters, the `duration_ms` of `completed`.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::Barrier;
use tokio_tungstenite::tungstenite::Message;

use crate::report::{histogram, ChatStats, Report};
use crate::scenarios::{run_workers, take, Load, OP_TIMEOUT};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next text frame parsed as JSON; `None` when the socket closed, failed, or sent non-JSON.
async fn next_json(ws: &mut Socket) -> Option<Value> {
    loop {
        match ws.next().await? {
            Ok(Message::Text(t)) => return serde_json::from_str(&t).ok(),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// True for the welcome frame both servers send first: `{"type": "system", ...}`.
fn is_welcome(frame: &Value) -> bool {
    frame.get("type").and_then(Value::as_str) == Some("system")
}

/// Connects and reads the first frame, which must be the welcome.
pub async fn open_with_welcome(url: &str) -> Option<Socket> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
    let first = next_json(&mut ws).await?;
    is_welcome(&first).then_some(ws)
}

/// Sends a close frame and reads until the server's close and the end of the stream.
async fn close_cleanly(mut ws: Socket) {
    let _ = ws.close(None).await;
    while let Some(Ok(_)) = ws.next().await {}
}

/// Connect, welcome, close, one cycle after the other on each connection slot.
pub async fn welcome(load: &Load) -> Report {
    let (h, errors, secs) = run_workers(load, |i, deadline, budget| {
        let load = load.clone();
        async move {
            let mut h = histogram();
            let mut errors = 0;
            let mut n = i;
            while Instant::now() < deadline && take(&budget) {
                let url = load.url_for(n);
                n += 1;
                let t0 = Instant::now();
                let cycle = async {
                    let ws = open_with_welcome(&url).await?;
                    let took = t0.elapsed();
                    close_cleanly(ws).await;
                    Some(took)
                };
                match tokio::time::timeout(OP_TIMEOUT, cycle).await {
                    Ok(Some(took)) => {
                        h.record(took.as_micros().max(1) as u64).ok();
                    }
                    _ => errors += 1,
                }
            }
            (h, errors)
        }
    })
    .await;
    Report::new("welcome", &load.url, load.connections, secs, &h, errors)
}

/// What one connection saw of its answers.
#[derive(Default)]
struct Tally {
    stats: ChatStats,
    durations_ms: Vec<f64>,
}

impl Tally {
    fn progress(&mut self, frame: &Value) {
        let s = &mut self.stats;
        s.progress_frames += 1;
        let stage = frame.get("stage").and_then(Value::as_str).unwrap_or("?");
        *s.stages.entry(stage.to_string()).or_default() += 1;
        let details = frame.get("details");
        let number = |key: &str| details.and_then(|d| d.get(key)).and_then(Value::as_f64);
        match stage {
            "llm_request" => {
                s.llm_requests += 1;
                s.llm_requests_with_chars += u64::from(number("prompt_chars").is_some());
            }
            "llm_response" => {
                s.llm_responses += 1;
                let both = number("prompt_chars").is_some() && number("response_chars").is_some();
                s.llm_responses_with_chars += u64::from(both);
            }
            "completed" => {
                if let Some(ms) = number("duration_ms") {
                    self.durations_ms.push(ms);
                }
            }
            _ => {}
        }
    }

    fn add(&mut self, other: Tally) {
        let (s, o) = (&mut self.stats, other.stats);
        s.answers += o.answers;
        s.error_frames += o.error_frames;
        s.frames += o.frames;
        s.progress_frames += o.progress_frames;
        s.llm_requests += o.llm_requests;
        s.llm_requests_with_chars += o.llm_requests_with_chars;
        s.llm_responses += o.llm_responses;
        s.llm_responses_with_chars += o.llm_responses_with_chars;
        for (stage, n) in o.stages {
            *s.stages.entry(stage).or_default() += n;
        }
        self.durations_ms.extend(other.durations_ms);
    }
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[mid]
    } else {
        (v[mid - 1] + v[mid]) / 2.0
    })
}

/// How one message's answer ended.
enum Turn {
    /// `agent_message` after this long.
    Answered(std::time::Duration),
    /// An `error` frame in its place (the connection stays usable).
    Refused,
}

/// Sends one message and reads until the `typing: false` after its answer (or error).
async fn one_turn(ws: &mut Socket, message: &str, tally: &mut Tally) -> Option<Turn> {
    let frame = json!({"type": "user_message", "content": message}).to_string();
    let t0 = Instant::now();
    ws.send(Message::Text(frame.into())).await.ok()?;
    let mut ended: Option<Turn> = None;
    loop {
        let frame = next_json(ws).await?;
        tally.stats.frames += 1;
        match frame.get("type").and_then(Value::as_str) {
            Some("agent_progress") => tally.progress(&frame),
            Some("agent_message") if ended.is_none() => {
                ended = Some(Turn::Answered(t0.elapsed()));
            }
            Some("error") if ended.is_none() => ended = Some(Turn::Refused),
            Some("typing") if frame.get("content") == Some(&Value::Bool(false)) => {
                if let Some(turn) = ended {
                    return Some(turn);
                }
            }
            _ => {}
        }
    }
}

/// `connections` clients × `messages` messages each; see the module doc.
pub async fn chat(load: &Load, messages: usize, message: &str) -> Report {
    let barrier = Arc::new(Barrier::new(load.connections + 1));
    let deadline_after = load.duration;
    let budget: Arc<AtomicU64> = load.budget();
    let tasks: Vec<_> = (0..load.connections)
        .map(|i| {
            let url = load.url_for(i);
            let barrier = barrier.clone();
            let budget = budget.clone();
            let message = message.to_string();
            tokio::spawn(async move {
                let mut h = histogram();
                let mut tally = Tally::default();
                let opened = tokio::time::timeout(OP_TIMEOUT, open_with_welcome(&url))
                    .await
                    .ok()
                    .flatten();
                // Every client waits here, opened or not, so the messaging phase starts together.
                barrier.wait().await;
                let Some(mut ws) = opened else {
                    return (h, 1, tally);
                };
                let deadline = Instant::now() + deadline_after;
                let mut errors = 0;
                for _ in 0..messages {
                    if Instant::now() >= deadline || !take(&budget) {
                        break;
                    }
                    let turn = one_turn(&mut ws, &message, &mut tally);
                    match tokio::time::timeout(OP_TIMEOUT, turn).await {
                        Ok(Some(Turn::Answered(took))) => {
                            tally.stats.answers += 1;
                            h.record(took.as_micros().max(1) as u64).ok();
                        }
                        Ok(Some(Turn::Refused)) => {
                            tally.stats.error_frames += 1;
                            errors += 1;
                        }
                        // Timed out or the connection ended: this client is done.
                        _ => {
                            errors += 1;
                            break;
                        }
                    }
                }
                let _ = tokio::time::timeout(OP_TIMEOUT, close_cleanly(ws)).await;
                (h, errors, tally)
            })
        })
        .collect();
    barrier.wait().await;
    let started = Instant::now();
    let mut total = histogram();
    let mut errors = 0;
    let mut tally = Tally::default();
    for t in tasks {
        match t.await {
            Ok((h, e, t)) => {
                total.add(h).ok();
                errors += e;
                tally.add(t);
            }
            Err(_) => errors += 1,
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let mut r = Report::new("chat", &load.url, load.connections, secs, &total, errors);
    let Tally {
        mut stats,
        durations_ms,
    } = tally;
    stats.messages_per_connection = messages;
    stats.progress_per_answer = if stats.answers > 0 {
        stats.progress_frames as f64 / stats.answers as f64
    } else {
        0.0
    };
    stats.agent_duration_ms_p50 = median(durations_ms);
    r.chat = Some(stats);
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::ws::{Message as AxMessage, WebSocket, WebSocketUpgrade};
    use axum::response::IntoResponse;

    /// A tiny chat server: the welcome, then for each message the frames of one answer.
    async fn serve_chat(socket: WebSocket) {
        let (mut tx, mut rx) = socket.split();
        let welcome = json!({"type": "system", "content": "Welcome"}).to_string();
        if tx.send(AxMessage::Text(welcome.into())).await.is_err() {
            return;
        }
        while let Some(Ok(msg)) = rx.next().await {
            let AxMessage::Text(_) = msg else { continue };
            let frames = [
                json!({"type": "user_echo", "content": "q"}),
                json!({"type": "typing", "content": true}),
                json!({"type": "agent_progress", "stage": "llm_request", "details": {"prompt_chars": 9}}),
                json!({"type": "agent_progress", "stage": "completed", "details": {"duration_ms": 2}}),
                json!({"type": "agent_message", "content": "a"}),
                json!({"type": "typing", "content": false}),
            ];
            for f in frames {
                if tx
                    .send(AxMessage::Text(f.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    }

    async fn upgrade(ws: WebSocketUpgrade) -> impl IntoResponse {
        ws.on_upgrade(serve_chat)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn welcome_and_chat_against_a_chat_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route("/ws/{id}", axum::routing::any(upgrade));
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        let load = Load {
            url: format!("ws://127.0.0.1:{port}/ws/{{uuid}}?provider=ollama"),
            tokens: vec!["t".into()],
            connections: 3,
            duration: std::time::Duration::from_secs(10),
            count: 0,
        };
        assert!(load.url_for(0).ends_with("?provider=ollama&token=t"));
        assert_ne!(
            load.url_for(0),
            load.url_for(0),
            "a new client id each time"
        );
        let w = welcome(&Load {
            count: 30,
            ..load.clone()
        })
        .await;
        assert_eq!((w.ok, w.errors), (30, 0));
        let c = chat(&load, 4, "q").await;
        assert_eq!((c.ok, c.errors), (12, 0));
        let stats = c.chat.unwrap();
        assert_eq!(
            (stats.answers, stats.progress_frames, stats.frames),
            (12, 24, 72)
        );
        assert_eq!(
            (stats.llm_requests, stats.llm_requests_with_chars),
            (12, 12)
        );
        assert_eq!(stats.agent_duration_ms_p50, Some(2.0));
        assert_eq!(stats.progress_per_answer, 2.0);
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![]), None);
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
    }

    #[test]
    fn tallies_the_status_log() {
        let mut t = Tally::default();
        t.progress(&json!({"type": "agent_progress", "stage": "llm_request", "details": {"prompt_chars": 10}}));
        t.progress(&json!({"type": "agent_progress", "stage": "llm_response", "details": {"prompt_chars": 10, "response_chars": 4}}));
        t.progress(&json!({"type": "agent_progress", "stage": "llm_response", "details": {}}));
        t.progress(
            &json!({"type": "agent_progress", "stage": "completed", "details": {"duration_ms": 3}}),
        );
        let s = &t.stats;
        assert_eq!(
            (s.progress_frames, s.llm_requests, s.llm_requests_with_chars),
            (4, 1, 1)
        );
        assert_eq!((s.llm_responses, s.llm_responses_with_chars), (2, 1));
        assert_eq!(t.durations_ms, vec![3.0]);
        assert_eq!(
            crate::report::stages_line(&s.stages),
            "completed×1 llm_request×1 llm_response×2"
        );
    }
}
