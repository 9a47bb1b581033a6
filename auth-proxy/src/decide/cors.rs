//! Cross-origin rules for browser front ends on another origin.
//!
//! CORS (`cors.allowed_origins`, env `AUTH_PROXY_CORS_ALLOWED_ORIGINS`; empty = off): a preflight
//! (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) from an allowed origin is answered
//! by the edge itself, before authentication, with 204 and the allowed methods and headers; every
//! other response to an allowed origin, rejections included, carries `Access-Control-Allow-Origin`
//! and `Vary: Origin`. Other origins get no CORS headers at all.
//!
//! WebSocket origins (`ws.allowed_origins`; empty = off): a handshake whose `Origin` is not listed
//! is refused (403 `origin_not_allowed`), the defence against cross-site WebSocket hijacking. A
//! handshake without `Origin` is not a browser's and is not affected.
//!
//! Origins are compared as `scheme://host[:port]`, ASCII case-insensitively.

use crate::config::{ConfigError, CorsConfig, WsConfig};

/// Methods a preflight may ask for.
pub const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, OPTIONS";
/// Request headers a cross-origin request may send.
pub const ALLOW_HEADERS: &str = "Authorization, Content-Type, X-Request-Id";
/// Response headers a cross-origin script may read besides the simple ones.
pub const EXPOSE_HEADERS: &str = "X-Request-Id, WWW-Authenticate, Retry-After";

/// A list of allowed origins.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    allowed: Vec<String>,
}

impl Origins {
    /// Builds the list; every entry must pass [`check_origin`] (config validation does that).
    pub fn new(list: &[String]) -> Origins {
        Origins {
            allowed: list.iter().map(|o| normalise(o)).collect(),
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.allowed.is_empty()
    }

    /// The request's `Origin`, if it is one of the allowed ones.
    pub fn matching<'a>(&self, origin: Option<&'a str>) -> Option<&'a str> {
        let origin = origin?;
        let o = normalise(origin);
        self.allowed.contains(&o).then_some(origin)
    }

    /// For WebSocket handshakes: true unless the list is on and a browser's `Origin` is not in it.
    pub fn permits_handshake(&self, origin: Option<&str>) -> bool {
        !self.is_enabled() || origin.is_none() || self.matching(origin).is_some()
    }
}

fn normalise(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// The start-up check of both origin lists (`cors.allowed_origins`, `ws.allowed_origins`).
pub fn check_config(cors: &CorsConfig, ws: &WsConfig) -> Result<(), ConfigError> {
    for (name, list) in [
        (
            "cors.allowed_origins (AUTH_PROXY_CORS_ALLOWED_ORIGINS)",
            &cors.allowed_origins,
        ),
        ("ws.allowed_origins", &ws.allowed_origins),
    ] {
        for o in list {
            check_origin(o).map_err(|p| ConfigError::new(name, p))?;
        }
    }
    Ok(())
}

/// Checks one configured origin: `http://` or `https://`, a host, no path, query or wildcard.
pub fn check_origin(origin: &str) -> Result<(), String> {
    let o = origin.trim();
    let rest = o
        .strip_prefix("https://")
        .or_else(|| o.strip_prefix("http://"))
        .ok_or_else(|| format!("{origin:?} must start with http:// or https://"))?;
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '#', '*', ' ', '@']) {
        return Err(format!(
            "{origin:?} must be scheme://host[:port], without path or wildcard"
        ));
    }
    Ok(())
}

/// True when a request is a CORS preflight.
pub fn is_preflight(method: &str, origin: Option<&str>, request_method: Option<&str>) -> bool {
    method.eq_ignore_ascii_case("OPTIONS") && origin.is_some() && request_method.is_some()
}

