//! The trusted identity the proxy hands to the agent, and the assertion that proves it.
//!
//! After authenticating a request, auth-proxy deletes every client-supplied header whose name starts
//! with `x-user-`, `x-auth-` or `x-identity-` and injects four headers:
//!
//! | header | value |
//! |---|---|
//! | `x-user-id` | the user's id, decimal (`42`) |
//! | `x-user-name` | the username, percent-encoded UTF-8 (controls, `%` and non-ASCII escaped) |
//! | `x-user-admin` | `true` or `false` |
//! | `x-identity-assertion` | `v1.<unix seconds>.<hex HMAC-SHA256>` |
//!
//! The HMAC key is `IDENTITY_SECRET`, shared by the two services and nobody else. The MAC covers
//! these lines joined by `\n`, in this order:
//!
//! ```text
//! v1
//! <unix seconds, as in the header>
//! <x-user-id value>
//! <x-user-admin value>
//! <x-user-name value, exactly as sent>
//! <request method, upper case>
//! <request path, without the query string>
//! ```
//!
//! Binding the method and path means an assertion captured from one request cannot be replayed on
//! another route; the timestamp bounds replay on the same route (the agent accepts at most 60 s).

use std::fmt;

use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use sha2::Sha256;

pub const HEADER_USER_ID: &str = "x-user-id";
pub const HEADER_USER_NAME: &str = "x-user-name";
pub const HEADER_USER_ADMIN: &str = "x-user-admin";
pub const HEADER_ASSERTION: &str = "x-identity-assertion";

/// The assertion format version this crate signs and accepts.
pub const VERSION: &str = "v1";

/// Header name prefixes reserved for the proxy. Any client-supplied header starting with one of
/// these is deleted before a request is forwarded.
pub const RESERVED_PREFIXES: [&str; 3] = ["x-user-", "x-auth-", "x-identity-"];

/// How far in the future a timestamp may be (clock skew between the two processes).
pub const MAX_FUTURE_SKEW_SECS: u64 = 5;

/// Characters escaped in `x-user-name`: controls, `%` itself, and (always) non-ASCII bytes.
const NAME_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');

type HmacSha256 = Hmac<Sha256>;

/// True if a header name (any case) is one only the proxy may set.
pub fn is_reserved_header(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    RESERVED_PREFIXES.iter().any(|p| lower.starts_with(p))
}

/// Who the proxy says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: i64,
    pub username: String,
    pub is_admin: bool,
}

/// The header values for one forwarded request, in the order of [`IdentityHeaders::pairs`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeaders {
    pub user_id: String,
    pub user_name: String,
    pub user_admin: String,
    pub assertion: String,
}

impl IdentityHeaders {
    /// `(name, value)` pairs ready to insert into a request.
    pub fn pairs(&self) -> [(&'static str, &str); 4] {
        [
            (HEADER_USER_ID, &self.user_id),
            (HEADER_USER_NAME, &self.user_name),
            (HEADER_USER_ADMIN, &self.user_admin),
            (HEADER_ASSERTION, &self.assertion),
        ]
    }
}

/// What the agent received, as raw header values (`None` when absent).
#[derive(Debug, Clone, Copy, Default)]
pub struct ReceivedIdentity<'a> {
    pub user_id: Option<&'a str>,
    pub user_name: Option<&'a str>,
    pub user_admin: Option<&'a str>,
    pub assertion: Option<&'a str>,
}

/// Why an identity was refused. [`AssertionError::code`] is the stable error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssertionError {
    /// No `x-user-id` or no assertion at all.
    Missing,
    /// Not `v1.<ts>.<hex>`, a bad user id, or a bad admin flag.
    Malformed(&'static str),
    /// The MAC does not match: wrong key, or any covered value changed.
    BadSignature,
    /// Older than the verifier's maximum age, or too far in the future.
    Stale,
}

impl AssertionError {
    pub fn code(&self) -> &'static str {
        match self {
            AssertionError::Missing => "missing_identity",
            AssertionError::Malformed(_) | AssertionError::BadSignature => "invalid_identity",
            AssertionError::Stale => "stale_identity",
        }
    }
}

