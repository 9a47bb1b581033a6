//! The byte relay of an open WebSocket tunnel: client socket <-> agent socket, after the 101.
//!
//! Memory: an idle tunnel holds no buffer. When a socket is readable, the relay reads into a
//! per-worker-thread scratch buffer and writes straight through to the other socket; only the part
//! the other socket would not take right away is copied into a spill buffer of exactly that size,
//! and that direction reads nothing more until the spill is written and freed (backpressure).
//!
//! Frames: each direction runs a [`FrameTracker`] over the bytes (headers only). Toward the agent it
//! enforces the frame and message size limits (close 1009) and frame sequence rules (close 1002).
//! A close request from the tunnel registry, the drain (1001) or the idle timeout ends the tunnel
//! with a close frame to the client at a frame boundary, and one to the agent (masked) when its
//! direction is at a boundary too. The rare closing path lives in a boxed future of its own, so the
//! per-tunnel future stays small.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus::IntCounter;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::live::tunnels::{CloseRequest, TunnelLease, CLOSE_GOING_AWAY};
use crate::tunnel::frames::{self, Advance, FrameTracker, Limits, Violation, HELD_ROOM};
use crate::tunnel::notice;

/// Size of the per-thread scratch buffer every read goes through.
const SCRATCH_BYTES: usize = 16 * 1024;
/// Reads per direction in one poll before yielding to other tasks.
const READS_PER_POLL: usize = 16;
/// How long the closing handshake and a half-closed tunnel may take.
const LINGER: Duration = Duration::from_secs(2);

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0u8; SCRATCH_BYTES].into_boxed_slice());
}

/// How one tunnel is relayed.
#[derive(Clone, Copy)]
pub struct RelayConfig<'a> {
    /// Limits on frames toward the agent.
    pub to_upstream: Limits,
    /// The tunnel closes after this long without a byte in either direction.
    pub idle: Duration,
    /// When the edge ends the tunnel itself: the template of a text frame sent to the client just
    /// before the close frame ([`crate::tunnel::notice`]).
    pub notice: Option<&'a str>,
}

/// The byte counters of the two directions (cached metric handles).
pub struct RelayCounters<'a> {
    pub to_upstream: &'a IntCounter,
    pub to_client: &'a IntCounter,
}

/// Why a tunnel ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    ClientClosed,
    UpstreamClosed,
    Idle,
    /// Closed on request (the registry: revocation, drain...).
    Closed(CloseRequest),
    /// The client broke the frame rules or the limits.
    Violation(Violation),
    Error(io::ErrorKind),
}

impl EndReason {
    /// A short label for the access line.
    pub fn label(&self) -> &'static str {
        match self {
            EndReason::ClientClosed => "client_closed",
            EndReason::UpstreamClosed => "upstream_closed",
            EndReason::Idle => "idle_timeout",
            EndReason::Closed(_) => "closed_by_edge",
            EndReason::Violation(Violation::TooBig) => "message_too_big",
            EndReason::Violation(Violation::Protocol(_)) => "protocol_error",
            EndReason::Error(_) => "io_error",
        }
    }
}

/// What the relay did.
#[derive(Debug)]
pub struct RelayEnd {
    pub to_upstream: u64,
    pub to_client: u64,
    pub reason: EndReason,
}

/// Bytes one direction could not write yet.
struct Spill {
    buf: Vec<u8>,
    at: usize,
}

/// One direction's state: small, and no buffer unless the destination pushed back.
#[derive(Default)]
struct Half {
    spill: Option<Box<Spill>>,
    frames: FrameTracker,
    /// A violation found; reported once the bytes before it are written.
    cut: Option<Violation>,
    eof: bool,
    /// Bytes were written since the last flush (for destinations that buffer writes).
    unflushed: bool,
    bytes: u64,
}

/// What a direction has to report.
enum Event {
    Eof,
    Cut(Violation),
}

