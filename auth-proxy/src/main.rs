//! The `auth-proxy` command: run the proxy (default), check the configuration, or mint a token.

use std::path::PathBuf;
use std::process::ExitCode;

use auth_proxy::{Config, RevocationRequest};
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
    /// Revoke tokens in the state store (`AUTH_PROXY_STATE_URL`): every running replica refuses
    /// them and closes their tunnels. Give exactly one of --user, --jti, --all.
    Revoke {
        /// The tokens of this user issued until now.
        #[arg(long, conflicts_with_all = ["jti", "all"], required_unless_present_any = ["jti", "all"])]
        user: Option<i64>,
        /// The token with this `jti`.
        #[arg(long, conflicts_with = "all")]
        jti: Option<String>,
        /// Every token issued until now (a leaked signing key).
        #[arg(long)]
        all: bool,
        /// Why, for the record.
        #[arg(long)]
        reason: Option<String>,
        /// The revoked token's `exp` (unix seconds), so the record is purged after it.
        #[arg(long)]
        expires_at: Option<i64>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let env = |name: &str| std::env::var(name).ok();
    let config = match auth_proxy::load_config(cli.config.clone(), &env) {
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
        Command::Revoke {
            user,
            jti,
            all,
            reason,
            expires_at,
        } => revoke(
            &config,
            RevocationRequest {
                user_id: user,
                jti,
                all,
                reason,
                expires_at,
            },
        ),
        Command::Run => {
            auth_proxy::logging::init(config.log.format);
            let code = match auth_proxy::run(config, cli.config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    ExitCode::FAILURE
                }
            };
            auth_proxy::logging::flush();
            code
        }
    }
}

fn revoke(config: &Config, request: RevocationRequest) -> ExitCode {
    let new = match request.into_new(auth_proxy::now_unix() as i64) {
        Ok(n) => n,
        Err(problem) => {
            eprintln!("{problem}");
            return ExitCode::from(2);
        }
    };
    let url = config.state_url();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(auth_proxy::store_revocation(config, &new))
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(record) => {
            println!("{}", serde_json::json!(record));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("cannot store the revocation in {}: {e}", redact(&url));
            ExitCode::FAILURE
        }
    }
}

/// A URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

fn mint(config: &Config, user_id: i64) -> ExitCode {
    let claims = serde_json::json!({"id": user_id, "iat": auth_proxy::now_unix()});
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
