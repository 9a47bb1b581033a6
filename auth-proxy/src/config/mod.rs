//! The proxy's settings: one TOML file (`--config PATH` or `AUTH_PROXY_CONFIG`) overridden by a few
//! environment variables, loaded once at start and validated. Every error names the setting (and its
//! environment variable, where there is one) and says what is wrong.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

mod sections;
pub use sections::{ConnectionsConfig, RejectWith, WebSocketConfig};

/// Shortest HMAC secret accepted without `jwt.allow_weak_secret`.
pub const MIN_SECRET_BYTES: usize = 32;

/// Default of the retired `read_buffer_bytes` setting.
pub const DEFAULT_READ_BUFFER_BYTES: usize = 0;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub admin_listen: String,
    pub upstream: String,
    pub threads: usize,
    pub forward_credentials: bool,
    /// Adopt a client's `x-request-id` instead of always making a new one (logs a warning: clients
    /// can then choose the id the logs and the upstream see).
    pub trust_client_request_id: bool,
    pub websocket_idle_timeout_secs: u64,
    /// Retired: the edge accepts its connections itself and reads them without pingora's read
    /// buffer. Still accepted so that existing files load; a value other than 0 logs a warning.
    pub read_buffer_bytes: usize,
    pub shutdown_grace_secs: u64,
    pub trusted_proxies: Vec<String>,
    pub public_paths: Vec<String>,
    pub public_prefixes: Vec<String>,
    pub admin_paths: Vec<String>,
    pub admin_prefixes: Vec<String>,
    pub max_token_bytes: usize,
    pub jwt: JwtConfig,
    pub users: UsersConfig,
    pub identity: IdentityConfig,
    pub throttle: ThrottleConfig,
    pub log: LogConfig,
    pub cors: CorsConfig,
    pub ws: WsConfig,
    /// Connection caps and the request head deadline (see [`crate::accept::admission`]).
    pub connections: ConnectionsConfig,
    /// WebSocket tunnel limits (see [`crate::tunnel`]).
    pub websocket: WebSocketConfig,
    /// Where the edge keeps its own files (the default state store). `AUTH_PROXY_DATA_DIR`.
    pub data_dir: String,
    /// Enables the admin API (`/admin/...` on the admin listener) when set. `AUTH_PROXY_ADMIN_TOKEN`.
    pub admin_token: String,
    pub live: LiveConfig,
}

/// Live authorization: the state store and how often decisions are re-checked.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    /// `AUTH_PROXY_STATE_URL`: `postgres://...` for several replicas, `sqlite://PATH` for one host;
    /// empty: `sqlite://<data_dir>/auth-proxy-state.db`.
    pub state_url: String,
    /// How often the users with open tunnels are re-checked against the Users table.
    pub recheck_secs: u64,
    /// How often the state store is re-read (catch-up for missed notifications, and the only
    /// channel on SQLite).
    pub poll_secs: u64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            state_url: String::new(),
            recheck_secs: 60,
            poll_secs: 2,
        }
    }
}

/// A verification key selected by the token's `kid`, bound to one algorithm family.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyConfig {
    pub kid: String,
    /// An algorithm of the key's family (e.g. HS256, RS256, ES256); tokens for this key must use an
    /// algorithm of the same family that is also in `jwt.algorithms`.
    pub algorithm: String,
    /// The HMAC secret (HS family).
    pub secret: String,
    /// A PEM public key file (RS/PS, ES, EdDSA families).
    pub public_key_file: String,
}

/// Cross-origin requests from browser front ends (see `cors.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Origins (`scheme://host[:port]`) allowed to call the edge; empty: CORS off.
    pub allowed_origins: Vec<String>,
    /// `Access-Control-Max-Age` of preflight answers.
    pub max_age_secs: u64,
}

impl Default for CorsConfig {
    fn default() -> Self {
        CorsConfig {
            allowed_origins: Vec::new(),
            max_age_secs: 600,
        }
    }
}

