//! The Grafana dashboard (`deploy/monitoring/grafana-dashboard.json`) queries only metrics that
//! exist: every metric name in its PromQL expressions must have samples on the live `/metrics`
//! page of the proxy or the agent after one chat through the edge.

use std::collections::BTreeSet;

use serde_json::{json, Value};
use stack_tests::{ws, Stack};

const DASHBOARD: &str = include_str!("../../../deploy/monitoring/grafana-dashboard.json");

fn exprs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

/// The metric names an expression reads: identifiers of this project's families (`auth_proxy_*`,
/// `agent_*`), outside label matchers and strings.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut depth = 0usize;
    let mut word = String::new();
    let mut in_string = false;
    for c in expr.chars().chain(std::iter::once(' ')) {
        if in_string {
            in_string = c != '"';
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
            continue;
        }
        if depth == 0 && (word.starts_with("auth_proxy_") || word.starts_with("agent_")) {
            names.push(std::mem::take(&mut word));
        }
        word.clear();
        match c {
            '{' => depth += 1,
            '}' => depth = depth.saturating_sub(1),
            '"' => in_string = true,
            _ => {}
        }
    }
    names
}

fn sample_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

#[test]
fn names_are_read_from_expressions() {
    assert_eq!(
        metric_names(
            r#"sum by (le) (rate(agent_llm_duration_seconds_bucket{model="agent_x"}[5m])) / auth_proxy_a"#
        ),
        ["agent_llm_duration_seconds_bucket", "auth_proxy_a"]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_dashboard_queries_exists_on_the_live_pages() {
    let stack = Stack::start().await;
    let url = stack.edge_ws(&format!("/ws/dash?token={}", stack.token(1)));
    let mut s = ws::connect(&url, &[]).await.expect("handshake");
    ws::send(
        &mut s,
        json!({"type": "user_message", "content": "How many approved articles are there?"}),
    )
    .await;
    ws::until_idle(&mut s).await;
    let bad = stack.edge_ws("/ws/dash?token=not-a-token");
    assert!(ws::connect(&bad, &[]).await.is_err());

    let dashboard: Value = serde_json::from_str(DASHBOARD).expect("dashboard is JSON");
    let mut all = Vec::new();
    exprs(&dashboard, &mut all);
    let queried: BTreeSet<String> = all.iter().flat_map(|e| metric_names(e)).collect();
    assert!(
        queried.len() >= 10,
        "too few metrics found in the dashboard: {queried:?}"
    );
    // The edge records a request's metrics just after answering it: scrape until they are in
    // (bounded), then require every queried name.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let mut live = BTreeSet::new();
        for url in [
            format!("http://127.0.0.1:{}/metrics", stack.admin_port),
            stack.agent_url("/metrics"),
        ] {
            let page = stack
                .http
                .get(&url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            live.extend(sample_names(&page));
        }
        let missing: Vec<&String> = queried.iter().filter(|n| !live.contains(*n)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dashboard queries metrics the services do not expose: {missing:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
