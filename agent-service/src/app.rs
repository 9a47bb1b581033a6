//! The application: shared state built once from config, and the router.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use shared::identity::Verifier;

use crate::chat::bus::Bus;
use crate::chat::drain::Drain;
use crate::chat::hub::Hub;
use crate::chat::store::Store;
use crate::config::Config;
use crate::identity;
use crate::identity::replay::ReplayGuard;
use crate::metrics::Metrics;
use crate::newsnexus::sql_exec::SqlRunner;
use crate::newsnexus::NewsDb;
use crate::{http, sessions_api, usage_api, ws};

pub struct AppState {
    pub config: Config,
    pub verifier: Verifier,
    pub replay: ReplayGuard,
    pub db: NewsDb,
    pub sql: SqlRunner,
    pub metrics: Arc<Metrics>,
    pub http: reqwest::Client,
    pub hub: Arc<Hub>,
    pub store: Store,
    /// The cross-replica hub (off without `AGENT_BUS_URL`).
    pub bus: Arc<Bus>,
    pub drain: Drain,
}

impl AppState {
    pub async fn new(config: Config) -> anyhow::Result<AppState> {
        let db =
            NewsDb::open(&config.database_url).map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
        let sql = SqlRunner::open(&config.database_url, &config.sql)
            .map_err(|e| anyhow::anyhow!("DATABASE_URL: {e}"))?;
        if let Some(dir) = config.store_dir() {
            std::fs::create_dir_all(&dir)
                .map_err(|e| anyhow::anyhow!("AGENT_DATA_DIR {}: {e}", dir.display()))?;
        }
        let store = Store::open(&config.store_url)
            .await
            .map_err(|e| anyhow::anyhow!("AGENT_STORE_URL: {e}"))?;
        let metrics = Arc::new(Metrics::new());
        let hub = Arc::new(Hub::new(config.max_connections_per_user));
        let bus = Bus::start(
            &config.scale,
            &hub,
            metrics.clone(),
            config.max_connections_per_user,
        )
        .await?;
        Ok(AppState {
            verifier: Verifier::new(
                config.identity_secret.as_bytes(),
                config.identity_max_age_secs,
            ),
            replay: ReplayGuard::new(config.identity_max_age_secs, config.identity_nonce_capacity),
            db,
            sql,
            metrics,
            http: reqwest::Client::builder()
                .timeout(config.llm_timeout)
                .build()?,
            hub,
            store,
            bus,
            drain: Drain::new(config.scale.drain_grace),
            config,
        })
    }
}

/// All routes. Identity is checked by middleware for everything but the public paths.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/health", get(http::health))
        .route("/ready", get(http::ready))
        .route("/api/info", get(http::info))
        .route("/metrics", get(http::metrics))
        .route("/ws/{client_id}", get(ws::handler))
        .route(
            "/api/chat/sessions",
            get(sessions_api::list).post(sessions_api::create),
        )
        .route(
            "/api/chat/sessions/{id}",
            get(sessions_api::get).delete(sessions_api::delete),
        )
        .route("/api/usage", get(usage_api::mine))
        .route("/api/admin/usage", get(usage_api::everyone))
        .fallback(http::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            identity::require,
        ))
        .with_state(state)
}

/// Serves until Ctrl-C or SIGTERM, then drains (see `drain.rs`).
pub async fn serve(config: Config) -> anyhow::Result<()> {
    let listen = config.listen;
    let state = Arc::new(AppState::new(config).await?);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("AGENT_LISTEN {listen}: {e}"))?;
    let policy = &state.config.llm_policy;
    tracing::info!(%listen, provider = %state.config.default_provider, llm_allowed = ?policy.allowed, llm_pin = policy.pin, "agent-service listening");
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
