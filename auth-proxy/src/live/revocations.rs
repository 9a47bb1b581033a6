//! Revocations: what an operator declared dead, and the rules that match a token against them.
//!
//! Three kinds (see [`Kind`]):
//! - **user**: the tokens of user N issued at or before T (`iat <= T`) are dead. It works for News
//!   Nexus tokens, which carry no `jti` or `exp`; a token issued after T passes.
//! - **jti**: the one token with that `jti` is dead.
//! - **all**: every token issued at or before T is dead (a leaked signing secret).
//!
//! A token without `iat` cannot prove it was issued after T, so user and global revocations refuse
//! it. A revocation may carry `expires_at` (the revoked token's `exp`): it is purged once that time
//! plus the leeway has passed, since the token is refused as expired anyway.
//!
//! [`RevocationSet`] is the in-memory index the handshake checks (no query per handshake); it is
//! rebuilt from the state store ([`crate::live::store`]) and compared with the previous one to find
//! what is new ([`RevocationSet::added_since`]). Pure code, no I/O.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

/// The kind of a revocation, as stored and as reported by the admin API and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    User,
    Jti,
    All,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::User => "user",
            Kind::Jti => "jti",
            Kind::All => "all",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "user" => Some(Kind::User),
            "jti" => Some(Kind::Jti),
            "all" => Some(Kind::All),
            _ => None,
        }
    }
}

/// One stored revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub id: i64,
    pub kind: Kind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Tokens issued at or before this time (unix seconds) are dead (user and all kinds).
    pub issued_before: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: i64,
    /// When the revoked token expires by itself; the record is purged after it (plus leeway).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// What is about to be stored (the store assigns the id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRevocation {
    pub kind: Kind,
    pub user_id: Option<i64>,
    pub jti: Option<String>,
    pub issued_before: i64,
    pub reason: Option<String>,
    pub created_at: i64,
    pub expires_at: Option<i64>,
}

/// Longest `jti` and `reason` accepted.
pub const MAX_JTI_BYTES: usize = 256;
pub const MAX_REASON_BYTES: usize = 500;

/// The body of `POST /admin/revocations` (and what the CLI builds).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationRequest {
    pub user_id: Option<i64>,
    pub jti: Option<String>,
    #[serde(default)]
    pub all: bool,
    pub reason: Option<String>,
    /// Optional: the revoked token's `exp`, so the record can be purged after it.
    pub expires_at: Option<i64>,
}

impl RevocationRequest {
    /// Checks the request and turns it into a record taking effect at `now`: exactly one of
    /// `user_id`, `jti`, `all: true`.
    pub fn into_new(self, now: i64) -> Result<NewRevocation, &'static str> {
        let kind = match (self.user_id, &self.jti, self.all) {
            (Some(id), None, false) if id > 0 => Kind::User,
            (Some(_), None, false) => return Err("user_id must be a positive integer"),
            (None, Some(j), false) if !j.is_empty() && j.len() <= MAX_JTI_BYTES => Kind::Jti,
            (None, Some(_), false) => return Err("jti must be 1 to 256 bytes"),
            (None, None, true) => Kind::All,
            _ => return Err("give exactly one of user_id, jti or \"all\": true"),
        };
        let reason = self.reason.filter(|r| !r.trim().is_empty());
        if reason.as_ref().is_some_and(|r| r.len() > MAX_REASON_BYTES) {
            return Err("reason must be at most 500 bytes");
        }
        if self.expires_at.is_some_and(|e| e <= 0) {
            return Err("expires_at must be unix seconds");
        }
        Ok(NewRevocation {
            kind,
            user_id: self.user_id,
            jti: self.jti,
            issued_before: now,
            reason,
            created_at: now,
            expires_at: self.expires_at,
        })
    }
}

/// The facts of a verified token a revocation can match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenFacts {
    pub user_id: i64,
    pub iat: Option<i64>,
    pub exp: Option<i64>,
    pub jti: Option<String>,
}

/// True when `r` kills a token with these facts.
pub fn matches(r: &Revocation, t: &TokenFacts) -> bool {
    let issued_by = |before: i64| t.iat.is_none_or(|iat| iat <= before);
    match r.kind {
        Kind::User => r.user_id == Some(t.user_id) && issued_by(r.issued_before),
        Kind::Jti => t.jti.is_some() && r.jti == t.jti,
        Kind::All => issued_by(r.issued_before),
    }
}

/// The revocations in force, indexed for the handshake check.
#[derive(Debug, Clone, Default)]
pub struct RevocationSet {
    records: Vec<Revocation>,
    /// Per user, the latest `issued_before`.
    users: HashMap<i64, i64>,
    jtis: HashSet<String>,
    all: Option<i64>,
    ids: HashSet<i64>,
}

impl RevocationSet {
    pub fn new(records: Vec<Revocation>) -> RevocationSet {
        let mut set = RevocationSet::default();
        for r in &records {
            set.ids.insert(r.id);
            match r.kind {
                Kind::User => {
                    if let Some(u) = r.user_id {
                        let t = set.users.entry(u).or_insert(r.issued_before);
                        *t = (*t).max(r.issued_before);
                    }
                }
                Kind::Jti => {
                    if let Some(j) = &r.jti {
                        set.jtis.insert(j.clone());
                    }
                }
                Kind::All => set.all = Some(set.all.unwrap_or(i64::MIN).max(r.issued_before)),
            }
        }
        set.records = records;
        set
    }

