//! Chat sessions: persistence, per-user isolation, resuming with context, clearing, events to a
//! user's other connections, and surviving a crash of the real process.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use shared::identity::Identity;
use test_support::{
    hand_over, now_unix, sqlite_fixture, sqlite_url, PgTestDb, Port, TEST_IDENTITY_SECRET,
};

async fn nn() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite_fixture(dir.path(), "nn.db").await;
    (dir, sqlite_url(&path))
}

/// A REST call signed like auth-proxy's.
async fn api(
    port: u16,
    user: &Identity,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let headers = identity_headers(user, method, path, now_unix());
    send_signed(port, method, path, &headers, body).await
}

async fn chat_once(agent: &Agent, user: &Identity, query: &str, text: &str) -> String {
    let mut s = agent
        .connect(user, &uuid::Uuid::new_v4().to_string(), query)
        .await
        .unwrap();
    let id = greeted(&mut s).await;
    send(&mut s, json!({"type": "user_message", "content": text})).await;
    let frames = answer(&mut s).await;
    assert_eq!(kinds(&frames)[kinds(&frames).len() - 2], "agent_message");
    id
}

async fn isolation(store_url: &str) {
    let (_d, url) = nn().await;
    let agent = Agent::start(&url, &[("AGENT_STORE_URL", store_url.to_string())]).await;
    let id = chat_once(
        &agent,
        &ada(),
        "",
        "  How many approved articles are there in the whole News Nexus database today?  ",
    )
    .await;

    let (status, list) = api(agent.port, &ada(), "GET", "/api/chat/sessions", None).await;
    assert_eq!(status, 200);
    let sessions = list["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1);
    assert_eq!(sessions[0]["id"], id.as_str());
    assert_eq!(sessions[0]["message_count"], 2);
    let title = sessions[0]["title"].as_str().unwrap();
    assert_eq!(
        title,
        "How many approved articles are there in the whole News Nexus"
    );
    assert_eq!(title.chars().count(), 60);

    let path = format!("/api/chat/sessions/{id}");
    let (status, one) = api(agent.port, &ada(), "GET", &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(one["messages"][0]["role"], "user");
    assert_eq!(one["messages"][1]["role"], "assistant");

    // grace sees nothing of ada's, and her attempts look exactly like a missing session.
    let (status, list) = api(agent.port, &grace(), "GET", "/api/chat/sessions", None).await;
    assert_eq!(
        (status, list["sessions"].as_array().unwrap().len()),
        (200, 0)
    );
    let missing = format!("/api/chat/sessions/{}", uuid::Uuid::new_v4());
    let (s_missing, b_missing) = api(agent.port, &grace(), "GET", &missing, None).await;
    let (s_other, b_other) = api(agent.port, &grace(), "GET", &path, None).await;
    assert_eq!((s_other, &b_other), (s_missing, &b_missing));
    assert_eq!(
        (s_other, b_other["error"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = api(agent.port, &grace(), "DELETE", &path, None).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    // grace cannot resume it either: she gets a new session.
    let mut s = agent
        .connect(&grace(), "g", &format!("?session_id={id}"))
        .await
        .unwrap();
    frame(&mut s).await;
    assert_eq!(frame(&mut s).await["type"], "error");
    let session = frame(&mut s).await;
    assert_ne!(session["session_id"], id.as_str());
    assert_eq!(session["resumed"], false);

    let (status, _) = api(agent.port, &ada(), "GET", &path, None).await;
    assert_eq!(status, 200, "ada's session is intact");
    let (status, _) = api(agent.port, &ada(), "DELETE", &path, None).await;
    assert_eq!(status, 204);
    let (status, _) = api(agent.port, &ada(), "GET", &path, None).await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn sessions_are_per_user_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    isolation(&format!(
        "sqlite://{}/store.db?mode=rwc",
        dir.path().display()
    ))
    .await;
}

#[tokio::test]
async fn sessions_are_per_user_on_postgres() {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    isolation(&db.url).await;
}

#[tokio::test]
async fn create_with_a_title_and_bad_bodies() {
    let (_d, url) = nn().await;
    let agent = Agent::start(&url, &[]).await;
    let (status, s) = api(
        agent.port,
        &ada(),
        "POST",
        "/api/chat/sessions",
        Some(json!({"title": "  Recalls  "})),
    )
    .await;
    assert_eq!((status, s["title"].as_str()), (201, Some("Recalls")));
    let (status, s) = api(agent.port, &ada(), "POST", "/api/chat/sessions", None).await;
    assert_eq!((status, &s["title"]), (201, &Value::Null));
    let (status, e) = api(
        agent.port,
        &ada(),
        "POST",
        "/api/chat/sessions",
        Some(json!({"title": 5})),
    )
    .await;
    assert_eq!((status, e["error"].as_str()), (400, Some("bad_request")));
    let (status, _) = api(
        agent.port,
        &ada(),
        "GET",
        "/api/chat/sessions/not-a-uuid",
        None,
    )
    .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn resuming_feeds_the_history_to_the_agent_and_clearing_removes_it() {
    let (_d, url) = nn().await;
    let reply = |text: &str| {
        (
            200,
            json!({"choices": [{"message": {"role": "assistant", "content": text}}]}),
        )
    };
    let fake = FakeLlm::start(vec![
        reply("First answer."),
        reply("Second answer."),
        reply("Third answer."),
    ])
    .await;
    let agent = Agent::start(&url, &[("URL_BASE_OPENAI", format!("{}/v1", fake.base()))]).await;
    let id = chat_once(&agent, &ada(), "?provider=openai", "My first question").await;

    let mut s = agent
        .connect(
            &ada(),
            "again",
            &format!("?provider=openai&session_id={id}"),
        )
        .await
        .unwrap();
    frame(&mut s).await;
    let session = frame(&mut s).await;
    assert_eq!(
        (session["session_id"].as_str(), &session["resumed"]),
        (Some(id.as_str()), &json!(true))
    );
    send(
        &mut s,
        json!({"type": "user_message", "content": "And a follow-up"}),
    )
    .await;
    answer(&mut s).await;
    let sent = &fake.requests()[1].1["messages"];
    let contents: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(
        contents.contains(&"My first question") && contents.contains(&"First answer."),
        "{contents:?}"
    );
    assert_eq!(contents.last(), Some(&"And a follow-up"));

    send(&mut s, json!({"type": "clear_history"})).await;
    assert_eq!(
        frame(&mut s).await["content"],
        "Conversation history cleared"
    );
    send(
        &mut s,
        json!({"type": "user_message", "content": "Fresh start"}),
    )
    .await;
    answer(&mut s).await;
    let sent = &fake.requests()[2].1["messages"];
    let contents: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["content"].as_str())
        .collect();
    assert!(!contents.contains(&"My first question"), "{contents:?}");
    // The transcript itself is kept.
    let (_, one) = api(
        agent.port,
        &ada(),
        "GET",
        &format!("/api/chat/sessions/{id}"),
        None,
    )
    .await;
    assert_eq!(one["messages"].as_array().unwrap().len(), 6);
}

#[tokio::test]
async fn a_second_tab_hears_that_the_session_list_changed() {
    let (_d, url) = nn().await;
    let agent = Agent::start(&url, &[]).await;
    let mut tab1 = agent.connect(&ada(), "tab1", "").await.unwrap();
    greeted(&mut tab1).await;
    let mut tab2 = agent.connect(&ada(), "tab2", "").await.unwrap();
    greeted(&mut tab2).await;
    let mut other = agent.connect(&grace(), "g", "").await.unwrap();
    greeted(&mut other).await;
    send(
        &mut tab1,
        json!({"type": "user_message", "content": "hello"}),
    )
    .await;
    assert_eq!(frame(&mut tab2).await, json!({"type": "sessions_changed"}));
    let frames = answer(&mut tab1).await;
    assert_eq!(
        frames[0]["type"], "user_echo",
        "the tab that sent keeps the documented order"
    );
    assert!(!frames.iter().any(|f| f["type"] == "sessions_changed"));
    send(&mut other, json!({"type": "ping"})).await;
    assert_eq!(
        frame(&mut other).await,
        json!({"type": "pong"}),
        "another user hears nothing"
    );
}

/// The real binary, killed with SIGKILL mid-life: what was acknowledged is still there.
async fn survives_kill_9(store_url: &str) {
    let (_d, url) = nn().await;
    let held = Port::new();
    let port = held.port;
    let spawn = || {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_agent-service"));
        cmd.env_clear()
            .env("AGENT_LISTEN", format!("127.0.0.1:{port}"))
            .env("IDENTITY_SECRET", TEST_IDENTITY_SECRET)
            .env("DATABASE_URL", &url)
            .env("AGENT_STORE_URL", store_url)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let listener = held.listener();
        hand_over(&mut cmd, &[("agent", &listener)]);
        cmd.spawn().unwrap()
    };
    let wait_up = || async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while reqwest::get(format!("http://127.0.0.1:{port}/health"))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "agent did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut child = spawn();
    wait_up().await;
    let path = "/ws/crash-test";
    let headers = identity_headers(&ada(), "GET", path, now_unix());
    let mut s = ws_connect(&format!("ws://127.0.0.1:{port}{path}"), &headers)
        .await
        .unwrap();
    let id = greeted(&mut s).await;
    send(
        &mut s,
        json!({"type": "user_message", "content": "Remember this"}),
    )
    .await;
    let frames = answer(&mut s).await;
    let answer_text = frames[frames.len() - 2]["content"]
        .as_str()
        .unwrap()
        .to_string();

    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let mut child = spawn();
    wait_up().await;
    let (status, one) = api(
        port,
        &ada(),
        "GET",
        &format!("/api/chat/sessions/{id}"),
        None,
    )
    .await;
    assert_eq!(status, 200);
    let msgs = one["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2);
    assert_eq!(msgs[0]["content"], "Remember this");
    assert_eq!(msgs[1]["content"], answer_text.as_str());
    child.kill().ok();
    child.wait().ok();
}

#[tokio::test]
async fn history_survives_a_crash_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    survives_kill_9(&format!(
        "sqlite://{}/store.db?mode=rwc",
        dir.path().display()
    ))
    .await;
}

#[tokio::test]
async fn history_survives_a_crash_on_postgres() {
    let Some(db) = PgTestDb::create().await else {
        return;
    };
    survives_kill_9(&db.url).await;
}
