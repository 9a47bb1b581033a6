//! Who the caller is: the token, its signature, its claims, the user row.

pub(crate) mod claims;
pub(crate) mod jwks;
pub(crate) mod jwt;
pub(crate) mod keys;
pub mod token;
pub(crate) mod users;
pub(crate) mod verified;
