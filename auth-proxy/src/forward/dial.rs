//! Connecting the agent for a tunnel: a non-blocking TCP connect whose outcome the first write
//! learns. tokio's `TcpStream::connect` waits for the socket to become writable and then asks it
//! for `SO_ERROR`; a refused or failed connect is just as well reported by the first `send`, which
//! the handshake makes anyway, so the query is one system call per tunnel that can go.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpStream;

/// How long connecting to the upstream may take, on every path.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Starts connecting `addr` (no delay on small writes). The connection may still be under way:
/// the first write waits for it, and fails with the connect's error (refused, unreachable...).
pub fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    socket.set_tcp_nodelay(true)?;
    TcpStream::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn the_first_write_reaches_a_listening_peer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut stream = connect(addr).unwrap();
        assert!(stream.nodelay().unwrap());
        stream.write_all(b"hello").await.unwrap();
        let (mut accepted, _) = listener.accept().await.unwrap();
        let mut got = [0u8; 5];
        accepted.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    #[tokio::test]
    async fn a_refused_connect_fails_the_first_write() {
        // A port that was just free: nothing listens there.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let written = match connect(addr) {
            Ok(mut stream) => stream.write_all(b"hello").await,
            Err(e) => Err(e),
        };
        let error = written.expect_err("nothing listens");
        assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    }
}
