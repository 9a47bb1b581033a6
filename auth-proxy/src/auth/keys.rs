//! Verification keys and how a token picks one.
//!
//! - The **default keys** (`jwt.secret` / `jwt.public_key_file`, one per allowed algorithm) verify
//!   tokens without a `kid`, as News Nexus mints them.
//! - **Keys by `kid`** come from `jwt.keys` (static, reloaded on SIGHUP) and from the JWKS endpoint
//!   (`jwt.jwks_url`, see [`crate::auth::jwks`]). A token with a `kid` is checked against that key only.
//!   When neither is configured, the `kid` header is ignored and the default keys apply.
//! - Every key is bound to one algorithm family ([`Family`]); a token's `alg` must be in the key's
//!   family (and equal to the key's own `alg` when a JWK names one) and in `jwt.algorithms`, so an
//!   RSA public key can never serve as an HMAC secret.
//!
//! [`select`] is the pure selection rule; [`KeyRing`] holds the configured keys.

use std::collections::HashMap;

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config::{ConfigError, JwtConfig, KeyConfig, MIN_SECRET_BYTES};

/// A key bound to its family (and, for a JWK that names one, its exact algorithm).
#[derive(Clone)]
pub struct BoundKey {
    pub family: Family,
    pub exact: Option<Algorithm>,
    pub key: DecodingKey,
}

impl BoundKey {
    fn accepts(&self, alg: Algorithm) -> bool {
        family(alg) == self.family && self.exact.is_none_or(|e| e == alg)
    }
}

/// Keys by `kid`.
pub type KeysByKid = HashMap<String, BoundKey>;

/// Why no key fits a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// The token's `alg` is not allowed, or not of its key's family.
    AlgorithmNotAllowed,
    /// The token names a `kid` no known key has (a JWKS refetch may find it).
    UnknownKid,
    /// The token has no `kid` and no default key is configured.
    NoKid,
}

/// The configured keys: default ones and static ones by `kid`.
pub struct KeyRing {
    pub algorithms: Vec<Algorithm>,
    pub default: Vec<(Algorithm, DecodingKey)>,
    pub by_kid: KeysByKid,
    /// True when keys by `kid` exist (static or JWKS): then a token's `kid` selects its key.
    pub keyed: bool,
}

/// The key for a token with header `alg` and `kid`, looked up in the static keys then the JWKS set.
pub fn select<'a>(
    ring: &'a KeyRing,
    jwks: Option<&'a KeysByKid>,
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<&'a DecodingKey, KeyProblem> {
    if !ring.algorithms.contains(&alg) {
        return Err(KeyProblem::AlgorithmNotAllowed);
    }
    match kid.filter(|_| ring.keyed) {
        Some(kid) => {
            let key = ring
                .by_kid
                .get(kid)
                .or_else(|| jwks.and_then(|j| j.get(kid)))
                .ok_or(KeyProblem::UnknownKid)?;
            if key.accepts(alg) {
                Ok(&key.key)
            } else {
                Err(KeyProblem::AlgorithmNotAllowed)
            }
        }
        None => ring
            .default
            .iter()
            .find(|(a, _)| *a == alg)
            .map(|(_, k)| k)
            .ok_or(if ring.default.is_empty() {
                KeyProblem::NoKid
            } else {
                KeyProblem::AlgorithmNotAllowed
            }),
    }
}

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

fn cfg_err(setting: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(setting, problem)
}

