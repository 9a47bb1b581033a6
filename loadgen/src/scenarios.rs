//! The measurements of the edge's paths (handshakes, round trips, idle connections, HTTP); the chat
//! protocol's are in `chat.rs`. Every loop is bounded by a deadline and an optional total count.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use tokio_tungstenite::tungstenite::Message;

use crate::report::{histogram, PidRss, Report};

/// How long one operation may take before it counts as an error.
pub const OP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where `--url` wants a fresh client id: each connection gets a new UUID there.
pub const UUID_PLACEHOLDER: &str = "{uuid}";

#[derive(Clone)]
pub struct Load {
    pub url: String,
    pub tokens: Vec<String>,
    pub connections: usize,
    pub duration: Duration,
    /// Stop after this many operations in total (0 = no limit).
    pub count: u64,
}

impl Load {
    /// The URL with the `i`-th token as `?token=` (or `&token=`), and a new UUID in place of
    /// `{uuid}` (servers that key connections by client id need one per connection).
    pub fn url_for(&self, i: usize) -> String {
        let url = if self.url.contains(UUID_PLACEHOLDER) {
            self.url
                .replace(UUID_PLACEHOLDER, &uuid::Uuid::new_v4().to_string())
        } else {
            self.url.clone()
        };
        if self.tokens.is_empty() {
            return url;
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}token={}", self.tokens[i % self.tokens.len()])
    }

    pub fn budget(&self) -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(if self.count == 0 {
            u64::MAX
        } else {
            self.count
        }))
    }
}

pub fn take(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// Runs `connections` workers; each returns its histogram and error count.
pub async fn run_workers<F, Fut>(load: &Load, worker: F) -> (Histogram<u64>, u64, f64)
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

/// How `idle` opens and checks its connections.
pub struct IdleOptions {
    /// A connection counts as open once its first frame (a chat server's welcome) arrived.
    pub first_frame: bool,
    /// Connections opened and held before the "before" RSS is read (warms up pools and buffers).
    pub warmup: usize,
    /// The text each connection sends after the hold; any frame back proves it alive.
    pub probe: String,
}

impl Default for IdleOptions {
    fn default() -> Self {
        IdleOptions {
            first_frame: false,
            warmup: 0,
            probe: "ping".into(),
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `n` connections, 200 at a time; the open ones and the time each took.
async fn open_many(
    load: &Load,
    offset: usize,
    n: usize,
    first_frame: bool,
) -> Vec<Option<(Duration, Socket)>> {
    let mut out = Vec::with_capacity(n);
    let batch = 200;
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        let opened = futures_util::future::join_all((i..end).map(|k| {
            let url = load.url_for(offset + k);
            async move {
                let t0 = Instant::now();
                let open = async {
                    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.ok()?;
                    if first_frame {
                        loop {
                            match ws.next().await? {
                                Ok(Message::Text(_)) | Ok(Message::Binary(_)) => break,
                                Ok(Message::Close(_)) | Err(_) => return None,
                                Ok(_) => continue,
                            }
                        }
                    }
                    Some(ws)
                };
                let ws = tokio::time::timeout(OP_TIMEOUT, open)
                    .await
                    .ok()
                    .flatten()?;
                Some((t0.elapsed(), ws))
            }
        }))
        .await;
        out.extend(opened);
        i = end;
    }
    out
}

/// Reads a held socket until told to stop, so pings are answered and the server's frames do not
/// pile up; hands the socket back (`None` if it ended meanwhile).
async fn hold(mut ws: Socket, mut stop: tokio::sync::watch::Receiver<bool>) -> Option<Socket> {
    loop {
        tokio::select! {
            _ = stop.changed() => return Some(ws),
            m = ws.next() => match m {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                Some(Ok(_)) => continue,
            },
        }
    }
}

/// Opens `connections` sockets, holds them idle for the load's duration (reading whatever the
/// server sends, such as pings), and reports the RSS growth of each watched process per connection.
pub async fn idle(load: &Load, pids: &[u32], options: &IdleOptions) -> Report {
    let started = Instant::now();
    let mut errors = 0;
    let warm: Vec<Socket> = open_many(load, 0, options.warmup, options.first_frame)
        .await
        .into_iter()
        .filter_map(|o| o.map(|(_, ws)| ws))
        .collect();
    if options.warmup > 0 {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let before: Vec<Option<u64>> = pids.iter().map(|&p| rss_bytes(p)).collect();
    let mut h = histogram();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut holders = Vec::with_capacity(load.connections);
    for o in open_many(load, options.warmup, load.connections, options.first_frame).await {
        match o {
            Some((took, ws)) => {
                h.record(took.as_micros().max(1) as u64).ok();
                holders.push(tokio::spawn(hold(ws, stop_rx.clone())));
            }
            None => errors += 1,
        }
    }
    let held = holders.len();
    tokio::time::sleep(load.duration).await;
    let after: Vec<Option<u64>> = pids.iter().map(|&p| rss_bytes(p)).collect();
    let _ = stop_tx.send(true);
    let mut sockets = Vec::with_capacity(held);
    for t in holders {
        if let Ok(Some(ws)) = t.await {
            sockets.push(ws);
        }
    }
    // Every socket must still be usable after the idle period.
    let mut alive = 0;
    for ws in sockets.iter_mut() {
        let probe = async {
            ws.send(Message::Text(options.probe.clone().into()))
                .await
                .ok()?;
            ws.next().await?.ok()
        };
        if matches!(tokio::time::timeout(OP_TIMEOUT, probe).await, Ok(Some(_))) {
            alive += 1;
        }
    }
    errors += (held - alive) as u64;
    drop(warm);
    let mut r = Report::new(
        "idle",
        &load.url,
        load.connections,
        started.elapsed().as_secs_f64(),
        &h,
        errors,
    );
    r.held = Some(alive);
    let per_pid: Vec<PidRss> = pids
        .iter()
        .zip(before.iter().zip(&after))
        .filter_map(|(&pid, (b, a))| {
            let (b, a) = ((*b)?, (*a)?);
            Some(PidRss {
                pid,
                rss_before_bytes: b,
                rss_after_bytes: a,
                rss_bytes_per_connection: a.saturating_sub(b) as f64 / held.max(1) as f64,
            })
        })
        .collect();
    if !per_pid.is_empty() {
        r.rss_bytes_per_connection = Some(per_pid.iter().map(|p| p.rss_bytes_per_connection).sum());
    }
    if pids.len() > 1 {
        r.rss_by_pid = Some(per_pid);
    }
    r
}