/// The headers of a 204 preflight answer to an allowed `origin`.
pub fn preflight_headers(origin: &str, max_age_secs: u64) -> Vec<(&'static str, String)> {
    let mut h = response_headers(origin);
    h.push(("access-control-allow-methods", ALLOW_METHODS.into()));
    h.push(("access-control-allow-headers", ALLOW_HEADERS.into()));
    h.push(("access-control-max-age", max_age_secs.to_string()));
    h
}

/// The headers every other response to an allowed `origin` carries.
pub fn response_headers(origin: &str) -> Vec<(&'static str, String)> {
    vec![
        ("access-control-allow-origin", origin.to_string()),
        ("access-control-expose-headers", EXPOSE_HEADERS.into()),
        ("vary", "Origin".into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_origin_lists_are_checked_at_start() {
        let mut cors = CorsConfig {
            allowed_origins: vec![
                "https://app.example.com".into(),
                "http://localhost:3000".into(),
            ],
            ..CorsConfig::default()
        };
        let mut ws = WsConfig::default();
        assert!(check_config(&cors, &ws).is_ok());
        ws.allowed_origins = vec!["*".into()];
        assert!(check_config(&cors, &ws)
            .unwrap_err()
            .to_string()
            .contains("ws.allowed_origins"));
        cors.allowed_origins = vec!["https://app.example.com/path".into()];
        assert!(check_config(&cors, &WsConfig::default())
            .unwrap_err()
            .to_string()
            .contains("cors.allowed_origins"));
    }

    fn origins(list: &[&str]) -> Origins {
        Origins::new(&list.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn matching_is_exact_up_to_case_and_trailing_slash() {
        let o = origins(&["https://app.example.com", "http://localhost:3000/"]);
        assert_eq!(
            o.matching(Some("https://app.example.com")),
            Some("https://app.example.com")
        );
        assert!(o.matching(Some("HTTPS://APP.example.com")).is_some());
        assert!(o.matching(Some("http://localhost:3000")).is_some());
        assert!(o.matching(Some("http://localhost:3001")).is_none());
        assert!(o
            .matching(Some("https://app.example.com.evil.net"))
            .is_none());
        assert!(o.matching(Some("null")).is_none());
        assert!(o.matching(None).is_none());
        assert!(!Origins::default().is_enabled());
        assert!(Origins::default().matching(Some("http://a")).is_none());
    }

    #[test]
    fn handshakes_from_other_browser_origins_are_refused_when_on() {
        let off = Origins::default();
        assert!(off.permits_handshake(Some("https://evil.example")));
        let on = origins(&["https://app.example.com"]);
        assert!(on.permits_handshake(Some("https://app.example.com")));
        assert!(!on.permits_handshake(Some("https://evil.example")));
        assert!(!on.permits_handshake(Some("null")));
        assert!(
            on.permits_handshake(None),
            "non-browser clients send no Origin"
        );
    }

    #[test]
    fn configured_origins_are_checked() {
        assert!(check_origin("https://app.example.com").is_ok());
        assert!(check_origin("http://localhost:3000/").is_ok());
        assert!(check_origin("app.example.com").is_err());
        assert!(check_origin("https://*.example.com").is_err());
        assert!(check_origin("https://app.example.com/path").is_err());
        assert!(check_origin("https://").is_err());
    }

    #[test]
    fn preflights_and_their_headers() {
        assert!(is_preflight("OPTIONS", Some("http://a"), Some("GET")));
        assert!(!is_preflight("OPTIONS", Some("http://a"), None));
        assert!(!is_preflight("GET", Some("http://a"), Some("GET")));
        let h = preflight_headers("http://a", 600);
        let get = |n: &str| h.iter().find(|(k, _)| *k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("access-control-allow-origin"), Some("http://a"));
        assert_eq!(get("vary"), Some("Origin"));
        assert!(get("access-control-allow-headers")
            .unwrap()
            .contains("Authorization"));
        assert!(get("access-control-allow-methods").unwrap().contains("GET"));
        assert_eq!(get("access-control-max-age"), Some("600"));
    }
}