/// WebSocket handshake rules (see `cors.rs` and `ws_refusal.rs`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WsConfig {
    /// Browser origins allowed to open WebSockets; empty: any.
    pub allowed_origins: Vec<String>,
    /// `http` (an HTTP error before the upgrade) or `close` (upgrade, then a close frame).
    pub reject_with: RejectWith,
    /// With `close`: a JSON text frame sent before the close frame; `{error}`, `{message}`,
    /// `{status}` are filled in. Empty: none.
    pub reject_frame: String,
    /// A JSON text frame sent before the close frame when the edge ends an open tunnel (revoked,
    /// expired, user removed, idle, shutting down, message too big); `{error}`, `{message}`,
    /// `{code}` (and `{status}`: the close code) are filled in. Empty: `reject_frame`'s template,
    /// if set; else none.
    pub close_frame: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwtConfig {
    pub secret: String,
    pub algorithms: Vec<String>,
    pub public_key_file: String,
    pub leeway_secs: u64,
    pub require_exp: bool,
    pub max_token_age_secs: u64,
    pub user_id_claim: String,
    pub allow_weak_secret: bool,
    /// Keys selected by `kid` (reloaded on SIGHUP).
    pub keys: Vec<KeyConfig>,
    /// A JWKS endpoint (HTTP or HTTPS) whose keys are selected by `kid`.
    pub jwks_url: String,
    /// The shortest time between two JWKS fetches (an unknown `kid` cannot cause more).
    pub jwks_min_refresh_secs: u64,
    /// How many verified tokens are remembered so their next requests skip the signature check
    /// (see `verified.rs`); 0 turns the cache off.
    pub verified_cache_capacity: u64,
    /// How long a verified token is remembered, from its verification.
    pub verified_cache_ttl_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UsersConfig {
    pub database_url: String,
    pub table: String,
    pub id_column: String,
    pub username_column: String,
    pub admin_column: String,
    pub active_condition: String,
    pub cache_ttl_secs: u64,
    pub negative_cache_ttl_secs: u64,
    pub cache_capacity: u64,
    pub query_timeout_ms: u64,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdentityConfig {
    pub secret: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ThrottleConfig {
    pub failures_per_minute: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "0.0.0.0:9090".into(),
            upstream: "127.0.0.1:8000".into(),
            threads: 1,
            forward_credentials: false,
            trust_client_request_id: false,
            websocket_idle_timeout_secs: 3600,
            read_buffer_bytes: DEFAULT_READ_BUFFER_BYTES,
            shutdown_grace_secs: 15,
            trusted_proxies: Vec::new(),
            public_paths: Vec::new(),
            public_prefixes: Vec::new(),
            admin_paths: Vec::new(),
            admin_prefixes: Vec::new(),
            max_token_bytes: 8192,
            jwt: JwtConfig::default(),
            users: UsersConfig::default(),
            identity: IdentityConfig::default(),
            throttle: ThrottleConfig::default(),
            log: LogConfig::default(),
            cors: CorsConfig::default(),
            ws: WsConfig::default(),
            connections: Default::default(),
            websocket: Default::default(),
            data_dir: "./data".into(),
            admin_token: String::new(),
            live: LiveConfig::default(),
        }
    }
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            secret: String::new(),
            algorithms: vec!["HS256".into()],
            public_key_file: String::new(),
            leeway_secs: 30,
            require_exp: false,
            max_token_age_secs: 0,
            user_id_claim: "id".into(),
            allow_weak_secret: false,
            keys: Vec::new(),
            jwks_url: String::new(),
            jwks_min_refresh_secs: 30,
            verified_cache_capacity: 10_000,
            verified_cache_ttl_secs: 300,
        }
    }
}

impl JwtConfig {
    /// The configured algorithm allowlist.
    pub fn algorithms(&self) -> Result<Vec<Algorithm>, ConfigError> {
        if self.algorithms.is_empty() {
            return Err(err("jwt.algorithms", "must name at least one algorithm"));
        }
        self.algorithms
            .iter()
            .map(|a| {
                a.parse::<Algorithm>().map_err(|_| {
                    err(
                        "jwt.algorithms",
                        format!("{a:?} is not a supported algorithm (e.g. HS256, RS256, ES256)"),
                    )
                })
            })
            .collect()
    }
}

