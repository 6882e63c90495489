//! dovecote: a local-first, end-to-end encrypted chat SDK for the browser.
//!
//! See DESIGN.md for the layers: [`core`] is pure Rust, [`ports`] are the
//! traits the [`engine`] runs over, [`testing`] holds fakes and the store
//! contract suite, and `web` (wasm32 only) adapts it all to the browser.

pub mod core;
pub mod engine;
pub mod ports;
pub mod testing;
#[cfg(target_arch = "wasm32")]
pub mod web;
