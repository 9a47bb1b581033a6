//! The client side: admitting a connection, reading its request head, choosing its door.

pub(crate) mod admission;
pub(crate) mod client_socket;
pub(crate) mod door;
pub(crate) mod head;