/// The start-up check of the `[jwt]` keys that needs to know the algorithm families: a secret
/// for HS algorithms (long enough unless `jwt.allow_weak_secret`), a public key for the others,
/// and every `jwt.keys` entry. Reads no files (building the [`KeyRing`] does).
pub fn check_config(jwt: &JwtConfig) -> Result<(), ConfigError> {
    let algs = jwt.algorithms()?;
    let uses_hmac = algs.iter().any(|a| family(*a) == Family::Hmac);
    let uses_pem = algs.iter().any(|a| family(*a) != Family::Hmac);
    let keyed = !jwt.keys.is_empty() || !jwt.jwks_url.is_empty();
    if uses_hmac && !(keyed && jwt.secret.is_empty()) {
        let len = jwt.secret.len();
        if len == 0 {
            return Err(cfg_err(
                "jwt.secret (JWT_SECRET)",
                "is required for HS algorithms",
            ));
        }
        if len < MIN_SECRET_BYTES && !jwt.allow_weak_secret {
            return Err(cfg_err(
                "jwt.secret (JWT_SECRET)",
                format!(
                    "must be at least {MIN_SECRET_BYTES} bytes (got {len}); set jwt.allow_weak_secret = true to accept it"
                ),
            ));
        }
    }
    if uses_pem && !keyed && jwt.public_key_file.is_empty() {
        return Err(cfg_err(
            "jwt.public_key_file",
            "is required for RS/ES/PS algorithms",
        ));
    }
    for k in &jwt.keys {
        check_key_config(k, &algs, jwt.allow_weak_secret)
            .map_err(|p| cfg_err("jwt.keys", format!("kid {:?}: {p}", k.kid)))?;
    }
    Ok(())
}

/// Checks one `jwt.keys` entry (without reading files).
pub fn check_key_config(
    k: &KeyConfig,
    allowed: &[Algorithm],
    allow_weak: bool,
) -> Result<(), String> {
    if k.kid.is_empty() {
        return Err("kid must not be empty".into());
    }
    let alg: Algorithm = k
        .algorithm
        .parse()
        .map_err(|_| format!("algorithm {:?} is not supported", k.algorithm))?;
    if !allowed.iter().any(|a| family(*a) == family(alg)) {
        return Err(format!(
            "no algorithm of {alg:?}'s family is in jwt.algorithms"
        ));
    }
    match family(alg) {
        Family::Hmac if k.secret.is_empty() => Err("secret is required for HS keys".into()),
        Family::Hmac if k.secret.len() < MIN_SECRET_BYTES && !allow_weak => {
            Err(format!("secret must be at least {MIN_SECRET_BYTES} bytes"))
        }
        Family::Hmac if !k.public_key_file.is_empty() => {
            Err("an HS key takes a secret, not a public_key_file".into())
        }
        Family::Hmac => Ok(()),
        _ if k.public_key_file.is_empty() => Err("public_key_file is required".into()),
        _ if !k.secret.is_empty() => Err("a public key takes no secret".into()),
        _ => Ok(()),
    }
}

fn pem_key(fam: Family, pem: &[u8]) -> Result<DecodingKey, jsonwebtoken::errors::Error> {
    match fam {
        Family::Hmac => Ok(DecodingKey::from_secret(pem)),
        Family::Rsa => DecodingKey::from_rsa_pem(pem),
        Family::Ec => DecodingKey::from_ec_pem(pem),
        Family::Ed => DecodingKey::from_ed_pem(pem),
    }
}

impl KeyRing {
    /// Builds the ring from config, reading key files; fails naming the setting.
    pub fn from_config(jwt: &JwtConfig) -> Result<KeyRing, ConfigError> {
        let algorithms = jwt.algorithms()?;
        let mut default = Vec::new();
        let pem = if !jwt.public_key_file.is_empty() {
            Some(std::fs::read(&jwt.public_key_file).map_err(|e| {
                cfg_err(
                    "jwt.public_key_file",
                    format!("cannot read {}: {e}", jwt.public_key_file),
                )
            })?)
        } else {
            None
        };
        for &alg in &algorithms {
            let key = match (family(alg), &pem) {
                (Family::Hmac, _) if jwt.secret.is_empty() => continue,
                (Family::Hmac, _) => DecodingKey::from_secret(jwt.secret.as_bytes()),
                (_, None) => continue,
                (fam, Some(pem)) => pem_key(fam, pem).map_err(|e| {
                    cfg_err(
                        "jwt.public_key_file",
                        format!("not a PEM public key for {alg:?}: {e}"),
                    )
                })?,
            };
            default.push((alg, key));
        }
        let mut by_kid = HashMap::new();
        for k in &jwt.keys {
            let alg: Algorithm = k
                .algorithm
                .parse()
                .map_err(|_| cfg_err("jwt.keys", format!("kid {:?}: bad algorithm", k.kid)))?;
            let fam = family(alg);
            let key = if fam == Family::Hmac {
                DecodingKey::from_secret(k.secret.as_bytes())
            } else {
                let pem = std::fs::read(&k.public_key_file).map_err(|e| {
                    cfg_err(
                        "jwt.keys",
                        format!("kid {:?}: cannot read {}: {e}", k.kid, k.public_key_file),
                    )
                })?;
                pem_key(fam, &pem).map_err(|e| {
                    cfg_err(
                        "jwt.keys",
                        format!("kid {:?}: not a PEM public key for {alg:?}: {e}", k.kid),
                    )
                })?
            };
            by_kid.insert(
                k.kid.clone(),
                BoundKey {
                    family: fam,
                    exact: None,
                    key,
                },
            );
        }
        Ok(KeyRing {
            algorithms,
            default,
            keyed: !by_kid.is_empty() || !jwt.jwks_url.is_empty(),
            by_kid,
        })
    }
}

