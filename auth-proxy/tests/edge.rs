//! The real proxy against an in-test upstream, on a real SQLite file and the real PostgreSQL.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use serde_json::{json, Value};
use shared::identity::{BoundRequest, ReceivedIdentity, Verifier};
use test_support::{now_unix, PgTestDb};

fn assert_identity(seen: &Seen, id: &str, name: &str, admin: &str) {
    assert_eq!(seen.header("x-user-id"), Some(id), "{seen:?}");
    assert_eq!(seen.header("x-user-name"), Some(name), "{seen:?}");
    assert_eq!(seen.header("x-user-admin"), Some(admin), "{seen:?}");
    assert_eq!(
        seen.headers.get("x-user-id").map(Vec::len),
        Some(1),
        "one x-user-id only: {seen:?}"
    );
    let received = ReceivedIdentity {
        user_id: seen.header("x-user-id"),
        user_name: seen.header("x-user-name"),
        user_admin: seen.header("x-user-admin"),
        assertion: seen.header("x-identity-assertion"),
    };
    let (path, query) = match seen.uri.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (seen.uri.as_str(), None),
    };
    let bound = BoundRequest::new(&seen.method, path, query);
    let verified = Verifier::new(TEST_IDENTITY_SECRET, 10).verify(&received, bound, now_unix());
    assert!(verified.is_ok(), "assertion must verify: {verified:?}");
}