    /// The kind of the revocation that kills this token, if any.
    pub fn check(&self, t: &TokenFacts) -> Option<Kind> {
        let issued_by = |before: i64| t.iat.is_none_or(|iat| iat <= before);
        if self.all.is_some_and(issued_by) {
            return Some(Kind::All);
        }
        if self.users.get(&t.user_id).copied().is_some_and(issued_by) {
            return Some(Kind::User);
        }
        if t.jti.as_ref().is_some_and(|j| self.jtis.contains(j)) {
            return Some(Kind::Jti);
        }
        None
    }

    pub fn records(&self) -> &[Revocation] {
        &self.records
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// The records of `self` that `previous` did not have.
    pub fn added_since<'a>(&'a self, previous: &RevocationSet) -> Vec<&'a Revocation> {
        self.records
            .iter()
            .filter(|r| !previous.ids.contains(&r.id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rev(id: i64, kind: Kind, user: Option<i64>, jti: Option<&str>, before: i64) -> Revocation {
        Revocation {
            id,
            kind,
            user_id: user,
            jti: jti.map(str::to_string),
            issued_before: before,
            reason: None,
            created_at: before,
            expires_at: None,
        }
    }

    fn token(user: i64, iat: Option<i64>, jti: Option<&str>) -> TokenFacts {
        TokenFacts {
            user_id: user,
            iat,
            exp: None,
            jti: jti.map(str::to_string),
        }
    }

    #[test]
    fn user_revocation_kills_tokens_issued_at_or_before() {
        let set = RevocationSet::new(vec![rev(1, Kind::User, Some(2), None, 1000)]);
        assert_eq!(set.check(&token(2, Some(999), None)), Some(Kind::User));
        assert_eq!(set.check(&token(2, Some(1000), None)), Some(Kind::User));
        assert_eq!(set.check(&token(2, Some(1001), None)), None);
        assert_eq!(set.check(&token(2, None, None)), Some(Kind::User));
        assert_eq!(set.check(&token(1, Some(10), None)), None);
    }

    #[test]
    fn latest_user_revocation_wins() {
        let set = RevocationSet::new(vec![
            rev(1, Kind::User, Some(2), None, 2000),
            rev(2, Kind::User, Some(2), None, 1000),
        ]);
        assert_eq!(set.check(&token(2, Some(1500), None)), Some(Kind::User));
    }

    #[test]
    fn jti_revocation_kills_that_token_only() {
        let set = RevocationSet::new(vec![rev(1, Kind::Jti, None, Some("abc"), 1000)]);
        assert_eq!(
            set.check(&token(2, Some(5000), Some("abc"))),
            Some(Kind::Jti)
        );
        assert_eq!(set.check(&token(2, Some(5000), Some("abd"))), None);
        assert_eq!(set.check(&token(2, Some(5000), None)), None);
        assert!(!matches(&set.records()[0], &token(2, None, None)));
    }

    #[test]
    fn global_revocation_kills_everything_issued_before() {
        let set = RevocationSet::new(vec![rev(1, Kind::All, None, None, 1000)]);
        assert_eq!(set.check(&token(7, Some(1000), None)), Some(Kind::All));
        assert_eq!(set.check(&token(7, None, None)), Some(Kind::All));
        assert_eq!(set.check(&token(7, Some(1001), None)), None);
        assert!(matches(&set.records()[0], &token(7, Some(3), None)));
    }

    #[test]
    fn added_since_finds_new_records() {
        let old = RevocationSet::new(vec![rev(1, Kind::All, None, None, 1)]);
        let new = RevocationSet::new(vec![
            rev(1, Kind::All, None, None, 1),
            rev(2, Kind::User, Some(2), None, 5),
        ]);
        let added: Vec<i64> = new.added_since(&old).iter().map(|r| r.id).collect();
        assert_eq!(added, vec![2]);
        assert!(old.added_since(&new).is_empty());
    }

    #[test]
    fn requests_name_exactly_one_target() {
        let req = |v: serde_json::Value| {
            serde_json::from_value::<RevocationRequest>(v)
                .map_err(|_| "bad json")
                .and_then(|r| r.into_new(50))
        };
        let user = req(serde_json::json!({"user_id": 2, "reason": "left"})).unwrap();
        assert_eq!(user.kind, Kind::User);
        assert_eq!(user.issued_before, 50);
        assert_eq!(user.reason.as_deref(), Some("left"));
        assert_eq!(
            req(serde_json::json!({"jti": "a"})).unwrap().kind,
            Kind::Jti
        );
        assert_eq!(
            req(serde_json::json!({"all": true})).unwrap().kind,
            Kind::All
        );
        for bad in [
            serde_json::json!({}),
            serde_json::json!({"all": false}),
            serde_json::json!({"user_id": 0}),
            serde_json::json!({"user_id": 2, "jti": "a"}),
            serde_json::json!({"user_id": 2, "all": true}),
            serde_json::json!({"jti": ""}),
            serde_json::json!({"jti": "x".repeat(257)}),
            serde_json::json!({"all": true, "reason": "x".repeat(501)}),
            serde_json::json!({"user_id": "2"}),
            serde_json::json!({"user": 2}),
        ] {
            assert!(req(bad.clone()).is_err(), "{bad}");
        }
    }
}
