//! The pure core: data model, protocol, outbox rules, encryption.
//! No I/O and no `JsValue` here; time and randomness come in as arguments.

pub mod base64url;
pub mod conflict;
pub mod envelope;
pub mod keys;
pub mod model;
pub mod outbox;
pub mod sync;
