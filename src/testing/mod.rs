//! Test support, compiled into the library so that native and browser tests
//! (and users' own tests) share it: an in-memory [`MemoryStore`], a
//! [`ManualClock`], a key wrapper with a fixed key, and the store contract
//! suite that every [`Store`](crate::ports::Store) must pass.

pub mod contract;
mod fake_server;
mod memory_store;

pub use fake_server::{FakeServer, FakeTransport, Faults, ServerLimits, ServerStats, SimRng, TransportStats};
pub use memory_store::MemoryStore;

use std::cell::Cell;

use crate::core::model::Millis;
use crate::ports::Clock;

/// A clock that moves only when told to.
#[derive(Debug, Default)]
pub struct ManualClock(Cell<Millis>);

impl ManualClock {
    /// A clock showing `now`.
    pub fn new(now: Millis) -> Self {
        ManualClock(Cell::new(now))
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Millis) {
        self.0.set(self.0.get() + by);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.get()
    }
}

/// Native clients wrap thread keys with a plain in-memory KEK.
impl crate::ports::KeyWrapper for crate::core::keys::Kek {
    async fn wrap(
        &self,
        thread: crate::core::model::ThreadId,
        key: &crate::core::keys::ThreadKey,
    ) -> Result<Vec<u8>, crate::core::keys::KeyError> {
        crate::core::keys::Kek::wrap(self, thread, key)
    }

    async fn unwrap(
        &self,
        thread: crate::core::model::ThreadId,
        key_id: crate::core::keys::KeyId,
        wrapped: &[u8],
    ) -> Result<crate::core::keys::ThreadKey, crate::core::keys::KeyError> {
        crate::core::keys::Kek::unwrap(self, thread, key_id, wrapped)
    }
}
