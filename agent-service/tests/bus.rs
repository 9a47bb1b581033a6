//! The cross-replica bus against the real NATS (JetStream) on this machine, with two replicas in
//! one process (each its own hub and bus, one namespace): broadcasts, replacement and the shared
//! per-user limit. Skipped loudly without NATS unless `REQUIRE_NATS=1`.

use std::sync::Arc;
use std::time::Duration;

use agent_service::{Bus, Hub, Metrics, Out, Outbound, Refusal, ScaleConfig};
use shared::frames::ServerFrame;
use test_support::nats::{nats_url, unique_namespace};
use tokio::sync::mpsc;

const STEP: Duration = Duration::from_secs(10);

struct Replica {
    hub: Arc<Hub>,
    bus: Arc<Bus>,
}

async fn replica(url: &str, namespace: &str, limit: usize) -> Replica {
    replica_with_ttl(url, namespace, limit, Duration::from_secs(30)).await
}

async fn replica_with_ttl(url: &str, namespace: &str, limit: usize, ttl: Duration) -> Replica {
    let config = ScaleConfig {
        bus_url: Some(url.to_string()),
        bus_namespace: namespace.to_string(),
        lease_ttl: ttl,
        drain_grace: Duration::from_secs(1),
        daily_prompt_chars_per_user: 0,
        daily_llm_calls_per_user: 0,
    };
    let hub = Arc::new(Hub::new(limit));
    let bus = Bus::start(&config, &hub, Arc::new(Metrics::new()), limit)
        .await
        .expect("bus");
    tokio::time::timeout(STEP, async {
        while !bus.connected() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("bus connected");
    Replica { hub, bus }
}

/// Registers a socket locally and across replicas, as `ws.rs` does.
async fn open(r: &Replica, user: i64, client: &str) -> Result<(u64, mpsc::Receiver<Out>), Refusal> {
    let (out, rx, _) = Outbound::new(16);
    let conn = r.hub.register(client, user, out)?;
    if let Err(e) = r.bus.acquire(user, client, conn).await {
        r.hub.unregister(client, user, conn);
        return Err(e);
    }
    Ok((conn, rx))
}

async fn recv(rx: &mut mpsc::Receiver<Out>) -> Out {
    tokio::time::timeout(STEP, rx.recv())
        .await
        .expect("a message in time")
        .expect("queue open")
}

#[tokio::test(flavor = "multi_thread")]
async fn two_replicas_share_broadcasts_replacements_and_the_limit() {
    let Some(url) = nats_url() else { return };
    let ns = unique_namespace();
    let a = replica(&url, &ns, 2).await;
    let b = replica(&url, &ns, 2).await;

    // A broadcast on A reaches the user's socket on B.
    let (c1, mut on_b) = open(&b, 7, "tab-1").await.unwrap();
    // The subscription is live once a message round-trips: retry the broadcast until it lands.
    tokio::time::timeout(STEP, async {
        loop {
            a.hub.send_to_user(7, &ServerFrame::SessionsChanged);
            if let Ok(Some(Out::Frame(f))) =
                tokio::time::timeout(Duration::from_millis(200), on_b.recv()).await
            {
                assert_eq!(*f, ServerFrame::SessionsChanged);
                return;
            }
        }
    })
    .await
    .expect("the broadcast crossed replicas");

    // The same client id on A closes B's socket with 4002.
    let (c2, _on_a) = open(&a, 7, "tab-1").await.unwrap();
    loop {
        match recv(&mut on_b).await {
            Out::Close(code, _) => {
                assert_eq!(code, 4002);
                break;
            }
            Out::Frame(_) => continue,
        }
    }
    // B's replaced socket goes away; its release must not free A's lease of the same client id.
    b.hub.unregister("tab-1", 7, c1);
    b.bus.release(7, "tab-1", c1).await;

    // The limit (2) counts both replicas: tab-1 (A, taken over from B) + tab-2 (B), a third is refused.
    let (c3, _) = open(&b, 7, "tab-2").await.unwrap();
    assert_eq!(
        open(&a, 7, "tab-3").await.err(),
        Some(Refusal::TooManyConnections)
    );
    assert_eq!(
        open(&b, 7, "tab-3").await.err(),
        Some(Refusal::TooManyConnections)
    );
    // Another user is not affected.
    assert!(open(&a, 8, "tab-3").await.is_ok());
    // Closing one frees a slot on the other replica.
    a.hub.unregister("tab-1", 7, c2);
    a.bus.release(7, "tab-1", c2).await;
    assert!(open(&b, 7, "tab-3").await.is_ok());
    let _ = c3;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_replicas_leases_stop_counting_after_the_ttl() {
    let Some(url) = nats_url() else { return };
    let ns = unique_namespace();
    let live = replica_with_ttl(&url, &ns, 1, Duration::from_secs(3)).await;
    // The first lease creates the bucket (max age = the TTL).
    assert!(open(&live, 8, "warm-up").await.is_ok());
    // A replica that died holding user 7's only slot: its lease is never refreshed or released.
    let client = async_nats::connect(url.as_str()).await.unwrap();
    let kv = async_nats::jetstream::new(client)
        .get_key_value(format!("{ns}_agent_leases"))
        .await
        .unwrap();
    kv.put(
        agent_service::lease_key(7, "dead-tab"),
        "dead-replica/1".into(),
    )
    .await
    .unwrap();
    assert_eq!(
        open(&live, 7, "tab").await.err(),
        Some(Refusal::TooManyConnections)
    );
    // Within a few TTLs the dead lease expires and the slot is free again (bounded wait).
    tokio::time::timeout(Duration::from_secs(15), async {
        while open(&live, 7, "tab").await.is_err() {
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    })
    .await
    .expect("the dead replica's slot was freed by the TTL");
}