/// The family a JWK's key type belongs to.
fn jwk_family(jwk: &Jwk) -> Family {
    match jwk.algorithm {
        AlgorithmParameters::RSA(_) => Family::Rsa,
        AlgorithmParameters::EllipticCurve(_) => Family::Ec,
        AlgorithmParameters::OctetKey(_) => Family::Hmac,
        AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
    }
}

/// The usable keys of a JWKS document: those with a `kid` whose key parses and whose `alg` (when
/// given) agrees with the key type. Others are skipped.
pub fn keys_from_jwks(set: &JwkSet) -> KeysByKid {
    let mut keys = HashMap::new();
    for jwk in &set.keys {
        let Some(kid) = &jwk.common.key_id else {
            continue;
        };
        let fam = jwk_family(jwk);
        let exact = match jwk.common.key_algorithm {
            Some(ka) => match ka.to_string().parse::<Algorithm>() {
                Ok(a) if family(a) == fam => Some(a),
                _ => continue,
            },
            None => None,
        };
        let Ok(key) = DecodingKey::from_jwk(jwk) else {
            continue;
        };
        keys.insert(
            kid.clone(),
            BoundKey {
                family: fam,
                exact,
                key,
            },
        );
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_bind_keys() {
        assert_eq!(family(Algorithm::HS512), Family::Hmac);
        assert_eq!(family(Algorithm::RS256), Family::Rsa);
        assert_eq!(family(Algorithm::PS256), Family::Rsa);
        assert_eq!(family(Algorithm::ES256), Family::Ec);
    }

    const LONG: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn the_start_up_check_wants_the_keys_the_algorithms_need() {
        let mut jwt = JwtConfig {
            secret: "short".into(),
            ..JwtConfig::default()
        };
        let e = check_config(&jwt).unwrap_err().to_string();
        assert!(e.contains("jwt.secret (JWT_SECRET)"), "{e}");
        assert!(e.contains("allow_weak_secret"), "{e}");
        assert!(!e.contains("short"), "the secret must not be echoed: {e}");
        jwt.allow_weak_secret = true;
        check_config(&jwt).unwrap();

        let jwt = JwtConfig {
            secret: LONG.into(),
            algorithms: vec!["RS256".into()],
            ..JwtConfig::default()
        };
        assert!(check_config(&jwt)
            .unwrap_err()
            .to_string()
            .contains("jwt.public_key_file"));

        let jwt = JwtConfig {
            secret: LONG.into(),
            keys: vec![KeyConfig {
                kid: "k".into(),
                algorithm: "RS256".into(),
                secret: String::new(),
                public_key_file: String::new(),
            }],
            ..JwtConfig::default()
        };
        let e = check_config(&jwt).unwrap_err().to_string();
        assert!(e.contains("jwt.keys") && e.contains("kid \"k\""), "{e}");
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn ring(keyed: bool) -> KeyRing {
        let mut by_kid = HashMap::new();
        by_kid.insert(
            "hs".to_string(),
            BoundKey {
                family: Family::Hmac,
                exact: None,
                key: DecodingKey::from_secret(b"kid-secret"),
            },
        );
        KeyRing {
            algorithms: vec![Algorithm::HS256, Algorithm::RS256],
            default: vec![(
                Algorithm::HS256,
                DecodingKey::from_secret(SECRET.as_bytes()),
            )],
            by_kid: if keyed { by_kid } else { HashMap::new() },
            keyed,
        }
    }

    #[test]
    fn kid_selects_its_key_only() {
        let r = ring(true);
        assert!(select(&r, None, Algorithm::HS256, Some("hs")).is_ok());
        assert_eq!(
            select(&r, None, Algorithm::HS256, Some("other")).err(),
            Some(KeyProblem::UnknownKid)
        );
        // The HMAC key cannot verify an RS256 token, though RS256 is allowed.
        assert_eq!(
            select(&r, None, Algorithm::RS256, Some("hs")).err(),
            Some(KeyProblem::AlgorithmNotAllowed)
        );
        assert_eq!(
            select(&r, None, Algorithm::HS512, Some("hs")).err(),
            Some(KeyProblem::AlgorithmNotAllowed)
        );
        assert!(select(&r, None, Algorithm::HS256, None).is_ok());
    }

    #[test]
    fn jwks_keys_are_found_after_static_ones() {
        let r = ring(true);
        let mut jwks = HashMap::new();
        jwks.insert(
            "rot".to_string(),
            BoundKey {
                family: Family::Hmac,
                exact: Some(Algorithm::HS256),
                key: DecodingKey::from_secret(b"x"),
            },
        );
        assert!(select(&r, Some(&jwks), Algorithm::HS256, Some("rot")).is_ok());
        assert_eq!(
            select(&r, Some(&jwks), Algorithm::HS384, Some("rot")).err(),
            Some(KeyProblem::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn kid_is_ignored_without_keyed_keys() {
        let r = ring(false);
        assert!(select(&r, None, Algorithm::HS256, Some("anything")).is_ok());
        let mut no_default = ring(true);
        no_default.default.clear();
        assert_eq!(
            select(&no_default, None, Algorithm::HS256, None).err(),
            Some(KeyProblem::NoKid)
        );
    }

    #[test]
    fn jwks_documents_bind_alg_to_key_type() {
        let doc = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "a", "alg": "HS256", "k": "c2VjcmV0"},
            {"kty": "oct", "kid": "b", "alg": "RS256", "k": "c2VjcmV0"},
            {"kty": "oct", "k": "c2VjcmV0"},
            {"kty": "oct", "kid": "c", "k": "c2VjcmV0"}
        ]});
        let set: JwkSet = serde_json::from_value(doc).unwrap();
        let keys = keys_from_jwks(&set);
        let mut kids: Vec<&str> = keys.keys().map(String::as_str).collect();
        kids.sort();
        assert_eq!(kids, vec!["a", "c"]);
        assert_eq!(keys["a"].exact, Some(Algorithm::HS256));
        assert_eq!(keys["c"].family, Family::Hmac);
    }

    #[test]
    fn key_configs_are_checked() {
        let algs = [Algorithm::HS256];
        let k = |alg: &str, secret: &str, file: &str| KeyConfig {
            kid: "k".into(),
            algorithm: alg.into(),
            secret: secret.into(),
            public_key_file: file.into(),
        };
        assert!(check_key_config(&k("HS256", SECRET, ""), &algs, false).is_ok());
        assert!(check_key_config(&k("HS256", "short", ""), &algs, false).is_err());
        assert!(check_key_config(&k("HS256", "short", ""), &algs, true).is_ok());
        assert!(check_key_config(&k("RS256", "", "/x.pem"), &algs, false).is_err());
        assert!(check_key_config(&k("RS256", "", "/x.pem"), &[Algorithm::RS256], false).is_ok());
        assert!(check_key_config(&k("HS999", SECRET, ""), &algs, false).is_err());
        let mut no_kid = k("HS256", SECRET, "");
        no_kid.kid.clear();
        assert!(check_key_config(&no_kid, &algs, false).is_err());
    }
}
