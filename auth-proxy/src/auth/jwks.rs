//! The JWKS key set from `jwt.jwks_url`: fetched at start, kept for its `Cache-Control: max-age`
//! (clamped to `jwt.jwks_min_refresh_secs`..[`MAX_REFRESH`], [`DEFAULT_REFRESH`] without one),
//! refetched when a token names an unknown `kid` — at most once per `jwt.jwks_min_refresh_secs`
//! (default 30 s), however many such tokens arrive (the fetch is single-flight; tokens arriving
//! meanwhile wait for it). When a fetch fails, the last good set stays in use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use tracing::{info, warn};

use crate::auth::keys::{keys_from_jwks, KeysByKid};

/// The longest a set is kept before a refresh.
pub const MAX_REFRESH: Duration = Duration::from_secs(86_400);
/// How long a set is kept when the response carries no usable `max-age`.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(300);
/// How long a fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a response may be kept, from its `Cache-Control` header, at least `min`.
pub fn cache_lifetime(cache_control: Option<&str>, min: Duration) -> Duration {
    let Some(value) = cache_control else {
        return DEFAULT_REFRESH.max(min);
    };
    let mut max_age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return min;
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            max_age = v.trim_matches('"').parse::<u64>().ok();
        }
    }
    max_age
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_REFRESH)
        .clamp(min, MAX_REFRESH.max(min))
}

struct FetchState {
    last_attempt: Option<Instant>,
    fresh_until: Option<Instant>,
}

pub struct Jwks {
    url: String,
    min_refresh: Duration,
    client: reqwest::Client,
    keys: RwLock<Option<Arc<KeysByKid>>>,
    /// Bumped after every new key set; tokens verified with an older set are verified again.
    generation: AtomicU64,
    state: tokio::sync::Mutex<FetchState>,
}

impl Jwks {
    pub fn new(url: &str, min_refresh: Duration) -> Jwks {
        Jwks {
            url: url.to_string(),
            min_refresh,
            client: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(None),
            generation: AtomicU64::new(0),
            state: tokio::sync::Mutex::new(FetchState {
                last_attempt: None,
                fresh_until: None,
            }),
        }
    }

    /// The current key set; `None` until a fetch has succeeded.
    pub fn keys(&self) -> Option<Arc<KeysByKid>> {
        self.keys.read().ok().and_then(|k| k.clone())
    }

    /// How many key sets were fetched so far (each one a new key epoch); read before [`Jwks::keys`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Fetches when the last attempt is at least the minimum refresh interval old (or there was
    /// none).
    /// Returns true when a fetch ran and succeeded.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let mut state = self.state.lock().await;
        if state
            .last_attempt
            .is_some_and(|t| t.elapsed() < self.min_refresh)
        {
            return false;
        }
        self.fetch(&mut state).await
    }

    /// Fetches when the cached set is stale (or was never fetched), whatever the last attempt.
    /// Returns when the next refresh is due.
    pub async fn refresh_if_stale(&self) -> Duration {
        let mut state = self.state.lock().await;
        let stale = state.fresh_until.is_none_or(|t| t <= Instant::now());
        let recent = state
            .last_attempt
            .is_some_and(|t| t.elapsed() < Duration::from_secs(1));
        if stale && !recent {
            self.fetch(&mut state).await;
        }
        match state.fresh_until {
            Some(t) if t > Instant::now() => t - Instant::now(),
            // Never fetched, or the last fetch failed: retry soon.
            _ => Duration::from_secs(5),
        }
    }

    async fn fetch(&self, state: &mut FetchState) -> bool {
        state.last_attempt = Some(Instant::now());
        match self.get().await {
            Ok((keys, lifetime)) => {
                info!(
                    keys = keys.len(),
                    refresh_in_secs = lifetime.as_secs(),
                    "JWKS fetched"
                );
                match self.keys.write() {
                    Ok(mut k) => *k = Some(Arc::new(keys)),
                    Err(poisoned) => *poisoned.into_inner() = Some(Arc::new(keys)),
                }
                // After the swap: a request that reads the new generation reads the new set.
                self.generation.fetch_add(1, Ordering::AcqRel);
                state.fresh_until = Some(Instant::now() + lifetime);
                true
            }
            Err(e) => {
                warn!(error = %e, "JWKS fetch failed; keeping the last good key set");
                false
            }
        }
    }

    async fn get(&self) -> Result<(KeysByKid, Duration), String> {
        let resp = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("status {}", resp.status()));
        }
        let lifetime = cache_lifetime(
            resp.headers()
                .get(reqwest::header::CACHE_CONTROL)
                .and_then(|v| v.to_str().ok()),
            self.min_refresh,
        );
        let set: JwkSet = resp
            .json()
            .await
            .map_err(|e| format!("not a JWK set: {e}"))?;
        Ok((keys_from_jwks(&set), lifetime))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_control_sets_the_lifetime() {
        let min = Duration::from_secs(30);
        let life = |v| cache_lifetime(v, min);
        assert_eq!(life(None), DEFAULT_REFRESH);
        assert_eq!(life(Some("public, max-age=600")), Duration::from_secs(600));
        assert_eq!(life(Some("max-age=5")), min);
        assert_eq!(life(Some("max-age=99999999")), MAX_REFRESH);
        assert_eq!(life(Some("no-store")), min);
        assert_eq!(life(Some("Max-Age=120")), Duration::from_secs(120));
        assert_eq!(life(Some("max-age=abc")), DEFAULT_REFRESH);
    }
}
