//! Ports for the binaries the tests start, held by the test for its whole life, and listening
//! sockets on them handed to each child as inherited descriptors (systemd's socket activation,
//! read by [`shared::listen`]). No port is ever released for another process to take between
//! the test learning it and a child using it:
//!
//! - a [`Port`] is a socket bound (port 0, the kernel picks) with `SO_REUSEPORT` that never
//!   listens: it holds the port, and a connection to the port with no child listening is refused,
//!   as to a stopped service;
//! - [`Port::listener`] opens a listening socket on the same port (same owner, `SO_REUSEPORT`)
//!   for [`hand_over`]; the test drops its copy once the child is started, so the socket lives
//!   exactly as long as the child. A restarted child gets a new one on the same port.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;

use socket2::{Domain, Socket, Type};

/// A loopback port held for the life of the value (see the module documentation).
pub struct Port {
    _held: Socket,
    pub port: u16,
}

fn reusable() -> Socket {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("a TCP socket");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    socket
}

impl Port {
    pub fn new() -> Port {
        let held = reusable();
        let any: SocketAddr = "127.0.0.1:0".parse().expect("an address");
        held.bind(&any.into()).expect("binding 127.0.0.1:0");
        let port = held
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .expect("a bound address")
            .port();
        Port { _held: held, port }
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A listening socket on this port, to hand to a child ([`hand_over`]).
    pub fn listener(&self) -> TcpListener {
        let socket = reusable();
        socket
            .bind(&self.addr().into())
            .expect("binding a held port again");
        socket.listen(1024).expect("listen");
        socket.into()
    }
}

impl Default for Port {
    fn default() -> Self {
        Port::new()
    }
}

/// Hands `listeners` to the child `cmd` will start, as descriptors 3, 4, ... named in
/// `LISTEN_FDNAMES` (`LISTEN_FDS` says how many). Call it after any `env_clear`. The caller's
/// sockets stay open until it drops them (after `spawn`).
pub fn hand_over(cmd: &mut Command, listeners: &[(&str, &TcpListener)]) {
    let names: Vec<&str> = listeners.iter().map(|(n, _)| *n).collect();
    let fds: Vec<RawFd> = listeners.iter().map(|(_, l)| l.as_raw_fd()).collect();
    cmd.env("LISTEN_FDS", fds.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID");
    // SAFETY: between fork and exec the closure calls only fcntl and dup2, which are
    // async-signal-safe, on descriptors the parent holds open until `spawn` returns.
    unsafe {
        cmd.pre_exec(move || {
            // First out of the way (above any target number), then into place: a source that
            // already sits on a target number is never overwritten before it is copied.
            let mut moved = Vec::with_capacity(fds.len());
            for &fd in &fds {
                let high = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                if high < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                moved.push(high);
            }
            for (i, &high) in moved.iter().enumerate() {
                // dup2 leaves close-on-exec off on the copy: the child inherits it.
                if libc::dup2(high, 3 + i as RawFd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::ErrorKind;
    use std::net::TcpStream;

    #[test]
    fn a_held_port_refuses_until_a_listener_opens_and_again_after_it_closes() {
        let port = Port::new();
        let refused = TcpStream::connect(port.addr()).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        let listener = port.listener();
        let _client = TcpStream::connect(port.addr()).expect("the listener accepts");
        drop(listener);
        let refused = TcpStream::connect(port.addr()).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::ConnectionRefused);
        let _again = port.listener();
        TcpStream::connect(port.addr()).expect("a second listener on the same port");
    }

    #[test]
    fn nobody_else_binds_a_held_port() {
        let port = Port::new();
        assert!(TcpListener::bind(port.addr()).is_err());
    }
}
