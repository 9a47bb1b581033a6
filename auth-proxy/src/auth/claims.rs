//! A token's claims once its signature is checked: the time claims read as numbers and checked
//! against the policy (at verification and again at every cache hit), the user id, and why a
//! token is refused.

use serde_json::{Map, Value};

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

/// A token's time claims, read once as numbers and checked at any `now` (again at every cache hit).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimeClaims {
    pub exp: Option<f64>,
    pub nbf: Option<f64>,
    pub iat: Option<f64>,
}

impl TimeClaims {
    /// Reads `exp`, `nbf` and `iat`; a present one that is not a valid NumericDate is an error.
    pub fn read(claims: &Map<String, Value>) -> Result<TimeClaims, JwtError> {
        Ok(TimeClaims {
            exp: time_claim(claims, "exp")?,
            nbf: time_claim(claims, "nbf")?,
            iat: time_claim(claims, "iat")?,
        })
    }

    /// `exp`, `nbf` and `iat` against `now`, with the policy's leeway and options.
    pub fn check(&self, now: u64, policy: &TimePolicy) -> Result<(), JwtError> {
        let now = now as f64;
        let leeway = policy.leeway_secs as f64;
        match self.exp {
            Some(exp) if exp + leeway < now => return Err(JwtError::Expired),
            None if policy.require_exp => return Err(JwtError::Invalid("exp is required")),
            _ => {}
        }
        if self.nbf.is_some_and(|nbf| nbf > now + leeway) {
            return Err(JwtError::NotYetValid);
        }
        // A token issued in the future (an issuer whose clock runs ahead by more than the leeway)
        // would also outlive every revocation by time (`iat <= T`): refused.
        if self.iat.is_some_and(|iat| iat > now + leeway) {
            return Err(JwtError::NotYetValid);
        }
        if policy.max_token_age_secs > 0 {
            let iat = self.iat.ok_or(JwtError::Invalid(
                "iat is required when max_token_age_secs is set",
            ))?;
            if now - iat > policy.max_token_age_secs as f64 + leeway {
                return Err(JwtError::Expired);
            }
        }
        Ok(())
    }
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