impl Half {
    /// Moves bytes from `src` to `dst` until one of them would block. `Ready` only with news.
    fn poll_move<S, D>(
        &mut self,
        cx: &mut Context<'_>,
        src: &mut S,
        dst: &mut D,
        limits: &Limits,
        counter: &IntCounter,
        active: &mut bool,
    ) -> Poll<io::Result<Event>>
    where
        S: AsyncRead + Unpin,
        D: AsyncWrite + Unpin,
    {
        for _ in 0..READS_PER_POLL {
            if let Some(spill) = &mut self.spill {
                while spill.at < spill.buf.len() {
                    match Pin::new(&mut *dst).poll_write(cx, &spill.buf[spill.at..]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                        }
                        Poll::Ready(Ok(n)) => spill.at += n,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
                self.spill = None;
                self.unflushed = true;
            }
            if self.unflushed {
                match Pin::new(&mut *dst).poll_flush(cx) {
                    Poll::Ready(Ok(())) => self.unflushed = false,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => return Poll::Pending,
                }
            }
            if let Some(v) = self.cut {
                return Poll::Ready(Ok(Event::Cut(v)));
            }
            if self.eof {
                return Poll::Pending;
            }
            let step = SCRATCH.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                // Read after room for the bytes of a frame header held from the last read.
                let mut rb = ReadBuf::new(&mut scratch[HELD_ROOM..]);
                match Pin::new(&mut *src).poll_read(cx, &mut rb) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {}
                }
                let n = rb.filled().len();
                if n == 0 {
                    self.eof = true;
                    return Poll::Ready(Ok(Some(Event::Eof)));
                }
                *active = true;
                let data = self.frames.with_held(&mut scratch[..], n);
                let forward = match self.frames.advance(data, limits) {
                    Advance::Forward(forward) => forward,
                    Advance::Cut { forward, violation } => {
                        self.cut = Some(violation);
                        forward
                    }
                };
                self.bytes += forward as u64;
                self.unflushed = forward > 0;
                counter.inc_by(forward as u64);
                let mut at = 0;
                while at < forward {
                    match Pin::new(&mut *dst).poll_write(cx, &data[at..forward]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()))
                        }
                        Poll::Ready(Ok(k)) => at += k,
                        Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                        Poll::Pending => break,
                    }
                }
                if at < forward {
                    self.spill = Some(Box::new(Spill {
                        buf: data[at..forward].to_vec(),
                        at: 0,
                    }));
                }
                Poll::Ready(Ok(None))
            });
            match step {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(Some(event))) => return Poll::Ready(Ok(event)),
                Poll::Ready(Ok(None)) => {}
            }
        }
        // Fair to other tunnels on this worker: come back on the next turn.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// How the main loop ended, before the closing steps.
enum Stop {
    Close(CloseRequest),
    ClientEof,
    UpstreamEof,
    Idle,
    Violation(Violation),
    Error(io::Error),
}

/// Relays until either side closes, the tunnel idles out, the client breaks the rules, or the
/// registry asks the tunnel to close. `to_client_first`: bytes the agent sent right after its 101.
pub async fn relay<C, U>(
    mut client: C,
    mut upstream: U,
    to_client_first: Vec<u8>,
    lease: &mut TunnelLease,
    config: RelayConfig<'_>,
    counters: RelayCounters<'_>,
) -> RelayEnd
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut up = Half::default(); // client -> agent
    let mut down = Half::default(); // agent -> client
    if !to_client_first.is_empty() {
        let mut first = to_client_first;
        let forward = match down.frames.advance(&first, &Limits::NONE) {
            Advance::Forward(forward) => forward,
            Advance::Cut { forward, violation } => {
                down.cut = Some(violation);
                forward
            }
        };
        // A header not whole yet stays held, to go out in front of the agent's next bytes.
        first.truncate(forward);
        down.bytes += first.len() as u64;
        counters.to_client.inc_by(first.len() as u64);
        down.spill = Some(Box::new(Spill { buf: first, at: 0 }));
        down.unflushed = true;
    }
    let mut last_active = Instant::now();
    let idle = tokio::time::sleep(config.idle);
    tokio::pin!(idle);

    let stop = poll_fn(|cx| {
        if let Poll::Ready(request) = lease.poll_closed(cx) {
            return Poll::Ready(Stop::Close(request));
        }
        let mut active = false;
        let r = up.poll_move(
            cx,
            &mut client,
            &mut upstream,
            &config.to_upstream,
            counters.to_upstream,
            &mut active,
        );
        match r {
            Poll::Ready(Ok(Event::Eof)) => return Poll::Ready(Stop::ClientEof),
            Poll::Ready(Ok(Event::Cut(v))) => return Poll::Ready(Stop::Violation(v)),
            Poll::Ready(Err(e)) => return Poll::Ready(Stop::Error(e)),
            Poll::Pending => {}
        }
        let r = down.poll_move(
            cx,
            &mut upstream,
            &mut client,
            &Limits::NONE,
            counters.to_client,
            &mut active,
        );
        match r {
            Poll::Ready(Ok(Event::Eof)) => return Poll::Ready(Stop::UpstreamEof),
            // The agent's frames are not policed; a broken sequence only ends the tunnel.
            Poll::Ready(Ok(Event::Cut(_))) => {
                return Poll::Ready(Stop::Error(io::ErrorKind::InvalidData.into()))
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Stop::Error(e)),
            Poll::Pending => {}
        }
        if active {
            last_active = Instant::now();
        }
        while idle.as_mut().poll(cx).is_ready() {
            let due = last_active + config.idle;
            if Instant::now() >= due {
                return Poll::Ready(Stop::Idle);
            }
            idle.as_mut().reset(due.into());
        }
        Poll::Pending
    })
    .await;

    let halves = (&mut up, &mut down);
    let ends = (&counters, config.notice);
    let reason = Box::pin(finish(stop, &mut client, &mut upstream, halves, ends)).await;
    RelayEnd {
        to_upstream: up.bytes,
        to_client: down.bytes,
        reason,
    }
}

