//! Route classes: which paths are public, which need a user, which need an admin, and which are
//! the WebSocket endpoint. The class is also the `route` label of the metrics.
//!
//! Classification works on the raw path exactly as it is forwarded, so a path that an upstream could
//! resolve to a different route is refused before routing ([`check_raw_path`], 400 `bad_request`):
//! a `.` or `..` segment (also with a `;parameter`), an empty segment (`//`), a backslash, a control
//! character, or a percent-encoded `.`, `/`, `\`, `%` or NUL. Nothing is normalised: the path the
//! proxy classifies is the path the upstream receives.

use crate::config::Config;

/// Paths forwarded without authentication, always.
pub const BUILT_IN_PUBLIC: [&str; 2] = ["/health", "/api/info"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Forwarded without authentication.
    Public,
    /// `/ws` and everything under `/ws/`: the WebSocket endpoint, served only by the edge's own
    /// tunnel. Authentication and a WebSocket upgrade; the rest of the path must be a valid client
    /// id ([`shared::client_id`]), else 400 `invalid_client_id`.
    WebSocket,
    /// Authentication and `isAdmin`.
    Admin,
    /// Everything else: authentication.
    Api,
}

impl Route {
    pub fn label(self) -> &'static str {
        match self {
            Route::Public => "public",
            Route::WebSocket => "ws",
            Route::Admin => "admin",
            Route::Api => "api",
        }
    }
}

/// The route table from config.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    public_paths: Vec<String>,
    public_prefixes: Vec<String>,
    admin_paths: Vec<String>,
    admin_prefixes: Vec<String>,
}

impl Routes {
    pub fn from_config(c: &Config) -> Routes {
        let mut public_paths: Vec<String> = BUILT_IN_PUBLIC.iter().map(|s| s.to_string()).collect();
        public_paths.extend(c.public_paths.iter().cloned());
        Routes {
            public_paths,
            public_prefixes: c.public_prefixes.clone(),
            admin_paths: c.admin_paths.clone(),
            admin_prefixes: c.admin_prefixes.clone(),
        }
    }

    /// The WebSocket endpoint is its own route whatever else matches (an admin rule on it makes
    /// it admin-only: [`Routes::requires_admin`]); then admin rules win over public ones, so a
    /// misconfigured overlap fails closed.
    pub fn classify(&self, path: &str) -> Route {
        if shared::client_id::of_path(path).is_some() {
            return Route::WebSocket;
        }
        if self.requires_admin(path) {
            return Route::Admin;
        }
        if self.public_paths.iter().any(|p| p == path)
            || self
                .public_prefixes
                .iter()
                .any(|p| path.starts_with(p.as_str()))
        {
            return Route::Public;
        }
        Route::Api
    }

    /// True when an admin rule covers `path` (on any route): the user must have `isAdmin`.
    pub fn requires_admin(&self, path: &str) -> bool {
        self.admin_paths.iter().any(|p| p == path)
            || self
                .admin_prefixes
                .iter()
                .any(|p| path.starts_with(p.as_str()))
    }
}

/// Why a raw request path cannot be classified safely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    NotAbsolute,
    DotSegment,
    EmptySegment,
    Backslash,
    EncodedSeparator,
    ControlCharacter,
}

/// Refuses a raw path an upstream might resolve differently from the proxy.
pub fn check_raw_path(path: &str) -> Result<(), PathProblem> {
    if !path.starts_with('/') {
        return Err(PathProblem::NotAbsolute);
    }
    if path.bytes().any(|b| b.is_ascii_control() || b >= 0x80) {
        return Err(PathProblem::ControlCharacter);
    }
    if path.contains('\\') {
        return Err(PathProblem::Backslash);
    }
    if has_encoded_separator(path) {
        return Err(PathProblem::EncodedSeparator);
    }
    // Segments after the leading '/'; the last may be empty (a trailing slash).
    let mut segments = path[1..].split('/').peekable();
    while let Some(segment) = segments.next() {
        let name = segment.split(';').next().unwrap_or("");
        if name == "." || name == ".." {
            return Err(PathProblem::DotSegment);
        }
        if segment.is_empty() && segments.peek().is_some() {
            return Err(PathProblem::EmptySegment);
        }
    }
    Ok(())
}

