//! Emitting the live status log: each step becomes an `agent_progress` frame pushed onto the
//! connection's outbound queue ([`crate::chat::hub::Outbound`]) the moment it happens. The frame schema lives in
//! `shared::status_log`; this module only builds entries and sends them.

use std::sync::Arc;

use crate::chat::hub::{Gone, Outbound};
use crate::logs::AnswerTally;
use crate::metrics::Metrics;
use serde_json::Value;
use shared::frames::ServerFrame;
use shared::status_log::Progress;

/// Reports one message's steps, and tallies them for the answer's log line.
pub struct Reporter {
    pub out: Outbound,
    pub metrics: Arc<Metrics>,
    tally: std::sync::Mutex<AnswerTally>,
}

impl Reporter {
    pub fn new(out: Outbound, metrics: Arc<Metrics>) -> Reporter {
        Reporter {
            out,
            metrics,
            tally: Default::default(),
        }
    }

    /// Sends one entry now.
    pub fn emit(&self, p: Progress) -> Result<(), Gone> {
        if let Ok(mut t) = self.tally.lock() {
            t.observe(&p);
        }
        self.out.send(ServerFrame::AgentProgress(p))
    }

    /// What was reported since the last call (one answer's worth).
    pub fn take_tally(&self) -> AnswerTally {
        self.tally
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default()
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
