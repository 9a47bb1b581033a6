//! A fake LLM speaking Ollama's wire format, for benchmarks of whole agent stacks: every reply is a
//! plain final answer (no tool call) after a fixed delay (default 1 ms), so each chat message costs
//! one LLM call in any agent that follows the protocol, and the LLM itself costs next to nothing.
//!
//! - `POST /api/chat` (what agent-service's Ollama client calls): `{"model", "message": {"role":
//!   "assistant", "content"}, "done": true, "prompt_eval_count", "eval_count", ...}`
//! - `POST /api/generate` (what Fluxion00API's `OllamaProvider` calls): `{"model", "response",
//!   "done": true, "prompt_eval_count", "eval_count", ...}`
//! - `GET /api/tags`: one model, `mistral:instruct`
//! - `GET /stats`: the calls served so far, per endpoint, the prompt characters received and the TCP
//!   connections accepted, so a harness can tell what a stack asked per answer and how
//! - anything else: `200 {"status":"ok"}` (for readiness polls)

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

/// Counters of what was asked.
#[derive(Default)]
struct Counters {
    chat: AtomicU64,
    generate: AtomicU64,
    tags: AtomicU64,
    prompt_chars: AtomicU64,
    connections: AtomicU64,
}

#[derive(Clone)]
struct Fake {
    delay: Duration,
    reply: Arc<str>,
    counters: Arc<Counters>,
}

/// The model a request names, or Ollama's usual default.
fn model_of(body: &Value) -> String {
    body.get("model")
        .and_then(Value::as_str)
        .unwrap_or("mistral:instruct")
        .to_string()
}

/// Rough token counts (4 characters a token), so clients that read them get plausible numbers.
fn tokens(chars: usize) -> u64 {
    (chars as u64).div_ceil(4)
}

impl Fake {
    async fn wait(&self) {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
    }

    /// The common tail of both answers: Ollama's timing and count fields.
    fn tail(&self, prompt_chars: usize) -> Value {
        self.counters
            .prompt_chars
            .fetch_add(prompt_chars as u64, Ordering::Relaxed);
        let nanos = self.delay.as_nanos() as u64;
        json!({
            "created_at": "2025-01-01T00:00:00Z",
            "done": true,
            "done_reason": "stop",
            "total_duration": nanos,
            "load_duration": 0,
            "prompt_eval_count": tokens(prompt_chars),
            "prompt_eval_duration": nanos / 2,
            "eval_count": tokens(self.reply.chars().count()),
            "eval_duration": nanos / 2,
        })
    }
}

fn merge(mut head: Value, tail: Value) -> Value {
    if let (Some(h), Value::Object(t)) = (head.as_object_mut(), tail) {
        h.extend(t);
    }
    head
}

async fn chat(State(f): State<Fake>, Json(body): Json<Value>) -> Json<Value> {
    f.counters.chat.fetch_add(1, Ordering::Relaxed);
    let prompt_chars: usize = body
        .get("messages")
        .and_then(Value::as_array)
        .map(|ms| {
            ms.iter()
                .filter_map(|m| m.get("content").and_then(Value::as_str))
                .map(|c| c.chars().count())
                .sum()
        })
        .unwrap_or(0);
    f.wait().await;
    let head = json!({
        "model": model_of(&body),
        "message": {"role": "assistant", "content": &*f.reply},
    });
    Json(merge(head, f.tail(prompt_chars)))
}

async fn generate(State(f): State<Fake>, Json(body): Json<Value>) -> Json<Value> {
    f.counters.generate.fetch_add(1, Ordering::Relaxed);
    let prompt_chars = body
        .get("prompt")
        .and_then(Value::as_str)
        .map_or(0, |p| p.chars().count());
    f.wait().await;
    let head = json!({"model": model_of(&body), "response": &*f.reply});
    Json(merge(head, f.tail(prompt_chars)))
}

async fn tags(State(f): State<Fake>) -> Json<Value> {
    f.counters.tags.fetch_add(1, Ordering::Relaxed);
    Json(json!({"models": [{
        "name": "mistral:instruct",
        "model": "mistral:instruct",
        "modified_at": "2025-01-01T00:00:00Z",
        "size": 4_113_301_824u64,
        "digest": "f974a74358d62a017b37c6f424fcdf2744ca02926c4f952513ddf474b2fa5091",
        "details": {"format": "gguf", "family": "llama", "parameter_size": "7.2B", "quantization_level": "Q4_0"}
    }]}))
}

async fn stats(State(f): State<Fake>) -> Json<Value> {
    let c = &f.counters;
    Json(json!({
        "chat": c.chat.load(Ordering::Relaxed),
        "generate": c.generate.load(Ordering::Relaxed),
        "tags": c.tags.load(Ordering::Relaxed),
        "prompt_chars": c.prompt_chars.load(Ordering::Relaxed),
        "connections": c.connections.load(Ordering::Relaxed),
    }))
}

async fn ok() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// The fake's routes, and its counters (for the listener to count connections).
fn app(delay: Duration, reply: &str) -> (Router, Arc<Counters>) {
    let counters = Arc::<Counters>::default();
    let fake = Fake {
        delay,
        reply: reply.into(),
        counters: counters.clone(),
    };
    let router = Router::new()
        .route("/api/chat", post(chat))
        .route("/api/generate", post(generate))
        .route("/api/tags", get(tags))
        .route("/stats", get(stats))
        .fallback(ok)
        .with_state(fake);
    (router, counters)
}

/// Serves on `listener`: counts each accepted connection, and sets `TCP_NODELAY` as Ollama (Go) does.
async fn serve_on(
    listener: tokio::net::TcpListener,
    delay: Duration,
    reply: &str,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let (router, counters) = app(delay, reply);
    let listener = listener.tap_io(move |tcp| {
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router).await
}

pub async fn serve(listen: &str, delay: Duration, reply: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!(
        "fake Ollama on {} (replies after {} µs)",
        listener.local_addr()?,
        delay.as_micros()
    );
    serve_on(listener, delay, reply).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_both_ollama_endpoints() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { serve_on(listener, Duration::from_millis(1), "Two.").await });
        let http = reqwest::Client::new();
        let chat: Value = http
            .post(format!("{base}/api/chat"))
            .json(&json!({"model": "m", "messages": [{"role": "user", "content": "12345678"}], "stream": false}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(chat["message"]["content"], "Two.");
        assert_eq!(
            (chat["done"].clone(), chat["prompt_eval_count"].clone()),
            (json!(true), json!(2))
        );
        let gen: Value = http
            .post(format!("{base}/api/generate"))
            .json(&json!({"model": "m", "prompt": "hi", "stream": false}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (gen["response"].clone(), gen["model"].clone()),
            (json!("Two."), json!("m"))
        );
        let tags: Value = http
            .get(format!("{base}/api/tags"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(tags["models"][0]["name"], "mistral:instruct");
        let s: Value = http
            .get(format!("{base}/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            s,
            json!({"chat": 1, "generate": 1, "tags": 1, "prompt_chars": 10, "connections": 1})
        );
    }
}
