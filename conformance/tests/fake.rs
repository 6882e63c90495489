//! The kit against the in-memory FakeServer (behind its HTTP adapter), in
//! `cargo test`: the fake the engine's simulations run on must keep to the
//! protocol text like the real server. (scripts/test runs the same kit
//! against the SQLite server and two PostgreSQL instances.)

use dovecote_conformance::fake::FakeHttp;
use dovecote_conformance::{checks, Kit};

#[test]
fn the_fake_server_passes_every_check() {
    let fake = FakeHttp::start().expect("the fake starts");
    let kit = Kit::new(vec![fake.url.clone()]);
    let failures = kit.run("", |_, _| {});
    assert!(checks().len() >= 30);
    assert!(failures.is_empty(), "the fake drifted from docs/protocol.md: {failures:#?}");
}
