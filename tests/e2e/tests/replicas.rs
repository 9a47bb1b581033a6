//! Scale-out, end to end: two pods (each an agent-service behind its own auth-proxy) sharing one
//! PostgreSQL store and one NATS bus; daily quotas across pods; the agent's SIGTERM drain.
//!
//! PostgreSQL: a fresh database per test (skipped loudly unless `REQUIRE_POSTGRES=1`). NATS: a
//! private `nats-server -js` per test on a free port, so it can be killed mid-test (skipped loudly
//! unless `REQUIRE_NATS=1`).

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use stack_tests::fake_llm::{FakeLlm, ANSWER};
use stack_tests::{ws, Stack};
use test_support::nats::{unique_namespace, NatsServer};
use test_support::PgTestDb;

const WAIT: Duration = Duration::from_secs(20);

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Starts both agents at once (their migrations race on the shared store), then both proxies.
async fn two_pods(agent_env: Vec<(String, String)>) -> (Stack, Stack) {
    let mut a = Stack::new(agent_env.clone()).await;
    let mut b = Stack::new(agent_env).await;
    a.spawn_agent();
    b.spawn_agent();
    a.wait_agent().await;
    b.wait_agent().await;
    a.start_proxy().await;
    b.start_proxy().await;
    (a, b)
}

/// Polls `check` until it holds (bounded by `WAIT`).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bus_connected(pod: &Stack) -> bool {
    let r = pod.http.get(pod.agent_url("/ready")).send().await;
    match r {
        Ok(r) => r.json::<Value>().await.is_ok_and(|v| v["bus"] == true),
        Err(_) => false,
    }
}

/// Opens a socket through a pod's edge and reads the welcome and session frames.
async fn open(pod: &Stack, user: i64, client_id: &str) -> ws::Socket {
    let url = pod.edge_ws(&format!("/ws/{client_id}?token={}", pod.token(user)));
    let mut s = ws::connect(&url, &[]).await.expect("handshake");
    let welcome = ws::next(&mut s).await.expect("welcome");
    assert_eq!(welcome["type"], "system", "{welcome}");
    let session = ws::next(&mut s).await.expect("session");
    assert_eq!(session["type"], "session", "{session}");
    s
}

async fn chat(s: &mut ws::Socket, content: &str) -> Vec<Value> {
    ws::send(s, json!({"type": "user_message", "content": content})).await;
    ws::until_idle(s).await
}

fn sum_detail(frames: &[Value], stage: &str, key: &str) -> u64 {
    frames
        .iter()
        .filter(|f| f["type"] == "agent_progress" && f["stage"] == stage)
        .map(|f| f["details"][key].as_u64().unwrap_or(0))
        .sum()
}

fn count_stage(frames: &[Value], stage: &str) -> u64 {
    frames
        .iter()
        .filter(|f| f["type"] == "agent_progress" && f["stage"] == stage)
        .count() as u64
}

fn answered(frames: &[Value]) -> bool {
    frames.iter().any(|f| f["type"] == "agent_message")
}

