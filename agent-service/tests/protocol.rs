//! The WebSocket protocol, the status log and the providers, through a real WebSocket client
//! against the running service on the News Nexus fixture (SQLite, and PostgreSQL where noted).

mod common;

use common::*;
use serde_json::{json, Value};
use test_support::{now_unix, sqlite_fixture, sqlite_url, PgTestDb};

async fn sqlite() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite_fixture(dir.path(), "nn.db").await;
    (dir, sqlite_url(&path))
}

async fn welcomed(agent: &Agent, query: &str) -> Socket {
    let mut s = agent
        .connect(&ada(), &uuid::Uuid::new_v4().to_string(), query)
        .await
        .expect("101");
    let welcome = frame(&mut s).await;
    assert_eq!(welcome["type"], "system");
    assert!(
        welcome["content"].as_str().unwrap().contains("ada"),
        "{welcome}"
    );
    let session = frame(&mut s).await;
    assert_eq!(session["type"], "session", "{session}");
    assert_eq!(session["resumed"], false);
    s
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn a_plain_answer_has_the_documented_frames() {
    let (_d, url) = sqlite().await;
    let agent = Agent::start(&url, &[]).await;
    let mut s = welcomed(&agent, "").await;
    send(
        &mut s,
        json!({"type": "user_message", "content": "hello there"}),
    )
    .await;
    let frames = answer(&mut s).await;
    let k = kinds(&frames);
    assert_eq!(k[0], "user_echo");
    assert_eq!(frames[0]["content"], "hello there");
    assert_eq!(
        (k[1].as_str(), &frames[1]["content"]),
        ("typing", &json!(true))
    );
    assert_eq!(k[k.len() - 2], "agent_message");
    assert_eq!(
        stages(&frames),
        strs(&[
            "processing",
            "agent_start",
            "analyzing",
            "llm_request",
            "llm_response",
            "generating_response",
            "agent_end",
            "completed"
        ])
    );
    let answer_text = frames[k.len() - 2]["content"].as_str().unwrap();
    let end = stage(&frames, "agent_end")[0];
    assert_eq!(end["details"]["agent"], "general");
    assert_eq!(end["details"]["output_chars"], answer_text.chars().count());
    let req = stage(&frames, "llm_request")[0];
    assert_eq!(req["details"]["provider"], "offline");
    assert!(req["details"]["prompt_chars"].as_u64().unwrap() > 0);
    let ts: Vec<f64> = frames
        .iter()
        .filter_map(|f| f["timestamp"].as_f64())
        .collect();
    assert!(
        ts.windows(2).all(|w| w[0] <= w[1]) && ts[0] > 1.7e9,
        "float unix timestamps in order"
    );
}

async fn openai_tool_answer(url: &str) {
    let tool_call = json!({"choices": [{"message": {"role": "assistant", "content": null, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "count_approved_articles", "arguments": "{}"}}]}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 9}});
    let final_answer = json!({"choices": [{"message": {"role": "assistant", "content": "There are 2 approved articles."}}],
        "usage": {"prompt_tokens": 150, "completion_tokens": 8}});
    let fake = FakeLlm::start(vec![(200, tool_call), (200, final_answer)]).await;
    let agent = Agent::start(
        url,
        &[
            ("URL_BASE_OPENAI", format!("{}/v1", fake.base())),
            ("KEY_OPENAI", "sk-test-key".into()),
        ],
    )
    .await;
    let mut s = welcomed(&agent, "?provider=openai&model=gpt-4o-mini").await;
    send(
        &mut s,
        json!({"type": "user_message", "content": "How many approved articles?"}),
    )
    .await;
    let frames = answer(&mut s).await;
    assert_eq!(
        stages(&frames),
        strs(&[
            "processing",
            "agent_start",
            "analyzing",
            "llm_request",
            "llm_response",
            "tool_execution",
            "tool_success",
            "llm_summarizing",
            "llm_request",
            "llm_response",
            "generating_response",
            "agent_end",
            "completed"
        ])
    );
    let k = kinds(&frames);
    assert_eq!(
        frames[k.len() - 2]["content"],
        "There are 2 approved articles."
    );

    let requests = fake.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[0].0.get("authorization").unwrap(),
        "Bearer sk-test-key"
    );
    assert_eq!(requests[0].1["model"], "gpt-4o-mini");
    assert!(requests[0].1["tools"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["function"]["name"] == "count_approved_articles"));
    // The tool's output is what the second request carries back, and output_length is its length.
    let tool_msg = requests[1].1["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["role"] == "tool")
        .unwrap()
        .clone();
    let output = tool_msg["content"].as_str().unwrap();
    assert_eq!(serde_json::from_str::<Value>(output).unwrap()["count"], 2);
    assert_eq!(
        stage(&frames, "tool_success")[0]["details"]["output_length"],
        output.chars().count()
    );
    assert_eq!(
        stage(&frames, "tool_success")[0]["details"]["tool"],
        "count_approved_articles"
    );
    // prompt_chars and response_chars are what was really sent and received.
    let llm_requests = stage(&frames, "llm_request");
    let llm_responses = stage(&frames, "llm_response");
    for i in 0..2 {
        assert_eq!(
            llm_requests[i]["details"]["prompt_chars"],
            sent_chars(&requests[i].1),
            "request {i}"
        );
        assert_eq!(llm_requests[i]["details"]["model"], "gpt-4o-mini");
    }
    assert_eq!(
        llm_responses[0]["details"]["response_chars"],
        "count_approved_articles".len() + "{}".len()
    );
    assert_eq!(llm_responses[0]["details"]["prompt_tokens"], 120);
    assert_eq!(llm_responses[0]["details"]["completion_tokens"], 9);
    assert_eq!(
        llm_responses[1]["details"]["response_chars"],
        "There are 2 approved articles.".len()
    );
    assert!(llm_responses[1]["details"]["duration_ms"].is_u64());
    let metrics = agent.state.metrics.render();
    assert!(
        metrics
            .contains(r#"agent_llm_calls_total{agent="general",outcome="ok",provider="openai"} 2"#),
        "{metrics}"
    );
    assert!(
        metrics
            .contains(r#"agent_tool_calls_total{outcome="ok",tool="count_approved_articles"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn an_openai_tool_answer_reports_what_was_sent_and_received_on_sqlite() {
    let (_d, url) = sqlite().await;
    openai_tool_answer(&url).await;
}

#[tokio::test]
async fn an_openai_tool_answer_reports_what_was_sent_and_received_on_postgres() {
    let Some(db) = PgTestDb::with_fixture().await else {
        return;
    };
    openai_tool_answer(&db.url).await;
}

#[tokio::test]
async fn ollama_text_tool_protocol() {
    let (_d, url) = sqlite().await;
    let call = json!({"model": "mistral:instruct", "message": {"role": "assistant",
        "content": "TOOL_CALL: get_article_by_id\nARGUMENTS: {\"article_id\": 2}\nEND_TOOL_CALL"}, "done": true,
        "prompt_eval_count": 300, "eval_count": 20});
    let done = json!({"model": "mistral:instruct", "message": {"role": "assistant", "content": "Article 2 is about playgrounds."}, "done": true});
    let fake = FakeLlm::start(vec![(200, call), (200, done)]).await;
    let agent = Agent::start(
        &url,
        &[
            ("URL_BASE_OLLAMA", fake.base()),
            ("KEY_OLLAMA", "ollama-key".into()),
        ],
    )
    .await;
    let mut s = welcomed(&agent, "?provider=ollama").await;
    send(
        &mut s,
        json!({"type": "user_message", "content": "Tell me about article 2"}),
    )
    .await;
    let frames = answer(&mut s).await;
    assert!(
        stages(&frames).contains(&"tool_success".to_string()),
        "{:?}",
        stages(&frames)
    );
    let requests = fake.requests();
    assert_eq!(requests[0].0.get("x-api-key").unwrap(), "ollama-key");
    assert_eq!(requests[0].1["model"], "mistral:instruct");
    assert_eq!(requests[0].1["stream"], false);
    assert!(requests[0].1["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("TOOL_CALL:"));
    let result = requests[1].1["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        result.contains("Playground equipment injuries rise"),
        "{result}"
    );
    assert_eq!(
        stage(&frames, "tool_success")[0]["details"]["output_length"],
        result.chars().count()
    );
    assert_eq!(
        stage(&frames, "llm_response")[0]["details"]["prompt_tokens"],
        300
    );
    assert_eq!(
        stage(&frames, "llm_request")[0]["details"]["prompt_chars"],
        sent_chars(&requests[0].1)
    );
    let k = kinds(&frames);
    assert_eq!(
        frames[k.len() - 2]["content"],
        "Article 2 is about playgrounds."
    );
}

#[tokio::test]
async fn sql_mode_writes_runs_and_summarises_on_sqlite() {
    let (_d, url) = sqlite().await;
    sql_mode(&url).await;
}

#[tokio::test]
async fn sql_mode_writes_runs_and_summarises_on_postgres() {
    let Some(db) = PgTestDb::with_fixture().await else {
        return;
    };
    sql_mode(&db.url).await;
}

async fn sql_mode(url: &str) {
    let agent = Agent::start(url, &[]).await;
    let mut s = welcomed(&agent, "").await;
    send(
        &mut s,
        json!({"type": "user_message", "content": r#"/sql SELECT COUNT(*) AS n FROM "Articles""#}),
    )
    .await;
    let frames = answer(&mut s).await;
    assert_eq!(
        stages(&frames),
        strs(&[
            "processing",
            "agent_start",
            "sql_generation",
            "llm_request",
            "llm_response",
            "tool_execution",
            "tool_success",
            "sql_executed",
            "llm_summarizing",
            "llm_request",
            "llm_response",
            "generating_response",
            "agent_end",
            "completed"
        ])
    );
    let executed = stage(&frames, "sql_executed")[0];
    assert_eq!(executed["details"]["row_count"], 1);
    assert_eq!(
        executed["details"]["sql"],
        r#"SELECT COUNT(*) AS n FROM "Articles""#
    );
    assert_eq!(stage(&frames, "agent_start")[0]["details"]["agent"], "sql");
    assert_eq!(
        executed["details"]["output_length"],
        stage(&frames, "tool_success")[0]["details"]["output_length"]
    );

    // mode: "sql" works too.
    send(
        &mut s,
        json!({"type": "user_message", "content": "how many approved articles", "mode": "sql"}),
    )
    .await;
    let frames = answer(&mut s).await;
    assert!(stages(&frames).contains(&"sql_executed".to_string()));
}

#[tokio::test]
async fn forbidden_sql_is_refused_and_the_table_is_intact() {
    let (_d, url) = sqlite().await;
    let agent = Agent::start(&url, &[]).await;
    let mut s = welcomed(&agent, "").await;
    for sql in [
        "DROP TABLE Users",
        "PRAGMA table_info(Users)",
        "SELECT 1; DELETE FROM Users",
    ] {
        send(
            &mut s,
            json!({"type": "user_message", "content": format!("/sql {sql}")}),
        )
        .await;
        let frames = answer(&mut s).await;
        let st = stages(&frames);
        assert!(
            st.contains(&"sql_error".to_string()) && st.contains(&"tool_error".to_string()),
            "{sql}: {st:?}"
        );
        assert!(!st.contains(&"sql_executed".to_string()), "{sql}");
        let k = kinds(&frames);
        assert_eq!(k[k.len() - 2], "agent_message", "{sql}");
        assert!(
            frames[k.len() - 2]["content"]
                .as_str()
                .unwrap()
                .contains("could not run"),
            "{sql}"
        );
    }
    send(
        &mut s,
        json!({"type": "user_message", "content": "/sql SELECT COUNT(*) AS users FROM Users"}),
    )
    .await;
    let frames = answer(&mut s).await;
    assert_eq!(stage(&frames, "sql_executed")[0]["details"]["row_count"], 1);
    use sqlx::Connection;
    let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM Users")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(n, 2);
    let metrics = agent.state.metrics.render();
    assert!(
        metrics.contains(r#"agent_tool_calls_total{outcome="error",tool="execute_custom_sql"} 3"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_provider_error_is_an_error_frame_and_the_connection_stays_usable() {
    let (_d, url) = sqlite().await;
    let fake = FakeLlm::start(vec![(500, json!({"error": "boom"}))]).await;
    let agent = Agent::start(&url, &[("URL_BASE_OPENAI", format!("{}/v1", fake.base()))]).await;
    let mut s = welcomed(&agent, "?provider=openai").await;
    send(&mut s, json!({"type": "user_message", "content": "hello"})).await;
    let frames = answer(&mut s).await;
    let k = kinds(&frames);
    assert_eq!(k[k.len() - 2], "error", "{frames:?}");
    assert!(frames[k.len() - 2]["content"]
        .as_str()
        .unwrap()
        .contains("LLM request failed"));
    let resp = stage(&frames, "llm_response")[0];
    assert!(
        resp["details"]["error"].as_str().unwrap().contains("500"),
        "{resp}"
    );
    assert_eq!(resp["details"]["response_chars"], 0);
    send(&mut s, json!({"type": "ping"})).await;
    assert_eq!(frame(&mut s).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn invalid_frames_ping_and_clear_history() {
    let (_d, url) = sqlite().await;
    let agent = Agent::start(&url, &[]).await;
    let mut s = welcomed(&agent, "").await;
    use futures_util::SinkExt;
    s.send(tokio_tungstenite::tungstenite::Message::Text(
        "not json".into(),
    ))
    .await
    .unwrap();
    assert_eq!(
        frame(&mut s).await,
        json!({"type": "error", "content": "Invalid message format"})
    );
    send(&mut s, json!({"type": "no_such_type"})).await;
    assert_eq!(
        frame(&mut s).await,
        json!({"type": "error", "content": "Invalid message format"})
    );
    send(&mut s, json!({"type": "ping"})).await;
    assert_eq!(frame(&mut s).await, json!({"type": "pong"}));
    send(&mut s, json!({"type": "clear_history"})).await;
    assert_eq!(
        frame(&mut s).await,
        json!({"type": "system", "content": "Conversation history cleared"})
    );
}

#[tokio::test]
async fn queued_messages_are_answered_in_order() {
    let (_d, url) = sqlite().await;
    let agent = Agent::start(&url, &[]).await;
    let mut s = welcomed(&agent, "").await;
    send(&mut s, json!({"type": "user_message", "content": "first"})).await;
    send(&mut s, json!({"type": "user_message", "content": "second"})).await;
    let a = answer(&mut s).await;
    let b = answer(&mut s).await;
    assert_eq!(a[0]["content"], "first");
    assert_eq!(b[0]["content"], "second");
}

#[tokio::test]
async fn an_unknown_provider_closes_with_4000() {
    let (_d, url) = sqlite().await;
    let agent = Agent::start(&url, &[]).await;
    let mut s = agent
        .connect(&ada(), "c", "?provider=skynet")
        .await
        .expect("upgrade, then close");
    assert_eq!(closed_with(&mut s).await, Some(4000));
}

#[tokio::test]
async fn identity_must_come_from_the_proxy() {
    let (_d, url) = sqlite().await;
    let agent = Agent::start(&url, &[("KEY_OPENAI", "sk-very-secret".into())]).await;
    let http = reqwest::Client::new();

    let r = http
        .get(agent.url("/ws/c"))
        .header("x-user-id", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"], "missing_identity");

    // Replayed on another path.
    let headers = identity_headers(&ada(), "GET", "/ws/other", now_unix());
    let (status, body) = ws_connect(&format!("ws://127.0.0.1:{}/ws/c", agent.port), &headers)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("invalid_identity"));
    // Two minutes old.
    let headers = identity_headers(&ada(), "GET", "/ws/c", now_unix() - 120);
    let (status, body) = ws_connect(&format!("ws://127.0.0.1:{}/ws/c", agent.port), &headers)
        .await
        .err()
        .unwrap();
    assert_eq!(status, 401);
    assert!(body.contains("stale_identity"));
    // Unknown routes need identity too.
    assert_eq!(
        http.get(agent.url("/anything"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );

    // Public routes.
    let health: Value = http
        .get(agent.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["active_connections"], 0);
    let info = http
        .get(agent.url("/api/info"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let v: Value = serde_json::from_str(&info).unwrap();
    assert_eq!(
        v["supported_providers"]["openai"]["default_model"],
        "gpt-4o-mini"
    );
    assert_eq!(
        v["supported_providers"]["ollama"]["default_model"],
        "mistral:instruct"
    );
    assert_eq!(v["available_tools"].as_array().unwrap().len(), 7);
    assert!(
        !info.contains("sk-very-secret") && !info.contains("nn.db") && !info.contains("sqlite"),
        "{info}"
    );
    let metrics = http
        .get(agent.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("agent_websocket_connections_active"));
}

/// The client-id grammar the edge checks (`shared::client_id`), checked by the agent too, on the
/// raw path: `%41` is refused, not read as `A`.
#[tokio::test]
async fn client_ids_outside_the_grammar_are_refused() {
    let (_d, url) = sqlite().await;
    let agent = Agent::start(&url, &[]).await;
    let long = "x".repeat(129);
    // Those a URL can carry as they are ("a b" and "é" cannot).
    let ids = shared::client_id::REFUSED_EXAMPLES
        .into_iter()
        .filter(|id| id.bytes().all(|b| b.is_ascii_graphic()))
        .chain([long.as_str()]);
    for id in ids {
        match agent.connect(&ada(), id, "").await {
            Ok(_) => panic!("{id}: upgraded"),
            Err((status, body)) => {
                assert_eq!(status, 400, "{id}: {body}");
                assert!(body.contains("invalid_client_id"), "{id}: {body}");
            }
        }
    }
    let mut ok = agent
        .connect(&ada(), &"x".repeat(128), "")
        .await
        .expect("128 characters are an id");
    greeted(&mut ok).await;
}
