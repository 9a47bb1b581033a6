//! Sections whose settings one part of the edge reads alone: the connection caps (the accept
//! stage), the tunnels' frame limits and the way a WebSocket handshake is refused.

/// The `[connections]` section.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectionsConfig {
    /// Time a client has to send a whole request head (request line and headers), in seconds.
    pub header_timeout_secs: u64,
    /// Open connections one client IP may hold (the TCP peer; trusted proxies are exempt).
    pub max_per_ip: usize,
    /// Open client connections in total; 0 = derived from the file limit (half of it, less a
    /// reserve, since every tunnel also holds an upstream connection).
    pub max_total: usize,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            header_timeout_secs: 10,
            max_per_ip: 256,
            max_total: 0,
        }
    }
}

/// The `[websocket]` section: limits of the tunnels.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Largest frame payload a client may send toward the agent (bytes); over it: close 1009.
    pub max_frame_bytes: u64,
    /// Largest message (all its fragments) a client may send toward the agent; over it: close 1009.
    pub max_message_bytes: u64,
    /// Forward the client's `Sec-WebSocket-Extensions` (e.g. `permessage-deflate`). Off by default:
    /// the edge cannot read compressed frames, so its limits would count compressed bytes; with it
    /// off, the offer is removed from the handshake, an agent that answers with an extension
    /// anyway is refused (502), and a frame with a reserved bit set closes the tunnel (1002).
    pub allow_extensions: bool,
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        WebSocketConfig {
            max_frame_bytes: 16 << 20,
            max_message_bytes: 16 << 20,
            allow_extensions: false,
        }
    }
}

/// How the edge refuses a WebSocket handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RejectWith {
    /// An HTTP error response with the JSON body (the default).
    #[default]
    Http,
    /// A completed upgrade, then an optional text frame and a close frame.
    Close,
}
