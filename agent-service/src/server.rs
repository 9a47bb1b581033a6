//! Serving: takes the listener handed over at start (socket activation, name `agent`: see
//! [`shared::listen`]) or binds `AGENT_LISTEN`, serves [`crate::api::router`] until Ctrl-C or
//! SIGTERM, then drains (see `chat/drain.rs`).

use std::sync::Arc;

use axum::serve::ListenerExt;

use crate::api::router;
use crate::config::Config;
use crate::state::AppState;

/// Serves until Ctrl-C or SIGTERM, then drains (see `chat/drain.rs`).
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let state = Arc::new(AppState::new(config).await?);
    let listener = match shared::listen::take("agent")
        .map_err(|e| anyhow::anyhow!("the agent listener handed over at start: {e}"))?
    {
        Some(inherited) => {
            inherited.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(inherited)?
        }
        None => tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| anyhow::anyhow!("AGENT_LISTEN {listen}: {e}"))?,
    };
    let policy = &state.config.llm_policy;
    tracing::info!(%listen, provider = %state.config.default_provider, llm_allowed = ?policy.allowed, llm_pin = policy.pin, "agent-service listening");
    // Status frames are small and written one by one as the agent works; with Nagle on, every
    // frame after the first waits for the edge's delayed ACK (~40 ms) and they arrive in a burst.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY on an accepted connection");
        }
    });
    let draining = state.clone();
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            draining.drain.run(&draining.hub, &draining.metrics).await;
        })
        .await?;
    Ok(())
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("agent-service stopping");
}
