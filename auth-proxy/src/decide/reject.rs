//! Every answer the proxy gives itself instead of forwarding: its status, its stable error code, a
//! sentence for people, and the `WWW-Authenticate` challenge for 401s. No body ever echoes the token
//! or an internal error.

use shared::error_body::ErrorBody;

use crate::auth::claims::JwtError;
use crate::auth::token::TokenProblem;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    MissingToken,
    /// The token is unusable; the reason goes to the log, not to the client.
    InvalidToken(&'static str),
    TokenExpired,
    TokenNotYetValid,
    AmbiguousToken,
    UnknownUser,
    /// The token was revoked (by user, `jti` or globally).
    TokenRevoked,
    Forbidden,
    /// A WebSocket handshake from a browser origin not in `ws.allowed_origins`.
    OriginNotAllowed,
    RateLimited,
    AuthUnavailable,
    WebSocketRequired,
    UpstreamUnavailable,
    ShuttingDown,
    /// The raw path holds a dot-segment, an encoded slash, dot or backslash, or an empty segment.
    BadPath,
    /// The request (its head, or what the edge would forward of it) cannot be read or written as
    /// HTTP/1.1 without guessing.
    Malformed,
    /// A path of the WebSocket endpoint whose client id is outside [`shared::client_id`]'s grammar.
    InvalidClientId,
    /// A WebSocket handshake on a path that is not the WebSocket endpoint.
    UpgradeNotAllowed,
    /// The connection layer: this client IP holds `connections.max_per_ip` connections already.
    ConnectionsPerIp,
    /// The connection layer: the edge holds its whole connection budget.
    ConnectionsTotal,
    /// The connection layer: the request head did not arrive within `connections.header_timeout_secs`.
    HeadTimeout,
    /// The connection layer: the request head is larger than the edge reads.
    HeadTooLarge,
}

impl Reject {
    pub fn status(self) -> u16 {
        use Reject::*;
        match self {
            MissingToken | InvalidToken(_) | TokenExpired | TokenNotYetValid | AmbiguousToken
            | UnknownUser | TokenRevoked => 401,
            Forbidden | OriginNotAllowed => 403,
            WebSocketRequired => 426,
            RateLimited => 429,
            UpstreamUnavailable => 502,
            BadPath | Malformed | InvalidClientId | UpgradeNotAllowed => 400,
            AuthUnavailable | ShuttingDown | ConnectionsTotal => 503,
            ConnectionsPerIp => 429,
            HeadTimeout => 408,
            HeadTooLarge => 431,
        }
    }

    pub fn code(self) -> &'static str {
        use Reject::*;
        match self {
            MissingToken => "missing_token",
            InvalidToken(_) => "invalid_token",
            TokenExpired => "token_expired",
            TokenNotYetValid => "token_not_yet_valid",
            AmbiguousToken => "ambiguous_token",
            UnknownUser => "unknown_user",
            TokenRevoked => "token_revoked",
            Forbidden => "forbidden",
            OriginNotAllowed => "origin_not_allowed",
            RateLimited => "rate_limited",
            AuthUnavailable => "auth_unavailable",
            WebSocketRequired => "websocket_required",
            UpstreamUnavailable => "upstream_unavailable",
            ShuttingDown => "shutting_down",
            BadPath | Malformed | HeadTooLarge => "bad_request",
            InvalidClientId => "invalid_client_id",
            UpgradeNotAllowed => "upgrade_not_allowed",
            ConnectionsPerIp | ConnectionsTotal => "too_many_connections",
            HeadTimeout => "request_timeout",
        }
    }

    pub fn message(self) -> &'static str {
        use Reject::*;
        match self {
            MissingToken => {
                "A token is required: pass ?token=<jwt> or an Authorization: Bearer header."
            }
            InvalidToken(_) => "The token is invalid.",
            TokenExpired => "The token has expired.",
            TokenNotYetValid => "The token is not valid yet.",
            AmbiguousToken => "Two different tokens were given; send one.",
            UnknownUser => "The token's user does not exist.",
            TokenRevoked => "The token has been revoked; sign in again.",
            Forbidden => "This path is for administrators only.",
            OriginNotAllowed => "WebSocket connections from this origin are not allowed.",
            RateLimited => "Too many failed authentication attempts; try again later.",
            AuthUnavailable => "Authentication is temporarily unavailable; try again shortly.",
            WebSocketRequired => "This endpoint only accepts WebSocket upgrades.",
            UpstreamUnavailable => "The service behind the proxy cannot be reached.",
            ShuttingDown => "The proxy is shutting down; reconnect.",
            BadPath => {
                "The path may not contain '.' or '..' segments, empty segments, backslashes or encoded '/', '.', '\\' or '%'."
            }
            Malformed => "The request could not be parsed.",
            InvalidClientId => {
                "The client id in /ws/{client_id} must be 1 to 128 characters of A-Z, a-z, 0-9, '.', '_' and '-'."
            }
            UpgradeNotAllowed => "WebSocket upgrades are accepted on /ws/{client_id} only.",
            ConnectionsPerIp => "Too many open connections from this address.",
            ConnectionsTotal => "The proxy is at its connection limit; retry shortly.",
            HeadTimeout => "The request head was not received in time.",
            HeadTooLarge => "The request head is too large.",
        }
    }

    /// The `Retry-After` value (seconds) an answer with this rejection carries.
    pub fn retry_after(self) -> Option<&'static str> {
        match self {
            Reject::RateLimited => Some("60"),
            Reject::ConnectionsPerIp | Reject::ConnectionsTotal => Some("5"),
            _ => None,
        }
    }

    /// The `WWW-Authenticate` value for 401s: `error="invalid_token"` when a token was given.
    pub fn challenge(self) -> Option<&'static str> {
        match self {
            Reject::MissingToken => Some("Bearer"),
            r if r.status() == 401 => Some(r#"Bearer error="invalid_token""#),
            _ => None,
        }
    }

    /// True for failures that count towards the per-IP throttle.
    pub fn is_auth_failure(self) -> bool {
        self.status() == 401
    }

    pub fn body(self) -> Vec<u8> {
        ErrorBody::new(self.code(), self.message()).to_json()
    }
}

