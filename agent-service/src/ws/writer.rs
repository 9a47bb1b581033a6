//! The writer: drains one connection's bounded outbound queue to the socket, in order. It pings
//! every `AGENT_PING_INTERVAL_SECS`, closes a slow consumer (a full queue) with 1013 before anything
//! still queued, ends with the close a producer queued, and gives any write at most
//! `WRITE_TIMEOUT`.

use std::time::Duration;

use axum::extract::ws::Message;
use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{close_message, CLOSE_SLOW_CONSUMER};
use crate::chat::hub::Out;

/// How long one write to the socket may block.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes the queue to `sink` until a close (its code is returned), a slow consumer (1013), the
/// end of the connection (`done`), or a failed or stuck write (then `done` is cancelled).
pub(super) async fn write_loop<S>(
    mut sink: S,
    mut rx: mpsc::Receiver<Out>,
    slow: CancellationToken,
    done: CancellationToken,
    ping_every: Duration,
) -> Option<u16>
where
    S: Sink<Message> + Unpin,
{
    // The first ping is one period away. (`interval`'s immediate first tick still waits for the
    // timer wheel's next millisecond, and the welcome frame waited behind it on every connection.)
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
    loop {
        let msg = tokio::select! {
            biased;
            _ = slow.cancelled() => {
                tracing::warn!("closing a connection whose client does not read (outbound queue full)");
                let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(close_message(CLOSE_SLOW_CONSUMER, "slow consumer"))).await;
                done.cancel();
                return Some(CLOSE_SLOW_CONSUMER);
            }
            out = rx.recv() => match out {
                Some(Out::Frame(f)) => Message::Text(f.to_json().into()),
                Some(Out::Close(code, reason)) => {
                    let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.send(close_message(code, &reason))).await;
                    done.cancel();
                    return Some(code);
                }
                None => return None,
            },
            _ = ping.tick() => Message::Ping(Vec::new().into()),
            _ = done.cancelled() => {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, sink.close()).await;
                return None;
            }
        };
        match tokio::time::timeout(WRITE_TIMEOUT, sink.send(msg)).await {
            Ok(Ok(())) => {}
            _ => {
                done.cancel();
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use shared::frames::ServerFrame;

    use super::*;
    use crate::chat::hub::Outbound;

    /// A socket that records what is written, or fails every write.
    #[derive(Clone, Default)]
    struct Recorder {
        sent: Arc<Mutex<Vec<Message>>>,
        closed: Arc<AtomicBool>,
        broken: bool,
    }

    impl Recorder {
        fn sent(&self) -> Vec<Message> {
            self.sent.lock().unwrap().clone()
        }
    }

    impl Sink<Message> for Recorder {
        type Error = ();

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, m: Message) -> Result<(), ()> {
            if self.broken {
                return Err(());
            }
            self.sent.lock().unwrap().push(m);
            Ok(())
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), ()>> {
            self.closed.store(true, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
    }

    const NO_PING: Duration = Duration::from_secs(3600);

    fn text(frame: &ServerFrame) -> Message {
        Message::Text(frame.to_json().into())
    }

    #[tokio::test]
    async fn frames_go_out_in_order_and_a_queued_close_ends_the_writer() {
        let (out, rx, slow) = Outbound::new(8);
        let first = ServerFrame::system("one");
        out.send(first.clone()).unwrap();
        out.send(ServerFrame::Pong).unwrap();
        out.close(4002, "replaced").unwrap();
        // Nothing queued after the close is written.
        out.send(ServerFrame::system("late")).unwrap();
        let socket = Recorder::default();
        let done = CancellationToken::new();
        let code = write_loop(socket.clone(), rx, slow, done.clone(), NO_PING).await;
        assert_eq!(code, Some(4002));
        assert!(done.is_cancelled());
        assert_eq!(
            socket.sent(),
            vec![
                text(&first),
                text(&ServerFrame::Pong),
                close_message(4002, "replaced")
            ]
        );
    }

    #[tokio::test]
    async fn a_slow_consumer_is_closed_with_1013_before_what_is_queued() {
        let (out, rx, slow) = Outbound::new(2);
        out.send(ServerFrame::Pong).unwrap();
        out.send(ServerFrame::Pong).unwrap();
        // The queue is full: the connection is marked slow.
        assert!(out.send(ServerFrame::Pong).is_err());
        assert!(slow.is_cancelled());
        let socket = Recorder::default();
        let done = CancellationToken::new();
        let code = write_loop(socket.clone(), rx, slow, done.clone(), NO_PING).await;
        assert_eq!(code, Some(CLOSE_SLOW_CONSUMER));
        assert!(done.is_cancelled());
        assert_eq!(
            socket.sent(),
            vec![close_message(CLOSE_SLOW_CONSUMER, "slow consumer")]
        );
    }

    #[tokio::test]
    async fn the_end_of_the_connection_closes_the_socket_without_a_code() {
        let (_out, rx, slow) = Outbound::new(8);
        let socket = Recorder::default();
        let done = CancellationToken::new();
        done.cancel();
        assert_eq!(
            write_loop(socket.clone(), rx, slow, done, NO_PING).await,
            None
        );
        assert!(socket.closed.load(Ordering::SeqCst));
        assert!(socket.sent().is_empty());
    }

    /// The welcome is written as soon as it is queued: the writer waits for no timer first. This
    /// test never lets the runtime idle, so a timer (even one due "now", which the timer wheel
    /// fires at its next millisecond) would only fire if the yields took that long.
    #[tokio::test]
    async fn the_first_frame_waits_for_no_timer() {
        let (out, rx, slow) = Outbound::new(8);
        out.send(ServerFrame::system("welcome")).unwrap();
        let socket = Recorder::default();
        let done = CancellationToken::new();
        let writer = tokio::spawn(write_loop(
            socket.clone(),
            rx,
            slow,
            done.clone(),
            Duration::from_secs(30),
        ));
        let mut yields = 0;
        while socket.sent().is_empty() && yields < 100 {
            tokio::task::yield_now().await;
            yields += 1;
        }
        assert_eq!(socket.sent(), vec![text(&ServerFrame::system("welcome"))]);
        done.cancel();
        assert_eq!(writer.await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_failed_write_ends_the_connection() {
        let (out, rx, slow) = Outbound::new(8);
        out.send(ServerFrame::Pong).unwrap();
        let socket = Recorder {
            broken: true,
            ..Recorder::default()
        };
        let done = CancellationToken::new();
        assert_eq!(
            write_loop(socket, rx, slow, done.clone(), NO_PING).await,
            None
        );
        assert!(done.is_cancelled());
    }

    #[tokio::test]
    async fn a_closed_queue_ends_the_writer_quietly() {
        let (out, rx, slow) = Outbound::new(8);
        out.send(ServerFrame::Pong).unwrap();
        drop(out);
        let socket = Recorder::default();
        let done = CancellationToken::new();
        assert_eq!(
            write_loop(socket.clone(), rx, slow, done.clone(), NO_PING).await,
            None
        );
        assert_eq!(socket.sent(), vec![text(&ServerFrame::Pong)]);
        assert!(!done.is_cancelled());
        assert!(!socket.closed.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn an_idle_connection_is_pinged() {
        let (_out, rx, slow) = Outbound::new(8);
        let socket = Recorder::default();
        let done = CancellationToken::new();
        let writer = tokio::spawn(write_loop(
            socket.clone(),
            rx,
            slow,
            done.clone(),
            Duration::from_millis(20),
        ));
        while socket.sent().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        done.cancel();
        assert_eq!(writer.await.unwrap(), None);
        assert!(socket
            .sent()
            .iter()
            .all(|m| matches!(m, Message::Ping(p) if p.is_empty())));
    }
}
