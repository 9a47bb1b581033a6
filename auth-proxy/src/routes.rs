//! Route classes: which paths are public, which need a user, which need an admin, and which are
//! the WebSocket endpoint. The class is also the `route` label of the metrics.

use crate::config::Config;

/// Paths forwarded without authentication, always.
pub const BUILT_IN_PUBLIC: [&str; 2] = ["/health", "/api/info"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Forwarded without authentication.
    Public,
    /// `/ws/{client_id}`: authentication and a WebSocket upgrade.
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

    /// Admin rules win over public ones, so a misconfigured overlap fails closed.
    pub fn classify(&self, path: &str) -> Route {
        if self.admin_paths.iter().any(|p| p == path)
            || self
                .admin_prefixes
                .iter()
                .any(|p| path.starts_with(p.as_str()))
        {
            return Route::Admin;
        }
        if is_websocket_path(path) {
            return Route::WebSocket;
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
}

/// `/ws/{client_id}` with one non-empty segment of at most 128 URL-safe characters.
pub fn is_websocket_path(path: &str) -> bool {
    path.strip_prefix("/ws/").is_some_and(|id| {
        !id.is_empty()
            && id.len() <= 128
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
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
        assert_eq!(r.classify("/ws/"), Route::Api);
        assert_eq!(r.classify("/ws/a/b"), Route::Api);
        assert_eq!(r.classify("/api/info/../admin"), Route::Api);
    }
}