async fn good_token_flow(database_url: &str) {
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(ProxyOptions::new(database_url, upstream.port)).await;
    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    let url = proxy.ws_url(&format!(
        "/ws/abc-123?token={token}&provider=openai&model=gpt-4o-mini"
    ));
    let mut socket = ws_connect(&url, &[("Authorization", &format!("Bearer {token}"))])
        .await
        .expect("101");
    assert_eq!(echo_round_trip(&mut socket, "hello").await, "hello");

    let seen = upstream.last();
    assert_eq!(seen.uri, "/ws/abc-123?provider=openai&model=gpt-4o-mini");
    assert!(!seen.uri.contains(&token));
    assert!(seen.header("authorization").is_none(), "{seen:?}");
    assert_identity(&seen, "1", "ada", "true");
    assert!(seen.header("x-request-id").is_some_and(|v| v.len() == 36));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert!(
        proxy
            .metric("auth_proxy_websocket_connections_active")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn news_nexus_token_upgrades_on_sqlite() {
    let (_dir, url) = sqlite_db().await;
    good_token_flow(&url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn news_nexus_token_upgrades_on_postgres() {
    let Some(db) = PgTestDb::with_fixture().await else {
        return;
    };
    good_token_flow(&db.url).await;
}

fn raw_token(header: Value, claims: Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

fn hs512(claims: Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(TEST_JWT_SECRET.as_bytes());
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &key,
    )
    .unwrap()
}

struct Case {
    name: &'static str,
    query: String,
    headers: Vec<(&'static str, String)>,
    status: u16,
    code: &'static str,
}

fn case(name: &'static str, token: Option<String>, status: u16, code: &'static str) -> Case {
    let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
    Case {
        name,
        query,
        headers: vec![],
        status,
        code,
    }
}

fn bad_inputs() -> Vec<Case> {
    let now = now_unix();
    let tok = |claims: Value| Some(token_with_claims(TEST_JWT_SECRET, claims));
    let good = news_nexus_token(TEST_JWT_SECRET, 1);
    let wrong_secret = token_with_claims(
        "another-secret-that-is-long-enough-000000",
        json!({"id": 1, "iat": now}),
    );
    let none = raw_token(
        json!({"alg": "none", "typ": "JWT"}),
        json!({"id": 1, "iat": now}),
        b"",
    );
    let rs256 = raw_token(
        json!({"alg": "RS256", "typ": "JWT"}),
        json!({"id": 1, "iat": now}),
        &[7u8; 256],
    );
    let mut cases = vec![
        case("missing", None, 401, "missing_token"),
        case("empty", Some(String::new()), 401, "missing_token"),
        case("garbage", Some("garbage".into()), 401, "invalid_token"),
        case(
            "two segments",
            Some("eyJhbGciOiJIUzI1NiJ9.eyJpZCI6MX0".into()),
            401,
            "invalid_token",
        ),
        case(
            "bad base64",
            Some("!!!.@@@.###".into()),
            401,
            "invalid_token",
        ),
        case("wrong secret", Some(wrong_secret), 401, "invalid_token"),
        case("alg none", Some(none), 401, "invalid_token"),
        case(
            "HS512 not allowed",
            Some(hs512(json!({"id": 1, "iat": now}))),
            401,
            "invalid_token",
        ),
        case("RS256 when HS expected", Some(rs256), 401, "invalid_token"),
        case(
            "expired",
            tok(json!({"id": 1, "iat": now - 7200, "exp": now - 3600})),
            401,
            "token_expired",
        ),
        case(
            "not yet valid",
            tok(json!({"id": 1, "iat": now, "nbf": now + 3600})),
            401,
            "token_not_yet_valid",
        ),
        case(
            "exp as text",
            tok(json!({"id": 1, "iat": now, "exp": "tomorrow"})),
            401,
            "invalid_token",
        ),
        case("no id", tok(json!({"iat": now})), 401, "invalid_token"),
        case(
            "id 0",
            tok(json!({"id": 0, "iat": now})),
            401,
            "invalid_token",
        ),
        case(
            "id negative",
            tok(json!({"id": -1, "iat": now})),
            401,
            "invalid_token",
        ),
        case(
            "id float",
            tok(json!({"id": 1.5, "iat": now})),
            401,
            "invalid_token",
        ),
        case(
            "id object",
            tok(json!({"id": {"id": 1}, "iat": now})),
            401,
            "invalid_token",
        ),
        case(
            "id text",
            tok(json!({"id": "ada", "iat": now})),
            401,
            "invalid_token",
        ),
        case(
            "id with control characters",
            tok(json!({"id": "1\u{0}", "iat": now})),
            401,
            "invalid_token",
        ),
        case(
            "no such user",
            tok(json!({"id": 99, "iat": now})),
            401,
            "unknown_user",
        ),
        case(
            "deleted user",
            tok(json!({"id": 3, "iat": now})),
            401,
            "unknown_user",
        ),
        case("oversized", Some("a".repeat(9000)), 401, "invalid_token"),
    ];
    cases.push(Case {
        name: "ambiguous",
        query: format!("?token={good}"),
        headers: vec![(
            "Authorization",
            format!(
                "Bearer {wrong}",
                wrong = news_nexus_token(TEST_JWT_SECRET, 2)
            ),
        )],
        status: 401,
        code: "ambiguous_token",
    });
    cases.push(Case {
        name: "spoofed x-user-id without a token",
        query: String::new(),
        headers: vec![
            ("x-user-id", "1".into()),
            ("x-identity-assertion", "v1.1.00".into()),
        ],
        status: 401,
        code: "missing_token",
    });
    cases.push(Case {
        name: "non-bearer Authorization",
        query: String::new(),
        headers: vec![("Authorization", "Basic YWRhOnB3".into())],
        status: 401,
        code: "missing_token",
    });
    cases
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_inputs_are_refused_before_the_upstream() {
    let (_dir, url) = sqlite_db().await;
    // A user that existed and was hard-deleted, as News Nexus does.
    {
        use sqlx::Connection;
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query("INSERT INTO Users (id, username, email, password, isAdmin, createdAt, updatedAt) VALUES (3, 'gone', 'g@x', 'x', 0, 'now', 'now')")
            .execute(&mut c)
            .await
            .unwrap();
        sqlx::query("DELETE FROM Users WHERE id = 3")
            .execute(&mut c)
            .await
            .unwrap();
    }
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port)).await;
    let cases = bad_inputs();
    assert!(cases.len() >= 25, "{} cases", cases.len());
    for c in cases {
        let headers: Vec<(&str, &str)> = c.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, body, resp_headers) =
            ws_connect(&proxy.ws_url(&format!("/ws/client-1{}", c.query)), &headers)
                .await
                .err()
                .unwrap_or_else(|| panic!("{}: upgraded", c.name));
        assert_eq!(status, c.status, "{}: {body}", c.name);
        let body: Value =
            serde_json::from_str(&body).unwrap_or_else(|_| panic!("{}: not JSON: {body}", c.name));
        assert_eq!(body["error"], c.code, "{}", c.name);
        assert!(body["message"].is_string(), "{}", c.name);
        assert_eq!(
            resp_headers.get("content-type").unwrap(),
            "application/json",
            "{}",
            c.name
        );
        let challenge = resp_headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap().to_string());
        if c.code == "missing_token" {
            assert_eq!(challenge.as_deref(), Some("Bearer"), "{}", c.name);
        } else {
            assert_eq!(
                challenge.as_deref(),
                Some(r#"Bearer error="invalid_token""#),
                "{}",
                c.name
            );
        }
        assert_eq!(
            upstream.count(),
            0,
            "{}: the upstream saw a request",
            c.name
        );
    }
    // Nothing the client sent as a token shows up in the logs.
    let log = proxy.output_with("malformed or invalid token").await;
    assert!(!log.contains("eyJ"), "a token reached the log:\n{log}");
    assert!(!log.contains(TEST_JWT_SECRET));
    assert!(
        log.contains("malformed or invalid token"),
        "invalid tokens are logged at WARN:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_identity_headers_never_reach_the_upstream() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port)).await;
    let token = news_nexus_token(TEST_JWT_SECRET, 2);

    // With a valid token: forwarded, but the spoofed values are replaced.
    let spoof = [
        ("x-user-id", "1"),
        ("X-User-Admin", "true"),
        ("x-auth-role", "root"),
        ("x-identity-assertion", "v2.1.00.00"),
    ];
    let _s = ws_connect(&proxy.ws_url(&format!("/ws/c?token={token}")), &spoof)
        .await
        .expect("101");
    let seen = upstream.last();
    assert_identity(&seen, "2", "grace", "false");
    assert!(seen.header("x-auth-role").is_none());

    // An identity header named in Connection.
    let conn = [("Connection", "Upgrade, x-user-id"), ("x-user-id", "1")];
    let _s = ws_connect(&proxy.ws_url(&format!("/ws/c2?token={token}")), &conn)
        .await
        .expect("101");
    let seen = upstream.last();
    assert_identity(&seen, "2", "grace", "false");
    assert!(
        !seen
            .header("connection")
            .unwrap_or("")
            .to_ascii_lowercase()
            .contains("x-user"),
        "{seen:?}"
    );

    // Headers the client names in Connection, and hop-by-hop ones, are not forwarded (a raw
    // handshake: client libraries write their own Connection header).
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", proxy.port))
        .await
        .unwrap();
    let handshake = format!(
        "GET /ws/c3?token={token}&a=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
         Connection: keep-alive, Upgrade, X-Secret\r\nX-Secret: s\r\nKeep-Alive: timeout=5\r\n\
         X-Kept: k\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut raw, handshake.as_bytes())
        .await
        .unwrap();
    let mut answer = [0u8; 12];
    tokio::time::timeout(
        STEP,
        tokio::io::AsyncReadExt::read_exact(&mut raw, &mut answer),
    )
    .await
    .expect("answered in time")
    .unwrap();
    assert_eq!(&answer, b"HTTP/1.1 101");
    let seen = upstream.last();
    assert_eq!(seen.uri, "/ws/c3?a=1", "the token is stripped");
    assert!(seen.header("x-secret").is_none(), "{seen:?}");
    assert!(seen.header("keep-alive").is_none(), "{seen:?}");
    assert_eq!(seen.header("x-kept"), Some("k"));
    assert_eq!(seen.header("connection"), Some("Upgrade"));
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_identity(&seen, "2", "grace", "false");

    // Public routes are forwarded without identity, and spoofed headers are stripped there too.
    let r = http_client()
        .get(proxy.url("/health"))
        .header("x-user-id", "1")
        .header("x-identity-assertion", "x")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/health");
    assert!(
        seen.header("x-user-id").is_none() && seen.header("x-identity-assertion").is_none(),
        "{seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bearer_header_works_for_http_and_non_upgrades_of_ws_are_refused() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(
        ProxyOptions::new(&url, upstream.port).toml("admin_paths = [\"/api/admin\"]\n"),
    )
    .await;
    let http = http_client();
    let ada = news_nexus_token(TEST_JWT_SECRET, 1);
    let grace = news_nexus_token(TEST_JWT_SECRET, 2);

    let r = http
        .get(proxy.url("/api/chat/sessions?x=1"))
        .bearer_auth(&grace)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = upstream.last();
    assert_eq!(seen.uri, "/api/chat/sessions?x=1");
    assert_identity(&seen, "2", "grace", "false");

    let before = upstream.count();
    let r = http
        .get(proxy.url("/api/admin"))
        .bearer_auth(&grace)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "forbidden");
    assert_eq!(upstream.count(), before);
    let r = http
        .get(proxy.url("/api/admin"))
        .bearer_auth(&ada)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let before = upstream.count();
    let r = http
        .get(proxy.url(&format!("/ws/abc?token={ada}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 426);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"],
        "websocket_required"
    );
    assert_eq!(upstream.count(), before);

    let r = http
        .get(proxy.url("/api/chat/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn database_down_is_503_never_401() {
    let upstream = Upstream::start().await;
    let closed = test_support::Port::new();
    let url = format!("postgres://postgres@127.0.0.1:{}/nothing", closed.port);
    let proxy = Proxy::start(
        ProxyOptions::new(&url, upstream.port)
            .toml("[users]\nquery_timeout_ms = 500\n")
            .no_wait(),
    )
    .await;
    let (status, body) = proxy.admin("/readyz").await;
    assert_eq!(status, 503, "{body}");
    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    let (status, body, _) = ws_connect(&proxy.ws_url(&format!("/ws/c?token={token}")), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "auth_unavailable");
    assert!(
        !body.to_string().contains("127.0.0.1"),
        "no internal error in the body: {body}"
    );
    assert_eq!(upstream.count(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn upstream_down_is_502_json() {
    let (_dir, url) = sqlite_db().await;
    let agent = test_support::Port::new();
    let proxy = Proxy::start(ProxyOptions::new(&url, agent.port).no_wait()).await;
    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    let (status, body, headers) = ws_connect(&proxy.ws_url(&format!("/ws/c?token={token}")), &[])
        .await
        .err()
        .unwrap();
    assert_eq!(status, 502, "{body}");
    assert_eq!(headers.get("content-type").unwrap(), "application/json");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "upstream_unavailable"
    );
    assert!(proxy.metric("auth_proxy_upstream_errors_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_consecutive_upgrades_all_succeed() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port)).await;
    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    let started = Instant::now();
    for i in 0..200 {
        let mut s = ws_connect(&proxy.ws_url(&format!("/ws/c{i}?token={token}")), &[])
            .await
            .unwrap_or_else(|e| panic!("upgrade {i}: {e:?}"));
        assert_eq!(echo_round_trip(&mut s, "x").await, "x", "upgrade {i}");
    }
    eprintln!(
        "200 upgrades + echo through the proxy in {:?}",
        started.elapsed()
    );
    assert_eq!(upstream.count(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_handshakes_for_one_uncached_user_make_one_query() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port)).await;
    let token = news_nexus_token(TEST_JWT_SECRET, 2);
    let handshakes = (0..100).map(|i| {
        let url = proxy.ws_url(&format!("/ws/c{i}?token={token}"));
        tokio::spawn(async move { ws_connect(&url, &[]).await.is_ok() })
    });
    let results = futures_util::future::join_all(handshakes).await;
    assert!(
        results.into_iter().all(|r| r.unwrap()),
        "every handshake succeeds"
    );
    assert_eq!(
        proxy.metric("auth_proxy_user_lookups_total").await,
        1.0,
        "one query for 100 handshakes"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_token_or_secret_in_the_logs() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port)).await;
    let good = news_nexus_token(TEST_JWT_SECRET, 1);
    let unknown = news_nexus_token(TEST_JWT_SECRET, 42);
    let _ok = ws_connect(&proxy.ws_url(&format!("/ws/a?token={good}")), &[])
        .await
        .expect("101");
    let _ = ws_connect(&proxy.ws_url(&format!("/ws/b?token={unknown}")), &[]).await;
    let _ = ws_connect(&proxy.ws_url("/ws/c?token=not.a.token"), &[]).await;
    let _ = http_client()
        .get(proxy.url("/api/x"))
        .bearer_auth(&good)
        .send()
        .await
        .unwrap();
    proxy
        .output_with(r#"path="/ws/b" status=401 outcome="unknown_user""#)
        .await;
    let log = proxy.output_with(r#"path="/api/x" status=200"#).await;
    for secret in [
        good.as_str(),
        unknown.as_str(),
        "not.a.token",
        TEST_JWT_SECRET,
        TEST_IDENTITY_SECRET,
    ] {
        assert!(!log.contains(secret), "{secret} appears in the log:\n{log}");
    }
    for part in good.split('.') {
        assert!(!log.contains(part), "a token segment appears in the log");
    }
    // Rejected handshakes are logged at once; open tunnels when they close.
    assert!(
        log.contains(r#"path="/ws/b" status=401 outcome="unknown_user""#),
        "access line missing:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_names_the_bad_setting() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auth-proxy"))
        .arg("check-config")
        .env_clear()
        .env("JWT_SECRET", "short")
        .env("IDENTITY_SECRET", TEST_IDENTITY_SECRET)
        .env("DATABASE_URL", "sqlite:///tmp/none.db")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("jwt.secret (JWT_SECRET)") && err.contains("allow_weak_secret"),
        "{err}"
    );
    assert!(!err.contains("short"), "the secret is not echoed: {err}");
}

/// An idle tunnel outlives pingora's default 60 s read timeout. Slow: run with `--ignored`.
#[tokio::test(flavor = "multi_thread")]
#[ignore]
async fn an_idle_tunnel_survives_seventy_seconds() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port)).await;
    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    let mut s = ws_connect(&proxy.ws_url(&format!("/ws/idle?token={token}")), &[])
        .await
        .expect("101");
    assert_eq!(echo_round_trip(&mut s, "before").await, "before");
    tokio::time::sleep(Duration::from_secs(70)).await;
    assert_eq!(echo_round_trip(&mut s, "after").await, "after");
}