impl Default for UsersConfig {
    fn default() -> Self {
        UsersConfig {
            database_url: String::new(),
            table: "Users".into(),
            id_column: "id".into(),
            username_column: "username".into(),
            admin_column: "isAdmin".into(),
            active_condition: String::new(),
            cache_ttl_secs: 30,
            negative_cache_ttl_secs: 5,
            cache_capacity: 100_000,
            query_timeout_ms: 2000,
            max_connections: 8,
        }
    }
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            failures_per_minute: 20,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
        }
    }
}

/// A setting that is wrong, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config error: {setting}: {problem}")]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

impl ConfigError {
    /// A problem with one setting (named as the operator writes it, with its environment
    /// variable where there is one).
    pub fn new(setting: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            setting: setting.into(),
            problem: problem.into(),
        }
    }
}

fn err(setting: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(setting, problem)
}

impl Config {
    /// Reads the file (if any), applies the environment, validates.
    pub fn load(
        path: Option<PathBuf>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(p) => Self::from_file(&p)?,
            None => Config::default(),
        };
        config.apply_env(env);
        config.validate()?;
        Ok(config)
    }

    fn from_file(path: &std::path::Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("--config", format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text)
            .map_err(|e| err("--config", format!("{}: {}", path.display(), e.message())))
    }

    /// Applies the environment overrides (empty values are ignored).
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        let get = |name: &str| env(name).filter(|v| !v.is_empty());
        if let Some(v) = get("JWT_SECRET") {
            self.jwt.secret = v;
        }
        if let Some(v) = get("DATABASE_URL") {
            self.users.database_url = v;
        }
        if let Some(v) = get("AUTH_PROXY_LISTEN") {
            self.listen = v;
        }
        if let Some(v) = get("AUTH_PROXY_ADMIN_LISTEN") {
            self.admin_listen = v;
        }
        if let Some(v) = get("AUTH_PROXY_UPSTREAM") {
            self.upstream = v;
        }
        if let Some(v) = get("IDENTITY_SECRET") {
            self.identity.secret = v;
        }
        if let Some(v) = get("AUTH_PROXY_DATA_DIR") {
            self.data_dir = v;
        }
        if let Some(v) = get("AUTH_PROXY_ADMIN_TOKEN") {
            self.admin_token = v;
        }
        if let Some(v) = get("AUTH_PROXY_STATE_URL") {
            self.live.state_url = v;
        }
        if let Some(v) = get("AUTH_PROXY_CORS_ALLOWED_ORIGINS") {
            self.cors.allowed_origins = v
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .map(str::to_string)
                .collect();
        }
    }

    /// Checks every setting; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        parse_addr("listen (AUTH_PROXY_LISTEN)", &self.listen)?;
        parse_addr("admin_listen (AUTH_PROXY_ADMIN_LISTEN)", &self.admin_listen)?;
        parse_addr("upstream (AUTH_PROXY_UPSTREAM)", &self.upstream)?;
        if self.listen == self.admin_listen {
            return Err(err(
                "admin_listen (AUTH_PROXY_ADMIN_LISTEN)",
                "must differ from listen",
            ));
        }
        if self.threads == 0 {
            return Err(err("threads", "must be at least 1"));
        }
        if self.websocket_idle_timeout_secs == 0 {
            return Err(err("websocket_idle_timeout_secs", "must be at least 1"));
        }
        if self.max_token_bytes == 0 {
            return Err(err("max_token_bytes", "must be at least 1"));
        }
        for p in self.trusted_proxies.iter() {
            parse_cidr(p).map_err(|e| err("trusted_proxies", format!("{p:?}: {e}")))?;
        }
        for (name, list) in [
            ("public_paths", &self.public_paths),
            ("public_prefixes", &self.public_prefixes),
            ("admin_paths", &self.admin_paths),
            ("admin_prefixes", &self.admin_prefixes),
        ] {
            if let Some(bad) = list.iter().find(|p| !p.starts_with('/')) {
                return Err(err(name, format!("{bad:?} must start with '/'")));
            }
        }
        self.validate_jwt()?;
        self.validate_users()?;
        self.validate_identity()?;
        self.validate_live()?;
        if self.throttle.failures_per_minute == 0 {
            return Err(err("throttle.failures_per_minute", "must be at least 1"));
        }
        if self.connections.header_timeout_secs == 0 {
            return Err(err("connections.header_timeout_secs", "must be at least 1"));
        }
        if self.connections.max_per_ip == 0 {
            return Err(err("connections.max_per_ip", "must be at least 1"));
        }
        if self.websocket.max_frame_bytes == 0 || self.websocket.max_message_bytes == 0 {
            return Err(err(
                "websocket.max_frame_bytes / max_message_bytes",
                "must be at least 1",
            ));
        }
        self.validate_origins()
    }

    fn validate_origins(&self) -> Result<(), ConfigError> {
        if !self.ws.reject_frame.is_empty() && self.ws.reject_with != RejectWith::Close {
            return Err(err(
                "ws.reject_frame",
                "is only sent with ws.reject_with = \"close\"",
            ));
        }
        Ok(())
    }

    fn validate_jwt(&self) -> Result<(), ConfigError> {
        self.jwt.algorithms()?;
        if self.jwt.user_id_claim.is_empty() {
            return Err(err("jwt.user_id_claim", "must not be empty"));
        }
        let url = &self.jwt.jwks_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return Err(err("jwt.jwks_url", "must be an http:// or https:// URL"));
        }
        if self.jwt.jwks_min_refresh_secs == 0 {
            return Err(err("jwt.jwks_min_refresh_secs", "must be at least 1"));
        }
        if self.jwt.verified_cache_capacity > 0 && self.jwt.verified_cache_ttl_secs == 0 {
            return Err(err(
                "jwt.verified_cache_ttl_secs",
                "must be at least 1 (set jwt.verified_cache_capacity = 0 to turn the cache off)",
            ));
        }
        let mut kids = std::collections::HashSet::new();
        for k in &self.jwt.keys {
            if !kids.insert(k.kid.as_str()) {
                return Err(err("jwt.keys", format!("kid {:?} appears twice", k.kid)));
            }
        }
        Ok(())
    }

    fn validate_live(&self) -> Result<(), ConfigError> {
        let t = &self.admin_token;
        if !t.is_empty() && t.len() < MIN_SECRET_BYTES {
            return Err(err(
                "admin_token (AUTH_PROXY_ADMIN_TOKEN)",
                format!(
                    "must be at least {MIN_SECRET_BYTES} bytes (got {})",
                    t.len()
                ),
            ));
        }
        let url = &self.live.state_url;
        if !(url.is_empty() || db::Engine::of_url(url).is_ok()) {
            return Err(err(
                "live.state_url (AUTH_PROXY_STATE_URL)",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        if url.is_empty() && self.data_dir.is_empty() {
            return Err(err("data_dir (AUTH_PROXY_DATA_DIR)", "must not be empty"));
        }
        if self.live.recheck_secs == 0 {
            return Err(err("live.recheck_secs", "must be at least 1"));
        }
        if self.live.poll_secs == 0 {
            return Err(err("live.poll_secs", "must be at least 1"));
        }
        Ok(())
    }

    /// The state store's URL: `live.state_url`, or a SQLite file under `data_dir`.
    pub fn state_url(&self) -> String {
        if self.live.state_url.is_empty() {
            let path = std::path::Path::new(&self.data_dir).join("auth-proxy-state.db");
            format!("sqlite://{}", path.display())
        } else {
            self.live.state_url.clone()
        }
    }

    fn validate_users(&self) -> Result<(), ConfigError> {
        let u = &self.users;
        let url = u.database_url.as_str();
        if url.is_empty() {
            return Err(err(
                "users.database_url (DATABASE_URL)",
                "is required (sqlite://PATH or postgres://...)",
            ));
        }
        if db::Engine::of_url(url).is_err() {
            return Err(err(
                "users.database_url (DATABASE_URL)",
                "must start with sqlite:, postgres:// or postgresql://",
            ));
        }
        for (name, value) in [
            ("users.table", &u.table),
            ("users.id_column", &u.id_column),
            ("users.username_column", &u.username_column),
            ("users.admin_column", &u.admin_column),
        ] {
            db::check_identifier(value).map_err(|p| err(name, p))?;
        }
        if u.active_condition.contains(';') {
            return Err(err(
                "users.active_condition",
                "must be one SQL condition, without ';'",
            ));
        }
        if u.query_timeout_ms == 0 {
            return Err(err("users.query_timeout_ms", "must be at least 1"));
        }
        if u.max_connections == 0 {
            return Err(err("users.max_connections", "must be at least 1"));
        }
        Ok(())
    }

    fn validate_identity(&self) -> Result<(), ConfigError> {
        let len = self.identity.secret.len();
        if len < MIN_SECRET_BYTES {
            return Err(err(
                "identity.secret (IDENTITY_SECRET)",
                format!("must be at least {MIN_SECRET_BYTES} bytes (got {len}); it is shared with the agent only"),
            ));
        }
        Ok(())
    }

    /// Warnings to log at every start for explicit loosenings.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.jwt.allow_weak_secret && self.jwt.secret.len() < MIN_SECRET_BYTES {
            w.push(format!(
                "jwt.allow_weak_secret is on and the JWT secret is {} bytes: tokens are easier to forge; use at least {MIN_SECRET_BYTES}",
                self.jwt.secret.len()
            ));
        }
        if self.forward_credentials {
            w.push("forward_credentials is on: the client's token and Authorization header reach the upstream".into());
        }
        if self.trust_client_request_id {
            w.push("trust_client_request_id is on: a client's x-request-id is adopted in the logs and sent upstream".into());
        }
        if !self.cors.allowed_origins.is_empty() {
            w.push(format!(
                "cors.allowed_origins is on: scripts from {} may call the edge and read its answers",
                self.cors.allowed_origins.join(", ")
            ));
        }
        if self.websocket.allow_extensions {
            w.push("websocket.allow_extensions is on: WebSocket extensions such as permessage-deflate reach the agent, and the frame and message limits count compressed bytes".into());
        }
        if self.read_buffer_bytes != 0 {
            w.push("read_buffer_bytes has no effect any more: the edge reads its sockets without a read buffer of pingora's (the setting is kept so existing files still load)".into());
        }
        w
    }

    /// The trusted proxy networks, parsed.
    pub fn trusted_networks(&self) -> Vec<(IpAddr, u8)> {
        self.trusted_proxies
            .iter()
            .filter_map(|p| parse_cidr(p).ok())
            .collect()
    }
}

