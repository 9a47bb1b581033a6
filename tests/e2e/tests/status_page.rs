//! The operator's status page in a real browser: headless Chromium (Debian's `chromium`) driven
//! through `chromedriver` (Debian's `chromium-driver`) with fantoccini. The page is loaded once; after
//! traffic through the edge, its own reload must show the new numbers. Then its form revokes a
//! user (a wrong admin token is refused first) and that user's next handshake is refused. A
//! screenshot is saved under `target/ci-artifacts/status-page.png` and its path printed.
//!
//! Without chromium and chromedriver on PATH the test is skipped with a message, unless
//! `REQUIRE_BROWSER=1` (CI sets it; `scripts/prereqs.sh` installs both).

use std::time::{Duration, Instant};

use fantoccini::Locator;
use serde_json::json;
use stack_tests::{bin_dir, browser, ws, Stack, StackOptions};
use test_support::{now_unix, token_with_claims, TEST_JWT_SECRET};

/// How long the page may take to show new numbers (it reloads itself every 2 s).
const PAGE_TIMEOUT: Duration = Duration::from_secs(20);
const ADMIN_TOKEN: &str = "status-page-admin-token-0123456789abcdef";

/// The integer in the element with `id`, read from the page as the browser shows it now.
async fn number(client: &fantoccini::Client, id: &str) -> Option<i64> {
    let el = client.find(Locator::Id(id)).await.ok()?;
    el.text().await.ok()?.trim().parse().ok()
}

/// Waits until the page (reloading itself) shows `want(value)` for `id`.
async fn wait_for(client: &fantoccini::Client, id: &str, want: impl Fn(i64) -> bool) -> i64 {
    let deadline = Instant::now() + PAGE_TIMEOUT;
    loop {
        if let Some(n) = number(client, id).await {
            if want(n) {
                return n;
            }
        }
        assert!(
            Instant::now() < deadline,
            "#{id} did not change as expected within {PAGE_TIMEOUT:?} (last: {:?})",
            number(client, id).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_for_text(client: &fantoccini::Client, id: &str, needle: &str) {
    browser::wait_for_text(client, id, needle, PAGE_TIMEOUT).await
}

async fn text_of(client: &fantoccini::Client, id: &str) -> String {
    browser::text_of(client, id).await
}

/// Fills and submits the form in one script, so the page's own reload cannot come in between.
async fn submit_revocation(client: &fantoccini::Client, admin_token: &str) {
    let script = r#"
        const f = document.getElementById('revoke');
        f.elements['kind'].value = 'user';
        f.elements['value'].value = '2';
        f.elements['reason'].value = 'left the team';
        f.elements['admin_token'].value = arguments[0];
        f.submit();
    "#;
    client
        .execute(script, vec![json!(admin_token)])
        .await
        .expect("submit the revocation form");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_in_headless_chromium_shows_traffic() {
    let Some((_driver, client)) = browser::open().await else {
        return;
    };
    let stack = Stack::start_with(StackOptions {
        proxy_toml: format!("admin_token = \"{ADMIN_TOKEN}\"\n"),
        ..StackOptions::default()
    })
    .await;
    let page = format!("http://127.0.0.1:{}/status", stack.admin_port);
    client.goto(&page).await.expect("load /status");
    assert_eq!(client.title().await.unwrap(), "auth-proxy status");
    assert_eq!(number(&client, "handshakes-15m").await, Some(0));
    assert_eq!(number(&client, "tunnels-open").await, Some(0));
    assert_eq!(number(&client, "refusals-15m").await, Some(0));
    let upstream = client.find(Locator::Id("upstream")).await.unwrap();
    assert_eq!(upstream.text().await.unwrap(), "up");

    // Traffic through the edge: one tunnel kept open, one refused handshake.
    let (socket, _welcome) = stack.open_session(1).await;
    let now = now_unix() as i64;
    let expired = token_with_claims(
        TEST_JWT_SECRET,
        json!({"id": 1, "iat": now - 7200, "exp": now - 3600}),
    );
    let refused = stack.edge_ws(&format!("/ws/{}?token={expired}", uuid::Uuid::new_v4()));
    let (status, _) = ws::connect(&refused, &[]).await.expect_err("expired");
    assert_eq!(status, 401);

    // No navigation from here on: the page's own reload must bring the numbers.
    assert_eq!(wait_for(&client, "handshakes-15m", |n| n >= 1).await, 1);
    assert_eq!(wait_for(&client, "tunnels-open", |n| n >= 1).await, 1);
    assert_eq!(wait_for(&client, "refusals-15m", |n| n >= 1).await, 1);
    assert_eq!(number(&client, "ws-token_expired-15m").await, Some(1));
    let ratio = client.find(Locator::Id("cache-hit-ratio")).await.unwrap();
    assert!(ratio.text().await.unwrap().ends_with('%'));

    // The revocation form: a wrong admin token is refused, the right one revokes user 2's tokens
    // issued until then (minted here, before it: one minted after it, in the next second, would
    // rightly pass).
    let before_revocation = stack.token(2);
    // The list is only for a caller that proves the admin token: the form's token signs the
    // browser in (a cookie for /status).
    assert!(text_of(&client, "revocations").await.contains("sign in"));
    submit_revocation(&client, "wrong-token").await;
    wait_for_text(&client, "notice", "Wrong admin token.").await;
    submit_revocation(&client, ADMIN_TOKEN).await;
    wait_for_text(&client, "revocations", "user: user 2").await;
    assert!(text_of(&client, "revocations")
        .await
        .contains("left the team"));
    let revoked = stack.edge_ws(&format!(
        "/ws/{}?token={before_revocation}",
        uuid::Uuid::new_v4()
    ));
    let (status, body) = ws::connect(&revoked, &[]).await.expect_err("revoked");
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token_revoked"), "{body}");

    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let dir = bin_dir().parent().expect("target dir").join("ci-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    let path = dir.join("status-page.png");
    std::fs::write(&path, &png).expect("write screenshot");
    println!("status page screenshot: {}", path.display());
    eprintln!("status page screenshot: {}", path.display());

    drop(socket);
    client.close().await.expect("end the browser session");
}