async fn get_json(pod: &Stack, path: &str, user: i64) -> (u16, Value) {
    let r = pod
        .http
        .get(pod.edge(path))
        .bearer_auth(pod.token(user))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn two_pods_share_sessions_broadcasts_client_ids_limits_and_usage_and_survive_losing_nats() {
    let Some(pg) = PgTestDb::create().await else {
        return;
    };
    let nats_dir = tempfile::tempdir().unwrap();
    let Some(mut nats) = NatsServer::start(nats_dir.path()) else {
        return;
    };
    let (a, b) = two_pods(env(&[
        ("AGENT_STORE_URL", &pg.url),
        ("AGENT_BUS_URL", &nats.url()),
        ("AGENT_BUS_NAMESPACE", &unique_namespace()),
        ("AGENT_BUS_LEASE_TTL_SECS", "3"),
        ("AGENT_MAX_CONNECTIONS_PER_USER", "3"),
    ]))
    .await;
    eventually("both agents connected to the bus", || async {
        bus_connected(&a).await && bus_connected(&b).await
    })
    .await;

    // A session created through pod A is listed through pod B, and B's socket hears of it.
    let mut on_b = open(&b, 1, "b-tab").await;
    let created = a
        .http
        .post(a.edge("/api/chat/sessions"))
        .bearer_auth(a.token(1))
        .json(&json!({"title": "made on A"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let heard = ws::next(&mut on_b).await.expect("a frame on B");
    assert_eq!(heard, json!({"type": "sessions_changed"}));
    let (status, listed) = get_json(&b, "/api/chat/sessions", 1).await;
    assert_eq!(status, 200);
    assert!(
        listed["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id.as_str()),
        "{listed}"
    );

    // The same client id opened on B closes A's socket with 4002.
    let mut first = open(&a, 1, "shared-tab").await;
    let _second = open(&b, 1, "shared-tab").await;
    assert_eq!(ws::closed_with(&mut first).await, Some(4002));

    // The per-user limit (3) counts both pods: two sockets on B, one on A, a fourth is refused.
    let mut on_a = open(&a, 1, "a-tab").await;
    let url = a.edge_ws(&format!("/ws/a-tab-2?token={}", a.token(1)));
    let mut fourth = ws::connect(&url, &[]).await.expect("handshake");
    assert_eq!(ws::closed_with(&mut fourth).await, Some(4008));
    // Another user is not affected.
    let _other = open(&a, 2, "grace-tab").await;

    // After a chat on A, usage read through B equals what the status log reported.
    let frames = chat(&mut on_a, "How many approved articles are there?").await;
    assert!(answered(&frames), "{frames:?}");
    let (status, usage) = get_json(&b, "/api/usage", 1).await;
    assert_eq!(status, 200, "{usage}");
    assert_eq!(usage["user_id"], 1);
    let totals = &usage["totals"];
    assert_eq!(
        totals["prompt_chars"].as_u64(),
        Some(sum_detail(&frames, "llm_request", "prompt_chars")),
        "{usage}"
    );
    assert_eq!(
        totals["response_chars"].as_u64(),
        Some(sum_detail(&frames, "llm_response", "response_chars")),
        "{usage}"
    );
    assert_eq!(
        totals["llm_calls"].as_u64(),
        Some(count_stage(&frames, "llm_response"))
    );
    assert_eq!(
        totals["tool_calls"].as_u64(),
        Some(count_stage(&frames, "tool_success") + count_stage(&frames, "tool_error"))
    );
    assert!(totals["prompt_chars"].as_u64().unwrap() > 0);
    assert_eq!(usage["by_day"].as_array().unwrap().len(), 1, "{usage}");
    assert_eq!(usage["by_model"][0]["provider"], "offline", "{usage}");
    // Admin usage (user 1 is an admin in the fixture) lists the user; user 2 may not read it.
    let (status, all) = get_json(&b, "/api/admin/usage", 1).await;
    assert_eq!(status, 200, "{all}");
    assert!(all["users"]
        .as_array()
        .unwrap()
        .iter()
        .any(|u| u["user_id"] == 1 && u["totals"] == *totals));
    let (status, _) = get_json(&b, "/api/admin/usage", 2).await;
    assert_eq!(status, 403);

    // Until now the bus carried everything: no operation was skipped on either pod.
    for pod in [&a, &b] {
        let skipped = pod
            .metric(&pod.agent_url("/metrics"), "agent_bus_degraded_total")
            .await;
        assert_eq!(skipped, 0.0);
    }

    // Killing NATS leaves chat working on both pods; the bus reports itself down.
    nats.kill();
    eventually("both agents notice the bus is gone", || async {
        !bus_connected(&a).await && !bus_connected(&b).await
    })
    .await;
    let frames = chat(&mut on_a, "How many approved articles are there?").await;
    assert!(answered(&frames), "chat on A without NATS: {frames:?}");
    let frames = chat(&mut on_b, "How many approved articles are there?").await;
    assert!(answered(&frames), "chat on B without NATS: {frames:?}");
    let mut fresh = open(&b, 2, "after-nats").await;
    let frames = chat(&mut fresh, "How many approved articles are there?").await;
    assert!(
        answered(&frames),
        "a new socket without NATS chats: {frames:?}"
    );
    let degraded = b
        .metric(&b.agent_url("/metrics"), "agent_bus_degraded_total")
        .await;
    assert!(
        degraded > 0.0,
        "skipped bus operations are counted ({degraded})"
    );
    assert_eq!(
        b.metric(&b.agent_url("/metrics"), "agent_bus_connected")
            .await,
        0.0
    );
    let log = b.agent.as_ref().unwrap().output();
    assert!(log.contains("WARN") && log.contains("bus"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_daily_quota_holds_across_pods_and_no_request_reaches_the_llm() {
    let Some(pg) = PgTestDb::create().await else {
        return;
    };
    let llm = FakeLlm::start().await;
    let (a, b) = two_pods(env(&[
        ("AGENT_STORE_URL", &pg.url),
        ("LLM_PROVIDER", "openai"),
        ("URL_BASE_OPENAI", &llm.base()),
        ("KEY_OPENAI", "test-key"),
        ("AGENT_USAGE_DAILY_LLM_CALLS_PER_USER", "1"),
    ]))
    .await;
    let mut on_a = open(&a, 2, "tab").await;
    let frames = chat(&mut on_a, "hello").await;
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "agent_message" && f["content"] == ANSWER),
        "{frames:?}"
    );
    assert_eq!(llm.requests(), 1);

    let mut on_b = open(&b, 2, "tab-b").await;
    let frames = chat(&mut on_b, "hello again").await;
    let refused = frames
        .iter()
        .find(|f| f["type"] == "agent_progress" && f["stage"] == "quota_exceeded")
        .unwrap_or_else(|| panic!("no quota_exceeded entry: {frames:?}"));
    assert_eq!(refused["details"]["quota"], "llm_calls");
    let error = frames
        .iter()
        .find(|f| f["type"] == "error")
        .unwrap_or_else(|| panic!("no error frame: {frames:?}"));
    let text = error["content"].as_str().unwrap();
    assert!(
        text.contains("resets at") && text.contains("T00:00:00Z"),
        "{text}"
    );
    assert!(!answered(&frames), "{frames:?}");
    assert_eq!(llm.requests(), 1, "the refused call never reached the LLM");
    assert!(
        b.metric(&b.agent_url("/metrics"), "agent_quota_refusals_total")
            .await
            >= 1.0
    );
    let (_, usage) = get_json(&a, "/api/usage", 2).await;
    assert_eq!(usage["totals"]["llm_calls"], 1, "{usage}");
    assert_eq!(usage["totals"]["prompt_tokens"], 11, "{usage}");
    assert_eq!(usage["totals"]["completion_tokens"], 7, "{usage}");
    assert_eq!(usage["by_model"][0]["model"], "gpt-4o-mini", "{usage}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_an_answer_lets_it_finish_then_closes_1001() {
    let llm = FakeLlm::start().await;
    let mut pod = Stack::new(env(&[
        ("LLM_PROVIDER", "openai"),
        ("URL_BASE_OPENAI", &llm.base()),
        ("KEY_OPENAI", "test-key"),
        ("AGENT_DRAIN_GRACE_SECS", "20"),
    ]))
    .await;
    pod.start_agent().await;
    pod.start_proxy().await;
    let mut s = open(&pod, 1, "tab").await;
    llm.hold();
    ws::send(&mut s, json!({"type": "user_message", "content": "hello"})).await;
    llm.wait_for_requests(1, WAIT).await;

    let agent = pod.agent.as_ref().unwrap();
    agent.signal(libc::SIGTERM);
    eventually("readiness fails once the drain starts", || async {
        let r = pod.http.get(pod.agent_url("/ready")).send().await;
        r.is_ok_and(|r| r.status() == 503)
    })
    .await;
    // The answer in progress still finishes, then the socket is closed with 1001.
    llm.release();
    let frames = ws::until_idle(&mut s).await;
    assert!(
        frames
            .iter()
            .any(|f| f["type"] == "agent_message" && f["content"] == ANSWER),
        "{frames:?}"
    );
    assert_eq!(ws::closed_with(&mut s).await, Some(1001));
    let status = pod
        .agent
        .as_mut()
        .unwrap()
        .wait_timeout(WAIT)
        .expect("the agent exits after the drain");
    assert!(status.success(), "{status}");
    let log = pod.agent.as_ref().unwrap().output();
    assert!(log.contains("draining"), "{log}");
}
