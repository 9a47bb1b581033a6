//! The four measurements. Every loop is bounded by a deadline and an optional total count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::report::{histogram, Report};

/// How long one operation may take before it counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Load {
    pub url: String,
    pub tokens: Vec<String>,
    pub connections: usize,
    pub duration: Duration,
    /// Stop after this many operations in total (0 = no limit).
    pub count: u64,
}

impl Load {
    /// The URL with the `i`-th token as `?token=` (or `&token=`).
    pub fn url_for(&self, i: usize) -> String {
        if self.tokens.is_empty() {
            return self.url.clone();
        }
        let sep = if self.url.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}token={}",
            self.url,
            self.tokens[i % self.tokens.len()]
        )
    }

    fn budget(&self) -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(if self.count == 0 {
            u64::MAX
        } else {
            self.count
        }))
    }
}

fn take(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Runs `connections` workers; each returns its histogram and error count.
async fn run_workers<F, Fut>(load: &Load, worker: F) -> (Histogram<u64>, u64, f64)
where
    F: Fn(usize, Instant, Arc<AtomicU64>) -> Fut,
    Fut: std::future::Future<Output = (Histogram<u64>, u64)> + Send + 'static,
{
    let started = Instant::now();
    let deadline = started + load.duration;
    let budget = load.budget();
    let tasks: Vec<_> = (0..load.connections)
        .map(|i| tokio::spawn(worker(i, deadline, budget.clone())))
        .collect();
    let mut total = histogram();
    let mut errors = 0;
    for t in tasks {
        if let Ok((h, e)) = t.await {
            total.add(h).ok();
            errors += e;
        }
    }
    (total, errors, started.elapsed().as_secs_f64())
}

/// WebSocket handshakes: connect, record the time to 101, close, repeat.
pub async fn handshakes(load: &Load) -> Report {
    let urls: Arc<Vec<String>> = Arc::new(
        (0..load.connections.max(load.tokens.len()))
            .map(|i| load.url_for(i))
            .collect(),
    );
    let (h, errors, secs) = run_workers(load, |i, deadline, budget| {
        let urls = urls.clone();
        async move {
            let mut h = histogram();
            let mut errors = 0;
            let mut n = i;
            while Instant::now() < deadline && take(&budget) {
                let t0 = Instant::now();
                match tokio::time::timeout(
                    OP_TIMEOUT,
                    tokio_tungstenite::connect_async(urls[n % urls.len()].as_str()),
                )
                .await
                {
                    Ok(Ok((mut ws, _))) => {
                        h.record(t0.elapsed().as_micros().max(1) as u64).ok();
                        let _ = tokio::time::timeout(OP_TIMEOUT, ws.close(None)).await;
                    }
                    _ => errors += 1,
                }
                n += 1;
            }
            (h, errors)
        }
    })
    .await;
    Report::new("handshakes", &load.url, load.connections, secs, &h, errors)
}

/// Message round trips over established sockets (the upstream echoes).
pub async fn roundtrip(load: &Load, size: usize) -> Report {
    let payload: Arc<str> = "x".repeat(size).into();
    let (h, errors, secs) = run_workers(load, |i, deadline, budget| {
        let url = load.url_for(i);
        let payload = payload.clone();
        async move {
            let mut h = histogram();
            let Ok(Ok((mut ws, _))) =
                tokio::time::timeout(OP_TIMEOUT, tokio_tungstenite::connect_async(url.as_str()))
                    .await
            else {
                return (h, 1);
            };
            let mut errors = 0;
            while Instant::now() < deadline && take(&budget) {
                let t0 = Instant::now();
                let ok = async {
                    ws.send(Message::Text(payload.to_string().into()))
                        .await
                        .ok()?;
                    loop {
                        match ws.next().await? {
                            Ok(Message::Text(_)) => return Some(()),
                            Ok(_) => continue,
                            Err(_) => return None,
                        }
                    }
                };
                match tokio::time::timeout(OP_TIMEOUT, ok).await {
                    Ok(Some(())) => {
                        h.record(t0.elapsed().as_micros().max(1) as u64).ok();
                    }
                    _ => {
                        errors += 1;
                        break;
                    }
                }
            }
            let _ = tokio::time::timeout(OP_TIMEOUT, ws.close(None)).await;
            (h, errors)
        }
    })
    .await;
    Report::new("roundtrip", &load.url, load.connections, secs, &h, errors)
}

/// Authenticated HTTP GETs, with the token as `Authorization: Bearer` or in the query.
pub async fn http(load: &Load, bearer: bool) -> Report {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(load.connections)
        .build()
        .expect("http client");
    let (h, errors, secs) = run_workers(load, |i, deadline, budget| {
        let client = client.clone();
        let (url, token) = if bearer {
            (
                load.url.clone(),
                load.tokens.get(i % load.tokens.len().max(1)).cloned(),
            )
        } else {
            (load.url_for(i), None)
        };
        async move {
            let mut h = histogram();
            let mut errors = 0;
            while Instant::now() < deadline && take(&budget) {
                let t0 = Instant::now();
                let mut req = client.get(&url).timeout(OP_TIMEOUT);
                if let Some(t) = &token {
                    req = req.bearer_auth(t);
                }
                match req.send().await {
                    Ok(r) if r.status().is_success() => {
                        let _ = r.bytes().await;
                        h.record(t0.elapsed().as_micros().max(1) as u64).ok();
                    }
                    _ => errors += 1,
                }
            }
            (h, errors)
        }
    })
    .await;
    Report::new(
        if bearer { "http-bearer" } else { "http-query" },
        &load.url,
        load.connections,
        secs,
        &h,
        errors,
    )
}

/// RSS of a process in bytes, from /proc.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Raises the open-files soft limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local struct.
    unsafe {
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return 0;
        }
        l.rlim_cur = l.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &l);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut l);
        l.rlim_cur
    }
}

