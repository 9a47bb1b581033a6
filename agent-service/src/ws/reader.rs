//! The reader: the client's WebSocket messages, one at a time. [`incoming`] says what a message
//! asks for (pure, tested below); [`read_loop`] does it: answers `ping` and `clear_history`,
//! queues user messages for the worker (at most `QUEUED_MESSAGES` waiting), drops a peer silent
//! for `AGENT_IDLE_TIMEOUT_SECS`.

use axum::extract::ws::{Message, WebSocket};
use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use shared::frames::{ClientFrame, ServerFrame};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::worker::Job;
use crate::chat::hub::Outbound;
use crate::state::AppState;

/// What one message from the client asks of the connection.
#[derive(Debug, PartialEq)]
pub(super) enum Incoming {
    /// The client closed, with this code (1005: a close frame without one).
    Closed(u16),
    /// A WebSocket ping or pong: nothing to do.
    Control,
    /// Not a message the protocol takes (binary, too large): an error frame goes back, and the
    /// connection goes on even if it cannot be queued.
    Refused(ServerFrame),
    /// Answered at once: `pong`, or an error for a text frame that is not a client frame.
    Reply(ServerFrame),
    /// `clear_history`: forget the session's context.
    ClearHistory,
    /// A user message for the worker.
    Message(Job),
}

/// Classifies one message; frames longer than `max_message_bytes` are refused unread.
pub(super) fn incoming(msg: Message, max_message_bytes: usize) -> Incoming {
    let text = match msg {
        Message::Text(t) => t,
        Message::Close(frame) => return Incoming::Closed(frame.map_or(1005, |f| f.code)),
        Message::Ping(_) | Message::Pong(_) => return Incoming::Control,
        Message::Binary(_) => {
            return Incoming::Refused(ServerFrame::error("Invalid message format"))
        }
    };
    if text.len() > max_message_bytes {
        return Incoming::Refused(ServerFrame::error(format!(
            "Message too large (at most {max_message_bytes} bytes)"
        )));
    }
    match ClientFrame::parse(&text) {
        Some(ClientFrame::Ping) => Incoming::Reply(ServerFrame::Pong),
        Some(ClientFrame::ClearHistory) => Incoming::ClearHistory,
        Some(ClientFrame::UserMessage { content, mode }) => {
            Incoming::Message(Job { content, mode })
        }
        None => Incoming::Reply(ServerFrame::error("Invalid message format")),
    }
}

/// A frame or message past the WebSocket layer's hard limit (see `SocketBuffers`), refused unread.
fn over_hard_limit(e: &axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    std::error::Error::source(e)
        .and_then(|inner| inner.downcast_ref::<Error>())
        .is_some_and(|inner| matches!(inner, Error::Capacity(_)))
}

