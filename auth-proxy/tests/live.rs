//! Live authorization through the real binary: revocations (admin API, CLI, two replicas sharing
//! PostgreSQL) refusing handshakes and closing open tunnels, expiry and deleted users closing
//! tunnels, the admin API's token, keys by `kid`, JWKS rotation and SIGHUP key reload.

mod common;

use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::response::IntoResponse;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::*;
use futures_util::StreamExt;
use serde_json::{json, Value};
use sqlx::Connection;
use test_support::{now_unix, PgTestDb};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

const ADMIN_TOKEN: &str = "admin-token-for-tests-0123456789abcdef";
const BASE_TOML: &str = "[throttle]\nfailures_per_minute = 100000\n";

fn admin_env() -> Vec<(String, String)> {
    vec![("AUTH_PROXY_ADMIN_TOKEN".into(), ADMIN_TOKEN.into())]
}

async fn start(database_url: &str, upstream: u16, toml: &str, env: Vec<(String, String)>) -> Proxy {
    let mut opts = ProxyOptions::new(database_url, upstream).toml(toml);
    opts.env = env;
    Proxy::start(opts).await
}

/// A request to the admin API: (status, JSON body).
async fn admin_call(
    proxy: &Proxy,
    method: reqwest::Method,
    bearer: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http_client().request(
        method,
        format!("http://127.0.0.1:{}/admin/revocations", proxy.admin_port),
    );
    if let Some(b) = bearer {
        req = req.bearer_auth(b);
    }
    if let Some(body) = body {
        req = req.json(&body);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn revoke(proxy: &Proxy, body: Value) -> Value {
    let (status, record) =
        admin_call(proxy, reqwest::Method::POST, Some(ADMIN_TOKEN), Some(body)).await;
    assert_eq!(status, 201, "{record}\n{}", proxy.output());
    record
}

async fn refused(proxy: &Proxy, token: &str) -> (u16, Value) {
    match ws_connect(&proxy.ws_url(&format!("/ws/c?token={token}")), &[]).await {
        Ok(_) => (101, Value::Null),
        Err((status, body, _)) => (status, serde_json::from_str(&body).unwrap_or(Value::Null)),
    }
}

/// Tries a handshake until it is refused with `code`, within `limit`; returns the time it took.
async fn until_refused(proxy: &Proxy, token: &str, code: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    loop {
        let (status, body) = refused(proxy, token).await;
        if status == 401 && body["error"] == code {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < limit,
            "still {status} {body} after {limit:?}\n{}",
            proxy.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Tries a handshake until it gets 101, within [`STEP`].
async fn until_accepted(proxy: &Proxy, token: &str, what: &str) {
    let started = Instant::now();
    while refused(proxy, token).await.0 != 101 {
        assert!(
            started.elapsed() < STEP,
            "{what}: not within {STEP:?}\n{}",
            proxy.output()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (at most `limit`) for the server's close frame; returns its code, its reason and how long
/// it took.
async fn expect_close(socket: &mut Socket, limit: Duration) -> (u16, String, Duration) {
    let started = Instant::now();
    loop {
        let left = limit.saturating_sub(started.elapsed());
        match tokio::time::timeout(left, socket.next()).await {
            Err(_) => panic!("no close frame within {limit:?}"),
            Ok(Some(Ok(Message::Close(Some(frame))))) => {
                return (
                    u16::from(frame.code),
                    frame.reason.to_string(),
                    started.elapsed(),
                )
            }
            Ok(Some(Ok(Message::Close(None)))) => panic!("a close frame without a code"),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("the socket ended without a close frame: {other:?}"),
        }
    }
}

async fn open_tunnel(proxy: &Proxy, token: &str) -> Socket {
    let mut s = ws_connect(&proxy.ws_url(&format!("/ws/t?token={token}")), &[])
        .await
        .expect("101");
    assert_eq!(echo_round_trip(&mut s, "hi").await, "hi");
    s
}

/// Polls a metric until it reaches `value` (within [`STEP`]).
async fn metric_reaches(proxy: &Proxy, name: &str, value: f64) {
    let started = Instant::now();
    while proxy.metric(name).await != value {
        assert!(
            started.elapsed() < STEP,
            "{name} = {} (want {value})",
            proxy.metric(name).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn user_token(id: i64, iat: u64) -> String {
    token_with_claims(TEST_JWT_SECRET, json!({"id": id, "iat": iat}))
}

#[tokio::test(flavor = "multi_thread")]
async fn revoked_user_is_refused_and_a_newer_token_passes() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = start(&url, upstream.port, BASE_TOML, admin_env()).await;
    let old2 = user_token(2, now_unix() - 5);
    let token1 = user_token(1, now_unix() - 5);
    let mut tunnel1 = open_tunnel(&proxy, &token1).await;
    let mut tunnel2 = open_tunnel(&proxy, &old2).await;

    let posted = Instant::now();
    let record = revoke(&proxy, json!({"user_id": 2, "reason": "left the team"})).await;
    let (code, reason, _) = expect_close(&mut tunnel2, Duration::from_secs(1)).await;
    eprintln!(
        "one replica: revocation posted -> close frame received in {:?}",
        posted.elapsed()
    );
    assert_eq!((code, reason.as_str()), (1008, "token_revoked"));
    assert_eq!(CloseCode::from(code), CloseCode::Policy);
    assert_eq!(record["kind"], "user");
    assert_eq!(record["user_id"], 2);
    assert_eq!(record["reason"], "left the team");
    let t = record["issued_before"].as_u64().unwrap();
    assert!(t >= now_unix() - 5);

    let (status, body) = refused(&proxy, &old2).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("token_revoked"))
    );
    assert_eq!(
        refused(&proxy, &user_token(2, t)).await.0,
        401,
        "iat = T is revoked"
    );
    assert_eq!(refused(&proxy, &user_token(2, t + 1)).await.0, 101);
    assert_eq!(refused(&proxy, &user_token(1, now_unix())).await.0, 101);
    assert_eq!(
        echo_round_trip(&mut tunnel1, "still here").await,
        "still here"
    );

    let (status, list) = admin_call(&proxy, reqwest::Method::GET, Some(ADMIN_TOKEN), None).await;
    assert_eq!(status, 200);
    assert_eq!(list["revocations"].as_array().unwrap().len(), 1);
    assert_eq!(list["revocations"][0]["id"], record["id"]);
    assert_eq!(proxy.metric("auth_proxy_revocations_total").await, 1.0);
    assert_eq!(proxy.metric("auth_proxy_tunnels_closed_total").await, 1.0);
    // The edge ended the tunnel on both sides: only user 1's is left.
    metric_reaches(&proxy, "auth_proxy_websocket_connections_active", 1.0).await;
    assert_eq!(echo_round_trip(&mut tunnel1, "after").await, "after");
    assert!(
        !proxy.output().contains(&old2),
        "tokens never reach the log"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jti_and_global_revocations() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = start(&url, upstream.port, BASE_TOML, admin_env()).await;
    let now = now_unix();
    let a = token_with_claims(
        TEST_JWT_SECRET,
        json!({"id": 1, "iat": now - 5, "jti": "a"}),
    );
    let b = token_with_claims(
        TEST_JWT_SECRET,
        json!({"id": 1, "iat": now - 5, "jti": "b"}),
    );
    revoke(&proxy, json!({"jti": "a", "expires_at": now + 3600})).await;
    assert_eq!(refused(&proxy, &a).await.1["error"], "token_revoked");
    assert_eq!(refused(&proxy, &b).await.0, 101);

    // A revocation whose token has expired anyway is purged by the next poll.
    let stale = revoke(&proxy, json!({"jti": "old", "expires_at": now - 3600})).await;
    let started = Instant::now();
    loop {
        let (_, list) = admin_call(&proxy, reqwest::Method::GET, Some(ADMIN_TOKEN), None).await;
        let ids: Vec<&Value> = list["revocations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| &r["id"])
            .collect();
        if !ids.contains(&&stale["id"]) {
            assert_eq!(ids.len(), 1, "the jti \"a\" revocation stays: {list}");
            break;
        }
        assert!(started.elapsed() < STEP, "never purged: {list}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let all = revoke(&proxy, json!({"all": true})).await;
    let t = all["issued_before"].as_u64().unwrap();
    assert_eq!(refused(&proxy, &b).await.1["error"], "token_revoked");
    assert_eq!(
        refused(&proxy, &user_token(2, t)).await.1["error"],
        "token_revoked"
    );
    assert_eq!(refused(&proxy, &user_token(2, t + 1)).await.0, 101);
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_requires_its_token() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = start(&url, upstream.port, BASE_TOML, admin_env()).await;
    let body = || Some(json!({"all": true}));
    for bearer in [None, Some("wrong"), Some(&ADMIN_TOKEN[1..])] {
        let (status, err) = admin_call(&proxy, reqwest::Method::POST, bearer, body()).await;
        assert_eq!(
            (status, err["error"].as_str()),
            (401, Some("unauthorized")),
            "{bearer:?}"
        );
        let (status, _) = admin_call(&proxy, reqwest::Method::GET, bearer, None).await;
        assert_eq!(status, 401);
    }
    // Nothing was stored: every token still passes.
    assert_eq!(refused(&proxy, &user_token(1, now_unix())).await.0, 101);
    for bad in [
        json!({}),
        json!({"user_id": 1, "all": true}),
        json!({"user_id": -3}),
        json!("x"),
    ] {
        let (status, err) = admin_call(
            &proxy,
            reqwest::Method::POST,
            Some(ADMIN_TOKEN),
            Some(bad.clone()),
        )
        .await;
        assert_eq!(
            (status, err["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    assert!(!proxy.output().contains(ADMIN_TOKEN));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_is_absent_without_an_admin_token() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = start(&url, upstream.port, BASE_TOML, Vec::new()).await;
    for bearer in [None, Some(ADMIN_TOKEN)] {
        let (status, _) = admin_call(
            &proxy,
            reqwest::Method::POST,
            bearer,
            Some(json!({"all": true})),
        )
        .await;
        assert_eq!(status, 404);
        let (status, _) = admin_call(&proxy, reqwest::Method::GET, bearer, None).await;
        assert_eq!(status, 404);
    }
    assert_eq!(refused(&proxy, &user_token(1, now_unix())).await.0, 101);
}

/// `auth-proxy revoke` with the edge's environment: the running edge picks it up from the shared
/// SQLite state file by its poll.
#[tokio::test(flavor = "multi_thread")]
async fn cli_revocation_reaches_the_running_edge() {
    let (dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let state_url = format!("sqlite://{}", dir.path().join("state.db").display());
    let toml = format!("{BASE_TOML}[live]\npoll_secs = 1\n");
    let proxy = start(
        &url,
        upstream.port,
        &toml,
        vec![("AUTH_PROXY_STATE_URL".into(), state_url.clone())],
    )
    .await;
    let token = user_token(2, now_unix() - 5);
    assert_eq!(refused(&proxy, &token).await.0, 101);
    let out = Command::new(env!("CARGO_BIN_EXE_auth-proxy"))
        .env_clear()
        .args(["revoke", "--user", "2", "--reason", "cli"])
        .env("JWT_SECRET", TEST_JWT_SECRET)
        .env("IDENTITY_SECRET", TEST_IDENTITY_SECRET)
        .env("DATABASE_URL", &url)
        .env("AUTH_PROXY_STATE_URL", &state_url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["kind"], "user");
    until_refused(&proxy, &token, "token_revoked", Duration::from_secs(5)).await;

    let bad = Command::new(env!("CARGO_BIN_EXE_auth-proxy"))
        .env_clear()
        .args(["revoke", "--user", "2", "--all"])
        .env("JWT_SECRET", TEST_JWT_SECRET)
        .env("IDENTITY_SECRET", TEST_IDENTITY_SECRET)
        .env("DATABASE_URL", &url)
        .env("AUTH_PROXY_STATE_URL", &state_url)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// Two edge processes sharing the real PostgreSQL for users and state: a revocation posted to one
/// is enforced by the other within 2 s (by NOTIFY; the catch-up poll is set far away).
#[tokio::test(flavor = "multi_thread")]
async fn revocation_reaches_the_other_replica() {
    let Some(db) = PgTestDb::with_fixture().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let toml = format!("{BASE_TOML}[live]\npoll_secs = 3600\n");
    let mut env = admin_env();
    env.push(("AUTH_PROXY_STATE_URL".into(), db.url.clone()));
    let (a, b) = tokio::join!(
        start(&db.url, upstream.port, &toml, env.clone()),
        start(&db.url, upstream.port, &toml, env)
    );
    let token = user_token(2, now_unix() - 5);
    let mut on_b = open_tunnel(&b, &token).await;
    let mut other_on_b = open_tunnel(&b, &user_token(1, now_unix())).await;
    let posted = Instant::now();
    revoke(&a, json!({"user_id": 2})).await;
    let (code, reason, _) = expect_close(&mut on_b, Duration::from_secs(2)).await;
    eprintln!(
        "two replicas: revocation posted to A -> close frame from B received in {:?}",
        posted.elapsed()
    );
    assert_eq!((code, reason.as_str()), (1008, "token_revoked"));
    assert_eq!(refused(&a, &token).await.1["error"], "token_revoked");
    assert_eq!(refused(&b, &token).await.1["error"], "token_revoked");
    assert_eq!(echo_round_trip(&mut other_on_b, "still").await, "still");
    // B dropped its cache entry for user 2 with the revocation: a newer token is looked up afresh.
    let misses = r#"auth_proxy_user_cache_requests_total{result="miss"}"#;
    let before = b.metric(misses).await;
    let (_, list) = admin_call(&a, reqwest::Method::GET, Some(ADMIN_TOKEN), None).await;
    let t = list["revocations"][0]["issued_before"].as_u64().unwrap();
    assert_eq!(refused(&b, &user_token(2, t + 1)).await.0, 101);
    assert_eq!(b.metric(misses).await, before + 1.0);
    assert_eq!(b.metric("auth_proxy_revocations_total").await, 1.0);
    assert_eq!(b.metric("auth_proxy_tunnels_closed_total").await, 1.0);
}

/// A revocation whose notification never came (inserted without `NOTIFY`, as if the listening
/// connection had been down) is found by the catch-up poll and closes the tunnel it kills.
#[tokio::test(flavor = "multi_thread")]
async fn a_missed_notification_is_caught_up_by_the_poll() {
    let Some(db) = PgTestDb::with_fixture().await else {
        return;
    };
    let upstream = Upstream::start().await;
    let toml = format!("{BASE_TOML}[live]\npoll_secs = 1\n");
    let env = vec![("AUTH_PROXY_STATE_URL".to_string(), db.url.clone())];
    let proxy = start(&db.url, upstream.port, &toml, env).await;
    let token = user_token(2, now_unix() - 5);
    let mut tunnel = open_tunnel(&proxy, &token).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO auth_proxy_revocations (kind, user_id, issued_before, created_at) VALUES ('user', 2, $1, $1)",
    )
    .bind(now_unix() as i64)
    .execute(&mut conn)
    .await
    .unwrap();
    let (code, reason, _) = expect_close(&mut tunnel, Duration::from_secs(3)).await;
    assert_eq!((code, reason.as_str()), (1008, "token_revoked"));
    assert_eq!(refused(&proxy, &token).await.1["error"], "token_revoked");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tunnel_closes_when_its_token_expires() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let toml = format!("{BASE_TOML}[jwt]\nleeway_secs = 0\n");
    let proxy = start(&url, upstream.port, &toml, Vec::new()).await;
    let exp = now_unix() + 3;
    let token = token_with_claims(
        TEST_JWT_SECRET,
        json!({"id": 1, "iat": now_unix(), "exp": exp}),
    );
    let mut expiring = open_tunnel(&proxy, &token).await;
    let mut lasting = open_tunnel(&proxy, &user_token(2, now_unix())).await;
    let (code, reason, _) = expect_close(&mut expiring, Duration::from_secs(10)).await;
    assert_eq!((code, reason.as_str()), (1008, "token_expired"));
    assert!(now_unix() >= exp, "closed before its exp");
    assert_eq!(echo_round_trip(&mut lasting, "on").await, "on");
    metric_reaches(&proxy, "auth_proxy_tunnels_closed_total", 1.0).await;
    // The handshake refuses it too (`exp < now`, so from the next second on; a tunnel opened in
    // the second of its `exp` is closed at once).
    until_refused(&proxy, &token, "token_expired", Duration::from_secs(3)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_user_loses_its_tunnel_within_the_recheck_interval() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let toml = format!("{BASE_TOML}[live]\nrecheck_secs = 2\n");
    let proxy = start(&url, upstream.port, &toml, Vec::new()).await;
    let mut doomed = open_tunnel(&proxy, &user_token(2, now_unix())).await;
    let mut kept = open_tunnel(&proxy, &user_token(1, now_unix())).await;
    let mut db = sqlx::SqliteConnection::connect(&url).await.unwrap();
    sqlx::query("DELETE FROM ArticleApproveds WHERE userId = 2")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query("DELETE FROM Users WHERE id = 2")
        .execute(&mut db)
        .await
        .unwrap();
    let deleted = Instant::now();
    let (code, reason, _) = expect_close(&mut doomed, Duration::from_secs(5)).await;
    eprintln!(
        "deleted user: tunnel closed {:?} after the delete (recheck 2 s)",
        deleted.elapsed()
    );
    assert_eq!((code, reason.as_str()), (1008, "user_removed"));
    assert_eq!(echo_round_trip(&mut kept, "kept").await, "kept");
    // The cache entry went with it: the next handshake sees the row is gone.
    assert_eq!(
        refused(&proxy, &user_token(2, now_unix())).await.1["error"],
        "unknown_user"
    );
}

// ---- keys by kid, JWKS, SIGHUP ----

const KID_SECRET_A: &str = "kid-a-secret-0123456789abcdef-0123456789";
const KID_SECRET_B: &str = "kid-b-secret-0123456789abcdef-0123456789";

fn kid_token(
    kid: &str,
    alg: jsonwebtoken::Algorithm,
    key: &jsonwebtoken::EncodingKey,
    id: i64,
) -> String {
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, &json!({"id": id, "iat": now_unix()}), key).unwrap()
}

fn hs_kid_token(kid: &str, secret: &str, id: i64) -> String {
    kid_token(
        kid,
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
        id,
    )
}

fn keys_toml(keys: &[(&str, &str)]) -> String {
    let mut t = BASE_TOML.to_string();
    t.push_str("[jwt]\nalgorithms = [\"HS256\", \"RS256\"]\n");
    for (kid, secret) in keys {
        t.push_str(&format!(
            "[[jwt.keys]]\nkid = \"{kid}\"\nalgorithm = \"HS256\"\nsecret = \"{secret}\"\n"
        ));
    }
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn static_keys_are_selected_by_kid() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let public = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rs256-test-public.pem"
    );
    let private = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rs256-test-private.pem"
    ))
    .unwrap();
    let mut toml = keys_toml(&[("a", KID_SECRET_A), ("b", KID_SECRET_B)]);
    toml.push_str(&format!(
        "[[jwt.keys]]\nkid = \"r\"\nalgorithm = \"RS256\"\npublic_key_file = \"{public}\"\n"
    ));
    let proxy = start(&url, upstream.port, &toml, Vec::new()).await;
    assert_eq!(
        refused(&proxy, &hs_kid_token("a", KID_SECRET_A, 1)).await.0,
        101
    );
    assert_eq!(
        refused(&proxy, &hs_kid_token("b", KID_SECRET_B, 1)).await.0,
        101
    );
    // A key only verifies tokens naming its kid.
    let (status, body) = refused(&proxy, &hs_kid_token("b", KID_SECRET_A, 1)).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("invalid_token"))
    );
    assert_eq!(
        refused(&proxy, &hs_kid_token("zz", KID_SECRET_A, 1))
            .await
            .0,
        401
    );
    // The default secret still serves tokens without a kid, and only those.
    assert_eq!(refused(&proxy, &user_token(1, now_unix())).await.0, 101);
    assert_eq!(
        refused(&proxy, &hs_kid_token("a", TEST_JWT_SECRET, 1))
            .await
            .0,
        401
    );
    // RS256 with the RSA key; the RSA public key used as an HMAC secret is refused.
    let rsa = jsonwebtoken::EncodingKey::from_rsa_pem(&private).unwrap();
    assert_eq!(
        refused(
            &proxy,
            &kid_token("r", jsonwebtoken::Algorithm::RS256, &rsa, 1)
        )
        .await
        .0,
        101
    );
    let pem = std::fs::read(public).unwrap();
    let confused = kid_token(
        "r",
        jsonwebtoken::Algorithm::HS256,
        &jsonwebtoken::EncodingKey::from_secret(&pem),
        1,
    );
    assert_eq!(refused(&proxy, &confused).await.0, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn sighup_reloads_keys_without_dropping_tunnels() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let proxy = start(
        &url,
        upstream.port,
        &keys_toml(&[("a", KID_SECRET_A)]),
        Vec::new(),
    )
    .await;
    // The same token string before and after the reload: a token verified (and remembered) with
    // key a must be checked again once key a is gone.
    let with_a = hs_kid_token("a", KID_SECRET_A, 1);
    let mut tunnel = ws_connect(&proxy.ws_url(&format!("/ws/x?token={with_a}")), &[])
        .await
        .expect("101 with key a");
    let with_b = hs_kid_token("b", KID_SECRET_B, 1);
    assert_eq!(refused(&proxy, &with_b).await.0, 401);

    std::fs::write(proxy.config_path(), keys_toml(&[("b", KID_SECRET_B)])).unwrap();
    // SAFETY: kill(2) on the child's pid, with a valid signal number.
    assert_eq!(unsafe { libc::kill(proxy.pid() as i32, libc::SIGHUP) }, 0);
    until_accepted(&proxy, &with_b, "key b loaded by SIGHUP").await;
    assert_eq!(refused(&proxy, &with_a).await.0, 401);
    assert_eq!(echo_round_trip(&mut tunnel, "kept").await, "kept");
}

/// A local JWKS endpoint: serves `keys` (oct keys: kid → secret), or 500 when `failing`; counts
/// requests.
#[derive(Clone, Default)]
struct JwksServer {
    keys: Arc<Mutex<Vec<(String, String)>>>,
    failing: Arc<std::sync::atomic::AtomicBool>,
    hits: Arc<AtomicUsize>,
    port: u16,
}

impl JwksServer {
    async fn start(keys: &[(&str, &str)]) -> JwksServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut server = JwksServer {
            port: listener.local_addr().unwrap().port(),
            ..JwksServer::default()
        };
        server.set(keys);
        let s = server.clone();
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let s = s.clone();
                async move {
                    s.hits.fetch_add(1, Ordering::SeqCst);
                    if s.failing.load(Ordering::SeqCst) {
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "down").into_response();
                    }
                    let keys: Vec<Value> = s
                        .keys
                        .lock()
                        .unwrap()
                        .iter()
                        .map(|(kid, secret)| {
                            json!({"kty": "oct", "kid": kid, "alg": "HS256", "k": URL_SAFE_NO_PAD.encode(secret)})
                        })
                        .collect();
                    (
                        [("cache-control", "max-age=3600")],
                        axum::Json(json!({"keys": keys})),
                    )
                        .into_response()
                }
            }),
        );
        tokio::spawn(async move {
            axum::serve(listener, app).await.ok();
        });
        server
    }

    fn set(&mut self, keys: &[(&str, &str)]) {
        *self.keys.lock().unwrap() = keys
            .iter()
            .map(|(k, s)| (k.to_string(), s.to_string()))
            .collect();
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/jwks.json", self.port)
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn jwks_toml(url: &str, min_refresh: u64) -> String {
    format!("{BASE_TOML}[jwt]\njwks_url = \"{url}\"\njwks_min_refresh_secs = {min_refresh}\n")
}

async fn wait_hits(server: &JwksServer, n: usize) {
    let started = Instant::now();
    while server.hits() < n {
        assert!(
            started.elapsed() < STEP,
            "JWKS fetched {} times",
            server.hits()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn jwks_rotation_is_picked_up_and_the_last_good_set_kept() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let mut server = JwksServer::start(&[("k1", KID_SECRET_A)]).await;
    let proxy = start(
        &url,
        upstream.port,
        &jwks_toml(&server.url(), 1),
        Vec::new(),
    )
    .await;
    wait_hits(&server, 1).await;
    // The same token string before and after the rotation (it is remembered once verified).
    let k1 = hs_kid_token("k1", KID_SECRET_A, 1);
    assert_eq!(refused(&proxy, &k1).await.0, 101);

    server.set(&[("k2", KID_SECRET_B)]);
    let k2 = hs_kid_token("k2", KID_SECRET_B, 1);
    until_accepted(&proxy, &k2, "k2 picked up from the JWKS").await;
    // k1 left the set with the rotation.
    assert_eq!(refused(&proxy, &k1).await.0, 401);

    // The endpoint fails: the last good set (k2) stays in use.
    server.failing.store(true, Ordering::SeqCst);
    let before = server.hits();
    let unknown = hs_kid_token("k3", KID_SECRET_B, 1);
    let started = Instant::now();
    while server.hits() == before {
        assert_eq!(refused(&proxy, &unknown).await.0, 401);
        assert!(started.elapsed() < STEP, "no refetch on an unknown kid");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(refused(&proxy, &k2).await.0, 101);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_kid_flood_fetches_at_most_once_per_30_s() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let server = JwksServer::start(&[("k1", KID_SECRET_A)]).await;
    let proxy = start(
        &url,
        upstream.port,
        &jwks_toml(&server.url(), 30),
        Vec::new(),
    )
    .await;
    wait_hits(&server, 1).await;
    let proxy = Arc::new(proxy);
    let mut flood = Vec::new();
    for i in 0..100 {
        let proxy = proxy.clone();
        flood.push(tokio::spawn(async move {
            refused(
                &proxy,
                &hs_kid_token(&format!("unknown-{i}"), KID_SECRET_A, 1),
            )
            .await
            .0
        }));
    }
    for f in flood {
        assert_eq!(f.await.unwrap(), 401);
    }
    assert!(server.hits() <= 2, "{} fetches", server.hits());
    assert_eq!(
        refused(&proxy, &hs_kid_token("k1", KID_SECRET_A, 1))
            .await
            .0,
        101
    );
}

/// With `ws.close_frame`, a tunnel the edge ends gets the filled template as a text frame just
/// before its close frame: what a chat page can show the person (browsers hide close reasons).
#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_tunnel_is_told_why_before_its_close_frame() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let toml = format!(
        "{BASE_TOML}[ws]\nclose_frame = '{{\"type\":\"error\",\"content\":\"{{message}}\",\"code\":{{code}}}}'\n"
    );
    let proxy = start(&url, upstream.port, &toml, admin_env()).await;
    let mut tunnel = open_tunnel(&proxy, &user_token(2, now_unix() - 5)).await;
    revoke(&proxy, json!({"user_id": 2})).await;
    let notice = tokio::time::timeout(STEP, tunnel.next())
        .await
        .expect("a frame in time");
    let Some(Ok(Message::Text(text))) = notice else {
        panic!("expected the notice first, got {notice:?}");
    };
    let v: Value = serde_json::from_str(&text).expect("JSON");
    assert_eq!(
        v,
        json!({"type": "error", "content": "Your session was revoked; sign in again.", "code": 1008})
    );
    let (code, reason, _) = expect_close(&mut tunnel, Duration::from_secs(1)).await;
    assert_eq!((code, reason.as_str()), (1008, "token_revoked"));
}
