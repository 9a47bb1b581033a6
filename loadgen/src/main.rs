//! `loadgen`: measures the edge and the agent as their users judge them. Loopback targets only,
//! unless told otherwise; every run is bounded in time (and optionally in count). Output: a human
//! line, or JSON. Also serves the benchmarks' stand-ins: an echo upstream and a fake Ollama LLM.

mod chat;
mod echo;
mod fake_llm;
mod report;
mod scenarios;
mod tokens;

use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use scenarios::Load;

#[derive(Parser)]
#[command(name = "loadgen", about = "Load generator for auth-proxy and friends")]
struct Cli {
    /// Runtime worker threads.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Common {
    /// Target URL (ws:// for WebSocket scenarios, http:// for `http`); a token is appended as
    /// `token=`, and each connection gets a new UUID in place of `{uuid}`.
    #[arg(long)]
    url: String,
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds to run (or to hold, for `idle`).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Stop after this many operations in total (0 = no limit).
    #[arg(long, default_value_t = 0)]
    count: u64,
    /// HS256 secret for minting `{id, iat}` tokens.
    #[arg(long, env = "JWT_SECRET")]
    secret: Option<String>,
    /// User ids to mint tokens for, round-robin.
    #[arg(long, default_value = "1..=2")]
    user_ids: String,
    /// One token per line, instead of minting.
    #[arg(long)]
    token_file: Option<String>,
    /// Send no token at all.
    #[arg(long)]
    no_token: bool,
    /// Allow targets outside the loopback range.
    #[arg(long)]
    allow_remote: bool,
    /// Print JSON instead of a human line.
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the minimal echo upstream.
    EchoServer {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
    },
    /// WebSocket handshakes per second and handshake latency.
    Handshakes(Common),
    /// Message round trips over established sockets.
    Roundtrip {
        #[command(flatten)]
        common: Common,
        #[arg(long, default_value_t = 64)]
        size: usize,
    },
    /// Hold N idle connections, then report the RSS growth of each --pid per connection.
    Idle {
        #[command(flatten)]
        common: Common,
        /// A process to watch; repeat (or separate with commas) for several (their sum is reported too).
        #[arg(long, value_delimiter = ',')]
        pid: Vec<u32>,
        /// Count a connection as open only once its first frame (a chat server's welcome) arrived.
        #[arg(long)]
        first_frame: bool,
        /// Connections opened and held before the first RSS reading.
        #[arg(long, default_value_t = 0)]
        warmup: usize,
        /// Text each connection sends after the hold; any frame back proves it alive.
        #[arg(long, default_value = "ping")]
        probe: String,
    },
    /// Chat protocol: connect, read the welcome (first frame, `type: system`), close cleanly; repeat.
    Welcome(Common),
    /// Chat protocol: --connections clients each send --messages user messages one after the other,
    /// waiting for each `agent_message` and the closing `typing: false`; tallies the status log.
    Chat {
        #[command(flatten)]
        common: Common,
        /// Messages per connection.
        #[arg(long, default_value_t = 10)]
        messages: usize,
        /// The text of every message.
        #[arg(long, default_value = "How many approved articles are there?")]
        message: String,
    },
    /// Serve a fake LLM speaking Ollama's API (/api/chat, /api/generate, /api/tags): a plain answer
    /// after --delay-us.
    FakeOllama {
        #[arg(long, default_value = "127.0.0.1:11434")]
        listen: String,
        /// Microseconds before each answer.
        #[arg(long, default_value_t = 1000)]
        delay_us: u64,
        /// The answer's text.
        #[arg(long, default_value = "There are 2 approved articles in the database.")]
        reply: String,
    },
    /// Authenticated HTTP requests per second.
    Http {
        #[command(flatten)]
        common: Common,
        /// Put the token in the query instead of `Authorization: Bearer`.
        #[arg(long)]
        query_token: bool,
    },
}

