//! WebSocket handshakes for tests: a client handshake with extra request headers, bounded in time,
//! that hands back the refusal (status, body, headers) when the server answers with an HTTP error.

use std::time::Duration;

use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderMap, HeaderName};
use tokio_tungstenite::tungstenite::Error;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// An upgraded client socket.
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A refused handshake: the HTTP status (0 when no HTTP answer came), the body and the headers.
pub type Refusal = (u16, String, HeaderMap);

/// Connects to `url` with `headers` added to the request (repeated names are all sent); panics when
/// the handshake takes longer than `limit`.
pub async fn handshake(
    url: &str,
    headers: &[(&str, &str)],
    limit: Duration,
) -> Result<Socket, Refusal> {
    let mut req = url.into_client_request().expect("a ws:// URL");
    for (name, value) in headers {
        req.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("a header name"),
            value.parse().expect("a header value"),
        );
    }
    match tokio::time::timeout(limit, tokio_tungstenite::connect_async(req))
        .await
        .expect("handshake timed out")
    {
        Ok((socket, _)) => Ok(socket),
        Err(Error::Http(resp)) => {
            let body = resp
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((resp.status().as_u16(), body, resp.headers().clone()))
        }
        Err(e) => Err((0, e.to_string(), HeaderMap::new())),
    }
}
