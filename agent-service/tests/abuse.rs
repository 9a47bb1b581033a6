//! The agent behind the edge under abuse: a captured identity assertion is accepted once (replays
//! with the same or another body or query are refused), the assertion window is short, a user's
//! sessions are capped, and the session list comes in pages.

mod common;

use std::collections::HashSet;

use common::*;
use serde_json::{json, Value};
use shared::identity::Identity;
use test_support::{now_unix, sqlite_fixture, sqlite_url, PgTestDb};

async fn start_agent(extra: &[(&str, String)]) -> (tempfile::TempDir, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite_fixture(dir.path(), "nn.db").await;
    let agent = Agent::start(&sqlite_url(&path), extra).await;
    (dir, agent)
}

/// A request signed afresh, like auth-proxy does for every request.
async fn api(port: u16, user: &Identity, method: &str, path: &str) -> (u16, Value) {
    let headers = identity_headers(user, method, path, now_unix());
    send_signed(port, method, path, &headers, None).await
}

/// The ids of the user's sessions, newest first (one page of up to 200).
async fn session_ids(agent: &Agent, user: &Identity) -> Vec<String> {
    let (status, list) = api(agent.port, user, "GET", "/api/chat/sessions?limit=200").await;
    assert_eq!(status, 200, "{list}");
    list["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

async fn session_count(agent: &Agent, user: &Identity) -> usize {
    session_ids(agent, user).await.len()
}

#[tokio::test]
async fn a_captured_assertion_is_accepted_once() {
    let (_d, agent) = start_agent(&[]).await;
    let captured = identity_headers(&ada(), "POST", "/api/chat/sessions", now_unix());
    let (status, _) = send_signed(
        agent.port,
        "POST",
        "/api/chat/sessions",
        &captured,
        Some(json!({"title": "mine"})),
    )
    .await;
    assert_eq!(status, 201);

    // Replayed with the same body, and with an attacker's body.
    for body in [json!({"title": "mine"}), json!({"title": "the attacker's"})] {
        let (status, err) = send_signed(
            agent.port,
            "POST",
            "/api/chat/sessions",
            &captured,
            Some(body),
        )
        .await;
        assert_eq!(status, 401, "{err}");
        assert_eq!(err["error"], "replayed_identity");
    }
    // Replayed with a query string it was not signed for.
    let (status, err) = send_signed(
        agent.port,
        "POST",
        "/api/chat/sessions?x=1",
        &captured,
        Some(json!({})),
    )
    .await;
    assert_eq!(status, 401);
    assert_eq!(err["error"], "invalid_identity");
    assert_eq!(session_count(&agent, &ada()).await, 1, "one session only");

    // The query is covered: a GET signed for one page cannot be used for another.
    let signed = identity_headers(&ada(), "GET", "/api/chat/sessions?limit=1", now_unix());
    let (status, err) = send_signed(
        agent.port,
        "GET",
        "/api/chat/sessions?limit=2",
        &signed,
        None,
    )
    .await;
    assert_eq!(
        (status, err["error"].as_str()),
        (401, Some("invalid_identity"))
    );
    let (status, _) = send_signed(
        agent.port,
        "GET",
        "/api/chat/sessions?limit=1",
        &signed,
        None,
    )
    .await;
    assert_eq!(status, 200);

    // A WebSocket handshake's assertion opens one connection only.
    let path = "/ws/tab-1?provider=offline";
    let headers = identity_headers(&ada(), "GET", path, now_unix());
    let url = format!("ws://127.0.0.1:{}{path}", agent.port);
    let mut s = ws_connect(&url, &headers).await.expect("first use");
    greeted(&mut s).await;
    let (status, body) = ws_connect(&url, &headers).await.err().unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("replayed_identity"), "{body}");
}

#[tokio::test]
async fn the_assertion_window_is_ten_seconds_by_default_and_configurable() {
    let (_d, agent) = start_agent(&[]).await;
    let path = "/api/chat/sessions";
    let fresh = identity_headers(&ada(), "GET", path, now_unix() - 8);
    assert_eq!(
        send_signed(agent.port, "GET", path, &fresh, None).await.0,
        200
    );
    let old = identity_headers(&ada(), "GET", path, now_unix() - 12);
    let (status, err) = send_signed(agent.port, "GET", path, &old, None).await;
    assert_eq!(
        (status, err["error"].as_str()),
        (401, Some("stale_identity"))
    );

    let (_d2, longer) = start_agent(&[("AGENT_IDENTITY_MAX_AGE_SECS", "30".into())]).await;
    let old = identity_headers(&ada(), "GET", path, now_unix() - 20);
    assert_eq!(
        send_signed(longer.port, "GET", path, &old, None).await.0,
        200
    );
}

async fn capped(store_url: Option<String>) {
    let mut extra = vec![("AGENT_MAX_SESSIONS_PER_USER", "3".to_string())];
    if let Some(url) = store_url {
        extra.push(("AGENT_STORE_URL", url));
    }
    let (_d, agent) = start_agent(&extra).await;
    let mut created = Vec::new();
    for i in 0..6 {
        let headers = identity_headers(&ada(), "POST", "/api/chat/sessions", now_unix());
        let (status, s) = send_signed(
            agent.port,
            "POST",
            "/api/chat/sessions",
            &headers,
            Some(json!({"title": format!("s{i}")})),
        )
        .await;
        assert_eq!(status, 201, "{s}");
        created.push(s["id"].as_str().unwrap().to_string());
        assert!(session_count(&agent, &ada()).await <= 3);
    }
    let ids = session_ids(&agent, &ada()).await;
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&created[5]), "the newest is kept");
    assert!(!ids.contains(&created[0]), "the oldest was evicted");
    let (status, _) = api(
        agent.port,
        &ada(),
        "GET",
        &format!("/api/chat/sessions/{}", created[0]),
    )
    .await;
    assert_eq!(status, 404);

    // A session started over the WebSocket counts too, and another user is unaffected.
    api(agent.port, &grace(), "POST", "/api/chat/sessions").await;
    let mut s = agent.connect(&ada(), "tab", "").await.unwrap();
    let ws_session = greeted(&mut s).await;
    send(&mut s, json!({"type": "user_message", "content": "hello"})).await;
    answer(&mut s).await;
    let ids = session_ids(&agent, &ada()).await;
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&ws_session));
    assert_eq!(session_count(&agent, &grace()).await, 1);
}