impl fmt::Display for AssertionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AssertionError::Missing => write!(f, "the request carries no identity from the proxy"),
            AssertionError::Malformed(what) => {
                write!(f, "the identity headers are malformed: {what}")
            }
            AssertionError::BadSignature => write!(f, "the identity assertion does not verify"),
            AssertionError::Stale => {
                write!(f, "the identity assertion is too old or from the future")
            }
        }
    }
}

impl std::error::Error for AssertionError {}

fn mac_for(
    key: &[u8],
    ts: &str,
    id: &str,
    admin: &str,
    name: &str,
    method: &str,
    path: &str,
) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any size");
    for (i, part) in [VERSION, ts, id, admin, name, method, path]
        .iter()
        .enumerate()
    {
        if i > 0 {
            mac.update(b"\n");
        }
        mac.update(part.as_bytes());
    }
    mac
}

/// Signs identities; held by auth-proxy.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer { key: <redacted> }")
    }
}

impl Signer {
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self {
            key: secret.as_ref().to_vec(),
        }
    }

    /// The four headers for `identity` on a request `method path`, signed at `now_unix`.
    pub fn sign(
        &self,
        identity: &Identity,
        method: &str,
        path: &str,
        now_unix: u64,
    ) -> IdentityHeaders {
        let user_id = identity.user_id.to_string();
        let user_name = utf8_percent_encode(&identity.username, NAME_ESCAPES).to_string();
        let user_admin = if identity.is_admin { "true" } else { "false" }.to_string();
        let ts = now_unix.to_string();
        let method = method.to_ascii_uppercase();
        let mac = mac_for(
            &self.key,
            &ts,
            &user_id,
            &user_admin,
            &user_name,
            &method,
            path,
        );
        let assertion = format!(
            "{VERSION}.{ts}.{}",
            hex::encode(mac.finalize().into_bytes())
        );
        IdentityHeaders {
            user_id,
            user_name,
            user_admin,
            assertion,
        }
    }
}

/// Checks identities; held by agent-service.
#[derive(Clone)]
pub struct Verifier {
    key: Vec<u8>,
    max_age_secs: u64,
}

impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Verifier {{ key: <redacted>, max_age_secs: {} }}",
            self.max_age_secs
        )
    }
}

impl Verifier {
    /// A verifier accepting assertions at most `max_age_secs` old.
    pub fn new(secret: impl AsRef<[u8]>, max_age_secs: u64) -> Self {
        Self {
            key: secret.as_ref().to_vec(),
            max_age_secs,
        }
    }