fn parse_addr(setting: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        err(
            setting,
            format!("{value:?} is not an address like 127.0.0.1:8080"),
        )
    })
}

/// Parses `10.0.0.0/8`, `::1/128` or a bare address.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .trim()
        .parse()
        .map_err(|_| "not an IP address or CIDR".to_string())?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or("bad prefix length")?,
        None => max,
    };
    Ok((ip, len))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    fn minimal() -> &'static [(&'static str, &'static str)] {
        &[
            ("JWT_SECRET", SECRET),
            ("IDENTITY_SECRET", SECRET),
            ("DATABASE_URL", "sqlite:///tmp/x.db"),
        ]
    }

    #[test]
    fn environment_alone_is_enough() {
        let c = Config::load(None, &env_of(minimal())).unwrap();
        assert_eq!(c.listen, "0.0.0.0:8080");
        assert_eq!(c.admin_listen, "0.0.0.0:9090");
        assert_eq!(c.upstream, "127.0.0.1:8000");
        assert_eq!(c.users.table, "Users");
        assert_eq!(c.jwt.algorithms, vec!["HS256"]);
    }

    #[test]
    fn a_loosening_is_a_warning() {
        let env = env_of(&[
            ("JWT_SECRET", "short"),
            ("IDENTITY_SECRET", SECRET),
            ("DATABASE_URL", "sqlite:x.db"),
        ]);
        let mut c = Config::default();
        c.apply_env(&env);
        c.jwt.allow_weak_secret = true;
        c.validate().unwrap();
        assert_eq!(c.warnings().len(), 1);
    }

    #[test]
    fn the_retired_read_buffer_setting_still_loads_and_warns() {
        let mut c = Config::default();
        c.apply_env(&env_of(minimal()));
        assert!(c.warnings().is_empty());
        c.read_buffer_bytes = 65536;
        c.validate().unwrap();
        let warnings = c.warnings();
        assert!(
            warnings.iter().any(|w| w.contains("read_buffer_bytes")),
            "{warnings:?}"
        );
    }

    #[test]
    fn errors_name_the_setting() {
        let mut c = Config::default();
        c.apply_env(&env_of(minimal()));
        c.listen = "nope".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("listen (AUTH_PROXY_LISTEN)"));

        let mut c = Config::default();
        c.apply_env(&env_of(minimal()));
        c.jwt.algorithms = vec!["HS999".into()];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("jwt.algorithms"));

        let mut c = Config::default();
        c.apply_env(&env_of(minimal()));
        c.users.table = "Users; DROP".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("users.table"));
    }

    #[test]
    fn toml_is_parsed_and_unknown_keys_refused() {
        let c: Config = toml::from_str("threads = 2\n[users]\ntable = \"people\"\n").unwrap();
        assert_eq!(c.threads, 2);
        assert_eq!(c.users.table, "people");
        assert_eq!(c.users.id_column, "id");
        assert!(toml::from_str::<Config>("thread = 2").is_err());
    }

    #[test]
    fn live_settings_are_checked() {
        let base = || {
            let mut c = Config::default();
            c.apply_env(&env_of(minimal()));
            c
        };
        let mut c = base();
        c.admin_token = "short".into();
        let e = c.validate().unwrap_err().to_string();
        assert!(
            e.contains("admin_token (AUTH_PROXY_ADMIN_TOKEN)") && !e.contains("short\""),
            "{e}"
        );
        let mut c = base();
        c.live.state_url = "mysql://x".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("live.state_url"));
        let mut c = base();
        c.live.recheck_secs = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("live.recheck_secs"));
        let mut c = base();
        c.jwt.jwks_url = "file:///etc/keys".into();
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("jwt.jwks_url"));
        let key = KeyConfig {
            kid: "k".into(),
            algorithm: "HS256".into(),
            secret: SECRET.into(),
            public_key_file: String::new(),
        };
        let mut c = base();
        c.jwt.keys = vec![key.clone(), key];
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("appears twice"));
        let c = base();
        assert_eq!(c.state_url(), "sqlite://./data/auth-proxy-state.db");
        let env = env_of(&[
            ("JWT_SECRET", SECRET),
            ("IDENTITY_SECRET", SECRET),
            ("DATABASE_URL", "sqlite:///tmp/x.db"),
            ("AUTH_PROXY_STATE_URL", "postgres://h/state"),
            ("AUTH_PROXY_ADMIN_TOKEN", SECRET),
        ]);
        let c = Config::load(None, &env).unwrap();
        assert_eq!(
            (c.state_url().as_str(), c.admin_token.as_str()),
            ("postgres://h/state", SECRET)
        );
    }

    #[test]
    fn origins_and_websocket_refusals() {
        let mut c = Config::default();
        c.apply_env(&env_of(minimal()));
        c.apply_env(&env_of(&[(
            "AUTH_PROXY_CORS_ALLOWED_ORIGINS",
            "https://app.example.com, http://localhost:3000",
        )]));
        assert_eq!(c.cors.allowed_origins.len(), 2);
        assert!(c.validate().is_ok());
        let c: Config = toml::from_str(
            "[ws]\nreject_with = \"close\"\nreject_frame = '{\"type\":\"error\",\"content\":\"{message}\"}'\n",
        )
        .unwrap();
        assert_eq!(c.ws.reject_with, RejectWith::Close);
        assert!(c.validate_origins().is_ok());
        let c: Config = toml::from_str("[ws]\nreject_frame = '{}'\n").unwrap();
        assert!(c
            .validate_origins()
            .unwrap_err()
            .to_string()
            .contains("reject_with"));
        assert!(toml::from_str::<Config>("[ws]\nreject_with = \"tcp\"\n").is_err());
    }

    #[test]
    fn cidrs() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().1, 8);
        assert_eq!(parse_cidr("::1").unwrap().1, 128);
        assert!(parse_cidr("10.0.0.0/33").is_err());
        assert!(parse_cidr("nope").is_err());
    }
}
