//! The client's connection as the edge holds it: the accepted TCP socket itself, until a request
//! needs pingora's HTTP/1 codec and it becomes pingora's stream.
//!
//! A WebSocket handshake the edge reads itself (nearly all of them) never builds pingora's stream:
//! the tunnel relays the accepted socket as it is. pingora's own stream type keeps its socket for
//! good (private fields, closed on drop), so taking it out again after the 101 cost a `dup`, an
//! epoll registration and removal and pingora's closing checks per tunnel.
//!
//! A request served by pingora's codec (the lean path, pingora-proxy, the edge's own refusals)
//! gets a [`PingoraSocket`]: the socket behind a small write buffer, as pingora's listener gives
//! (one MSS, so a head and a small body leave in one segment), with the peer's address in its
//! socket digest. It implements pingora's `IO` trait, and gives its socket back
//! ([`into_tcp`]) when a handshake that went through pingora's codec becomes a tunnel.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use async_trait::async_trait;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter, ReadBuf};
use tokio::net::TcpStream;

/// The write buffer of a socket pingora's codec writes to (pingora's listener default: one MSS).
const WRITE_BUFFER_BYTES: usize = 1460;

/// A client connection.
pub enum ClientSocket {
    /// The socket as accepted, with the peer's address as `accept` gave it.
    Tcp(TcpStream, SocketAddr),
    /// pingora's stream of the connection (its digest holds the peer's address).
    Pingora(Stream),
}

impl ClientSocket {
    /// The client's IP address (no system call: it was kept from `accept`).
    pub fn peer_ip(&self) -> Option<IpAddr> {
        match self {
            ClientSocket::Tcp(_, peer) => Some(peer.ip()),
            ClientSocket::Pingora(stream) => stream_peer_ip(stream),
        }
    }

    /// pingora's stream of this connection, built as pingora's listener builds one.
    pub fn into_pingora(self) -> Stream {
        match self {
            ClientSocket::Pingora(stream) => stream,
            ClientSocket::Tcp(socket, peer) => pingora_stream(socket, peer),
        }
    }

    /// The plain socket, for a tunnel: as accepted, or given back by its [`PingoraSocket`]
    /// ([`into_tcp`]); otherwise pingora's stream as it is.
    pub fn into_tcp(self) -> Result<TcpStream, Stream> {
        match self {
            ClientSocket::Tcp(socket, _) => Ok(socket),
            ClientSocket::Pingora(stream) => into_tcp(stream),
        }
    }
}

/// pingora's stream for an accepted socket.
pub fn pingora_stream(socket: TcpStream, peer: SocketAddr) -> Stream {
    Box::new(PingoraSocket::new(socket, peer))
}

/// The socket of pingora's stream, when it is a [`PingoraSocket`] with nothing left unwritten;
/// otherwise the stream back.
pub fn into_tcp(stream: Stream) -> Result<TcpStream, Stream> {
    if !stream
        .as_any()
        .downcast_ref::<PingoraSocket>()
        .is_some_and(|s| s.io.buffer().is_empty())
    {
        return Err(stream);
    }
    match stream.into_any().downcast::<PingoraSocket>() {
        Ok(socket) => Ok(socket.io.into_inner()),
        // Not reached: the type was checked above.
        Err(_) => unreachable!("checked to be a PingoraSocket"),
    }
}

/// An accepted socket as pingora's codec uses it (pingora's `IO` trait).
#[derive(Debug)]
pub struct PingoraSocket {
    io: BufWriter<TcpStream>,
    digest: Arc<SocketDigest>,
    established: SystemTime,
}

impl PingoraSocket {
    fn new(socket: TcpStream, peer: SocketAddr) -> PingoraSocket {
        let digest = SocketDigest::from_raw_fd(socket.as_raw_fd());
        let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(peer)));
        PingoraSocket {
            io: BufWriter::with_capacity(WRITE_BUFFER_BYTES, socket),
            digest: Arc::new(digest),
            established: SystemTime::now(),
        }
    }
}

impl AsyncRead for PingoraSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for PingoraSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for PingoraSocket {
    async fn shutdown(&mut self) {
        let _ = AsyncWriteExt::shutdown(&mut self.io).await;
    }
}

impl UniqueID for PingoraSocket {
    fn id(&self) -> UniqueIDType {
        self.io.get_ref().as_raw_fd() as UniqueIDType
    }
}

impl Ssl for PingoraSocket {}

#[async_trait]
impl Peek for PingoraSocket {}

impl GetTimingDigest for PingoraSocket {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        vec![Some(TimingDigest {
            established_ts: self.established,
            ..TimingDigest::default()
        })]
    }
}

impl GetProxyDigest for PingoraSocket {
    fn get_proxy_digest(&self) -> Option<Arc<pingora::protocols::raw_connect::ProxyDigest>> {
        None
    }
}

impl GetSocketDigest for PingoraSocket {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        Some(self.digest.clone())
    }
}

/// The client's address as pingora's stream holds it.
pub fn stream_peer_ip(stream: &Stream) -> Option<IpAddr> {
    stream
        .get_socket_digest()
        .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()))
}

impl AsyncRead for ClientSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientSocket::Tcp(s, _) => Pin::new(s).poll_read(cx, buf),
            ClientSocket::Pingora(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientSocket::Tcp(s, _) => Pin::new(s).poll_write(cx, buf),
            ClientSocket::Pingora(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientSocket::Tcp(s, _) => Pin::new(s).poll_flush(cx),
            ClientSocket::Pingora(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientSocket::Tcp(s, _) => Pin::new(s).poll_shutdown(cx),
            ClientSocket::Pingora(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> (TcpStream, SocketAddr, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (accepted, peer) = listener.accept().await.unwrap();
        (accepted, peer, client)
    }

    #[tokio::test]
    async fn both_forms_know_the_peer_and_carry_bytes() {
        let (accepted, peer, mut client) = pair().await;
        let mut socket = ClientSocket::Tcp(accepted, peer);
        assert_eq!(socket.peer_ip(), Some(peer.ip()));
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        socket.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");

        let mut socket = ClientSocket::Pingora(socket.into_pingora());
        assert_eq!(
            socket.peer_ip(),
            Some(peer.ip()),
            "kept in pingora's digest"
        );
        socket.write_all(b"pong").await.unwrap();
        socket.flush().await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        let stream = socket.into_pingora();
        assert_eq!(stream_peer_ip(&stream), Some(peer.ip()));
        let mut back = into_tcp(stream).expect("the socket comes back");
        back.write_all(b"back").await.unwrap();
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"back");
    }

    #[tokio::test]
    async fn small_writes_wait_in_the_buffer_and_keep_the_socket_in_its_stream() {
        let (accepted, peer, mut client) = pair().await;
        let mut stream = pingora_stream(accepted, peer);
        stream.write_all(b"head").await.unwrap();
        stream.write_all(b"body").await.unwrap();
        let mut stream = into_tcp(stream).expect_err("unwritten bytes: the socket is not given up");
        stream.flush().await.unwrap();
        let mut got = [0u8; 8];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"headbody");
        assert!(into_tcp(stream).is_ok());
    }
}
