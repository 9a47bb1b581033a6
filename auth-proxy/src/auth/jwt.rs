//! Verifying a token: the algorithm allowlist, the key for its `kid` bound to its algorithm family
//! ([`crate::auth::keys`], [`crate::auth::jwks`]), the signature (by `jsonwebtoken`), then the claim checks this edge owns: `exp`, `nbf` and `iat` with a leeway,
//! the optional `require_exp` and `max_token_age`, and the user id claim.
//!
//! A token that passed is remembered ([`crate::auth::verified`]): the next request with the same token,
//! under the same keys, skips the signature and the parsing and only has its time claims checked
//! again.
//!
//! Tokens minted by the News Nexus API (`{id, iat}`, HS256, no `exp`) pass with the defaults. The
//! time claims are checked here rather than by `jsonwebtoken`, which silently ignores a time claim
//! it cannot parse as an unsigned integer (a string or float `exp` must be refused, not skipped).

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::auth::claims::{user_id, JwtError, TimeClaims, TimePolicy};
use crate::auth::jwks::Jwks;
use crate::auth::keys::{select, KeyProblem, KeyRing};
use crate::auth::verified::{KeyEpoch, Verified, VerifiedTokens};
use crate::config::{ConfigError, JwtConfig};
use crate::live::revocations::TokenFacts;

/// Verifies tokens with the configured keys ([`crate::auth::keys`]) and, when configured, the JWKS set.
/// The static keys can be swapped at run time ([`JwtVerifier::reload`], on SIGHUP).
pub struct JwtVerifier {
    ring: RwLock<Arc<KeyRing>>,
    /// Bumped after every [`JwtVerifier::reload`]; part of the [`KeyEpoch`] of cached tokens.
    ring_generation: AtomicU64,
    jwks: Option<Jwks>,
    policy: TimePolicy,
    id_claim: String,
    verified: VerifiedTokens,
}

impl JwtVerifier {
    /// Builds the verifier; fails (naming the setting) if a key cannot be read.
    pub fn new(jwt: &JwtConfig) -> Result<Self, ConfigError> {
        let policy = TimePolicy {
            leeway_secs: jwt.leeway_secs,
            require_exp: jwt.require_exp,
            max_token_age_secs: jwt.max_token_age_secs,
        };
        Ok(JwtVerifier {
            ring: RwLock::new(Arc::new(KeyRing::from_config(jwt)?)),
            jwks: (!jwt.jwks_url.is_empty()).then(|| {
                Jwks::new(
                    &jwt.jwks_url,
                    Duration::from_secs(jwt.jwks_min_refresh_secs),
                )
            }),
            policy,
            id_claim: jwt.user_id_claim.clone(),
            ring_generation: AtomicU64::new(0),
            verified: VerifiedTokens::new(
                jwt.verified_cache_capacity,
                Duration::from_secs(jwt.verified_cache_ttl_secs),
            ),
        })
    }

    /// Replaces the static keys with those of `config` (the JWKS set is kept). Tokens verified
    /// with the old keys are verified again on their next request.
    pub fn reload(&self, jwt: &JwtConfig) -> Result<(), ConfigError> {
        let ring = Arc::new(KeyRing::from_config(jwt)?);
        match self.ring.write() {
            Ok(mut r) => *r = ring,
            Err(poisoned) => *poisoned.into_inner() = ring,
        }
        // After the swap: a request that reads the new generation reads the new keys.
        self.ring_generation.fetch_add(1, Ordering::AcqRel);
        self.verified.clear();
        Ok(())
    }

    /// The keys in force now, as cached tokens record them. Read before the keys themselves.
    fn epoch(&self) -> KeyEpoch {
        KeyEpoch {
            keys: self.ring_generation.load(Ordering::Acquire),
            jwks: self.jwks.as_ref().map_or(0, Jwks::generation),
        }
    }

    pub fn jwks(&self) -> Option<&Jwks> {
        self.jwks.as_ref()
    }

