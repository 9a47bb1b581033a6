//! `agent-service chat`: a small terminal client of the WebSocket protocol. It sends messages and
//! prints every frame as it arrives, the status log rendered one line per step.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

/// How long to wait for any frame before giving up.
const FRAME_TIMEOUT: Duration = Duration::from_secs(120);

/// One printable line for a server frame.
pub fn render(frame: &Value) -> String {
    let content = |f: &Value| match &f["content"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match frame["type"].as_str().unwrap_or("?") {
        "system" => format!("[system] {}", content(frame)),
        "session" => format!("[session] {}", frame["session_id"].as_str().unwrap_or("")),
        "user_echo" => format!("you: {}", content(frame)),
        "typing" => format!("[typing {}]", content(frame)),
        "agent_message" => format!("agent: {}", content(frame)),
        "error" => format!("[error] {}", content(frame)),
        "pong" => "[pong]".to_string(),
        "agent_progress" => {
            let details = frame["details"].as_object().map(|d| {
                d.iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "question" | "arguments" | "sql"))
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            format!(
                "  · {:<20} {}  {}",
                frame["stage"].as_str().unwrap_or("?"),
                frame["message"].as_str().unwrap_or(""),
                details.unwrap_or_default()
            )
        }
        _ => frame.to_string(),
    }
}

/// Connects, sends each message (or stdin lines when none), prints frames; returns on the last answer.
pub async fn run(url: &str, messages: Vec<String>) -> anyhow::Result<()> {
    let (socket, _) = match tokio_tungstenite::connect_async(url).await {
        Ok(ok) => ok,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            anyhow::bail!("handshake refused: HTTP {} {}", resp.status(), body);
        }
        Err(e) => anyhow::bail!("cannot connect: {e}"),
    };
    let (mut sink, mut stream) = socket.split();
    let mut pending: Box<dyn Iterator<Item = String> + Send> =
        Box::new(messages.clone().into_iter());
    let interactive = messages.is_empty();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut welcomed = false;
    loop {
        let msg = tokio::time::timeout(FRAME_TIMEOUT, stream.next())
            .await
            .map_err(|_| anyhow::anyhow!("no frame in {FRAME_TIMEOUT:?}"))?;
        let text = match msg {
            Some(Ok(Message::Text(t))) => t.to_string(),
            Some(Ok(Message::Close(c))) => {
                println!(
                    "[closed] {}",
                    c.map(|c| format!("{} {}", c.code, c.reason))
                        .unwrap_or_default()
                );
                return Ok(());
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => anyhow::bail!("connection error: {e}"),
            None => return Ok(()),
        };
        let frame: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        println!("{}", render(&frame));
        let ready = match frame["type"].as_str() {
            Some("system") if !welcomed => {
                welcomed = true;
                true
            }
            Some("typing") => frame["content"] == Value::Bool(false),
            _ => false,
        };
        if !ready {
            continue;
        }
        let next = if interactive {
            stdin.next_line().await?.filter(|l| !l.trim().is_empty())
        } else {
            pending.next()
        };
        let Some(line) = next else {
            let _ = sink.send(Message::Close(None)).await;
            return Ok(());
        };
        let frame = serde_json::json!({"type": "user_message", "content": line});
        sink.send(Message::Text(frame.to_string().into())).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn renders_progress_on_one_line() {
        let f = json!({"type": "agent_progress", "stage": "llm_request", "message": "Asking offline", "timestamp": 1.0,
            "details": {"agent": "general", "prompt_chars": 812}});
        let line = render(&f);
        assert!(
            line.contains("llm_request") && line.contains("prompt_chars=812"),
            "{line}"
        );
        assert_eq!(
            render(&json!({"type": "agent_message", "content": "hi"})),
            "agent: hi"
        );
    }
}
