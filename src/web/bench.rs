//! Exports for the benchmarks in `bench/` (feature `bench`, never in the
//! published package): the envelope seal and open, one message per call, as
//! the SDK does them on `send` and on reading a page.

use wasm_bindgen::prelude::*;

use crate::core::envelope::{Aad, SealKind};
use crate::core::keys::{KeyRing, ThreadKey};
use crate::core::model::{MessageId, ThreadId, UserId};

/// A key ring with one thread key, to seal and open with.
#[wasm_bindgen]
pub struct BenchCipher {
    ring: KeyRing,
    thread: ThreadId,
    message: MessageId,
    sender: UserId,
}

#[wasm_bindgen]
impl BenchCipher {
    /// A fresh random key for one thread.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Result<BenchCipher, JsError> {
        let thread = ThreadId::from_parts(1, [1; 10]);
        let mut ring = KeyRing::new();
        ring.insert(thread, ThreadKey::generate()?, 0, true)?;
        Ok(BenchCipher {
            ring,
            thread,
            message: MessageId::from_parts(2, [2; 10]),
            sender: UserId("bench".into()),
        })
    }

    /// Seals `text` and opens it again; returns the envelope's length.
    #[wasm_bindgen(js_name = sealOpen)]
    pub fn seal_open(&mut self, text: &str) -> Result<usize, JsError> {
        let aad = Aad {
            thread_id: self.thread,
            message_id: self.message.0,
            sender: &self.sender,
            kind: SealKind::Send,
        };
        let envelope = self.ring.seal(&aad, text.as_bytes())?;
        let opened = self.ring.open(&aad, &envelope)?;
        if opened.len() != text.len() {
            return Err(JsError::new("round trip changed the length"));
        }
        Ok(envelope.0.len())
    }
}
