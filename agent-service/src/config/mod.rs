//! The agent's settings, read once from the environment (the names Fluxion00API operators already
//! use where there are some) and validated. Errors name the variable and say what is wrong.
//!
//! A leaf: it imports nothing of the crate. Each part takes its own section: [`SqlSettings`]
//! (`sql.rs`, `AGENT_SQL_*`) for the custom-SQL guard and executor, [`Policy`] (`llm.rs`,
//! `LLM_ALLOWED`, `LLM_PIN`) for the provider choice, [`ScaleConfig`] (`scale.rs`, bus, drain,
//! quotas) for the bus and the usage ledger.

use std::net::SocketAddr;
use std::time::Duration;

mod llm;
mod scale;
mod sql;

pub use llm::{parse_allowed, Policy, PROVIDERS};
pub use scale::ScaleConfig;
#[cfg(test)]
pub use sql::DEFAULT_MAX_COLUMNS;
pub use sql::{SqlPolicy, SqlSettings, DEFAULT_MAX_VALUE_BYTES, SQLITE_LENGTH_CEILING};

#[derive(Debug, Clone)]
pub struct Config {
    /// `AGENT_LISTEN` (or `PORT` on 127.0.0.1), default `127.0.0.1:8000`.
    pub listen: SocketAddr,
    /// `IDENTITY_SECRET`, shared with auth-proxy; at least 32 bytes.
    pub identity_secret: String,
    /// `DATABASE_URL`, or `PATH_TO_DATABASE` + `NAME_DB`: the News Nexus database, opened read-only.
    pub database_url: String,
    /// `LLM_PROVIDER`: `offline` (default), `openai` or `ollama`; the provider when a connection names none.
    pub default_provider: String,
    /// `LLM_MODEL`: the model when a connection names none (default: the provider's).
    pub default_model: Option<String>,
    pub openai_base: String,
    pub openai_key: Option<String>,
    pub ollama_base: String,
    pub ollama_key: Option<String>,
    /// `LLM_TIMEOUT_SECS`, default 60.
    pub llm_timeout: Duration,
    /// `AGENT_MAX_STEPS`, default 4: LLM calls per message.
    pub max_steps: usize,
    /// `AGENT_MAX_MESSAGE_BYTES`, default 65536.
    pub max_message_bytes: usize,
    /// `AGENT_MAX_CONNECTIONS_PER_USER`, default 10.
    pub max_connections_per_user: usize,
    /// `AGENT_PING_INTERVAL_SECS`, default 25.
    pub ping_interval: Duration,
    /// `AGENT_IDLE_TIMEOUT_SECS`, default 60: a peer silent this long is dropped.
    pub idle_timeout: Duration,
    /// `AGENT_OUTBOUND_QUEUE`, default 256 frames per connection.
    pub outbound_queue: usize,
    /// `AGENT_STORE_URL`: where chat sessions live; default an SQLite file in `AGENT_DATA_DIR` (`./data`).
    pub store_url: String,
    /// `AGENT_SQL_*`: the custom-SQL policy and limits.
    pub sql: SqlSettings,
    /// `AGENT_IDENTITY_MAX_AGE_SECS`, default 10 (1–300): how old a proxy assertion may be, and how
    /// long its nonce is remembered.
    pub identity_max_age_secs: u64,
    /// `AGENT_IDENTITY_NONCE_CAPACITY`, default 1,000,000: the most nonces remembered at once.
    pub identity_nonce_capacity: usize,
    /// `AGENT_MAX_SESSIONS_PER_USER`, default 1000: past it, a new session evicts the user's least
    /// recently updated one.
    pub max_sessions_per_user: u64,
    /// Scale-out settings: the NATS bus, the drain grace, usage quotas.
    pub scale: ScaleConfig,
    /// `LLM_ALLOWED` and `LLM_PIN`: which providers and models clients may pick (see `llm::policy`).
    pub llm_policy: Policy,
    /// `LOG_FORMAT`: `human` (default) or `json`.
    pub log_format: LogFormat,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

#[derive(Debug, thiserror::Error)]
#[error("config error: {name}: {problem}")]
pub struct ConfigError {
    pub name: &'static str,
    pub problem: String,
}

fn err(name: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        name,
        problem: problem.into(),
    }
}

