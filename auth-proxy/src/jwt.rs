//! Verifying a token: the algorithm allowlist, keys bound to their algorithm family, the signature
//! (by `jsonwebtoken`), then the claim checks this edge owns: `exp`, `nbf` and `iat` with a leeway,
//! the optional `require_exp` and `max_token_age`, and the user id claim.
//!
//! Tokens minted by the News Nexus API (`{id, iat}`, HS256, no `exp`) pass with the defaults. The
//! time claims are checked here rather than by `jsonwebtoken`, which silently ignores a time claim
//! it cannot parse as an unsigned integer (a string or float `exp` must be refused, not skipped).

use std::collections::HashSet;

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::config::Config;

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
}

/// The time rules, from config.
#[derive(Debug, Clone, Copy)]
pub struct TimePolicy {
    pub leeway_secs: u64,
    pub require_exp: bool,
    /// 0 = off.
    pub max_token_age_secs: u64,
}

/// Verifies tokens with the configured algorithms and keys.
pub struct JwtVerifier {
    keys: Vec<(Algorithm, DecodingKey)>,
    policy: TimePolicy,
    id_claim: String,
}

impl JwtVerifier {
    /// Builds the verifier; fails (naming the setting) if a PEM key cannot be read.
    pub fn from_config(config: &Config) -> Result<Self, crate::config::ConfigError> {
        let algorithms = config.algorithms()?;
        let pem = if algorithms.iter().any(|a| family(*a) != Family::Hmac) {
            Some(std::fs::read(&config.jwt.public_key_file).map_err(|e| {
                crate::config::ConfigError {
                    setting: "jwt.public_key_file".into(),
                    problem: format!("cannot read {}: {e}", config.jwt.public_key_file),
                }
            })?)
        } else {
            None
        };
        let mut keys = Vec::new();
        for alg in algorithms {
            let key = match family(alg) {
                Family::Hmac => Ok(DecodingKey::from_secret(config.jwt.secret.as_bytes())),
                Family::Rsa => DecodingKey::from_rsa_pem(pem.as_deref().unwrap_or_default()),
                Family::Ec => DecodingKey::from_ec_pem(pem.as_deref().unwrap_or_default()),
                Family::Ed => DecodingKey::from_ed_pem(pem.as_deref().unwrap_or_default()),
            }
            .map_err(|e| crate::config::ConfigError {
                setting: "jwt.public_key_file".into(),
                problem: format!("not a PEM public key for {alg:?}: {e}"),
            })?;
            keys.push((alg, key));
        }
        let policy = TimePolicy {
            leeway_secs: config.jwt.leeway_secs,
            require_exp: config.jwt.require_exp,
            max_token_age_secs: config.jwt.max_token_age_secs,
        };
        Ok(JwtVerifier {
            keys,
            policy,
            id_claim: config.jwt.user_id_claim.clone(),
        })
    }

    /// The user id a valid token names, checked at `now` (unix seconds).
    pub fn verify(&self, token: &str, now: u64) -> Result<i64, JwtError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| JwtError::Invalid("malformed token or header"))?;
        let Some((alg, key)) = self.keys.iter().find(|(a, _)| *a == header.alg) else {
            return Err(JwtError::Invalid("algorithm not allowed"));
        };
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, &signature_only(*alg))
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
        user_id(&data.claims, &self.id_claim).ok_or(JwtError::Invalid("no valid user id claim"))
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