    /// Checks the received headers against the request's `method` and `path` at `now_unix`.
    pub fn verify(
        &self,
        received: &ReceivedIdentity<'_>,
        method: &str,
        path: &str,
        now_unix: u64,
    ) -> Result<Identity, AssertionError> {
        let (Some(id), Some(assertion)) = (received.user_id, received.assertion) else {
            return Err(AssertionError::Missing);
        };
        let name = received.user_name.unwrap_or("");
        let admin = received.user_admin.unwrap_or("false");

        let mut parts = assertion.splitn(3, '.');
        let (Some(version), Some(ts), Some(sig)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(AssertionError::Malformed("assertion is not v1.<ts>.<mac>"));
        };
        if version != VERSION {
            return Err(AssertionError::Malformed("unsupported assertion version"));
        }
        let ts_num: u64 = ts
            .parse()
            .map_err(|_| AssertionError::Malformed("bad timestamp"))?;
        let sig = hex::decode(sig).map_err(|_| AssertionError::Malformed("mac is not hex"))?;

        let method = method.to_ascii_uppercase();
        let mac = mac_for(&self.key, ts, id, admin, name, &method, path);
        mac.verify_slice(&sig)
            .map_err(|_| AssertionError::BadSignature)?;

        if ts_num > now_unix.saturating_add(MAX_FUTURE_SKEW_SECS)
            || now_unix.saturating_sub(ts_num) > self.max_age_secs
        {
            return Err(AssertionError::Stale);
        }
        let user_id: i64 = id
            .parse()
            .map_err(|_| AssertionError::Malformed("bad user id"))?;
        let is_admin = match admin {
            "true" => true,
            "false" => false,
            _ => return Err(AssertionError::Malformed("bad admin flag")),
        };
        let username = percent_decode_str(name).decode_utf8_lossy().into_owned();
        Ok(Identity {
            user_id,
            username,
            is_admin,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000;

    fn ada() -> Identity {
        Identity {
            user_id: 1,
            username: "ada lovelace ✓".into(),
            is_admin: true,
        }
    }

    fn received(h: &IdentityHeaders) -> ReceivedIdentity<'_> {
        ReceivedIdentity {
            user_id: Some(&h.user_id),
            user_name: Some(&h.user_name),
            user_admin: Some(&h.user_admin),
            assertion: Some(&h.assertion),
        }
    }

    #[test]
    fn round_trips() {
        let h = Signer::new("k").sign(&ada(), "get", "/ws/abc", NOW);
        assert!(h.assertion.starts_with("v1.1800000000."));
        assert_eq!(h.user_name, "ada lovelace %E2%9C%93");
        let got = Verifier::new("k", 60).verify(&received(&h), "GET", "/ws/abc", NOW + 10);
        assert_eq!(got, Ok(ada()));
    }

    #[test]
    fn wrong_key_path_or_method_fails() {
        let h = Signer::new("k").sign(&ada(), "GET", "/ws/abc", NOW);
        let v = Verifier::new("k", 60);
        assert_eq!(
            Verifier::new("other", 60).verify(&received(&h), "GET", "/ws/abc", NOW),
            Err(AssertionError::BadSignature)
        );
        assert_eq!(
            v.verify(&received(&h), "GET", "/ws/other", NOW),
            Err(AssertionError::BadSignature)
        );
        assert_eq!(
            v.verify(&received(&h), "POST", "/ws/abc", NOW),
            Err(AssertionError::BadSignature)
        );
    }

    #[test]
    fn tampered_values_fail() {
        let h = Signer::new("k").sign(&ada(), "GET", "/p", NOW);
        let v = Verifier::new("k", 60);
        let mut r = received(&h);
        r.user_id = Some("2");
        assert_eq!(
            v.verify(&r, "GET", "/p", NOW),
            Err(AssertionError::BadSignature)
        );
        let mut r = received(&h);
        r.user_admin = Some("false");
        assert_eq!(
            v.verify(&r, "GET", "/p", NOW),
            Err(AssertionError::BadSignature)
        );
        let mut r = received(&h);
        r.user_name = Some("mallory");
        assert_eq!(
            v.verify(&r, "GET", "/p", NOW),
            Err(AssertionError::BadSignature)
        );
    }

    #[test]
    fn age_is_bounded_both_ways() {
        let h = Signer::new("k").sign(&ada(), "GET", "/p", NOW);
        let v = Verifier::new("k", 60);
        assert!(v.verify(&received(&h), "GET", "/p", NOW + 60).is_ok());
        assert_eq!(
            v.verify(&received(&h), "GET", "/p", NOW + 120),
            Err(AssertionError::Stale)
        );
        assert_eq!(
            v.verify(&received(&h), "GET", "/p", NOW - 60),
            Err(AssertionError::Stale)
        );
    }

    #[test]
    fn missing_and_malformed() {
        let v = Verifier::new("k", 60);
        assert_eq!(
            v.verify(&ReceivedIdentity::default(), "GET", "/", NOW),
            Err(AssertionError::Missing)
        );
        for bad in ["", "v1", "v1.x.00", "v2.1.00", "v1.1.zz"] {
            let r = ReceivedIdentity {
                user_id: Some("1"),
                assertion: Some(bad),
                ..Default::default()
            };
            let err = v.verify(&r, "GET", "/", NOW).unwrap_err();
            assert_eq!(err.code(), "invalid_identity", "{bad}");
        }
    }

    #[test]
    fn reserved_headers() {
        assert!(is_reserved_header("X-User-Id"));
        assert!(is_reserved_header("x-auth-anything"));
        assert!(is_reserved_header("X-IDENTITY-ASSERTION"));
        assert!(!is_reserved_header("x-request-id"));
        assert!(!is_reserved_header("x-username"));
    }
}