#[tokio::test]
async fn sessions_per_user_are_capped_oldest_evicted_on_sqlite() {
    capped(None).await;
}

#[tokio::test]
async fn sessions_per_user_are_capped_oldest_evicted_on_postgres() {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    capped(Some(db.url.clone())).await;
}

async fn paged(store_url: Option<String>) {
    let extra: Vec<(&str, String)> = store_url
        .into_iter()
        .map(|u| ("AGENT_STORE_URL", u))
        .collect();
    let (_d, agent) = start_agent(&extra).await;
    let mut created = HashSet::new();
    for _ in 0..7 {
        let (status, s) = api(agent.port, &ada(), "POST", "/api/chat/sessions").await;
        assert_eq!(status, 201);
        created.insert(s["id"].as_str().unwrap().to_string());
    }
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut path = "/api/chat/sessions?limit=3".to_string();
    loop {
        let (status, page) = api(agent.port, &ada(), "GET", &path).await;
        assert_eq!(status, 200, "{page}");
        let items = page["sessions"].as_array().unwrap();
        pages.push(items.len());
        seen.extend(items.iter().map(|s| s["id"].as_str().unwrap().to_string()));
        match page["next_before"].as_str() {
            Some(cursor) => {
                // Another user holding ada's cursor gets nothing of hers.
                let (status, other) = api(
                    agent.port,
                    &grace(),
                    "GET",
                    &format!("/api/chat/sessions?before={cursor}"),
                )
                .await;
                assert_eq!(
                    (status, other["sessions"].as_array().unwrap().len()),
                    (200, 0)
                );
                path = format!("/api/chat/sessions?limit=3&before={cursor}");
            }
            None => break,
        }
    }
    assert_eq!(pages, vec![3, 3, 1]);
    assert_eq!(seen.len(), 7);
    assert_eq!(seen.iter().cloned().collect::<HashSet<_>>(), created);

    let (_, all) = api(agent.port, &ada(), "GET", "/api/chat/sessions").await;
    assert_eq!(all["sessions"].as_array().unwrap().len(), 7);
    assert!(all["next_before"].is_null());
    for bad in ["limit=0", "limit=x", "before=junk", "before=1.a%27--"] {
        let (status, err) = api(
            agent.port,
            &ada(),
            "GET",
            &format!("/api/chat/sessions?{bad}"),
        )
        .await;
        assert_eq!(
            (status, err["error"].as_str()),
            (400, Some("bad_request")),
            "{bad}"
        );
    }
    let (status, _) = api(agent.port, &ada(), "GET", "/api/chat/sessions?limit=100000").await;
    assert_eq!(status, 200, "a large limit is clamped, not refused");
}

#[tokio::test]
async fn the_session_list_is_paginated_on_sqlite() {
    paged(None).await;
}

#[tokio::test]
async fn the_session_list_is_paginated_on_postgres() {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    paged(Some(db.url.clone())).await;
}