/// The closing steps: close frames where they can be sent, half-closes, a short linger.
async fn finish<C, U>(
    stop: Stop,
    client: &mut C,
    upstream: &mut U,
    (up, down): (&mut Half, &mut Half),
    (counters, notice): (&RelayCounters<'_>, Option<&str>),
) -> EndReason
where
    C: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (reason, close) = match stop {
        Stop::Close(request) => (EndReason::Closed(request.clone()), Some(request)),
        Stop::Idle => (
            EndReason::Idle,
            Some(CloseRequest::new(CLOSE_GOING_AWAY, "idle timeout")),
        ),
        Stop::Violation(v) => {
            let (code, why) = v.close();
            (EndReason::Violation(v), Some(CloseRequest::new(code, why)))
        }
        Stop::ClientEof => {
            // The client is done sending: pass the half-close on and let the agent finish.
            let _ = tokio::time::timeout(LINGER, async {
                flush_spill(upstream, up).await?;
                upstream.shutdown().await?;
                flush_spill(client, down).await?;
                copy_rest(upstream, client, down, counters.to_client).await
            })
            .await;
            return EndReason::ClientClosed;
        }
        Stop::UpstreamEof => {
            let _ = tokio::time::timeout(LINGER, async {
                flush_spill(client, down).await?;
                client.shutdown().await?;
                flush_spill(upstream, up).await?;
                copy_rest(client, upstream, up, counters.to_upstream).await
            })
            .await;
            return EndReason::UpstreamClosed;
        }
        Stop::Error(e) => return EndReason::Error(e.kind()),
    };
    let Some(close) = close else {
        return reason;
    };
    let _ = tokio::time::timeout(LINGER, async {
        // Toward the client: what was already read, then at a frame boundary the notice (when
        // configured) and the close frame, in one write.
        flush_spill(client, down).await?;
        if down.frames.at_boundary() {
            let mut bytes = notice.map_or_else(Vec::new, |t| notice::frame(t, &close));
            bytes.extend_from_slice(&frames::close_frame(close.code, &close.reason));
            client.write_all(&bytes).await?;
            client.flush().await?;
        }
        // Toward the agent: a masked close frame when its direction is between frames.
        if up.cut.is_none() {
            flush_spill(upstream, up).await?;
            if up.frames.at_boundary() {
                let mask = *uuid::Uuid::new_v4().as_bytes();
                let frame = frames::masked_close_frame(
                    close.code,
                    &close.reason,
                    [mask[0], mask[1], mask[2], mask[3]],
                );
                upstream.write_all(&frame).await?;
                upstream.flush().await?;
            }
        }
        upstream.shutdown().await?;
        client.shutdown().await?;
        // Wait for the client's close reply (or its end), discarding what it still sends.
        discard_until_close(client, &mut up.frames).await
    })
    .await;
    reason
}

async fn flush_spill<D: AsyncWrite + Unpin>(dst: &mut D, half: &mut Half) -> io::Result<()> {
    if let Some(spill) = half.spill.take() {
        dst.write_all(&spill.buf[spill.at..]).await?;
        dst.flush().await?;
    }
    Ok(())
}

