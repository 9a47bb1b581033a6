//! The explicit loosenings and tightenings an operator can turn on, end to end through the real proxy:
//! `forward_credentials`, `users.active_condition`, `trusted_proxies` and the token-age policy
//! (`jwt.require_exp`, `jwt.max_token_age_secs`).

mod common;

use common::*;
use serde_json::{json, Value};
use test_support::{now_unix, PgTestDb};

/// Expects a refusal and returns (status, `error` code).
async fn refused(url: &str, headers: &[(&str, &str)]) -> (u16, String) {
    match ws_connect(url, headers).await {
        Ok(_) => panic!("{url} was upgraded; a refusal was expected"),
        Err((status, body, _)) => {
            let code = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| format!("<not JSON: {body}>"));
            (status, code)
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forward_credentials_passes_the_token_on_and_warns_without_logging_it() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let toml = "forward_credentials = true\n[throttle]\nfailures_per_minute = 100000\n";
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port).toml(toml)).await;
    let token = news_nexus_token(TEST_JWT_SECRET, 2);
    let bearer = format!("Bearer {token}");
    let mut socket = ws_connect(
        &proxy.ws_url(&format!("/ws/c1?token={token}&provider=openai")),
        &[("Authorization", &bearer), ("X-User-Id", "1")],
    )
    .await
    .expect("101");
    assert_eq!(echo_round_trip(&mut socket, "hi").await, "hi");

    let seen = upstream.last();
    assert_eq!(seen.uri, format!("/ws/c1?token={token}&provider=openai"));
    assert_eq!(seen.header("authorization"), Some(bearer.as_str()));
    // Identity still comes from the proxy, never from the client.
    assert_eq!(seen.header("x-user-id"), Some("2"), "{seen:?}");
    assert_eq!(seen.headers["x-user-id"].len(), 1);
    assert_eq!(seen.header("x-user-name"), Some("grace"));

    let log = proxy.output_with("forward_credentials is on").await;
    assert!(
        !log.contains(&token),
        "the token must not be logged:\n{log}"
    );
}

async fn active_condition_refuses_inactive_users(database_url: &str) {
    let upstream = Upstream::start().await;
    let toml = "[users]\nactive_condition = \"\\\"username\\\" <> 'grace'\"\n\
                [throttle]\nfailures_per_minute = 100000\n";
    let proxy = Proxy::start(ProxyOptions::new(database_url, upstream.port).toml(toml)).await;

    let ada = news_nexus_token(TEST_JWT_SECRET, 1);
    let mut socket = ws_connect(&proxy.ws_url(&format!("/ws/a?token={ada}")), &[])
        .await
        .expect("an active user is let in");
    assert_eq!(echo_round_trip(&mut socket, "ok").await, "ok");

    let grace = news_nexus_token(TEST_JWT_SECRET, 2);
    let (status, code) = refused(&proxy.ws_url(&format!("/ws/g?token={grace}")), &[]).await;
    assert_eq!((status, code.as_str()), (401, "unknown_user"));
    assert_eq!(
        upstream.count(),
        1,
        "only the active user reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn active_condition_refuses_inactive_users_on_sqlite() {
    let (_dir, url) = sqlite_db().await;
    active_condition_refuses_inactive_users(&url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn active_condition_refuses_inactive_users_on_postgres() {
    let Some(db) = PgTestDb::with_fixture().await else {
        return;
    };
    active_condition_refuses_inactive_users(&db.url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn trusted_proxies_throttle_the_forwarded_client_not_the_load_balancer() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let toml = "trusted_proxies = [\"127.0.0.1/32\"]\n[throttle]\nfailures_per_minute = 3\n";
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port).toml(toml)).await;
    let bad = proxy.ws_url("/ws/c?token=garbage");

    for _ in 0..3 {
        let (status, _) = refused(&bad, &[("X-Forwarded-For", "10.0.0.1")]).await;
        assert_eq!(status, 401);
    }
    let (status, code) = refused(&bad, &[("X-Forwarded-For", "10.0.0.1")]).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
    // Another client behind the same load balancer is not punished.
    let (status, code) = refused(&bad, &[("X-Forwarded-For", "10.0.0.2")]).await;
    assert_eq!((status, code.as_str()), (401, "invalid_token"));

    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    let _socket = ws_connect(
        &proxy.ws_url(&format!("/ws/c?token={token}")),
        &[("X-Forwarded-For", "10.0.0.3")],
    )
    .await
    .expect("101");
    assert_eq!(
        upstream.last().header("x-forwarded-for"),
        Some("10.0.0.3, 127.0.0.1")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let toml = "[throttle]\nfailures_per_minute = 3\n";
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port).toml(toml)).await;
    let bad = proxy.ws_url("/ws/c?token=garbage");
    for i in 0..3 {
        let xff = format!("10.0.0.{i}");
        let (status, _) = refused(&bad, &[("X-Forwarded-For", &xff)]).await;
        assert_eq!(status, 401);
    }
    // A spoofed, fresh X-Forwarded-For does not escape the peer's throttle.
    let (status, code) = refused(&bad, &[("X-Forwarded-For", "10.0.0.99")]).await;
    assert_eq!((status, code.as_str()), (429, "rate_limited"));
}

#[tokio::test(flavor = "multi_thread")]
async fn token_age_policy_refuses_tokens_without_exp_and_old_tokens() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let toml = "[jwt]\nrequire_exp = true\nmax_token_age_secs = 3600\nleeway_secs = 0\n\
                [throttle]\nfailures_per_minute = 100000\n";
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port).toml(toml)).await;
    let now = now_unix();
    let ws = |token: &str| proxy.ws_url(&format!("/ws/c?token={token}"));

    let no_exp = news_nexus_token(TEST_JWT_SECRET, 1);
    assert_eq!(
        refused(&ws(&no_exp), &[]).await,
        (401, "invalid_token".into())
    );

    let old = token_with_claims(
        TEST_JWT_SECRET,
        json!({"id": 1, "iat": now - 7200, "exp": now + 3600}),
    );
    assert_eq!(refused(&ws(&old), &[]).await, (401, "token_expired".into()));

    let fresh = token_with_claims(
        TEST_JWT_SECRET,
        json!({"id": 1, "iat": now, "exp": now + 600}),
    );
    let mut socket = ws_connect(&ws(&fresh), &[]).await.expect("101");
    assert_eq!(echo_round_trip(&mut socket, "fresh").await, "fresh");
    assert_eq!(upstream.count(), 1);
}
