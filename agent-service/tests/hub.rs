//! The connection hub: replacement, client ids scoped by user, per-user and size limits, slow consumers.

mod common;

use common::*;
use serde_json::json;
use test_support::{sqlite_fixture, sqlite_url};

async fn agent(extra: &[(&str, String)]) -> (tempfile::TempDir, Agent) {
    let dir = tempfile::tempdir().unwrap();
    let path = sqlite_fixture(dir.path(), "nn.db").await;
    let agent = Agent::start(&sqlite_url(&path), extra).await;
    (dir, agent)
}

#[tokio::test]
async fn reconnecting_replaces_and_client_ids_are_scoped_by_user() {
    let (_d, agent) = agent(&[]).await;
    let mut first = agent.connect(&ada(), "tab-1", "").await.unwrap();
    greeted(&mut first).await;
    let mut second = agent.connect(&ada(), "tab-1", "").await.unwrap();
    greeted(&mut second).await;
    assert_eq!(closed_with(&mut first).await, Some(4002));

    // Another user holding the same client id gets a connection of their own; ada's stays.
    let mut other = agent.connect(&grace(), "tab-1", "").await.unwrap();
    greeted(&mut other).await;
    send(&mut second, json!({"type": "ping"})).await;
    assert_eq!(frame(&mut second).await, json!({"type": "pong"}));
    send(&mut other, json!({"type": "ping"})).await;
    assert_eq!(frame(&mut other).await, json!({"type": "pong"}));
    assert_eq!(agent.state.hub.count(), 2);
    assert_eq!(agent.state.hub.count_for(ada().user_id), 1);
    drop(other);
    // grace leaving does not unregister ada's connection.
    send(&mut second, json!({"type": "ping"})).await;
    assert_eq!(frame(&mut second).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn a_user_holds_a_bounded_number_of_connections() {
    let (_d, agent) = agent(&[("AGENT_MAX_CONNECTIONS_PER_USER", "2".into())]).await;
    let mut a = agent.connect(&ada(), "a", "").await.unwrap();
    greeted(&mut a).await;
    let mut b = agent.connect(&ada(), "b", "").await.unwrap();
    greeted(&mut b).await;
    let mut c = agent.connect(&ada(), "c", "").await.unwrap();
    assert_eq!(closed_with(&mut c).await, Some(4008));
    let mut other = agent.connect(&grace(), "g", "").await.unwrap();
    assert_eq!(frame(&mut other).await["type"], "system");
}

#[tokio::test]
async fn an_oversized_message_gets_an_error_and_the_connection_stays() {
    let (_d, agent) = agent(&[("AGENT_MAX_MESSAGE_BYTES", "1000".into())]).await;
    let mut s = agent.connect(&ada(), "a", "").await.unwrap();
    greeted(&mut s).await;
    send(
        &mut s,
        json!({"type": "user_message", "content": "x".repeat(2000)}),
    )
    .await;
    let f = frame(&mut s).await;
    assert_eq!(f["type"], "error");
    assert!(f["content"].as_str().unwrap().contains("too large"), "{f}");
    send(&mut s, json!({"type": "ping"})).await;
    assert_eq!(frame(&mut s).await, json!({"type": "pong"}));
}

#[tokio::test]
async fn a_message_far_over_the_limit_is_refused_unread_with_1009() {
    let (_d, agent) = agent(&[("AGENT_MAX_MESSAGE_BYTES", "1000".into())]).await;
    let mut s = agent.connect(&ada(), "a", "").await.unwrap();
    greeted(&mut s).await;
    send(
        &mut s,
        json!({"type": "user_message", "content": "x".repeat(70_000)}),
    )
    .await;
    // Closed without an answer: 1009 when the close frame is read before the reset that the
    // message's unread bytes cause.
    match next(&mut s).await {
        Next::Closed(code) => assert!(matches!(code, None | Some(1009)), "{code:?}"),
        Next::Frame(f) => panic!("a frame instead of the close: {f}"),
    }
    // The agent serves the next connection as before.
    let mut next = agent.connect(&ada(), "b", "").await.unwrap();
    greeted(&mut next).await;
}

#[tokio::test]
async fn a_consumer_that_does_not_read_is_disconnected() {
    let (_d, agent) = agent(&[("AGENT_OUTBOUND_QUEUE", "8".into())]).await;
    let mut s = agent.connect(&ada(), "slow", "").await.unwrap();
    // Ask for far more than the socket buffers and the queue hold, and read nothing.
    let big = "y".repeat(60_000);
    for _ in 0..400 {
        use futures_util::SinkExt;
        let msg = tokio_tungstenite::tungstenite::Message::Text(
            json!({"type": "user_message", "content": big})
                .to_string()
                .into(),
        );
        if tokio::time::timeout(std::time::Duration::from_secs(2), s.send(msg))
            .await
            .map(|r| r.is_err())
            .unwrap_or(true)
        {
            break;
        }
    }
    // The server gives up on this client instead of buffering: the hub forgets it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while agent.state.hub.count() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the slow consumer is still connected"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