/// Copies the rest of `src` to `dst` (after the other direction ended), counting the bytes, as the
/// main loop does: through the worker's scratch buffer, so the closing steps allocate nothing.
/// Frames are still followed (without limits: the peer has ended its side); a broken sequence
/// ends the copy. At `src`'s end both directions are over and nothing is left unread on `dst`,
/// so the relay's return closes `dst` with a FIN: no half-close first (one syscall less per tunnel).
async fn copy_rest<S, D>(
    src: &mut S,
    dst: &mut D,
    half: &mut Half,
    counter: &IntCounter,
) -> io::Result<()>
where
    S: AsyncRead + Unpin,
    D: AsyncWrite + Unpin,
{
    if half.eof {
        return Ok(());
    }
    let mut active = false;
    poll_fn(|cx| half.poll_move(cx, src, dst, &Limits::NONE, counter, &mut active))
        .await
        .map(|_| ())
}

/// Reads and drops what the client still sends until its close frame has passed, or its end.
async fn discard_until_close<S: AsyncRead + Unpin>(
    src: &mut S,
    frames: &mut FrameTracker,
) -> io::Result<()> {
    let mut buf = [0u8; HELD_ROOM + 512];
    while !(frames.saw_close() && frames.at_boundary()) {
        let n = src.read(&mut buf[HELD_ROOM..]).await?;
        if n == 0 {
            break;
        }
        let chunk = frames.with_held(&mut buf, n);
        if let Advance::Cut { .. } = frames.advance(chunk, &Limits::NONE) {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::tunnels::{TunnelInfo, Tunnels};
    use tokio::io::duplex;

    fn lease(tunnels: &std::sync::Arc<Tunnels>) -> TunnelLease {
        tunnels.open(TunnelInfo {
            user_id: 1,
            iat: None,
            exp: None,
            jti: None,
            request_id: "r".into(),
            opened_at: 0,
        })
    }

    fn counters() -> (IntCounter, IntCounter) {
        (
            IntCounter::new("a", "a").unwrap(),
            IntCounter::new("b", "b").unwrap(),
        )
    }

    /// A masked client frame with `payload`.
    fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![0x80 | opcode];
        assert!(payload.len() < 126);
        f.push(0x80 | payload.len() as u8);
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(payload);
        f
    }

    fn config() -> RelayConfig<'static> {
        RelayConfig {
            to_upstream: Limits {
                max_frame: 100,
                max_message: 100,
                reserved_bits: false,
            },
            idle: Duration::from_secs(30),
            notice: None,
        }
    }

    #[tokio::test]
    async fn with_a_notice_the_client_reads_why_before_the_close_frame() {
        let (client_edge, mut client) = duplex(1024);
        let (upstream_edge, _agent) = duplex(1024);
        let tunnels = Tunnels::new();
        let mut lease = lease(&tunnels);
        let (a, b) = counters();
        let template = r#"{"type":"error","content":"{message}"}"#;
        let task = tokio::spawn({
            let tunnels = tunnels.clone();
            async move {
                let _keep = tunnels;
                let config = RelayConfig {
                    notice: Some(template),
                    ..config()
                };
                let counters = RelayCounters {
                    to_upstream: &a,
                    to_client: &b,
                };
                relay(
                    client_edge,
                    upstream_edge,
                    Vec::new(),
                    &mut lease,
                    config,
                    counters,
                )
                .await
            }
        });
        let close = CloseRequest::new(1008, "token_revoked");
        assert_eq!(tunnels.close_all(close.clone()), 1);
        let mut want = notice::frame(template, &close);
        want.extend_from_slice(&frames::close_frame(1008, "token_revoked"));
        let mut got = vec![0u8; want.len()];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
        assert!(String::from_utf8_lossy(&got).contains("Your session was revoked; sign in again."));
        drop(client);
        assert_eq!(task.await.unwrap().reason, EndReason::Closed(close));
    }

    #[tokio::test]
    async fn bytes_pass_both_ways_and_a_registry_close_sends_close_frames() {
        let (client_edge, mut client) = duplex(64);
        let (upstream_edge, mut agent) = duplex(64);
        let tunnels = Tunnels::new();
        let mut lease = lease(&tunnels);
        let (a, b) = counters();
        let task = tokio::spawn({
            let tunnels = tunnels.clone();
            async move {
                let _keep = tunnels;
                relay(
                    client_edge,
                    upstream_edge,
                    vec![0x81, 1, b'x'],
                    &mut lease,
                    config(),
                    RelayCounters {
                        to_upstream: &a,
                        to_client: &b,
                    },
                )
                .await
            }
        });
        let mut first = [0u8; 3];
        client.read_exact(&mut first).await.unwrap();
        assert_eq!(
            first,
            [0x81, 1, b'x'],
            "bytes after the 101 reach the client first"
        );
        let hello = client_frame(1, b"hello");
        client.write_all(&hello).await.unwrap();
        let mut got = vec![0u8; hello.len()];
        agent.read_exact(&mut got).await.unwrap();
        assert_eq!(got, hello);

        assert_eq!(tunnels.close_all(CloseRequest::new(4001, "revoked")), 1);
        let mut frame = vec![0u8; 11];
        client.read_exact(&mut frame).await.unwrap();
        assert_eq!(frame, frames::close_frame(4001, "revoked"));
        let mut to_agent = vec![0u8; 15];
        agent.read_exact(&mut to_agent).await.unwrap();
        assert_eq!(to_agent[0..2], [0x88, 0x80 | 9]);
        drop(client);
        let end = task.await.unwrap();
        assert_eq!(
            end.reason,
            EndReason::Closed(CloseRequest::new(4001, "revoked"))
        );
        assert_eq!(end.to_upstream, hello.len() as u64);
        assert_eq!(end.to_client, 3);
        assert!(tunnels.len() == 0);
    }

    #[tokio::test]
    async fn a_too_big_frame_is_not_forwarded_and_closes_with_1009() {
        let (client_edge, mut client) = duplex(1024);
        let (upstream_edge, mut agent) = duplex(1024);
        let tunnels = Tunnels::new();
        let mut lease = lease(&tunnels);
        let (a, b) = counters();
        let ok = client_frame(2, &[7; 10]);
        let mut big = vec![0x82, 0x80 | 126, 0, 200, 0, 0, 0, 0];
        big.extend_from_slice(&[1; 200]);
        client.write_all(&[ok.clone(), big].concat()).await.unwrap();
        let end = relay(
            client_edge,
            upstream_edge,
            Vec::new(),
            &mut lease,
            config(),
            RelayCounters {
                to_upstream: &a,
                to_client: &b,
            },
        );
        let (end, _) = tokio::join!(end, async {
            let mut frame = vec![0u8; 4];
            client.read_exact(&mut frame).await.unwrap();
            assert_eq!(&frame, &[0x88, 17, 0x03, 0xF1]);
            drop(client);
        });
        assert_eq!(end.reason, EndReason::Violation(Violation::TooBig));
        assert_eq!(end.to_upstream, ok.len() as u64);
        let mut seen = Vec::new();
        agent.read_to_end(&mut seen).await.unwrap();
        assert!(
            seen.starts_with(&ok),
            "the frame before the limit went through"
        );
        assert_eq!(
            seen.len(),
            ok.len(),
            "nothing of the big frame reached the agent (no close: mid-stream)"
        );
    }

    #[tokio::test]
    async fn a_slow_reader_holds_back_the_writer_with_a_bounded_spill() {
        let (client_edge, mut client) = duplex(4096);
        let (upstream_edge, mut agent) = duplex(4096);
        let tunnels = Tunnels::new();
        let mut lease = lease(&tunnels);
        let (a, b) = counters();
        let total = 1 << 20;
        let writer = tokio::spawn(async move {
            let chunk = vec![0x42u8; 8192];
            let mut sent = 0;
            // Raw bytes of one huge unmasked binary frame from the agent.
            let mut header = vec![0x82, 127];
            header.extend_from_slice(&(total as u64).to_be_bytes());
            agent.write_all(&header).await.unwrap();
            while sent < total {
                agent.write_all(&chunk).await.unwrap();
                sent += chunk.len();
            }
            agent
        });
        let relay = relay(
            client_edge,
            upstream_edge,
            Vec::new(),
            &mut lease,
            config(),
            RelayCounters {
                to_upstream: &a,
                to_client: &b,
            },
        );
        let reader = async {
            let mut got = 0usize;
            let mut buf = vec![0u8; 1000];
            while got < total + 10 {
                let n = client.read(&mut buf).await.unwrap();
                got += n;
                tokio::task::yield_now().await;
            }
            drop(client);
            got
        };
        let (end, got) = tokio::join!(relay, reader);
        assert_eq!(got, total + 10);
        assert_eq!(end.to_client, (total + 10) as u64);
        drop(writer.await.unwrap());
    }
}
