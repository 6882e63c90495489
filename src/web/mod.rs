//! Browser adapters: the only code that touches JS or web APIs. Each port of
//! the engine gets its browser implementation here, and [`bindings`] exposes
//! the `ChatClient` class to JS.

#[cfg(feature = "bench")]
pub mod bench;
pub mod bindings;
pub mod driver;
pub mod fatal;
pub mod http;
pub mod idb;
pub mod kek;
pub mod tabs;
pub mod timers;
pub mod ws;

use crate::core::model::Millis;
use crate::ports::Clock;

/// The browser's wall clock (`Date.now()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct BrowserClock;

impl Clock for BrowserClock {
    fn now(&self) -> Millis {
        js_sys::Date::now() as Millis
    }
}