fn number<T: std::str::FromStr>(
    env: &dyn Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match env(name).filter(|v| !v.is_empty()) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| err(name, format!("{v:?} is not a number"))),
    }
}

fn flag(env: &dyn Fn(&str) -> Option<String>, name: &'static str) -> Result<bool, ConfigError> {
    match env(name).map(|v| v.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("false") | Some("0") | Some("no") => Ok(false),
        Some("true") | Some("1") | Some("yes") => Ok(true),
        Some(other) => Err(err(name, format!("{other:?} is not true or false"))),
    }
}

impl Config {
    pub fn from_env() -> Result<Config, ConfigError> {
        Self::load(&|k| std::env::var(k).ok())
    }

    pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let listen = match (get("AGENT_LISTEN"), get("PORT")) {
            (Some(l), _) => l.parse().map_err(|_| {
                err(
                    "AGENT_LISTEN",
                    format!("{l:?} is not an address like 127.0.0.1:8000"),
                )
            })?,
            (None, Some(p)) => {
                let port: u16 = p
                    .parse()
                    .map_err(|_| err("PORT", format!("{p:?} is not a port")))?;
                SocketAddr::from(([127, 0, 0, 1], port))
            }
            (None, None) => SocketAddr::from(([127, 0, 0, 1], 8000)),
        };
        let identity_secret = get("IDENTITY_SECRET").unwrap_or_default();
        if identity_secret.len() < 32 {
            return Err(err(
                "IDENTITY_SECRET",
                format!(
                    "must be at least 32 bytes (got {}); it is shared with auth-proxy",
                    identity_secret.len()
                ),
            ));
        }
        let database_url = match (get("DATABASE_URL"), get("PATH_TO_DATABASE"), get("NAME_DB")) {
            (Some(url), _, _) => url,
            (None, Some(dir), Some(name)) => format!(
                "sqlite://{}",
                std::path::Path::new(&dir).join(name).display()
            ),
            _ => {
                return Err(err(
                    "DATABASE_URL",
                    "is required (or PATH_TO_DATABASE and NAME_DB)",
                ))
            }
        };
        if db::Engine::of_url(&database_url).is_err() {
            return Err(err(
                "DATABASE_URL",
                "must start with sqlite: or postgres://",
            ));
        }
        let default_provider = get("LLM_PROVIDER")
            .unwrap_or_else(|| "offline".into())
            .to_ascii_lowercase();
        if !PROVIDERS.contains(&default_provider.as_str()) {
            return Err(err(
                "LLM_PROVIDER",
                format!("{default_provider:?} is not one of offline, openai, ollama"),
            ));
        }
        let data_dir = get("AGENT_DATA_DIR").unwrap_or_else(|| "./data".into());
        let store_url = get("AGENT_STORE_URL").unwrap_or_else(|| {
            format!(
                "sqlite://{}?mode=rwc",
                std::path::Path::new(&data_dir)
                    .join("agent-store.db")
                    .display()
            )
        });
        let identity_max_age_secs = number(env, "AGENT_IDENTITY_MAX_AGE_SECS", 10u64)?;
        if !(1..=300).contains(&identity_max_age_secs) {
            return Err(err(
                "AGENT_IDENTITY_MAX_AGE_SECS",
                "must be between 1 and 300",
            ));
        }
        let identity_nonce_capacity = number(env, "AGENT_IDENTITY_NONCE_CAPACITY", 1_000_000usize)?;
        if identity_nonce_capacity == 0 {
            return Err(err("AGENT_IDENTITY_NONCE_CAPACITY", "must be at least 1"));
        }
        let max_sessions_per_user = number(env, "AGENT_MAX_SESSIONS_PER_USER", 1000u64)?;
        if max_sessions_per_user == 0 {
            return Err(err("AGENT_MAX_SESSIONS_PER_USER", "must be at least 1"));
        }
        let default_model = get("LLM_MODEL");
        let llm_policy = Policy {
            allowed: match get("LLM_ALLOWED") {
                Some(v) => parse_allowed(&v).map_err(|e| err("LLM_ALLOWED", e))?,
                None => parse_allowed(&default_provider).map_err(|e| err("LLM_PROVIDER", e))?,
            },
            pin: flag(env, "LLM_PIN")?,
            default_provider: default_provider.clone(),
            default_model: default_model.clone(),
        };
        if !llm_policy.allows_default() {
            return Err(err(
                "LLM_ALLOWED",
                format!("must include the default provider LLM_PROVIDER={default_provider}"),
            ));
        }
        let log_format = match get("LOG_FORMAT").map(|v| v.to_ascii_lowercase()).as_deref() {
            None | Some("human") => LogFormat::Human,
            Some("json") => LogFormat::Json,
            Some(other) => {
                return Err(err("LOG_FORMAT", format!("{other:?} is not human or json")))
            }
        };
        let max_steps = number(env, "AGENT_MAX_STEPS", 4usize)?;
        if max_steps == 0 {
            return Err(err("AGENT_MAX_STEPS", "must be at least 1"));
        }
        Ok(Config {
            listen,
            identity_secret,
            database_url,
            default_provider,
            default_model,
            openai_base: get("URL_BASE_OPENAI")
                .unwrap_or_else(|| "https://api.openai.com/v1".into()),
            openai_key: get("KEY_OPENAI"),
            ollama_base: get("URL_BASE_OLLAMA").unwrap_or_else(|| "http://127.0.0.1:11434".into()),
            ollama_key: get("KEY_OLLAMA"),
            llm_timeout: Duration::from_secs(number(env, "LLM_TIMEOUT_SECS", 60u64)?),
            max_steps,
            max_message_bytes: number(env, "AGENT_MAX_MESSAGE_BYTES", 65536usize)?,
            max_connections_per_user: number(env, "AGENT_MAX_CONNECTIONS_PER_USER", 10usize)?,
            ping_interval: Duration::from_secs(number(env, "AGENT_PING_INTERVAL_SECS", 25u64)?),
            idle_timeout: Duration::from_secs(number(env, "AGENT_IDLE_TIMEOUT_SECS", 60u64)?),
            outbound_queue: number(env, "AGENT_OUTBOUND_QUEUE", 256usize)?.max(8),
            store_url,
            sql: SqlSettings::load(env)?,
            identity_max_age_secs,
            identity_nonce_capacity,
            max_sessions_per_user,
            scale: ScaleConfig::load(env)?,
            llm_policy,
            log_format,
        })
    }

    /// The data directory that holds the default store, if the store is the default SQLite file.
    pub fn store_dir(&self) -> Option<std::path::PathBuf> {
        let path = self
            .store_url
            .strip_prefix("sqlite://")?
            .split('?')
            .next()?;
        std::path::Path::new(path).parent().map(|p| p.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// A minimal valid environment plus `extra`.
    fn base(extra: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k: &str| match k {
            "IDENTITY_SECRET" => Some(SECRET.to_string()),
            "DATABASE_URL" => Some("sqlite://x.db".to_string()),
            _ => extra
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string()),
        }
    }

    #[test]
    fn defaults_and_compatibility_names() {
        let env = |k: &str| match k {
            "IDENTITY_SECRET" => Some(SECRET.to_string()),
            "PATH_TO_DATABASE" => Some("/srv/db".to_string()),
            "NAME_DB" => Some("newsnexus10.db".to_string()),
            "PORT" => Some("8001".to_string()),
            _ => None,
        };
        let c = Config::load(&env).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8001");
        assert_eq!(c.database_url, "sqlite:///srv/db/newsnexus10.db");
        assert_eq!(c.default_provider, "offline");
        assert_eq!(c.max_steps, 4);
        assert_eq!(c.identity_max_age_secs, 10);
        assert_eq!(c.max_sessions_per_user, 1000);
    }

    #[test]
    fn errors_name_the_variable() {
        let e = Config::load(&|_| None).unwrap_err();
        assert_eq!(e.name, "IDENTITY_SECRET");
        let env = |k: &str| match k {
            "IDENTITY_SECRET" => Some(SECRET.to_string()),
            "DATABASE_URL" => Some("sqlite://x.db".to_string()),
            "LLM_PROVIDER" => Some("gpt".to_string()),
            _ => None,
        };
        assert_eq!(Config::load(&env).unwrap_err().name, "LLM_PROVIDER");
    }

    #[test]
    fn scale_out_settings() {
        let c = Config::load(&base(&[])).unwrap().scale;
        assert_eq!(c.bus_url, None);
        assert_eq!(c.drain_grace, Duration::from_secs(20));
        assert_eq!(c.daily_llm_calls_per_user, 0);
        let c = Config::load(&base(&[
            ("AGENT_BUS_URL", "nats://127.0.0.1:4222"),
            ("AGENT_USAGE_DAILY_LLM_CALLS_PER_USER", "5"),
        ]))
        .unwrap()
        .scale;
        assert_eq!(c.bus_url.as_deref(), Some("nats://127.0.0.1:4222"));
        assert_eq!(c.daily_llm_calls_per_user, 5);
        for (bad, name) in [
            (("AGENT_BUS_URL", "http://x"), "AGENT_BUS_URL"),
            (("AGENT_BUS_NAMESPACE", "a.b"), "AGENT_BUS_NAMESPACE"),
            (
                ("AGENT_BUS_LEASE_TTL_SECS", "1"),
                "AGENT_BUS_LEASE_TTL_SECS",
            ),
            (
                ("AGENT_USAGE_DAILY_PROMPT_CHARS_PER_USER", "lots"),
                "AGENT_USAGE_DAILY_PROMPT_CHARS_PER_USER",
            ),
        ] {
            let extra: &'static [(&str, &str)] = Box::leak(Box::new([bad]));
            assert_eq!(Config::load(&base(extra)).unwrap_err().name, name);
        }
    }

    #[test]
    fn provider_policy_and_log_format() {
        let c = Config::load(&base(&[])).unwrap();
        assert!(c.llm_policy.permits("offline", None));
        assert!(!c.llm_policy.permits("ollama", None));
        assert!(!c.llm_policy.pin);
        assert_eq!(c.log_format, LogFormat::Human);
        let c = Config::load(&base(&[
            ("LLM_ALLOWED", "offline,ollama:mistral:instruct"),
            ("LLM_PIN", "true"),
            ("LOG_FORMAT", "JSON"),
        ]))
        .unwrap();
        assert!(c.llm_policy.permits("ollama", Some("mistral:instruct")));
        assert!(c.llm_policy.pin);
        assert_eq!(c.log_format, LogFormat::Json);
        let e = Config::load(&base(&[("LLM_ALLOWED", "openai")])).unwrap_err();
        assert_eq!(e.name, "LLM_ALLOWED");
        assert!(e.problem.contains("LLM_PROVIDER=offline"), "{e}");
        assert_eq!(
            Config::load(&base(&[("LLM_PIN", "maybe")]))
                .unwrap_err()
                .name,
            "LLM_PIN"
        );
        assert_eq!(
            Config::load(&base(&[("LOG_FORMAT", "xml")]))
                .unwrap_err()
                .name,
            "LOG_FORMAT"
        );
    }
}