    fn ring(&self) -> Arc<KeyRing> {
        match self.ring.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The facts of a valid token (user id, `iat`, `exp`, `jti`), checked at `now` (unix seconds),
    /// with the keys known now.
    pub fn verify(&self, token: &str, now: u64) -> Result<TokenFacts, JwtError> {
        let epoch = self.epoch();
        if let Some(hit) = self.verified.get(token, epoch) {
            hit.times.check(now, &self.policy)?;
            return Ok(hit.facts.clone());
        }
        let verified = self.verify_uncached(token, now, epoch)?;
        let facts = verified.facts.clone();
        self.verified.insert(token, verified);
        Ok(facts)
    }

    /// The whole check: key selection, signature, claims.
    fn verify_uncached(
        &self,
        token: &str,
        now: u64,
        epoch: KeyEpoch,
    ) -> Result<Verified, JwtError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| JwtError::Invalid("malformed token or header"))?;
        let ring = self.ring();
        let jwks = self.jwks.as_ref().map(Jwks::keys);
        let key = match select(
            &ring,
            jwks.as_ref().and_then(|k| k.as_deref()),
            header.alg,
            header.kid.as_deref(),
        ) {
            Ok(key) => key,
            Err(KeyProblem::AlgorithmNotAllowed) => {
                return Err(JwtError::Invalid("algorithm not allowed"))
            }
            Err(KeyProblem::NoKid) => return Err(JwtError::Invalid("no kid")),
            Err(KeyProblem::UnknownKid) => {
                return Err(match jwks {
                    Some(None) => JwtError::KeysUnavailable,
                    _ => JwtError::UnknownKid,
                })
            }
        };
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, key, &signature_only(header.alg))
                .map_err(|e| {
                    use jsonwebtoken::errors::ErrorKind::*;
                    JwtError::Invalid(match e.kind() {
                        InvalidSignature => "bad signature",
                        InvalidAlgorithm => "algorithm not allowed",
                        Base64(_) => "bad base64",
                        Json(_) | Utf8(_) => "claims are not a JSON object",
                        _ => "malformed token",
                    })
                })?;
        let times = TimeClaims::read(&data.claims)?;
        times.check(now, &self.policy)?;
        let user_id = user_id(&data.claims, &self.id_claim)
            .ok_or(JwtError::Invalid("no valid user id claim"))?;
        Ok(Verified {
            facts: facts(&data.claims, user_id, &times),
            times,
            epoch,
        })
    }

    /// [`JwtVerifier::verify`], refetching the JWKS set once when the token names an unknown
    /// `kid` (at most one fetch per 30 s, see [`crate::auth::jwks`]).
    pub async fn verify_fetching(&self, token: &str, now: u64) -> Result<TokenFacts, JwtError> {
        match self.verify(token, now) {
            Err(JwtError::UnknownKid | JwtError::KeysUnavailable) if self.jwks.is_some() => {
                let jwks = self.jwks.as_ref().expect("checked");
                // Boxed: the fetch's future stays out of every request's own.
                Box::pin(jwks.refresh_for_unknown_kid()).await;
                self.verify(token, now)
            }
            other => other,
        }
    }
}

/// The claims a revocation or a tunnel timer needs (time claims already checked as numbers).
fn facts(claims: &Map<String, Value>, user_id: i64, times: &TimeClaims) -> TokenFacts {
    let whole = |t: Option<f64>| t.map(|t| t.floor().min(i64::MAX as f64) as i64);
    TokenFacts {
        user_id,
        iat: whole(times.iat),
        exp: whole(times.exp),
        jti: claims
            .get("jti")
            .and_then(Value::as_str)
            .map(str::to_string),
    }
}

