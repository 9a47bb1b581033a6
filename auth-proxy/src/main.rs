//! The `auth-proxy` command: run the proxy (default), check the configuration, or mint a token.

use std::path::PathBuf;
use std::process::ExitCode;

use auth_proxy::config::Config;
use clap::{Parser, Subcommand};

/// jemalloc, as pingora runs in production: under handshake churn glibc's malloc was a sixth of the
/// proxy's CPU time and kept freed per-connection buffers resident (see BENCHMARKS.md).
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(
    name = "auth-proxy",
    version,
    about = "Authenticating WebSocket edge on pingora"
)]
struct Cli {
    /// TOML configuration file; environment variables override it.
    #[arg(long, env = "AUTH_PROXY_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy (the default).
    Run,
    /// Validate the configuration and exit.
    CheckConfig,
    /// Print an HS256 token `{id, iat}` for a user, signed with the configured JWT secret, as the
    /// News Nexus API mints them (for demos and smoke tests).
    MintToken {
        #[arg(long)]
        user_id: i64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = |name: &str| std::env::var(name).ok();
    let config = match Config::load(cli.config, &env) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            for w in config.warnings() {
                eprintln!("warning: {w}");
            }
            println!("configuration ok");
            ExitCode::SUCCESS
        }
        Command::MintToken { user_id } => mint(&config, user_id),
        Command::Run => {
            auth_proxy::logging::init(config.log.format);
            match auth_proxy::server::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn mint(config: &Config, user_id: i64) -> ExitCode {
    let claims = serde_json::json!({"id": user_id, "iat": auth_proxy::state::now_unix()});
    let key = jsonwebtoken::EncodingKey::from_secret(config.jwt.secret.as_bytes());
    match jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &key,
    ) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot mint a token: {e}");
            ExitCode::FAILURE
        }
    }
}
