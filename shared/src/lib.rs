//! Types and helpers that both services must agree on.
//!
//! - [`identity`]: the trusted identity headers the proxy injects and the HMAC assertion that proves
//!   they came from the proxy (signer and verifier).
//! - [`frames`]: the WebSocket frames of the Fluxion00Web protocol, client to server and back.
//! - [`status_log`]: the `agent_progress` frames that make up the live status log.
//! - [`error_body`]: the JSON error body every rejection uses.
//! - [`client_id`]: the grammar of the `{client_id}` in `/ws/{client_id}`, checked by both.

pub mod client_id;
pub mod error_body;
pub mod frames;
pub mod identity;
pub mod listen;
pub mod status_log;
