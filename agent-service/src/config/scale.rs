//! The scale-out section: the cross-replica bus (`AGENT_BUS_*`), the drain grace and the daily
//! usage quotas.

use std::time::Duration;

use super::{err, number, ConfigError};

/// Settings for running several replicas and accounting for use.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    /// `AGENT_BUS_URL` (`nats://host:4222`): the cross-replica hub; absent = this process only.
    pub bus_url: Option<String>,
    /// `AGENT_BUS_NAMESPACE`, default `fluxion`: prefix of the bus subjects and the lease bucket, so
    /// several deployments can share one NATS.
    pub bus_namespace: String,
    /// `AGENT_BUS_LEASE_TTL_SECS`, default 30: how long a dead replica's connections keep counting
    /// against the per-user limit.
    pub lease_ttl: Duration,
    /// `AGENT_DRAIN_GRACE_SECS`, default 20: how long answers in progress may run after SIGTERM.
    pub drain_grace: Duration,
    /// `AGENT_USAGE_DAILY_PROMPT_CHARS_PER_USER` (`usage.daily_prompt_chars_per_user`), 0 = off.
    pub daily_prompt_chars_per_user: u64,
    /// `AGENT_USAGE_DAILY_LLM_CALLS_PER_USER` (`usage.daily_llm_calls_per_user`), 0 = off.
    pub daily_llm_calls_per_user: u64,
}

impl ScaleConfig {
    pub(super) fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<ScaleConfig, ConfigError> {
        let get = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let bus_url = get("AGENT_BUS_URL").map(|u| u.trim().to_string());
        if let Some(u) = &bus_url {
            if !(u.starts_with("nats://") || u.starts_with("tls://")) {
                return Err(err("AGENT_BUS_URL", "must start with nats:// or tls://"));
            }
        }
        let bus_namespace = get("AGENT_BUS_NAMESPACE").unwrap_or_else(|| "fluxion".into());
        if !bus_namespace
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            || bus_namespace.len() > 64
        {
            return Err(err(
                "AGENT_BUS_NAMESPACE",
                "may hold only letters, digits, '-' and '_' (at most 64)",
            ));
        }
        let ttl = number(env, "AGENT_BUS_LEASE_TTL_SECS", 30u64)?;
        if ttl < 3 {
            return Err(err("AGENT_BUS_LEASE_TTL_SECS", "must be at least 3"));
        }
        Ok(ScaleConfig {
            bus_url,
            bus_namespace,
            lease_ttl: Duration::from_secs(ttl),
            drain_grace: Duration::from_secs(number(env, "AGENT_DRAIN_GRACE_SECS", 20u64)?),
            daily_prompt_chars_per_user: number(
                env,
                "AGENT_USAGE_DAILY_PROMPT_CHARS_PER_USER",
                0u64,
            )?,
            daily_llm_calls_per_user: number(env, "AGENT_USAGE_DAILY_LLM_CALLS_PER_USER", 0u64)?,
        })
    }
}
