//! The trusted identity the proxy hands to the agent, and the assertion that proves it.
//!
//! After authenticating a request, auth-proxy deletes every client-supplied header whose name starts
//! with `x-user-`, `x-auth-` or `x-identity-` (in any case, with `-` or `_` between words) and
//! injects four headers:
//!
//! | header | value |
//! |---|---|
//! | `x-user-id` | the user's id, decimal (`42`) |
//! | `x-user-name` | the username, percent-encoded UTF-8 (controls, `%` and non-ASCII escaped) |
//! | `x-user-admin` | `true` or `false` |
//! | `x-identity-assertion` | `v2.<unix seconds>.<nonce: 32 lower-case hex>.<hex HMAC-SHA256>` |
//!
//! The HMAC key is `IDENTITY_SECRET`, shared by the two services and nobody else. The nonce is 128
//! random bits, new for every forwarded request. The MAC covers these lines joined by `\n`, in this
//! order:
//!
//! ```text
//! v2
//! <unix seconds, as in the header>
//! <nonce, as in the header>
//! <x-user-id value>
//! <x-user-admin value>
//! <x-user-name value, exactly as sent>
//! <request method, upper case>
//! <request path, without the query string>
//! <raw query string as forwarded, without '?'; empty when there is none>
//! ```
//!
//! Binding the method, path and query means an assertion captured from one request cannot be
//! replayed on another route or with other parameters. The timestamp bounds its life (the agent
//! accepts at most `AGENT_IDENTITY_MAX_AGE_SECS`, default 10 s, and 5 s of clock skew), and the agent
//! remembers every nonce it accepted for that long, so each assertion is accepted once: a replay
//! with the same or another body is refused even inside the window.

use std::fmt;

use hmac::{Hmac, Mac};
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, CONTROLS};
use sha2::Sha256;

pub const HEADER_USER_ID: &str = "x-user-id";
pub const HEADER_USER_NAME: &str = "x-user-name";
pub const HEADER_USER_ADMIN: &str = "x-user-admin";
pub const HEADER_ASSERTION: &str = "x-identity-assertion";

/// The assertion format version this crate signs and accepts.
pub const VERSION: &str = "v2";

/// Length of the nonce in the assertion, in hex characters (128 bits).
pub const NONCE_HEX_LEN: usize = 32;

/// Header name prefixes reserved for the proxy. Any client-supplied header starting with one of
/// these is deleted before a request is forwarded.
pub const RESERVED_PREFIXES: [&str; 3] = ["x-user-", "x-auth-", "x-identity-"];

/// How far in the future a timestamp may be (clock skew between the two processes).
pub const MAX_FUTURE_SKEW_SECS: u64 = 5;

/// Characters escaped in `x-user-name`: controls, `%` itself, and (always) non-ASCII bytes.
const NAME_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');

type HmacSha256 = Hmac<Sha256>;

/// True if a header name (any case, `_` or `-` between words) is one only the proxy may set.
/// Underscore spellings count because CGI-style servers (WSGI, ASGI, PHP) map `x_user_id` and
/// `x-user-id` to the same variable.
pub fn is_reserved_header(name: &str) -> bool {
    RESERVED_PREFIXES
        .iter()
        .any(|p| loose_prefix(name.as_bytes(), p.as_bytes()))
}

