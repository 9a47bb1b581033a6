//! The proxy's life around failures: a database that goes away and comes back, SIGTERM drains,
//! and RS256 keys from PEM files.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use test_support::{now_unix, PgTestDb};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP relay to PostgreSQL that the test can cut (dropping every relayed connection) and restore.
struct Relay {
    port: u16,
    on: watch::Sender<bool>,
}

impl Relay {
    async fn start(target: &'static str) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (on, rx) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let mut rx = rx.clone();
                if !*rx.borrow() {
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = rx.wait_for(|on| !*on) => {}
                    }
                });
            }
        });
        Relay { port, on }
    }

    fn set(&self, on: bool) {
        self.on.send_replace(on);
    }
}

async fn handshake_status(proxy: &Proxy, token: &str) -> u16 {
    match ws_connect(&proxy.ws_url(&format!("/ws/c?token={token}")), &[]).await {
        Ok(_) => 101,
        Err((status, _, _)) => status,
    }
}

async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_outage_is_503_and_the_proxy_recovers_by_itself() {
    let Some(db) = PgTestDb::with_fixture().await else {
        return;
    };
    let relay = Relay::start("127.0.0.1:5432").await;
    let url = format!("postgres://postgres@127.0.0.1:{}/{}", relay.port, db.name);
    let upstream = Upstream::start().await;
    let toml = "[users]\ncache_ttl_secs = 0\nquery_timeout_ms = 500\n[throttle]\nfailures_per_minute = 100000\n";
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port).toml(toml)).await;
    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    assert_eq!(handshake_status(&proxy, &token).await, 101);

    relay.set(false);
    eventually("503 while the database is away", || async {
        handshake_status(&proxy, &token).await == 503
    })
    .await;
    eventually("readiness fails", || async {
        proxy.admin("/readyz").await.0 == 503
    })
    .await;
    let seen_before = upstream.count();
    assert_eq!(handshake_status(&proxy, &token).await, 503);
    assert_eq!(
        upstream.count(),
        seen_before,
        "nothing reaches the upstream during the outage"
    );

    relay.set(true);
    eventually("101 once the database is back", || async {
        handshake_status(&proxy, &token).await == 101
    })
    .await;
    eventually("readiness recovers", || async {
        proxy.admin("/readyz").await.0 == 200
    })
    .await;
}

fn sigterm(pid: u32) {
    // SAFETY: kill(2) on our own child with a valid signal.
    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_drains_open_tunnels_within_the_grace_then_exits_zero() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let toml = "shutdown_grace_secs = 3\n";
    let mut proxy = Proxy::start(ProxyOptions::new(&url, upstream.port).toml(toml)).await;
    let token = news_nexus_token(TEST_JWT_SECRET, 1);
    let mut tunnel = ws_connect(&proxy.ws_url(&format!("/ws/t?token={token}")), &[])
        .await
        .expect("101");
    assert_eq!(echo_round_trip(&mut tunnel, "before").await, "before");

    let signalled = Instant::now();
    sigterm(proxy.pid());
    eventually("readiness fails at once", || async {
        let url = format!("http://127.0.0.1:{}/readyz", proxy.admin_port);
        !matches!(http_client().get(url).send().await, Ok(r) if r.status() == 200)
    })
    .await;
    eventually("no new connections", || async {
        TcpStream::connect(("127.0.0.1", proxy.port)).await.is_err()
    })
    .await;
    assert_eq!(
        echo_round_trip(&mut tunnel, "during the grace").await,
        "during the grace"
    );

    let status = proxy
        .wait_exit(Duration::from_secs(3 + 5))
        .expect("exits within the grace");
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        proxy.output()
    );
    assert!(
        signalled.elapsed() >= Duration::from_secs(2),
        "the open tunnel was given its grace"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_without_open_tunnels_exits_zero_without_waiting_out_the_grace() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let mut proxy =
        Proxy::start(ProxyOptions::new(&url, upstream.port).toml("shutdown_grace_secs = 60\n"))
            .await;
    sigterm(proxy.pid());
    let status = proxy
        .wait_exit(Duration::from_secs(10))
        .expect("exits well before the 60 s grace");
    assert!(status.success(), "{}", proxy.output());
}

fn rs256_token(claims: Value) -> String {
    let pem = include_bytes!("fixtures/rs256-test-private.pem");
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(pem).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &key,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn rs256_public_keys_from_pem_work_and_cannot_be_used_as_hmac_secrets() {
    let (_dir, url) = sqlite_db().await;
    let upstream = Upstream::start().await;
    let public = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/rs256-test-public.pem"
    );
    let toml =
        format!("[jwt]\nalgorithms = [\"RS256\", \"HS256\"]\npublic_key_file = \"{public}\"\n");
    let proxy = Proxy::start(ProxyOptions::new(&url, upstream.port).toml(&toml)).await;

    let good = rs256_token(json!({"sub": "2", "iat": now_unix()}));
    assert_eq!(handshake_status(&proxy, &good).await, 101);
    assert_eq!(upstream.last().header("x-user-id"), Some("2"));

    // The classic confusion: an HS256 token signed with the public key's bytes as the secret.
    let pem = std::fs::read(public).unwrap();
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"id": 1, "iat": now_unix()}),
        &jsonwebtoken::EncodingKey::from_secret(&pem),
    )
    .unwrap();
    let before = upstream.count();
    assert_eq!(handshake_status(&proxy, &forged).await, 401);
    assert_eq!(upstream.count(), before);
}