/// Opens `connections` sockets, holds them idle for the load's duration, and reports the target
/// process's RSS growth per connection.
pub async fn idle(load: &Load, pid: Option<u32>) -> Report {
    let before = pid.and_then(rss_bytes);
    let started = Instant::now();
    let mut h = histogram();
    let mut errors = 0;
    let mut sockets = Vec::with_capacity(load.connections);
    let batch = 200;
    let mut i = 0;
    while i < load.connections {
        let end = (i + batch).min(load.connections);
        let opened = futures_util::future::join_all((i..end).map(|n| {
            let url = load.url_for(n);
            async move {
                let t0 = Instant::now();
                let r = tokio::time::timeout(
                    OP_TIMEOUT,
                    tokio_tungstenite::connect_async(url.as_str()),
                )
                .await;
                (t0.elapsed(), r)
            }
        }))
        .await;
        for (took, r) in opened {
            match r {
                Ok(Ok((ws, _))) => {
                    h.record(took.as_micros().max(1) as u64).ok();
                    sockets.push(ws);
                }
                _ => errors += 1,
            }
        }
        i = end;
    }
    tokio::time::sleep(load.duration).await;
    let after = pid.and_then(rss_bytes);
    let held = sockets.len();
    // Every socket must still be usable after the idle period.
    let mut alive = 0;
    for ws in sockets.iter_mut() {
        let probe = async {
            ws.send(Message::Text("ping".into())).await.ok()?;
            ws.next().await?.ok()
        };
        if matches!(tokio::time::timeout(OP_TIMEOUT, probe).await, Ok(Some(_))) {
            alive += 1;
        }
    }
    errors += (held - alive) as u64;
    let mut r = Report::new(
        "idle",
        &load.url,
        load.connections,
        started.elapsed().as_secs_f64(),
        &h,
        errors,
    );
    r.held = Some(alive);
    if let (Some(b), Some(a)) = (before, after) {
        r.rss_bytes_per_connection = Some(a.saturating_sub(b) as f64 / held.max(1) as f64);
    }
    r
}
