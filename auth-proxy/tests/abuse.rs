//! The edge under abuse, end to end through the real proxy: the failure throttle never refuses a
//! valid token, raw paths that could change route are refused before routing, and identity or
//! forwarding headers in any spelling never reach the upstream from an untrusted client.

mod common;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends one request exactly as written (no client-side path normalisation) and returns the status
/// and the body.
async fn raw_get(port: u16, target: &str, extra: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let request =
            format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8_lossy(&response).into_owned()
    };
    let response = tokio::time::timeout(STEP, exchange)
        .await
        .expect("answered in time");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_failures_from_one_ip_are_throttled_but_valid_tokens_pass() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(
        ProxyOptions::new(&url, upstream.port).toml("[throttle]\nfailures_per_minute = 5\n"),
    )
    .await;
    for _ in 0..5 {
        let (status, _, _) = ws_connect(&proxy.ws_url("/ws/c?token=garbage"), &[])
            .await
            .err()
            .unwrap();
        assert_eq!(status, 401);
    }
    // Further failures from this IP are refused with 429 ...
    let (status, body, headers) = ws_connect(&proxy.ws_url("/ws/c?token=garbage"), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "rate_limited"
    );
    assert!(headers.get("retry-after").is_some());
    // ... and so is a verified token for a user that does not exist (a lookup failure).
    let unknown = news_nexus_token(TEST_JWT_SECRET, 424242);
    let (status, body, _) = ws_connect(&proxy.ws_url(&format!("/ws/c?token={unknown}")), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 429, "{body}");
    assert_eq!(upstream.count(), 0);

    // A valid token from the same IP is never refused by the throttle, on either route.
    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    let mut s = ws_connect(&proxy.ws_url(&format!("/ws/c?token={token}")), &[])
        .await
        .expect("a valid token passes the throttle");
    assert_eq!(echo_round_trip(&mut s, "still here").await, "still here");
    let r = http_client()
        .get(proxy.url("/api/chat/sessions"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(upstream.count(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_paths_that_could_change_route_are_refused_before_routing() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(
        ProxyOptions::new(&url, upstream.port).toml("public_prefixes = [\"/static/\"]\n"),
    )
    .await;
    let (status, _) = raw_get(proxy.port, "/static/app.js", "").await;
    assert_eq!(status, 200, "the public prefix itself is forwarded");
    assert_eq!(upstream.count(), 1);

    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    for path in [
        "/static/../api/chat/sessions",
        "/static/%2e%2e/api/chat/sessions",
        "/static/%2E%2E/api/chat/sessions",
        "/static/..%2fapi/chat/sessions",
        "/static/..%2Fapi/chat/sessions",
        "/static/..%5capi/chat/sessions",
        "/static/.%2e/api/chat/sessions",
        "/static/%252e%252e/api/chat/sessions",
        "/static/..;/api/chat/sessions",
        "/static/./../api/chat/sessions",
        "/static//../api/chat/sessions",
        "/ws/../api/chat/sessions",
    ] {
        for auth in ["", &format!("Authorization: Bearer {token}\r\n")] {
            let (status, body) = raw_get(proxy.port, path, auth).await;
            assert_eq!(status, 400, "{path}: {body}");
            let body: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(body["error"], "bad_request", "{path}");
        }
    }
    // A backslash is refused too, whether by the HTTP parser or by the path check.
    let (status, _) = raw_get(proxy.port, "/static/..\\api/chat/sessions", "").await;
    assert_eq!(status, 400);
    assert_eq!(
        upstream.count(),
        1,
        "nothing but the first request was forwarded"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn identity_and_forwarding_headers_in_any_spelling_are_stripped() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port)).await;
    let token = news_nexus_token(TEST_JWT_SECRET, 2);
    let spoof = [
        ("x_user_id", "1"),
        ("X_User_Admin", "true"),
        ("x_user_name", "ada"),
        ("x_identity_assertion", "v2.1.00.00"),
        ("x_auth_role", "root"),
        ("x-user_id", "1"),
        ("Forwarded", "for=1.2.3.4"),
        ("X-Real-IP", "1.2.3.4"),
        ("X-Forwarded-Host", "evil.example"),
        ("x_forwarded_for", "1.2.3.4"),
        ("x_real_ip", "1.2.3.4"),
        ("x-request-id", "chosen-by-the-client"),
        ("x_request_id", "chosen-by-the-client"),
    ];
    for path in ["/api/chat/sessions", "/health"] {
        let mut req = http_client().get(proxy.url(path)).bearer_auth(&token);
        for (k, v) in spoof {
            req = req.header(k, v);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let answered_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
        let seen = upstream.last();
        for (k, _) in spoof {
            if k != "x-request-id" {
                assert!(
                    seen.header(&k.to_ascii_lowercase()).is_none(),
                    "{path}: {k} reached the upstream: {seen:?}"
                );
            }
        }
        assert_ne!(seen.header("x-request-id"), Some("chosen-by-the-client"));
        assert_eq!(seen.header("x-request-id"), Some(answered_id.as_str()));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    }
    let seen = upstream.seen();
    assert_eq!(seen[0].header("x-user-id"), Some("2"));
    assert_eq!(seen[0].header("x-user-admin"), Some("false"));
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxies_keep_forwarding_headers_and_request_ids_are_adopted_only_when_configured()
{
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let toml = "trusted_proxies = [\"127.0.0.1/32\"]\ntrust_client_request_id = true\n";
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port).toml(toml)).await;
    let r = http_client()
        .get(proxy.url("/health"))
        .header("Forwarded", "for=10.0.0.7")
        .header("X-Real-IP", "10.0.0.7")
        .header("x_real_ip", "6.6.6.6")
        .header("x-request-id", "from-the-load-balancer")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "from-the-load-balancer");
    let seen = upstream.last();
    assert_eq!(seen.header("forwarded"), Some("for=10.0.0.7"));
    assert_eq!(seen.header("x-real-ip"), Some("10.0.0.7"));
    assert!(seen.header("x_real_ip").is_none(), "{seen:?}");
    assert_eq!(seen.header("x-request-id"), Some("from-the-load-balancer"));
    proxy.output_with("trust_client_request_id is on").await;
}