/// True if `name` starts with `prefix` (lower case, `-` between words), comparing ASCII letters
/// in any case and `_` as `-`. Allocation-free: it runs for every header of every request.
fn loose_prefix(name: &[u8], prefix: &[u8]) -> bool {
    name.len() >= prefix.len()
        && name.iter().zip(prefix).all(|(&a, &b)| {
            let a = if a == b'_' {
                b'-'
            } else {
                a.to_ascii_lowercase()
            };
            a == b
        })
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

    /// The same pairs, owning their values (no copy).
    pub fn into_pairs(self) -> [(&'static str, String); 4] {
        [
            (HEADER_USER_ID, self.user_id),
            (HEADER_USER_NAME, self.user_name),
            (HEADER_USER_ADMIN, self.user_admin),
            (HEADER_ASSERTION, self.assertion),
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
    /// Already accepted once (the agent's replay guard said so).
    Replayed,
}

impl AssertionError {
    pub fn code(&self) -> &'static str {
        match self {
            AssertionError::Missing => "missing_identity",
            AssertionError::Malformed(_) | AssertionError::BadSignature => "invalid_identity",
            AssertionError::Stale => "stale_identity",
            AssertionError::Replayed => "replayed_identity",
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
            AssertionError::Replayed => write!(f, "the identity assertion was already used"),
        }
    }
}

impl std::error::Error for AssertionError {}

/// The request an assertion is bound to, as the agent receives it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BoundRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    /// The raw query string without `?`; `None` and `Some("")` are the same.
    pub query: Option<&'a str>,
}

impl<'a> BoundRequest<'a> {
    pub fn new(method: &'a str, path: &'a str, query: Option<&'a str>) -> Self {
        BoundRequest {
            method,
            path,
            query,
        }
    }
}

/// The covered values of one assertion, in MAC order after the version.
struct Covered<'a> {
    ts: &'a str,
    nonce: &'a str,
    id: &'a str,
    admin: &'a str,
    name: &'a str,
    request: BoundRequest<'a>,
}

/// HMAC-SHA256 keyed once: cloning it skips hashing the key for every assertion.
fn keyed(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any size")
}

fn mac_for(keyed: &HmacSha256, c: &Covered<'_>) -> HmacSha256 {
    let mut mac = keyed.clone();
    let method = upper_case(c.request.method);
    let parts = [
        VERSION,
        c.ts,
        c.nonce,
        c.id,
        c.admin,
        c.name,
        &method,
        c.request.path,
        c.request.query.unwrap_or(""),
    ];
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            mac.update(b"\n");
        }
        mac.update(part.as_bytes());
    }
    mac
}

/// `s` in ASCII upper case, borrowed when it already is (methods nearly always are).
fn upper_case(s: &str) -> std::borrow::Cow<'_, str> {
    if s.bytes().any(|b| b.is_ascii_lowercase()) {
        s.to_ascii_uppercase().into()
    } else {
        s.into()
    }
}

/// A verified assertion: who, and the nonce and time the agent's replay guard needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asserted {
    pub identity: Identity,
    /// The assertion's nonce (128 bits).
    pub nonce: u128,
    /// The assertion's timestamp, unix seconds.
    pub issued_at: u64,
}

/// Signs identities; held by auth-proxy.
#[derive(Clone)]
pub struct Signer {
    key: HmacSha256,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Signer { key: <redacted> }")
    }
}

