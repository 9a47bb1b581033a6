//! Verifying a token: the algorithm allowlist, the key for its `kid` bound to its algorithm family
//! ([`crate::keys`], [`crate::jwks`]), the signature (by `jsonwebtoken`), then the claim checks this edge owns: `exp`, `nbf` and `iat` with a leeway,
//! the optional `require_exp` and `max_token_age`, and the user id claim.
//!
//! Tokens minted by the News Nexus API (`{id, iat}`, HS256, no `exp`) pass with the defaults. The
//! time claims are checked here rather than by `jsonwebtoken`, which silently ignores a time claim
//! it cannot parse as an unsigned integer (a string or float `exp` must be refused, not skipped).

use std::collections::HashSet;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::jwks::Jwks;
use crate::keys::{select, KeyProblem, KeyRing};
use crate::revocations::TokenFacts;

/// Algorithm families; a key serves one family only, so an HS token can never be checked with an
/// RSA public key used as an HMAC secret (or the reverse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

pub fn family(alg: Algorithm) -> Family {
    use Algorithm::*;
    match alg {
        HS256 | HS384 | HS512 => Family::Hmac,
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Family::Rsa,
        ES256 | ES384 => Family::Ec,
        EdDSA => Family::Ed,
    }
}

/// Why a token was refused. `reason` strings are for logs; none contains token material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Invalid(&'static str),
    Expired,
    NotYetValid,
    /// The token names a `kid` no key has.
    UnknownKid,
    /// The token needs the JWKS set, which could not be fetched yet.
    KeysUnavailable,
}

/// The time rules, from config.
#[derive(Debug, Clone, Copy)]
pub struct TimePolicy {
    pub leeway_secs: u64,
    pub require_exp: bool,
    /// 0 = off.
    pub max_token_age_secs: u64,
}

/// Verifies tokens with the configured keys ([`crate::keys`]) and, when configured, the JWKS set.
/// The static keys can be swapped at run time ([`JwtVerifier::reload`], on SIGHUP).
pub struct JwtVerifier {
    ring: RwLock<Arc<KeyRing>>,
    jwks: Option<Jwks>,
    policy: TimePolicy,
    id_claim: String,
}

impl JwtVerifier {
    /// Builds the verifier; fails (naming the setting) if a key cannot be read.
    pub fn from_config(config: &Config) -> Result<Self, crate::config::ConfigError> {
        let policy = TimePolicy {
            leeway_secs: config.jwt.leeway_secs,
            require_exp: config.jwt.require_exp,
            max_token_age_secs: config.jwt.max_token_age_secs,
        };
        Ok(JwtVerifier {
            ring: RwLock::new(Arc::new(KeyRing::from_config(config)?)),
            jwks: (!config.jwt.jwks_url.is_empty()).then(|| {
                Jwks::new(
                    &config.jwt.jwks_url,
                    Duration::from_secs(config.jwt.jwks_min_refresh_secs),
                )
            }),
            policy,
            id_claim: config.jwt.user_id_claim.clone(),
        })
    }

    /// Replaces the static keys with those of `config` (the JWKS set is kept).
    pub fn reload(&self, config: &Config) -> Result<(), crate::config::ConfigError> {
        let ring = Arc::new(KeyRing::from_config(config)?);
        if let Ok(mut r) = self.ring.write() {
            *r = ring;
        }
        Ok(())
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
        check_times(&data.claims, now, &self.policy)?;
        let user_id = user_id(&data.claims, &self.id_claim)
            .ok_or(JwtError::Invalid("no valid user id claim"))?;
        Ok(facts(&data.claims, user_id))
    }

    /// [`JwtVerifier::verify`], refetching the JWKS set once when the token names an unknown
    /// `kid` (at most one fetch per 30 s, see [`crate::jwks`]).
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
fn facts(claims: &Map<String, Value>, user_id: i64) -> TokenFacts {
    let time = |name| {
        time_claim(claims, name)
            .ok()
            .flatten()
            .map(|t| t.floor().min(i64::MAX as f64) as i64)
    };
    TokenFacts {
        user_id,
        iat: time("iat"),
        exp: time("exp"),
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

/// A time claim as seconds: absent is `Ok(None)`; anything but a finite non-negative number is an error.
fn time_claim(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, JwtError> {
    match claims.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(t) if t.is_finite() && t >= 0.0 => Ok(Some(t)),
            _ => Err(JwtError::Invalid("time claim is not a valid NumericDate")),
        },
        Some(_) => Err(JwtError::Invalid("time claim is not a number")),
    }
}

/// `exp`, `nbf` and `iat` against `now`, with the policy's leeway and options.
pub fn check_times(
    claims: &Map<String, Value>,
    now: u64,
    policy: &TimePolicy,
) -> Result<(), JwtError> {
    let now = now as f64;
    let leeway = policy.leeway_secs as f64;
    let exp = time_claim(claims, "exp")?;
    let nbf = time_claim(claims, "nbf")?;
    let iat = time_claim(claims, "iat")?;
    match exp {
        Some(exp) if exp + leeway < now => return Err(JwtError::Expired),
        None if policy.require_exp => return Err(JwtError::Invalid("exp is required")),
        _ => {}
    }
    if nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err(JwtError::NotYetValid);
    }
    if policy.max_token_age_secs > 0 {
        let iat = iat.ok_or(JwtError::Invalid(
            "iat is required when max_token_age_secs is set",
        ))?;
        if iat > now + leeway {
            return Err(JwtError::NotYetValid);
        }
        if now - iat > policy.max_token_age_secs as f64 + leeway {
            return Err(JwtError::Expired);
        }
    }
    Ok(())
}

/// The user id from `claim` (falling back to `sub`): a positive integer, or a string of digits.
pub fn user_id(claims: &Map<String, Value>, claim: &str) -> Option<i64> {
    let value = claims.get(claim).or_else(|| claims.get("sub"))?;
    let id = match value {
        Value::Number(n) => n.as_i64()?,
        Value::String(s)
            if (1..=19).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) =>
        {
            s.parse().ok()?
        }
        _ => return None,
    };
    (id > 0).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn families_bind_keys() {
        assert_eq!(family(Algorithm::HS512), Family::Hmac);
        assert_eq!(family(Algorithm::RS256), Family::Rsa);
        assert_eq!(family(Algorithm::PS256), Family::Rsa);
        assert_eq!(family(Algorithm::ES256), Family::Ec);
    }
}