/// Validation that checks the signature and algorithm only; claims are checked by this module.
fn signature_only(alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.required_spec_claims = HashSet::new();
    v.validate_exp = false;
    v.validate_nbf = false;
    v.validate_aud = false;
    v.leeway = 0;
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use serde_json::json;

    const NOW: u64 = 1_800_000_000;
    const POLICY: TimePolicy = TimePolicy {
        leeway_secs: 30,
        require_exp: false,
        max_token_age_secs: 0,
    };

    fn claims(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    /// [`TimeClaims::read`] then [`TimeClaims::check`], as a verification does.
    fn check_times(
        claims: &Map<String, Value>,
        now: u64,
        policy: &TimePolicy,
    ) -> Result<(), JwtError> {
        TimeClaims::read(claims)?.check(now, policy)
    }

    #[test]
    fn user_ids() {
        let c = |v| user_id(&claims(v), "id");
        assert_eq!(c(json!({"id": 42})), Some(42));
        assert_eq!(c(json!({"id": "42"})), Some(42));
        assert_eq!(c(json!({"sub": "7"})), Some(7));
        assert_eq!(c(json!({"id": 3, "sub": "7"})), Some(3));
        for bad in [
            json!({}),
            json!({"id": 0}),
            json!({"id": -1}),
            json!({"id": 1.5}),
            json!({"id": 1.0}),
            json!({"id": {"n": 1}}),
            json!({"id": [1]}),
            json!({"id": "abc"}),
            json!({"id": "4 2"}),
            json!({"id": "-4"}),
            json!({"id": "+4"}),
            json!({"id": "4\n"}),
            json!({"id": ""}),
            json!({"id": "0"}),
            json!({"id": "99999999999999999999"}),
            json!({"id": true}),
            json!({"id": null}),
        ] {
            assert_eq!(c(bad.clone()), None, "{bad}");
        }
    }

    #[test]
    fn news_nexus_tokens_without_exp_pass() {
        assert_eq!(
            check_times(
                &claims(json!({"id": 1, "iat": NOW - 86400 * 365})),
                NOW,
                &POLICY
            ),
            Ok(())
        );
    }

    #[test]
    fn exp_and_nbf_are_enforced_with_leeway() {
        let t = |v| check_times(&claims(v), NOW, &POLICY);
        assert_eq!(t(json!({"exp": NOW - 31})), Err(JwtError::Expired));
        assert_eq!(t(json!({"exp": NOW - 29})), Ok(()));
        assert_eq!(t(json!({"nbf": NOW + 31})), Err(JwtError::NotYetValid));
        assert_eq!(t(json!({"nbf": NOW + 29})), Ok(()));
        assert!(matches!(
            t(json!({"exp": "tomorrow"})),
            Err(JwtError::Invalid(_))
        ));
        assert!(matches!(t(json!({"exp": -5})), Err(JwtError::Invalid(_))));
        assert_eq!(
            t(json!({"exp": (NOW - 100) as f64 + 0.5})),
            Err(JwtError::Expired)
        );
    }

    #[test]
    fn an_iat_in_the_future_is_refused_beyond_the_leeway() {
        // The default policy: no max age, News Nexus tokens ({id, iat}).
        let t = |v| check_times(&claims(v), NOW, &POLICY);
        assert_eq!(t(json!({"id": 1, "iat": NOW + 29})), Ok(()));
        assert_eq!(
            t(json!({"id": 1, "iat": NOW + 31})),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(
            t(json!({"id": 1, "iat": NOW + 86_400 * 365})),
            Err(JwtError::NotYetValid)
        );
        assert_eq!(t(json!({"id": 1, "iat": NOW - 86_400})), Ok(()));
    }

    #[test]
    fn require_exp_and_max_age() {
        let strict = TimePolicy {
            leeway_secs: 0,
            require_exp: true,
            max_token_age_secs: 3600,
        };
        let t = |v| check_times(&claims(v), NOW, &strict);
        assert!(matches!(t(json!({"iat": NOW})), Err(JwtError::Invalid(_))));
        assert_eq!(t(json!({"iat": NOW, "exp": NOW + 10})), Ok(()));
        assert_eq!(
            t(json!({"iat": NOW - 3601, "exp": NOW + 10})),
            Err(JwtError::Expired)
        );
        assert_eq!(
            t(json!({"iat": NOW + 60, "exp": NOW + 100})),
            Err(JwtError::NotYetValid)
        );
        assert!(matches!(
            t(json!({"exp": NOW + 10})),
            Err(JwtError::Invalid(_))
        ));
    }

    const SECRET_A: &str = "secret-a-0123456789abcdef0123456789abcdef";
    const SECRET_B: &str = "secret-b-0123456789abcdef0123456789abcdef";

    fn verifier_config(secret: &str) -> Config {
        let mut c = Config::default();
        c.jwt.secret = secret.into();
        c
    }

    fn hs256(secret: &str, claims: Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn remembered(v: &JwtVerifier, token: &str) -> bool {
        v.verified.get(token, v.epoch()).is_some()
    }

    #[test]
    fn a_verified_token_is_remembered_and_a_refused_one_is_not() {
        let v = JwtVerifier::new(&verifier_config(SECRET_A).jwt).unwrap();
        let good = hs256(SECRET_A, json!({"id": 7, "iat": NOW, "jti": "j1"}));
        let facts = v.verify(&good, NOW).unwrap();
        assert!(remembered(&v, &good));
        assert_eq!(v.verify(&good, NOW), Ok(facts.clone()));
        assert_eq!(facts.jti.as_deref(), Some("j1"));

        // The same header and claims under another signature: not the remembered token.
        let forged = format!("{}.AAAA", &good[..good.rfind('.').unwrap()]);
        assert_eq!(
            v.verify(&forged, NOW),
            Err(JwtError::Invalid("bad signature"))
        );
        assert!(!remembered(&v, &forged));
        let expired = hs256(SECRET_A, json!({"id": 7, "exp": NOW - 100}));
        assert_eq!(v.verify(&expired, NOW), Err(JwtError::Expired));
        assert!(!remembered(&v, &expired));
    }

    #[test]
    fn a_remembered_token_has_its_time_claims_checked_at_every_request() {
        let v = JwtVerifier::new(&verifier_config(SECRET_A).jwt).unwrap();
        let token = hs256(SECRET_A, json!({"id": 7, "exp": NOW + 60, "nbf": NOW}));
        assert!(v.verify(&token, NOW).is_ok());
        assert!(remembered(&v, &token));
        assert_eq!(v.verify(&token, NOW + 60 + 31), Err(JwtError::Expired));
        assert_eq!(v.verify(&token, NOW - 31), Err(JwtError::NotYetValid));
        assert!(v.verify(&token, NOW + 60).is_ok());
    }

    #[test]
    fn a_key_reload_makes_remembered_tokens_verify_again() {
        let v = JwtVerifier::new(&verifier_config(SECRET_A).jwt).unwrap();
        let token = hs256(SECRET_A, json!({"id": 7, "iat": NOW}));
        assert!(v.verify(&token, NOW).is_ok());
        assert!(remembered(&v, &token));
        v.reload(&verifier_config(SECRET_B).jwt).unwrap();
        assert!(!remembered(&v, &token));
        assert_eq!(
            v.verify(&token, NOW),
            Err(JwtError::Invalid("bad signature"))
        );
        let under_b = hs256(SECRET_B, json!({"id": 7, "iat": NOW}));
        assert!(v.verify(&under_b, NOW).is_ok());
    }

    #[test]
    fn capacity_zero_turns_the_cache_off() {
        let mut c = verifier_config(SECRET_A);
        c.jwt.verified_cache_capacity = 0;
        let v = JwtVerifier::new(&c.jwt).unwrap();
        let token = hs256(SECRET_A, json!({"id": 7}));
        assert!(v.verify(&token, NOW).is_ok());
        assert!(!remembered(&v, &token));
    }
}