/// Reads the client's frames until the socket ends, the peer is idle too long, or the connection
/// is done. Returns the close code the client sent, if it sent one.
pub(super) async fn read_loop(
    state: &AppState,
    mut stream: SplitStream<WebSocket>,
    out: &Outbound,
    session_id: &str,
    jobs: mpsc::Sender<Box<Job>>,
    done: &CancellationToken,
) -> Option<u16> {
    let idle = state.config.idle_timeout;
    loop {
        let next = tokio::select! {
            _ = done.cancelled() => return None,
            n = tokio::time::timeout(idle, stream.next()) => n,
        };
        let msg = match next {
            Err(_) => {
                tracing::info!("dropping a peer silent for {idle:?}");
                let _ = out.close(1001, "idle timeout");
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %crate::logs::chain(&e), "WebSocket read failed");
                if over_hard_limit(&e) {
                    let _ = out.close(super::CLOSE_TOO_BIG, "message too big");
                }
                return None;
            }
            Ok(Some(Ok(m))) => m,
        };
        let reply = match incoming(msg, state.config.max_message_bytes) {
            Incoming::Closed(code) => return Some(code),
            Incoming::Control => continue,
            Incoming::Refused(frame) => {
                let _ = out.send(frame);
                continue;
            }
            Incoming::Reply(frame) => Some(frame),
            // Boxed: the reader's future lives as long as the connection (see `connection`).
            Incoming::ClearHistory => match Box::pin(state.store.clear_context(session_id)).await {
                Ok(()) => Some(ServerFrame::system("Conversation history cleared")),
                Err(e) => {
                    tracing::error!(session = %session_id, error = %crate::logs::chain(&e), "clearing the history failed");
                    Some(ServerFrame::error(
                        "The history could not be cleared; try again",
                    ))
                }
            },
            Incoming::Message(job) => {
                state.metrics.messages.inc();
                match jobs.try_send(Box::new(job)) {
                    Ok(()) => None,
                    Err(_) => Some(ServerFrame::error(
                        "Too many messages waiting; try again when the current answer is done",
                    )),
                }
            }
        };
        if let Some(frame) = reply {
            if out.send(frame).is_err() {
                return None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::extract::ws::CloseFrame;

    use super::*;

    fn text(s: &str) -> Message {
        Message::Text(s.to_string().into())
    }

    fn invalid() -> ServerFrame {
        ServerFrame::error("Invalid message format")
    }

    #[test]
    fn only_a_capacity_error_is_over_the_hard_limit() {
        use tokio_tungstenite::tungstenite::error::{CapacityError, Error, ProtocolError};
        let too_long = Error::Capacity(CapacityError::MessageTooLong {
            size: 70_000,
            max_size: 66_536,
        });
        assert!(over_hard_limit(&axum::Error::new(too_long)));
        let other = Error::Protocol(ProtocolError::ResetWithoutClosingHandshake);
        assert!(!over_hard_limit(&axum::Error::new(other)));
    }

    #[test]
    fn client_frames_are_parsed() {
        assert_eq!(
            incoming(text(r#"{"type":"ping"}"#), 1000),
            Incoming::Reply(ServerFrame::Pong)
        );
        assert_eq!(
            incoming(text(r#"{"type":"clear_history"}"#), 1000),
            Incoming::ClearHistory
        );
        assert_eq!(
            incoming(text(r#"{"type":"user_message","content":"hi"}"#), 1000),
            Incoming::Message(Job {
                content: "hi".into(),
                mode: None
            })
        );
        assert_eq!(
            incoming(
                text(r#"{"type":"user_message","content":"count","mode":"sql"}"#),
                1000
            ),
            Incoming::Message(Job {
                content: "count".into(),
                mode: Some("sql".into())
            })
        );
    }

    #[test]
    fn bad_text_frames_get_an_error_reply() {
        for bad in [
            "",
            "ping",
            "{}",
            r#"{"type":"shutdown"}"#,
            r#"{"type":"user_message"}"#,
            r#"{"type":"user_message","content":7}"#,
            r#"[{"type":"ping"}]"#,
        ] {
            assert_eq!(
                incoming(text(bad), 1000),
                Incoming::Reply(invalid()),
                "{bad}"
            );
        }
    }

    #[test]
    fn binary_and_oversized_frames_are_refused() {
        assert_eq!(
            incoming(Message::Binary(vec![1, 2, 3].into()), 1000),
            Incoming::Refused(invalid())
        );
        let frame = format!(
            r#"{{"type":"user_message","content":"{}"}}"#,
            "x".repeat(100)
        );
        let len = frame.len();
        // Exactly at the limit is read; one byte over is refused unread, valid or not.
        assert!(matches!(incoming(text(&frame), len), Incoming::Message(_)));
        assert_eq!(
            incoming(text(&frame), len - 1),
            Incoming::Refused(ServerFrame::error(format!(
                "Message too large (at most {} bytes)",
                len - 1
            )))
        );
    }

    #[test]
    fn close_and_control_frames() {
        let close = Message::Close(Some(CloseFrame {
            code: 4001,
            reason: "bye".into(),
        }));
        assert_eq!(incoming(close, 1000), Incoming::Closed(4001));
        assert_eq!(incoming(Message::Close(None), 1000), Incoming::Closed(1005));
        assert_eq!(
            incoming(Message::Ping(vec![1].into()), 1000),
            Incoming::Control
        );
        assert_eq!(
            incoming(Message::Pong(vec![].into()), 1000),
            Incoming::Control
        );
    }
}
