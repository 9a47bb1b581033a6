//! End-to-end: what a browser front end on another origin (Fluxion00Web) meets, with both real
//! binaries: the provider policy's fallback, CORS on the edge, WebSocket origins, refusals as close
//! frames, and agent-service's log lines.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use stack_tests::{metric_value, ws, Stack, StackOptions};
use test_support::{now_unix, token_with_claims, TEST_JWT_SECRET};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const APP: &str = "http://app.example.test:3000";
const EVIL: &str = "https://evil.example.test";

fn cors_options() -> StackOptions {
    StackOptions {
        proxy_toml: format!(
            "[cors]\nallowed_origins = [\"{APP}\"]\nmax_age_secs = 300\n[ws]\nallowed_origins = [\"{APP}\"]\n"
        ),
        ..StackOptions::default()
    }
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_front_ends_provider_choice_falls_back_to_the_default_and_says_so() {
    let stack = Stack::start().await;
    let url = stack.edge_ws(&format!(
        "/ws/{}?token={}&provider=ollama&model=mistral:instruct",
        uuid::Uuid::new_v4(),
        stack.token(1)
    ));
    let mut socket = ws::connect(&url, &[]).await.expect("handshake");
    let notice = "ollama is not enabled here; answering with offline/offline-demo";
    let welcome = ws::next(&mut socket).await.expect("welcome");
    let text = welcome["content"].as_str().unwrap();
    assert!(
        text.contains("(offline/offline-demo)") && text.contains(notice),
        "{welcome}"
    );
    assert_eq!(ws::next(&mut socket).await.unwrap()["type"], "session");
    for _ in 0..2 {
        ws::send(
            &mut socket,
            json!({"type": "user_message", "content": "How many approved articles are there?"}),
        )
        .await;
        let frames = ws::until_idle(&mut socket).await;
        let first = frames
            .iter()
            .find(|f| f["type"] == "agent_progress")
            .expect("a status-log entry");
        assert_eq!(first["stage"], "processing", "{first}");
        assert!(
            first["message"].as_str().unwrap().contains(notice),
            "{first}"
        );
        assert_eq!(first["details"]["provider_fallback"], notice);
        let llm = frames.iter().find(|f| f["stage"] == "llm_request").unwrap();
        assert_eq!(llm["details"]["provider"], "offline", "{llm}");
        let answer = frames
            .iter()
            .find(|f| f["type"] == "agent_message")
            .expect("an answer from the default provider");
        assert!(!answer["content"].as_str().unwrap().is_empty());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflights_and_headers_only_for_allowed_origins() {
    let stack = Stack::start_with(cors_options()).await;
    let sessions = stack.edge("/api/chat/sessions");
    let preflight = |origin: &'static str| {
        stack
            .http
            .request(reqwest::Method::OPTIONS, &sessions)
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .header("access-control-request-headers", "authorization")
            .send()
    };

    let ok = preflight(APP).await.unwrap();
    assert_eq!(
        ok.status(),
        204,
        "preflight is answered before authentication"
    );
    assert_eq!(header(&ok, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&ok, "vary"), Some("Origin"));
    assert_eq!(header(&ok, "access-control-max-age"), Some("300"));
    assert!(header(&ok, "access-control-allow-headers")
        .unwrap()
        .contains("Authorization"));
    assert!(header(&ok, "access-control-allow-methods")
        .unwrap()
        .contains("GET"));

    let other = preflight(EVIL).await.unwrap();
    assert_eq!(
        other.status(),
        401,
        "another origin's preflight is not answered"
    );
    assert!(other
        .headers()
        .keys()
        .all(|k| !k.as_str().starts_with("access-control-")));

    let authed = stack
        .http
        .get(&sessions)
        .header("origin", APP)
        .bearer_auth(stack.token(1))
        .send()
        .await
        .unwrap();
    assert_eq!(authed.status(), 200);
    assert_eq!(header(&authed, "access-control-allow-origin"), Some(APP));
    assert!(header(&authed, "vary").unwrap().contains("Origin"));

    let refused = stack
        .http
        .get(&sessions)
        .header("origin", APP)
        .bearer_auth("not-a-token")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert_eq!(header(&refused, "access-control-allow-origin"), Some(APP));
    assert_eq!(header(&refused, "vary"), Some("Origin"));
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"], "invalid_token");

    let other = stack
        .http
        .get(&sessions)
        .header("origin", EVIL)
        .bearer_auth(stack.token(1))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 200);
    assert_eq!(header(&other, "access-control-allow-origin"), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_from_a_disallowed_origin_is_refused_with_403() {
    let stack = Stack::start_with(cors_options()).await;
    let url = |_| {
        stack.edge_ws(&format!(
            "/ws/{}?token={}",
            uuid::Uuid::new_v4(),
            stack.token(1)
        ))
    };
    let (status, body) = ws::connect(&url(()), &[("origin", EVIL)])
        .await
        .expect_err("a foreign origin is refused");
    assert_eq!(status, 403, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"], "origin_not_allowed");

    let mut socket = ws::connect(&url(()), &[("origin", APP)])
        .await
        .expect("the front end's origin passes");
    assert_eq!(ws::next(&mut socket).await.unwrap()["type"], "system");
    let metrics = stack
        .http
        .get(format!("http://127.0.0.1:{}/metrics", stack.admin_port))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            r#"auth_proxy_auth_decisions_total{outcome="deny",reason="origin_not_allowed"} 1"#
        ),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn with_reject_with_close_an_expired_token_gets_a_readable_close() {
    let stack = Stack::start_with(StackOptions {
        proxy_toml: "[ws]\nreject_with = \"close\"\nreject_frame = '{\"type\":\"error\",\"content\":\"{message}\"}'\n".into(),
        ..StackOptions::default()
    })
    .await;
    let now = now_unix() as i64;
    let expired = token_with_claims(
        TEST_JWT_SECRET,
        json!({"id": 1, "iat": now - 7200, "exp": now - 3600}),
    );
    let url = stack.edge_ws(&format!("/ws/{}?token={expired}", uuid::Uuid::new_v4()));
    let mut socket = ws::connect(&url, &[])
        .await
        .expect("the edge completes the upgrade itself");
    let first = tokio::time::timeout(ws::FRAME_TIMEOUT, socket.next())
        .await
        .expect("a frame in time")
        .expect("a frame")
        .expect("a text frame");
    let Message::Text(text) = first else {
        panic!("expected the text frame, got {first:?}")
    };
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        v,
        json!({"type": "error", "content": "The token has expired."})
    );
    let close = tokio::time::timeout(ws::FRAME_TIMEOUT, socket.next())
        .await
        .expect("the close in time")
        .expect("a close frame")
        .expect("a close frame");
    let Message::Close(Some(frame)) = close else {
        panic!("expected a close frame, got {close:?}")
    };
    assert_eq!(frame.code, CloseCode::from(4401));
    assert_eq!(frame.reason.as_str(), "token_expired");

    // Metrics as for an HTTP refusal (counted when the request ends); the upstream saw nothing.
    edge_metrics_show(
        &stack,
        r#"auth_proxy_requests_total{route="ws",status="401"} 1"#,
    )
    .await;
    let metrics = edge_metrics_show(
        &stack,
        r#"auth_proxy_auth_decisions_total{outcome="deny",reason="token_expired"} 1"#,
    )
    .await;
    assert_eq!(
        metric_value(&metrics, "auth_proxy_websocket_connections_active"),
        0.0
    );
    let agent_log = stack.agent.as_ref().unwrap().output();
    assert!(
        !agent_log.contains("connection opened"),
        "the agent saw the refused handshake:\n{agent_log}"
    );

    // A good token on the same edge still reaches the agent (the check above can fail).
    let (_ok, welcome) = stack.open_session(1).await;
    assert_eq!(welcome["type"], "system");
    wait_for(&stack, "connection opened").await;
}

/// Waits (bounded) until the edge's `/metrics` contains `needle`; returns the page.
async fn edge_metrics_show(stack: &Stack, needle: &str) -> String {
    let url = format!("http://127.0.0.1:{}/metrics", stack.admin_port);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = stack
            .http
            .get(&url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if page.contains(needle) {
            return page;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} not in the edge's metrics:\n{page}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until the agent's log contains `needle`.
async fn wait_for(stack: &Stack, needle: &str) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let log = stack.agent.as_ref().unwrap().output();
        if log.contains(needle) {
            return log;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{needle:?} not in the agent's log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agents_json_log_has_connection_and_answer_lines_without_message_text() {
    let stack = Stack::start_with(StackOptions {
        agent_env: vec![("LOG_FORMAT".into(), "json".into())],
        ..StackOptions::default()
    })
    .await;
    let client_id = uuid::Uuid::new_v4().to_string();
    let url = stack.edge_ws(&format!("/ws/{client_id}?token={}", stack.token(1)));
    let mut socket = ws::connect(&url, &[]).await.expect("handshake");
    ws::next(&mut socket).await.expect("welcome");
    ws::next(&mut socket).await.expect("session");
    let canary = "zebra-canary-7731";
    ws::send(
        &mut socket,
        json!({"type": "user_message", "content": format!("How many approved articles are there? {canary}")}),
    )
    .await;
    let frames = ws::until_idle(&mut socket).await;
    assert!(frames.iter().any(|f| f["type"] == "agent_message"));
    let bye = CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    };
    socket.close(Some(bye)).await.expect("close");
    let log = wait_for(&stack, "connection closed").await;

    let lines: Vec<Value> = log
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let find = |message: &str| {
        lines
            .iter()
            .find(|l| l["fields"]["message"] == message)
            .unwrap_or_else(|| panic!("no {message:?} line in:\n{log}"))
    };
    let opened = &find("connection opened")["fields"];
    assert_eq!(opened["user_id"], 1);
    assert_eq!(opened["client_id"], client_id.as_str());
    let answer = &find("answer")["fields"];
    assert_eq!(answer["outcome"], "ok", "{answer}");
    assert_eq!(answer["agents"], "general", "{answer}");
    assert!(answer["llm_calls"].as_u64().unwrap() >= 1, "{answer}");
    assert!(answer["prompt_chars"].as_u64().unwrap() > 0, "{answer}");
    assert!(answer["session"].is_string() && answer["duration_ms"].is_u64());
    assert!(!answer["tools"].as_str().unwrap().is_empty(), "{answer}");
    let closed = &find("connection closed")["fields"];
    assert_eq!(closed["close_code"], 1000, "{closed}");
    assert!(closed["duration_ms"].is_u64());
    assert!(
        !log.contains(canary),
        "message text reached the log:\n{log}"
    );
}
