//! The store contract on the in-memory store (the IndexedDB store runs the
//! same suite in headless Chrome: tests/web_store.rs).
#![cfg(not(target_arch = "wasm32"))]

use dovecote::testing::MemoryStore;

dovecote::store_contract_tests!(native, |_name: &str| async { MemoryStore::new() });
