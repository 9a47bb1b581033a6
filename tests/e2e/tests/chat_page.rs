//! A chat page in a real browser (headless Chromium) when the edge ends the chat: the page shows
//! the person why. The page does what Fluxion00Web does with the protocol: it opens
//! `/ws/{client_id}?token=…` on the edge and shows every `system` and `error` frame in its log, and
//! the close code. With `ws.close_frame` set, a revocation puts "Your session was revoked; sign in
//! again." in the page before the socket closes with 1008.

use std::time::Duration;

use axum::response::Html;
use serde_json::json;
use stack_tests::{browser, Stack, StackOptions};

const ADMIN_TOKEN: &str = "chat-page-admin-token-0123456789abcdef";
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);

/// The page, for the WebSocket URL `url`.
fn chat_page(url: &str) -> String {
    format!(
        r#"<!doctype html><meta charset="utf-8"><title>chat</title><ul id="log"></ul><script>
const log = (t) => {{
  const li = document.createElement('li');
  li.textContent = t;
  document.getElementById('log').appendChild(li);
}};
const ws = new WebSocket({url:?});
ws.onmessage = (e) => {{
  const f = JSON.parse(e.data);
  if (f.type === 'system' || f.type === 'error') log(f.type + ': ' + f.content);
}};
ws.onclose = (e) => log('closed ' + e.code);
</script>"#
    )
}

/// Serves `html` at `/` on a port of its own (another origin than the edge, as a front end is).
async fn serve_page(html: String) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = axum::Router::new().route("/", axum::routing::get(move || async { Html(html) }));
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn a_revoked_chat_shows_why_in_the_page() {
    let Some((_driver, client)) = browser::open().await else {
        return;
    };
    let stack = Stack::start_with(StackOptions {
        proxy_toml: format!(
            "admin_token = \"{ADMIN_TOKEN}\"\n[ws]\nclose_frame = '{{\"type\":\"error\",\"content\":\"{{message}}\"}}'\n"
        ),
        ..StackOptions::default()
    })
    .await;
    let url = stack.session_url(2);
    let page = serve_page(chat_page(&url)).await;
    client
        .goto(&format!("http://127.0.0.1:{page}/"))
        .await
        .expect("load the chat page");
    browser::wait_for_text(&client, "log", "system: Welcome", PAGE_TIMEOUT).await;

    let revoked = stack
        .http
        .post(format!(
            "http://127.0.0.1:{}/admin/revocations",
            stack.admin_port
        ))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"user_id": 2}))
        .send()
        .await
        .expect("the admin API");
    assert_eq!(revoked.status(), 201);

    browser::wait_for_text(&client, "log", "closed 1008", PAGE_TIMEOUT).await;
    let log = browser::text_of(&client, "log").await;
    let why = log
        .find("error: Your session was revoked; sign in again.")
        .unwrap_or_else(|| panic!("the page does not say why: {log:?}"));
    assert!(why < log.find("closed 1008").unwrap(), "{log:?}");
    client.close().await.expect("end the browser session");
}