impl From<TokenProblem> for Reject {
    fn from(p: TokenProblem) -> Reject {
        match p {
            TokenProblem::Missing => Reject::MissingToken,
            TokenProblem::Ambiguous => Reject::AmbiguousToken,
            TokenProblem::Oversized => Reject::InvalidToken("token over the size cap"),
        }
    }
}

impl From<JwtError> for Reject {
    fn from(e: JwtError) -> Reject {
        match e {
            JwtError::Invalid(r) => Reject::InvalidToken(r),
            JwtError::Expired => Reject::TokenExpired,
            JwtError::NotYetValid => Reject::TokenNotYetValid,
            JwtError::UnknownKid => Reject::InvalidToken("unknown kid"),
            JwtError::KeysUnavailable => Reject::AuthUnavailable,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_codes_and_challenges() {
        assert_eq!(Reject::MissingToken.challenge(), Some("Bearer"));
        assert_eq!(
            Reject::TokenExpired.challenge(),
            Some(r#"Bearer error="invalid_token""#)
        );
        assert_eq!(Reject::Forbidden.challenge(), None);
        assert_eq!(Reject::AuthUnavailable.status(), 503);
        assert_eq!(Reject::RateLimited.status(), 429);
        assert_eq!(Reject::UpstreamUnavailable.status(), 502);
        let body: serde_json::Value =
            serde_json::from_slice(&Reject::InvalidToken("bad signature").body()).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert!(!body.to_string().contains("bad signature"));
        for r in [
            Reject::BadPath,
            Reject::Malformed,
            Reject::InvalidClientId,
            Reject::UpgradeNotAllowed,
        ] {
            assert_eq!(r.status(), 400);
            assert!(!r.is_auth_failure());
        }
        for (r, status, code, retry) in [
            (
                Reject::ConnectionsPerIp,
                429,
                "too_many_connections",
                Some("5"),
            ),
            (
                Reject::ConnectionsTotal,
                503,
                "too_many_connections",
                Some("5"),
            ),
            (Reject::HeadTimeout, 408, "request_timeout", None),
            (Reject::HeadTooLarge, 431, "bad_request", None),
            (Reject::RateLimited, 429, "rate_limited", Some("60")),
        ] {
            assert_eq!(
                (r.status(), r.code(), r.retry_after()),
                (status, code, retry)
            );
            assert!(!r.is_auth_failure());
        }
    }

    #[test]
    fn the_client_id_message_states_the_shared_grammar() {
        assert!(Reject::InvalidClientId
            .message()
            .contains(shared::client_id::GRAMMAR));
    }
}
