//! The minimal upstream for benchmarks: WebSocket echo on `/ws/{id}`, `200 {"status":"ok"}` for
//! any other path. It does nothing else, so it measures the physical limit of the machine.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::IntoResponse;
use axum::routing::any;
use axum::{Json, Router};
use futures_util::{SinkExt, StreamExt};

async fn ws(upgrade: WebSocketUpgrade) -> impl IntoResponse {
    upgrade.on_upgrade(echo)
}

async fn echo(socket: WebSocket) {
    let (mut tx, mut rx) = socket.split();
    while let Some(Ok(msg)) = rx.next().await {
        let reply = match msg {
            Message::Text(_) | Message::Binary(_) => msg,
            Message::Close(_) => return,
            _ => continue,
        };
        if tx.send(reply).await.is_err() {
            return;
        }
    }
}

async fn ok() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

pub fn router() -> Router {
    Router::new().route("/ws/{id}", any(ws)).fallback(ok)
}

pub async fn serve(listen: &str) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("echo upstream on {}", listener.local_addr()?);
    axum::serve(listener, router()).await?;
    Ok(())
}
