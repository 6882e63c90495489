//! The pure core: data model, protocol, outbox rules, encryption.
//! No I/O and no `JsValue` here; time and randomness come in as arguments.

pub mod envelope;
pub mod model;
pub mod sync;
pub mod keys;
