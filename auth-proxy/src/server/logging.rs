//! Log set-up: tracing to stdout, human-readable or JSON, level from `RUST_LOG` (default `info`).
//! pingora's own `log` records are bridged into the same output.
//!
//! No level may log a token: pingora's debug and trace lines print raw request heads (a malformed
//! head's bytes, the whole request header) with `?token=` and `Authorization`, so lines of
//! pingora's crates below `info` are never written, whatever `RUST_LOG` asks for
//! ([`may_write`]). The edge's own lines never carry the query string or credentials.
//!
//! Lines are formatted where they happen and written by a thread of their own
//! (`tracing_appender::non_blocking`), through a buffer: under load many lines leave in one
//! `write`, and a slow reader of stdout (a full pipe) does not stall the proxy's event loop until
//! [`QUEUED_LINES`] lines wait. Nothing is dropped: past that the proxy waits for the writer.
//! The writer empties its buffer whenever no line waits, and [`flush`] writes out everything still
//! queued before the process exits.

use std::io::BufWriter;
use std::sync::Mutex;

use tracing_appender::non_blocking::{NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Lines that may wait for the writer before logging waits for it (back-pressure, not loss).
pub const QUEUED_LINES: usize = 128 * 1024;
/// Bytes gathered into one write of stdout.
const WRITE_BUFFER: usize = 64 * 1024;

/// The writer thread's guard: dropping it writes out what is queued.
static WRITER: Mutex<Option<WorkerGuard>> = Mutex::new(None);

pub fn init(format: LogFormat) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(WRITE_BUFFER, std::io::stdout()));
    let lines = tracing_subscriber::fmt::layer()
        .with_ansi(ansi)
        .with_writer(writer);
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(tracing_subscriber::filter::filter_fn(may_write));
    let installed = match format {
        LogFormat::Json => registry.with(lines.json()).try_init(),
        LogFormat::Human => registry.with(lines).try_init(),
    };
    if installed.is_ok() {
        *WRITER.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    }
}

/// False for the lines never written at any `RUST_LOG`: pingora's below `info`, which print raw
/// request heads (tokens in the query string, `Authorization`).
pub fn may_write(meta: &tracing::Metadata<'_>) -> bool {
    !(meta.target().starts_with("pingora") && *meta.level() > tracing::Level::INFO)
}

/// Writes out every line logged so far; call before the process exits. Lines logged after it
/// are dropped.
pub fn flush() {
    drop(WRITER.lock().unwrap_or_else(|e| e.into_inner()).take());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pingora_lines_below_info_are_never_written() {
        use tracing::Level;
        use tracing_subscriber::layer::SubscriberExt;
        let seen = std::sync::Arc::new(Mutex::new(Vec::<String>::new()));
        let sink = seen.clone();
        let collector = tracing_subscriber::registry()
            .with(EnvFilter::new("trace"))
            .with(tracing_subscriber::filter::filter_fn(may_write))
            .with(tracing_subscriber::fmt::layer().with_writer(move || Sink(sink.clone())));
        tracing::subscriber::with_default(collector, || {
            tracing::event!(target: "pingora_core::protocols::http::v1::server", Level::DEBUG, "GET /ws/a?token=secret-1");
            tracing::event!(target: "pingora_proxy", Level::TRACE, "Authorization: Bearer secret-2");
            tracing::event!(target: "pingora_core::server", Level::INFO, "starting");
            tracing::event!(target: "auth_proxy::connection", Level::DEBUG, "own debug line");
        });
        let text = seen.lock().unwrap().concat();
        assert!(!text.contains("secret"), "{text}");
        assert!(
            text.contains("starting") && text.contains("own debug line"),
            "{text}"
        );
    }

    struct Sink(std::sync::Arc<Mutex<Vec<String>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap()
                .push(String::from_utf8_lossy(buf).into_owned());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
