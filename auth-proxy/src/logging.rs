//! Log set-up: tracing to stdout, human-readable or JSON, level from `RUST_LOG` (default `info`).
//! pingora's own `log` records are bridged into the same output.
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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(QUEUED_LINES)
        .thread_name("log-writer")
        .finish(BufWriter::with_capacity(WRITE_BUFFER, std::io::stdout()));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    let installed = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
    if installed.is_ok() {
        *WRITER.lock().unwrap_or_else(|e| e.into_inner()) = Some(guard);
    }
}

/// Writes out every line logged so far; call before the process exits. Lines logged after it
/// are dropped.
pub fn flush() {
    drop(WRITER.lock().unwrap_or_else(|e| e.into_inner()).take());
}
