//! What the service holds: [`AppState`], built once from [`Config`], and [`RouterState`], the
//! router's handle on it. Handlers name the part they use (`State<Arc<Metrics>>`, `State<Store>`,
//! `State<Arc<IdentityCheck>>`) through `FromRef`, or `State<Arc<AppState>>` when they need more.

use std::sync::Arc;

use axum::extract::FromRef;

use crate::chat::bus::Bus;
use crate::chat::drain::Drain;
use crate::chat::hub::Hub;
use crate::chat::store::Store;
use crate::config::Config;
use crate::identity::IdentityCheck;
use crate::metrics::Metrics;
use crate::newsnexus::sql_exec::SqlRunner;
use crate::newsnexus::NewsDb;

pub struct AppState {
    pub config: Config,
    /// The proxy's signed identity, checked once per request.
    pub identity: Arc<IdentityCheck>,
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
            identity: Arc::new(IdentityCheck::new(&config)),
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

/// The router's state: one [`AppState`], shared. Cloned per request (an `Arc`), and the source of
/// the sub-states handlers extract.
#[derive(Clone)]
pub struct RouterState(pub Arc<AppState>);

impl FromRef<RouterState> for Arc<AppState> {
    fn from_ref(state: &RouterState) -> Self {
        state.0.clone()
    }
}

impl FromRef<RouterState> for Arc<Metrics> {
    fn from_ref(state: &RouterState) -> Self {
        state.0.metrics.clone()
    }
}

impl FromRef<RouterState> for Store {
    fn from_ref(state: &RouterState) -> Self {
        state.0.store.clone()
    }
}

impl FromRef<RouterState> for Arc<IdentityCheck> {
    fn from_ref(state: &RouterState) -> Self {
        state.0.identity.clone()
    }
}
