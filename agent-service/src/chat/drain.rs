//! The SIGTERM drain: readiness fails at once (`/ready` answers 503, `/health` says `draining`),
//! new WebSocket connections and new answers are refused, answers in progress get up to
//! `AGENT_DRAIN_GRACE_SECS` (default 20) to finish, then every open socket is closed with 1001.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::task_tracker::TrackedFuture;
use tokio_util::task::TaskTracker;

use crate::chat::hub::Hub;
use crate::metrics::Metrics;

/// The close code sockets get when the replica goes away.
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// How long closed sockets get to flush their close frames.
const CLOSE_FLUSH: Duration = Duration::from_secs(5);

pub struct Drain {
    draining: CancellationToken,
    answers: TaskTracker,
    grace: Duration,
}

impl Drain {
    pub fn new(grace: Duration) -> Drain {
        Drain {
            draining: CancellationToken::new(),
            answers: TaskTracker::new(),
            grace,
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.is_cancelled()
    }

    /// Runs one answer under the drain's watch: the drain waits for it (up to the grace).
    pub fn track<F: Future>(&self, answer: F) -> TrackedFuture<F> {
        self.answers.track_future(answer)
    }

    /// Drains: marks the replica not ready, waits for answers in progress (at most the grace),
    /// then closes every socket with 1001 and waits briefly for the close frames to go out.
    /// Returns the number of answers still running when the grace ran out.
    pub async fn run(&self, hub: &Hub, metrics: &Metrics) -> usize {
        self.draining.cancel();
        metrics.draining.set(1);
        self.answers.close();
        let running = self.answers.len();
        tracing::info!(
            answers = running,
            grace_secs = self.grace.as_secs(),
            "draining: not ready, waiting for answers in progress"
        );
        let unfinished = match tokio::time::timeout(self.grace, self.answers.wait()).await {
            Ok(()) => 0,
            Err(_) => self.answers.len(),
        };
        if unfinished > 0 {
            tracing::warn!(
                answers = unfinished,
                "drain grace over with answers still running"
            );
        }
        let closing = hub.close_all(CLOSE_GOING_AWAY, "server shutting down");
        tracing::info!(sockets = closing, "closing open sockets with 1001");
        let flushed = async {
            while hub.count() > 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let _ = tokio::time::timeout(CLOSE_FLUSH, flushed).await;
        unfinished
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::hub::{Out, Outbound};

    #[tokio::test]
    async fn waits_for_answers_then_closes_sockets() {
        let drain = std::sync::Arc::new(Drain::new(Duration::from_secs(10)));
        let hub = std::sync::Arc::new(Hub::new(4));
        let (out, mut rx, _) = Outbound::new(8);
        let conn = hub.register("c", 1, out).unwrap();
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        let answer = tokio::spawn(drain.track(async move {
            let _ = finished.await;
        }));
        let metrics = Metrics::new();
        let d = drain.clone();
        let h = hub.clone();
        let run = tokio::spawn(async move { d.run(&h, &metrics).await });
        // The drain waits for the answer: no close before it finishes.
        tokio::task::yield_now().await;
        assert!(drain.is_draining());
        assert!(rx.try_recv().is_err(), "closed before the answer finished");
        finish.send(()).unwrap();
        answer.await.unwrap();
        assert!(matches!(rx.recv().await, Some(Out::Close(1001, _))));
        hub.unregister("c", 1, conn);
        assert_eq!(run.await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_grace_bounds_the_wait() {
        let drain = Drain::new(Duration::from_secs(20));
        let _stuck = tokio::spawn(drain.track(std::future::pending::<()>()));
        let hub = Hub::new(1);
        assert_eq!(drain.run(&hub, &Metrics::new()).await, 1);
    }
}
