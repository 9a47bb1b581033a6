//! Start-up and shutdown: builds the pingora server with four services (the edge's accept loop
//! on its listener, bound here first; the admin listener; the readiness probe; live
//! authorization) and drains on SIGTERM or SIGINT.
//!
//! Drain: readiness fails at once and the listeners stop accepting; open requests and WebSocket
//! tunnels get up to `shutdown_grace_secs`: one second before it ends, every open tunnel gets a
//! close frame 1001 "server shutting down" (at a frame boundary) so clients reconnect elsewhere; the process exits 0 as soon as none is left, or when the
//! grace ends. pingora's `grace_period_seconds` is the grace and its `graceful_shutdown_timeout_seconds`
//! is one second of runtime teardown after it, so the whole drain takes at most grace + 1 s.

pub(crate) mod connection;
pub(crate) mod listener;
pub(crate) mod live_service;
pub mod logging;
pub(crate) mod state;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::apps::http_app::HttpServer;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::services::background::background_service;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use crate::admin::{AdminApp, ReadinessProbe};
use crate::config::{Config, ConfigError};
use crate::decide::Edge;
use crate::live::tunnels::CloseRequest;
use crate::server::connection::EdgeApp;
use crate::server::listener::{listen, HttpConnections, Listener};
use crate::server::live_service::LiveService;
use crate::server::state::AppState;

/// Reads the configuration (the file, then the environment; [`Config::load`]) and checks it
/// whole: [`check_config`] after the config's own checks. Start-up, `check-config` and SIGHUP all
/// load it this way.
pub fn load_config(
    path: Option<PathBuf>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    let config = Config::load(path, env)?;
    check_config(&config)?;
    Ok(config)
}

/// The start-up checks that need a part's own knowledge, one per part: the key families
/// ([`crate::auth::keys`]), the origin grammar ([`crate::decide::cors`]), the refusal
/// template ([`crate::tunnel::refusal`]) and the live-close template ([`crate::tunnel::notice`]).
pub fn check_config(config: &Config) -> Result<(), ConfigError> {
    crate::auth::keys::check_config(&config.jwt)?;
    crate::decide::cors::check_config(&config.cors, &config.ws)?;
    crate::tunnel::refusal::check_config(&config.ws)?;
    crate::tunnel::notice::check_config(&config.ws)
}

/// Runs the proxy until it is told to stop. Returns after a graceful drain.
pub fn run(config: Config, config_path: Option<PathBuf>) -> anyhow::Result<()> {
    check_config(&config)?;
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let state = Arc::new(AppState::new(config)?);
    preload_revocations(&state)?;
    let c = &state.config;
    let conf = ServerConf {
        threads: c.threads,
        grace_period_seconds: Some(c.shutdown_grace_secs),
        graceful_shutdown_timeout_seconds: Some(1),
        // Every pingora timeout of a second or more runs on tokio's timer, so pingora's own timer
        // thread (a wake-up every 10 ms for the process's life) is never started: the edge's own
        // paths use tokio's timer already.
        fast_timeout_to_tokio_threshold_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let proxy = pingora::proxy::http_proxy(&server.configuration, Edge::new(state.clone()));
    let listener = listen("edge", &c.listen)?;
    let admin_listener = listen("admin", &c.admin_listen)?;
    let app = EdgeApp::new(state.clone(), proxy);
    let mut edge = background_service("auth-proxy", Listener::new("edge", app, listener));
    edge.threads = Some(c.threads);
    let admin_app = Arc::new(HttpServer::new_app(AdminApp::new(state.clone())));
    let mut admin = background_service(
        "auth-proxy admin",
        Listener::new("admin", HttpConnections(admin_app), admin_listener),
    );
    admin.threads = Some(1);
    let mut probe = background_service("readiness", ReadinessProbe::new(state.clone()));
    probe.threads = Some(1);
    let mut live = background_service("live", LiveService::new(state.clone(), config_path));
    live.threads = Some(1);
    server.add_service(edge);
    server.add_service(admin);
    server.add_service(probe);
    server.add_service(live);

    info!(listen = %c.listen, admin = %c.admin_listen, upstream = %c.upstream, "auth-proxy starting");
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainOnSignal { state }),
    });
    info!("auth-proxy stopped");
    Ok(())
}

/// How long before the end of the grace open tunnels get their close frame.
const TUNNEL_CLOSE_BEFORE_GRACE_END: Duration = Duration::from_secs(1);
/// Reads the revocations before the first handshake (on a runtime of its own: pingora builds its
/// runtimes later). A store that does not answer within 3 s leaves the edge refusing handshakes
/// with 503 until the live service reaches it.
fn preload_revocations(state: &AppState) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    if let Err(e) = rt.block_on(state.live.preload(Duration::from_secs(3))) {
        tracing::warn!(error = %e, "state store unavailable at start; handshakes get 503 until it answers");
    }
    Ok(())
}

/// Waits for SIGTERM or SIGINT, then starts the drain.
struct DrainOnSignal {
    state: Arc<AppState>,
}

#[async_trait]
impl ShutdownSignalWatch for DrainOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!(
                "cannot install signal handlers; a signal will stop the proxy without draining"
            );
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: draining"),
            _ = int.recv() => info!("SIGINT: draining"),
        }
        self.state.health.start_draining();
        exit_when_idle(self.state.clone());
        ShutdownSignal::GracefulTerminate
    }
}

/// Ends the process with status 0 as soon as no request or tunnel is open (checked twice, 100 ms
/// apart, so a connection accepted just before the listener closed is not cut). One second before
/// the grace ends, open tunnels are closed with 1001. If requests stay open, pingora's grace period
/// ends the process instead.
fn exit_when_idle(state: Arc<AppState>) {
    let grace = Duration::from_secs(state.config.shutdown_grace_secs);
    let close_tunnels_at = grace.saturating_sub(TUNNEL_CLOSE_BEFORE_GRACE_END);
    std::thread::spawn(move || {
        let started = Instant::now();
        let mut idle_checks = 0;
        let mut tunnels_closed = false;
        while started.elapsed() < grace {
            if !tunnels_closed && started.elapsed() >= close_tunnels_at {
                tunnels_closed = true;
                let n = state.tunnels.close_all(CloseRequest::going_away());
                info!(tunnels = n, "closing open tunnels with 1001");
            }
            if state.metrics.in_flight.get() <= 0 {
                idle_checks += 1;
                if idle_checks >= 2 {
                    info!(
                        after_ms = started.elapsed().as_millis() as u64,
                        "drained: no open requests or tunnels"
                    );
                    crate::server::logging::flush();
                    std::process::exit(0);
                }
            } else {
                idle_checks = 0;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
}