/// True when `path` holds `%2e`, `%2f`, `%5c`, `%25` or `%00`, in any case: an encoded dot,
/// separator, escape or NUL.
fn has_encoded_separator(path: &str) -> bool {
    path.as_bytes().windows(3).any(|w| {
        w[0] == b'%'
            && matches!(
                [w[1], w[2].to_ascii_lowercase()],
                [b'2', b'e' | b'f' | b'5'] | [b'5', b'c'] | [b'0', b'0']
            )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn routes() -> Routes {
        let c = Config {
            public_prefixes: vec!["/static/".into()],
            admin_paths: vec!["/api/admin".into()],
            admin_prefixes: vec!["/admin/".into()],
            ..Config::default()
        };
        Routes::from_config(&c)
    }

    #[test]
    fn classifies() {
        let r = routes();
        assert_eq!(r.classify("/health"), Route::Public);
        assert_eq!(r.classify("/api/info"), Route::Public);
        assert_eq!(r.classify("/static/app.js"), Route::Public);
        assert_eq!(
            r.classify("/ws/6f1c2b1e-0c3a-4f7e-9d7e-2b8f2c1a9e10"),
            Route::WebSocket
        );
        assert_eq!(r.classify("/api/admin"), Route::Admin);
        assert_eq!(r.classify("/admin/users"), Route::Admin);
        assert_eq!(r.classify("/api/chat/sessions"), Route::Api);
        assert_eq!(r.classify("/"), Route::Api);
        assert_eq!(r.classify("/health/"), Route::Api);
        // Every path of the endpoint is its route, whatever follows: one door, and the
        // decision refuses an id outside the grammar.
        assert_eq!(r.classify("/ws/"), Route::WebSocket);
        assert_eq!(r.classify("/ws"), Route::WebSocket);
        assert_eq!(r.classify("/ws/a/b"), Route::WebSocket);
        assert_eq!(r.classify("/ws/6f1c2b1e~x"), Route::WebSocket);
        assert_eq!(r.classify("/ws/%41"), Route::WebSocket);
        assert_eq!(r.classify("/wsx"), Route::Api);
        assert_eq!(r.classify("/api/info/../admin"), Route::Api);
    }

    #[test]
    fn raw_paths_that_could_change_route_are_refused() {
        for ok in [
            "/",
            "/health",
            "/static/app.js",
            "/static/dir/",
            "/static/a.b..c",
            "/static/...",
            "/api/chat/sessions",
            "/ws/ada-laptop-1",
            "/static/name%20with%20space",
            "/static/%2",
            "/static/%5",
        ] {
            assert_eq!(check_raw_path(ok), Ok(()), "{ok}");
        }
        for (bad, why) in [
            ("/static/../api/chat/sessions", PathProblem::DotSegment),
            ("/static/./x", PathProblem::DotSegment),
            ("/static/..", PathProblem::DotSegment),
            ("/static/..;/api", PathProblem::DotSegment),
            ("/..", PathProblem::DotSegment),
            (
                "/static/%2e%2e/api/chat/sessions",
                PathProblem::EncodedSeparator,
            ),
            ("/static/%2E%2E/api", PathProblem::EncodedSeparator),
            ("/static/.%2e/api", PathProblem::EncodedSeparator),
            (
                "/static/..%2fapi/chat/sessions",
                PathProblem::EncodedSeparator,
            ),
            ("/static/..%2Fapi", PathProblem::EncodedSeparator),
            ("/static/..%5capi", PathProblem::EncodedSeparator),
            ("/static/%252e%252e/api", PathProblem::EncodedSeparator),
            ("/static/x%00", PathProblem::EncodedSeparator),
            ("/static/..%5Capi", PathProblem::EncodedSeparator),
            ("/static/..\\api", PathProblem::Backslash),
            ("/static//api", PathProblem::EmptySegment),
            ("//admin/users", PathProblem::EmptySegment),
            ("/static/\tx", PathProblem::ControlCharacter),
            ("static/x", PathProblem::NotAbsolute),
            ("*", PathProblem::NotAbsolute),
        ] {
            assert_eq!(check_raw_path(bad), Err(why), "{bad}");
        }
    }
}
