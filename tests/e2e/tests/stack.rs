//! End-to-end: the two real binaries started the way an operator starts them, checked through the edge.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stack_tests::{metric_value, ws, Stack, PROXY_GRACE_SECS};

fn types(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .map(|f| f["type"].as_str().unwrap_or("?"))
        .collect()
}

fn stages(frames: &[Value]) -> Vec<&str> {
    frames
        .iter()
        .filter(|f| f["type"] == "agent_progress")
        .map(|f| f["stage"].as_str().unwrap_or("?"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_front_end_session_gets_the_ordered_frames_and_the_status_log() {
    let stack = Stack::start().await;
    let client_id = uuid::Uuid::new_v4();
    let url = stack.edge_ws(&format!(
        "/ws/{client_id}?token={}&provider=offline&model=offline",
        stack.token(1)
    ));
    let mut socket = ws::connect(&url, &[])
        .await
        .expect("handshake through the edge");

    let welcome = ws::next(&mut socket).await.expect("welcome");
    assert_eq!(welcome["type"], "system");
    assert!(
        welcome["content"].as_str().unwrap().contains("ada"),
        "{welcome}"
    );
    let session = ws::next(&mut socket).await.expect("session frame");
    assert_eq!(session["type"], "session", "{session}");

    ws::send(
        &mut socket,
        json!({"type": "user_message", "content": "How many approved articles are there?"}),
    )
    .await;
    let frames = ws::until_idle(&mut socket).await;
    let t = types(&frames);
    assert_eq!(&t[..2], ["user_echo", "typing"], "{frames:?}");
    assert_eq!(frames[1]["content"], true);
    assert_eq!(&t[t.len() - 2..], ["agent_message", "typing"], "{frames:?}");
    assert!(
        t[2..t.len() - 2].iter().all(|x| *x == "agent_progress"),
        "{t:?}"
    );

    let s = stages(&frames);
    for stage in [
        "processing",
        "agent_start",
        "llm_request",
        "llm_response",
        "tool_execution",
        "tool_success",
        "agent_end",
        "completed",
    ] {
        assert!(s.contains(&stage), "stage {stage} missing from {s:?}");
    }
    for f in frames.iter().filter(|f| f["type"] == "agent_progress") {
        assert!(f["timestamp"].as_f64().is_some_and(|t| t > 1.7e9), "{f}");
        assert!(f["message"].is_string() && f["details"].is_object(), "{f}");
    }
    let llm = frames.iter().find(|f| f["stage"] == "llm_request").unwrap();
    assert!(
        llm["details"]["prompt_chars"].as_u64().unwrap() > 0,
        "{llm}"
    );
    assert!(llm["details"]["agent"].is_string(), "{llm}");
    let tool = frames
        .iter()
        .find(|f| f["stage"] == "tool_success")
        .unwrap();
    assert!(
        tool["details"]["output_length"].as_u64().is_some(),
        "{tool}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rejected_handshakes_never_reach_the_agent() {
    let stack = Stack::start().await;
    let bad = [
        (
            format!("/ws/{}", uuid::Uuid::new_v4()),
            401,
            "missing_token",
        ),
        (
            format!("/ws/{}?token=garbage", uuid::Uuid::new_v4()),
            401,
            "invalid_token",
        ),
        (
            format!("/ws/{}?token={}", uuid::Uuid::new_v4(), stack.token(99)),
            401,
            "unknown_user",
        ),
    ];
    for (path, status, code) in &bad {
        let (got, body) = ws::connect(&stack.edge_ws(path), &[])
            .await
            .expect_err("handshake must fail");
        assert_eq!(got, *status, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).expect("JSON error body");
        assert_eq!(body["error"], *code);
    }
    let metrics = stack
        .metric(
            &stack.agent_url("/metrics"),
            "agent_websocket_connections_active",
        )
        .await;
    assert_eq!(metrics, 0.0);
    let health: Value = stack
        .http
        .get(stack.agent_url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["active_connections"], 0);
    let agent_log = stack.agent.as_ref().unwrap().output();
    assert!(
        !agent_log.contains("/ws/"),
        "the agent saw a rejected handshake:\n{agent_log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn spoofed_identity_headers_never_reach_the_agent() {
    let stack = Stack::start().await;
    let url = stack.edge_ws(&format!(
        "/ws/{}?token={}",
        uuid::Uuid::new_v4(),
        stack.token(2)
    ));
    let spoof = [
        ("x-user-id", "1"),
        ("x-user-name", "ada"),
        ("x-user-admin", "true"),
        ("x-identity-assertion", "v1.1.00"),
    ];
    let mut socket = ws::connect(&url, &spoof)
        .await
        .expect("a valid token still passes");
    let welcome = ws::next(&mut socket).await.expect("welcome");
    let text = welcome["content"].as_str().unwrap();
    assert!(text.contains("grace") && !text.contains("ada"), "{welcome}");

    // Without a token the spoofed headers get nothing either.
    let (status, _) = ws::connect(
        &stack.edge_ws(&format!("/ws/{}", uuid::Uuid::new_v4())),
        &spoof,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_info_are_public_through_the_edge() {
    let stack = Stack::start().await;
    let health = stack.http.get(stack.edge("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let health: Value = health.json().await.unwrap();
    assert_eq!(health["status"], "healthy");
    let info = stack
        .http
        .get(stack.edge("/api/info"))
        .send()
        .await
        .unwrap();
    assert_eq!(info.status(), 200);
    let info: Value = info.json().await.unwrap();
    assert!(
        info["available_tools"]
            .as_array()
            .is_some_and(|t| !t.is_empty()),
        "{info}"
    );
    let secret_free = info.to_string();
    assert!(!secret_free.contains("newsnexus.db"), "{info}");

    let other = stack
        .http
        .get(stack.edge("/api/chat/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_refuses_requests_without_the_proxy_assertion() {
    let stack = Stack::start().await;
    let r = stack
        .http
        .get(stack.agent_url("/api/chat/sessions"))
        .header("x-user-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "{body}"
    );

    let direct = format!(
        "ws://127.0.0.1:{}/ws/{}",
        stack.agent_port,
        uuid::Uuid::new_v4()
    );
    let (status, _) = ws::connect(&direct, &[("x-user-id", "1")])
        .await
        .expect_err("direct upgrade refused");
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_the_proxy_and_it_exits_zero_within_its_grace() {
    let mut stack = Stack::start().await;
    let (mut socket, _welcome) = stack.open_session(1).await;

    let proxy = stack.proxy.as_mut().unwrap();
    let started = Instant::now();
    proxy.signal(libc::SIGTERM);

    // Readiness fails at once.
    let readyz = format!("http://127.0.0.1:{}/readyz", stack.admin_port);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match stack.http.get(&readyz).send().await {
            Ok(r) if r.status().is_success() => {}
            _ => break,
        }
        assert!(
            Instant::now() < deadline,
            "readiness still passes after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The open tunnel is closed by the end of the grace, and the proxy exits 0.
    let limit = Duration::from_secs(PROXY_GRACE_SECS + 10);
    let closed = tokio::time::timeout(limit, async {
        while ws::next(&mut socket).await.is_some() {}
    })
    .await;
    assert!(closed.is_ok(), "the tunnel outlived the grace");
    let proxy = stack.proxy.as_mut().unwrap();
    let status = proxy
        .wait_timeout(limit.saturating_sub(started.elapsed()))
        .expect("proxy did not exit in time");
    assert!(
        status.success(),
        "proxy exit status {status}:\n{}",
        proxy.output()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_agent_gives_502_json_and_the_edge_recovers_when_it_returns() {
    let mut stack = Stack::start().await;
    let agent = stack.agent.as_mut().unwrap();
    agent.signal(libc::SIGKILL);
    agent
        .wait_timeout(Duration::from_secs(10))
        .expect("agent killed");

    let url = stack.edge_ws(&format!(
        "/ws/{}?token={}",
        uuid::Uuid::new_v4(),
        stack.token(1)
    ));
    let (status, body) = ws::connect(&url, &[]).await.expect_err("no upstream");
    assert_eq!(status, 502, "{body}");
    let body: Value = serde_json::from_str(&body).expect("JSON body");
    assert_eq!(body["error"], "upstream_unavailable");

    stack.start_agent().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ws::connect(&url, &[]).await {
            Ok(mut s) => {
                assert_eq!(ws::next(&mut s).await.expect("welcome")["type"], "system");
                break;
            }
            Err((status, body)) => {
                assert!(Instant::now() < deadline, "no recovery: {status} {body}")
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn metric_values_are_summed_over_labels() {
    let page = "# HELP x y\nx{a=\"1\"} 2\nx{a=\"2\"} 3\nxy 7\nx 1\n";
    assert_eq!(metric_value(page, "x"), 6.0);
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_stay_private_through_the_edge() {
    let stack = Stack::start().await;
    let (mut socket, _welcome) = stack.open_session(1).await;
    let session = ws::next(&mut socket).await.expect("session");
    let id = session["session_id"].as_str().unwrap().to_string();
    ws::send(
        &mut socket,
        json!({"type": "user_message", "content": "private question"}),
    )
    .await;
    ws::until_idle(&mut socket).await;

    let get = |token: String, path: String| {
        let http = stack.http.clone();
        let url = stack.edge(&path);
        async move {
            let r = http.get(url).bearer_auth(token).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        }
    };
    let path = format!("/api/chat/sessions/{id}");
    let (status, body) = get(stack.token(1), path.clone()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"].as_array().unwrap().len(), 2);
    let (status, body) = get(stack.token(2), path.clone()).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    let (status, body) = get(stack.token(2), "/api/chat/sessions".into()).await;
    assert_eq!(status, 200);
    assert_eq!(body["sessions"].as_array().unwrap().len(), 0);
    // A spoofed header does not make grace into ada.
    let r = stack
        .http
        .get(stack.edge(&path))
        .bearer_auth(stack.token(2))
        .header("x-user-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

/// Status frames leave the agent as it works. While the LLM is still thinking, the message's
/// `llm_request` entry has reached the client, within a few milliseconds of the call: not at the
/// edge's next delayed ACK (tens of milliseconds), as when Nagle holds the agent's small writes.
#[tokio::test(flavor = "multi_thread")]
async fn status_frames_reach_the_client_while_the_llm_thinks() {
    use stack_tests::fake_llm::{FakeLlm, ANSWER};
    let llm = FakeLlm::start().await;
    let mut stack = Stack::new(vec![
        ("LLM_PROVIDER".into(), "openai".into()),
        ("URL_BASE_OPENAI".into(), llm.base()),
        ("KEY_OPENAI".into(), "test-key".into()),
    ])
    .await;
    stack.start_agent().await;
    stack.start_proxy().await;
    let (mut socket, _) = stack.open_session(1).await;

    let mut lags = Vec::new();
    for _ in 0..5 {
        llm.hold();
        let before = llm.requests();
        ws::send(
            &mut socket,
            json!({"type": "user_message", "content": "How many approved articles are there?"}),
        )
        .await;
        llm.wait_for_requests(before + 1, Duration::from_secs(20))
            .await;
        let asked = llm.arrival(before).expect("the call's arrival");
        loop {
            let f = ws::next(&mut socket)
                .await
                .expect("frames while the LLM thinks");
            assert_ne!(f["stage"], "llm_response", "the LLM is held: {f}");
            if f["stage"] == "llm_request" {
                break;
            }
        }
        lags.push(Instant::now().saturating_duration_since(asked));
        llm.release();
        let rest = ws::until_idle(&mut socket).await;
        assert!(
            rest.iter()
                .any(|f| f["type"] == "agent_message" && f["content"] == ANSWER),
            "{rest:?}"
        );
    }
    let best = *lags.iter().min().unwrap();
    assert!(
        best < Duration::from_millis(15),
        "llm_request reached the client {best:?} after the LLM call at best: {lags:?}"
    );
}
