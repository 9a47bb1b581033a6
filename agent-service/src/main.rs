//! The `agent-service` command: serve (default), `chat` (a terminal client), `demo-db` (a demo
//! News Nexus database).

use std::process::ExitCode;

use agent_service::Config;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "agent-service",
    version,
    about = "News Nexus agent behind auth-proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve (the default). Configuration comes from the environment; see README.
    Serve,
    /// Chat over the WebSocket protocol and print the status log as it arrives.
    Chat {
        /// e.g. ws://127.0.0.1:8080/ws/<client-id>?token=<jwt>&provider=offline
        url: String,
        /// Messages to send one after the other; without any, lines are read from stdin.
        #[arg(long = "message", short = 'm')]
        messages: Vec<String>,
    },
    /// Write a demo News Nexus SQLite database to PATH.
    DemoDb { path: String },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => match Config::from_env() {
            Ok(config) => {
                agent_service::init_logs(config.log_format);
                agent_service::serve(config).await
            }
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(2);
            }
        },
        Command::Chat { url, messages } => agent_service::run_chat_client(&url, messages).await,
        Command::DemoDb { path } => agent_service::create_demo_db(&path).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
