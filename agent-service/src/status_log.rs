//! Emitting the live status log: each step becomes an `agent_progress` frame pushed onto the
//! connection's outbound queue the moment it happens. The frame schema lives in
//! `shared::status_log`; this module only builds entries and sends them.

use std::sync::Arc;

use serde_json::Value;
use shared::frames::ServerFrame;
use shared::status_log::Progress;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// What goes out on a socket: a frame, or a close with a code and reason.
#[derive(Debug, Clone)]
pub enum Out {
    Frame(ServerFrame),
    Close(u16, String),
}

/// The sending side of one connection's bounded outbound queue. A full queue means the client is
/// not reading: the connection is marked slow and will be closed (1013) rather than buffer more.
#[derive(Clone)]
pub struct Outbound {
    tx: mpsc::Sender<Out>,
    slow: CancellationToken,
}

/// The connection is gone or too slow; stop producing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl Outbound {
    pub fn new(capacity: usize) -> (Outbound, mpsc::Receiver<Out>, CancellationToken) {
        let (tx, rx) = mpsc::channel(capacity);
        let slow = CancellationToken::new();
        (
            Outbound {
                tx,
                slow: slow.clone(),
            },
            rx,
            slow,
        )
    }

    pub fn send(&self, frame: ServerFrame) -> Result<(), Gone> {
        self.push(Out::Frame(frame))
    }

    pub fn close(&self, code: u16, reason: &str) -> Result<(), Gone> {
        self.push(Out::Close(code, reason.to_string()))
    }

    fn push(&self, out: Out) -> Result<(), Gone> {
        match self.tx.try_send(out) {
            Ok(()) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.slow.cancel();
                Err(Gone)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(Gone),
        }
    }
}

/// Reports one message's steps.
pub struct Reporter {
    pub out: Outbound,
    pub metrics: Arc<Metrics>,
}

impl Reporter {
    pub fn new(out: Outbound, metrics: Arc<Metrics>) -> Reporter {
        Reporter { out, metrics }
    }

    /// Sends one entry now.
    pub fn emit(&self, p: Progress) -> Result<(), Gone> {
        self.out.send(ServerFrame::AgentProgress(p))
    }

    /// Sends an entry with `(key, value)` details.
    pub fn step(
        &self,
        stage: &str,
        message: impl Into<String>,
        details: &[(&str, Value)],
    ) -> Result<(), Gone> {
        let mut p = Progress::new(stage, message);
        for (k, v) in details {
            p = p.with(k, v.clone());
        }
        self.emit(p)
    }
}
