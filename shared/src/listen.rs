//! Listening sockets handed over by whoever starts the process, by name, or bound here.
//!
//! The convention is systemd's socket activation (`sd_listen_fds(3)`): the sockets are open
//! descriptors from 3 on, `LISTEN_FDS` says how many and `LISTEN_FDNAMES` names them (colon
//! separated, in order). `LISTEN_PID`, when set, must be this process (the `listenfd` crate's
//! reading, which also accepts it unset). A systemd `.socket` unit with `FileDescriptorName=`
//! uses it; so do the whole-stack tests, which bind port 0 themselves and hand each child its
//! listeners, so no port is ever released and bound again by another process in between.
//!
//! auth-proxy names its listeners `edge` and `admin`; agent-service names its one `agent`.

use std::io;
use std::net::TcpListener;
use std::sync::Mutex;

use listenfd::ListenFd;

/// The environment variable naming the handed-over descriptors.
pub const NAMES_VAR: &str = "LISTEN_FDNAMES";

struct Inherited {
    fds: ListenFd,
    names: Vec<String>,
}

static INHERITED: Mutex<Option<Inherited>> = Mutex::new(None);

/// The handed-over listening socket called `name`, once (a second call gets `None`); `None`
/// when there is none by that name.
pub fn take(name: &str) -> io::Result<Option<TcpListener>> {
    let mut inherited = INHERITED.lock().unwrap_or_else(|e| e.into_inner());
    let inherited = inherited.get_or_insert_with(|| Inherited {
        fds: ListenFd::from_env(),
        names: names(std::env::var(NAMES_VAR).ok().as_deref()),
    });
    match index_of(&inherited.names, name, inherited.fds.len()) {
        Some(i) => inherited.fds.take_tcp_listener(i),
        None => Ok(None),
    }
}

/// The handed-over socket called `name`, or a new one bound to `addr` by `bind`.
pub fn take_or_bind(
    name: &str,
    addr: &str,
    bind: impl FnOnce(&str) -> io::Result<TcpListener>,
) -> io::Result<TcpListener> {
    match take(name)? {
        Some(listener) => Ok(listener),
        None => bind(addr),
    }
}

/// `LISTEN_FDNAMES`, split.
fn names(var: Option<&str>) -> Vec<String> {
    var.map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default()
}

/// The position of `name` among `count` handed-over descriptors.
fn index_of(names: &[String], name: &str, count: usize) -> Option<usize> {
    names.iter().position(|n| n == name).filter(|i| *i < count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_descriptor_positions() {
        let n = names(Some("edge:admin"));
        assert_eq!(index_of(&n, "edge", 2), Some(0));
        assert_eq!(index_of(&n, "admin", 2), Some(1));
        assert_eq!(
            index_of(&n, "admin", 1),
            None,
            "more names than descriptors"
        );
        assert_eq!(index_of(&n, "agent", 2), None);
        assert!(names(None).is_empty());
    }
}