fn is_loopback(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else {
        return false;
    };
    match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn load(c: &Common) -> anyhow::Result<Load> {
    anyhow::ensure!(
        c.allow_remote || is_loopback(&c.url),
        "{} is not a loopback address (use --allow-remote deliberately)",
        c.url
    );
    anyhow::ensure!(
        c.duration > 0.0 && c.duration <= 3600.0,
        "--duration must be between 0 and 3600 seconds"
    );
    let tokens = if c.no_token {
        Vec::new()
    } else {
        tokens::load(c.secret.as_deref(), &c.user_ids, c.token_file.as_deref())?
    };
    Ok(Load {
        url: c.url.clone(),
        tokens,
        connections: c.connections.max(1),
        duration: Duration::from_secs_f64(c.duration),
        count: c.count,
    })
}

async fn run(command: Command) -> anyhow::Result<()> {
    let (report, json) = match command {
        Command::EchoServer { listen } => return echo::serve(&listen).await,
        Command::FakeOllama {
            listen,
            delay_us,
            reply,
        } => return fake_llm::serve(&listen, Duration::from_micros(delay_us), &reply).await,
        Command::Handshakes(c) => (scenarios::handshakes(&load(&c)?).await, c.json),
        Command::Roundtrip { common, size } => (
            scenarios::roundtrip(&load(&common)?, size).await,
            common.json,
        ),
        Command::Idle {
            common,
            pid,
            first_frame,
            warmup,
            probe,
        } => {
            let limit = scenarios::raise_nofile();
            if (limit as usize) < common.connections + warmup + 64 {
                anyhow::bail!(
                    "cannot hold {} connections: the open-files limit is {limit}",
                    common.connections + warmup
                );
            }
            let options = scenarios::IdleOptions {
                first_frame,
                warmup,
                probe,
            };
            (
                scenarios::idle(&load(&common)?, &pid, &options).await,
                common.json,
            )
        }
        Command::Welcome(c) => (chat::welcome(&load(&c)?).await, c.json),
        Command::Chat {
            common,
            messages,
            message,
        } => (
            chat::chat(&load(&common)?, messages, &message).await,
            common.json,
        ),
        Command::Http {
            common,
            query_token,
        } => (
            scenarios::http(&load(&common)?, !query_token).await,
            common.json,
        ),
    };
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", report.human());
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cli.threads.max(1))
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_by_default() {
        assert!(is_loopback("ws://127.0.0.1:8080/ws/x"));
        assert!(is_loopback("http://localhost:1/"));
        assert!(is_loopback("ws://[::1]:8080/ws/x"));
        assert!(!is_loopback("ws://10.0.0.1:8080/ws/x"));
        assert!(!is_loopback("ws://example.com/ws/x"));
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn measures_against_the_echo_upstream() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, echo::router()).await.ok() });
        let ws = Load {
            url: format!("ws://127.0.0.1:{port}/ws/bench"),
            tokens: tokens::load(Some("secret"), "1..=2", None).unwrap(),
            connections: 2,
            duration: Duration::from_secs(5),
            count: 40,
        };
        let h = scenarios::handshakes(&ws).await;
        assert_eq!((h.ok, h.errors), (40, 0));
        let r = scenarios::roundtrip(&ws, 32).await;
        assert_eq!((r.ok, r.errors), (40, 0));
        let http = Load {
            url: format!("http://127.0.0.1:{port}/api/info"),
            ..ws
        };
        let q = scenarios::http(&http, true).await;
        assert_eq!((q.ok, q.errors), (40, 0));
        let idle = Load {
            url: format!("ws://127.0.0.1:{port}/ws/idle"),
            connections: 20,
            duration: Duration::from_millis(200),
            count: 0,
            tokens: vec![],
        };
        let me = std::process::id();
        let options = scenarios::IdleOptions::default();
        let i = scenarios::idle(&idle, &[me], &options).await;
        assert_eq!((i.held, i.errors), (Some(20), 0));
        assert!(i.rss_bytes_per_connection.is_some());
        let two = scenarios::idle(
            &Load {
                connections: 5,
                ..idle
            },
            &[me, me],
            &options,
        )
        .await;
        assert_eq!(two.rss_by_pid.map(|p| p.len()), Some(2));
    }
}