impl Signer {
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Self {
            key: keyed(secret.as_ref()),
        }
    }

    /// The four headers for `identity` on `request`, signed at `now_unix` with a fresh nonce.
    pub fn sign(
        &self,
        identity: &Identity,
        request: BoundRequest<'_>,
        now_unix: u64,
    ) -> IdentityHeaders {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        self.sign_with_nonce(identity, request, now_unix, &nonce)
    }

    /// As [`Signer::sign`], with a given nonce (tests).
    pub fn sign_with_nonce(
        &self,
        identity: &Identity,
        request: BoundRequest<'_>,
        now_unix: u64,
        nonce: &str,
    ) -> IdentityHeaders {
        let user_id = identity.user_id.to_string();
        let user_name = utf8_percent_encode(&identity.username, NAME_ESCAPES).to_string();
        let user_admin = if identity.is_admin { "true" } else { "false" }.to_string();
        let ts = now_unix.to_string();
        let mac = mac_for(
            &self.key,
            &Covered {
                ts: &ts,
                nonce,
                id: &user_id,
                admin: &user_admin,
                name: &user_name,
                request,
            },
        );
        let mut hex_mac = [0u8; 64];
        // 32 bytes of MAC always fit 64 hex digits.
        let _ = hex::encode_to_slice(mac.finalize().into_bytes(), &mut hex_mac);
        let hex_mac = std::str::from_utf8(&hex_mac).unwrap_or_default();
        let assertion = [VERSION, ".", &ts, ".", nonce, ".", hex_mac].concat();
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
    key: HmacSha256,
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
            key: keyed(secret.as_ref()),
            max_age_secs,
        }
    }

    /// Checks the received headers against the request at `now_unix`. Replay inside the window is
    /// the caller's to refuse, by the returned nonce.
    pub fn verify(
        &self,
        received: &ReceivedIdentity<'_>,
        request: BoundRequest<'_>,
        now_unix: u64,
    ) -> Result<Asserted, AssertionError> {
        let (Some(id), Some(assertion)) = (received.user_id, received.assertion) else {
            return Err(AssertionError::Missing);
        };
        let name = received.user_name.unwrap_or("");
        let admin = received.user_admin.unwrap_or("false");

        let parts: Vec<&str> = assertion.splitn(4, '.').collect();
        let [version, ts, nonce, sig] = parts[..] else {
            return Err(AssertionError::Malformed(
                "assertion is not v2.<ts>.<nonce>.<mac>",
            ));
        };
        if version != VERSION {
            return Err(AssertionError::Malformed("unsupported assertion version"));
        }
        let ts_num: u64 = ts
            .parse()
            .map_err(|_| AssertionError::Malformed("bad timestamp"))?;
        if nonce.len() != NONCE_HEX_LEN || !nonce.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(AssertionError::Malformed("bad nonce"));
        }
        let nonce_num =
            u128::from_str_radix(nonce, 16).map_err(|_| AssertionError::Malformed("bad nonce"))?;
        let sig = hex::decode(sig).map_err(|_| AssertionError::Malformed("mac is not hex"))?;

        let covered = Covered {
            ts,
            nonce,
            id,
            admin,
            name,
            request,
        };
        mac_for(&self.key, &covered)
            .verify_slice(&sig)
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
        Ok(Asserted {
            identity: Identity {
                user_id,
                username,
                is_admin,
            },
            nonce: nonce_num,
            issued_at: ts_num,
        })
    }

    /// The longest age accepted, in seconds.
    pub fn max_age_secs(&self) -> u64 {
        self.max_age_secs
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

    fn req<'a>(method: &'a str, path: &'a str, query: Option<&'a str>) -> BoundRequest<'a> {
        BoundRequest::new(method, path, query)
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
        let h = Signer::new("k").sign(&ada(), req("get", "/ws/abc", Some("provider=x")), NOW);
        assert!(h.assertion.starts_with("v2.1800000000."));
        assert_eq!(h.user_name, "ada lovelace %E2%9C%93");
        let got = Verifier::new("k", 10)
            .verify(
                &received(&h),
                req("GET", "/ws/abc", Some("provider=x")),
                NOW + 10,
            )
            .unwrap();
        assert_eq!(got.identity, ada());
        assert_eq!(got.issued_at, NOW);
        let borrowed = h.pairs().map(|(n, v)| (n, v.to_string()));
        assert_eq!(h.into_pairs(), borrowed);
    }

    #[test]
    fn every_assertion_has_its_own_nonce() {
        let s = Signer::new("k");
        let v = Verifier::new("k", 10);
        let r = req("GET", "/p", None);
        let a = v
            .verify(&received(&s.sign(&ada(), r, NOW)), r, NOW)
            .unwrap();
        let b = v
            .verify(&received(&s.sign(&ada(), r, NOW)), r, NOW)
            .unwrap();
        assert_ne!(a.nonce, b.nonce);
    }

    #[test]
    fn wrong_key_path_method_or_query_fails() {
        let r = req("GET", "/ws/abc", Some("provider=offline"));
        let h = Signer::new("k").sign(&ada(), r, NOW);
        let v = Verifier::new("k", 10);
        assert_eq!(
            Verifier::new("other", 10).verify(&received(&h), r, NOW),
            Err(AssertionError::BadSignature)
        );
        for other in [
            req("GET", "/ws/other", Some("provider=offline")),
            req("POST", "/ws/abc", Some("provider=offline")),
            req("GET", "/ws/abc", Some("provider=openai")),
            req("GET", "/ws/abc", Some("provider=offline&x=1")),
            req("GET", "/ws/abc", None),
        ] {
            assert_eq!(
                v.verify(&received(&h), other, NOW),
                Err(AssertionError::BadSignature),
                "{other:?}"
            );
        }
        let none = Signer::new("k").sign(&ada(), req("GET", "/p", None), NOW);
        assert!(v
            .verify(&received(&none), req("GET", "/p", Some("")), NOW)
            .is_ok());
    }

    #[test]
    fn tampered_values_fail() {
        let r = req("GET", "/p", None);
        let h = Signer::new("k").sign(&ada(), r, NOW);
        let v = Verifier::new("k", 10);
        let mut bad = received(&h);
        bad.user_id = Some("2");
        assert_eq!(v.verify(&bad, r, NOW), Err(AssertionError::BadSignature));
        let mut bad = received(&h);
        bad.user_admin = Some("false");
        assert_eq!(v.verify(&bad, r, NOW), Err(AssertionError::BadSignature));
        let mut bad = received(&h);
        bad.user_name = Some("mallory");
        assert_eq!(v.verify(&bad, r, NOW), Err(AssertionError::BadSignature));
        // Another nonce with the same MAC.
        let mut parts: Vec<String> = h.assertion.split('.').map(str::to_string).collect();
        parts[2] = "0".repeat(NONCE_HEX_LEN);
        let forged = parts.join(".");
        let mut bad = received(&h);
        bad.assertion = Some(&forged);
        assert_eq!(v.verify(&bad, r, NOW), Err(AssertionError::BadSignature));
    }

    #[test]
    fn age_is_bounded_both_ways() {
        let r = req("GET", "/p", None);
        let h = Signer::new("k").sign(&ada(), r, NOW);
        let v = Verifier::new("k", 10);
        assert!(v.verify(&received(&h), r, NOW + 10).is_ok());
        assert_eq!(
            v.verify(&received(&h), r, NOW + 11),
            Err(AssertionError::Stale)
        );
        assert_eq!(
            v.verify(&received(&h), r, NOW - 60),
            Err(AssertionError::Stale)
        );
    }

    #[test]
    fn missing_and_malformed() {
        let v = Verifier::new("k", 10);
        let r = req("GET", "/", None);
        assert_eq!(
            v.verify(&ReceivedIdentity::default(), r, NOW),
            Err(AssertionError::Missing)
        );
        let zeros = "0".repeat(NONCE_HEX_LEN);
        for bad in [
            "".to_string(),
            "v2".into(),
            "v1.1.00".into(),
            format!("v2.x.{zeros}.00"),
            format!("v3.1.{zeros}.00"),
            format!("v2.1.{zeros}.zz"),
            "v2.1.abc.00".into(),
            format!("v2.1.{}.00", "g".repeat(NONCE_HEX_LEN)),
        ] {
            let rec = ReceivedIdentity {
                user_id: Some("1"),
                assertion: Some(&bad),
                ..Default::default()
            };
            let err = v.verify(&rec, r, NOW).unwrap_err();
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
        for underscored in [
            "x_user_id",
            "X_User_Admin",
            "x_identity_assertion",
            "x_auth_role",
            "X_USER_NAME",
            "x-user_id",
        ] {
            assert!(is_reserved_header(underscored), "{underscored}");
        }
        assert!(!is_reserved_header("x_username"));
    }
}
