//! Pulled changes this build cannot read are set aside, not allowed to
//! stall sync: bob pulls pages that a broken proxy (or a newer server)
//! altered in flight (`FakeTransport::rewrite_pulls`), between valid
//! changes. What bob would notice: the valid messages arrive, the bad ones
//! are listed in `quarantine()` with their reasons, later messages keep
//! coming, nothing shows twice.
#![cfg(not(target_arch = "wasm32"))]

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use dovecote::core::keys::Kek;
use dovecote::core::model::{MessageId, Millis, ThreadId, UserId};
use dovecote::core::sync::ServerEvent;
use dovecote::engine::{Client, ClientEvent, SyncState, CHANGE_READER};
use dovecote::ports::{Clock, Transport};
use dovecote::testing::{FakeServer, FakeTransport, MemoryStore};
use serde_json::{json, Value};

const T0: Millis = 1_700_000_000_000;

#[derive(Clone)]
struct TestClock(Rc<Cell<Millis>>);

impl Clock for TestClock {
    fn now(&self) -> Millis {
        self.0.get()
    }
}

type TestClient = Client<MemoryStore, TestClock, Kek>;

fn run<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(out) => out,
        Poll::Pending => panic!("a future waited, with nothing to wake it"),
    }
}

fn open(store: &MemoryStore, clock: &TestClock, user: &str) -> TestClient {
    run(Client::open(
        store.clone(),
        clock.clone(),
        Kek::from_bytes(&[7; 32]),
        UserId::parse(user).unwrap(),
        None,
    ))
    .unwrap()
}

/// Alice and bob in one thread (bob joined by invite, so he holds the key).
struct World {
    clock: TestClock,
    alice: TestClient,
    alice_net: FakeTransport,
    bob_store: MemoryStore,
    bob: TestClient,
    bob_net: FakeTransport,
    thread: ThreadId,
}

impl World {
    fn new() -> Self {
        let server = FakeServer::new();
        server.set_now(T0);
        let clock = TestClock(Rc::new(Cell::new(T0)));
        let alice = open(&MemoryStore::new(), &clock, "alice");
        let alice_net = FakeTransport::new(&server, UserId::parse("alice").unwrap(), 1);
        let thread = run(alice.create_thread("Lunch", &[])).unwrap().id;
        round(&alice, &alice_net);
        let token = run(alice_net.create_invite(thread)).unwrap().token;
        let invite = alice.export_thread_invite(thread, Some(token)).unwrap();
        let bob_store = MemoryStore::new();
        let bob = open(&bob_store, &clock, "bob");
        let bob_net = FakeTransport::new(&server, UserId::parse("bob").unwrap(), 2);
        run(bob.import_thread_invite(&invite)).unwrap();
        let world = World { clock, alice, alice_net, bob_store, bob, bob_net, thread };
        world.bob_round();
        world
    }

    fn alice_sends(&self, texts: &[&str]) -> Vec<MessageId> {
        let ids = texts.iter().map(|t| run(self.alice.send(self.thread, t)).unwrap().id).collect();
        round(&self.alice, &self.alice_net);
        ids
    }

    fn bob_round(&self) {
        round(&self.bob, &self.bob_net);
    }

    /// The texts bob's device shows, oldest first.
    fn bob_sees(&self) -> Vec<String> {
        let page = run(self.bob.messages(self.thread, None, 1000)).unwrap();
        page.into_iter().map(|m| m.body.unwrap_or_else(|| format!("<{:?}>", m.undecryptable))).collect()
    }
}

fn round(client: &TestClient, net: &FakeTransport) {
    let report = run(client.sync_round(net)).unwrap();
    assert!(report.failure.is_none(), "{report:?}");
    assert_eq!(client.sync_state(), SyncState::Idle);
}

/// Rewrites, in every later pull, the change of message `id`.
fn alter(net: &FakeTransport, id: MessageId, edit: impl Fn(&mut Value) + 'static) {
    let id = id.to_string();
    net.rewrite_pulls(move |page| {
        for change in page["changes"].as_array_mut().unwrap() {
            if change["message"]["id"] == json!(id) {
                edit(change);
            }
        }
    });
}

#[test]
fn bad_changes_between_valid_ones_are_set_aside_and_sync_goes_on() {
    let w = World::new();
    let events = Rc::new(RefCell::new(Vec::new()));
    let seen = events.clone();
    w.bob.on_event(move |e| seen.borrow_mut().push(e.clone()));
    let ids = w.alice_sends(&["one", "two", "three", "four", "five"]);
    let [unknown, garbled, mistyped] = [ids[1], ids[2], ids[3]].map(|id| id.to_string());
    w.bob_net.rewrite_pulls(move |page| {
        for change in page["changes"].as_array_mut().unwrap() {
            let id = change["message"]["id"].clone();
            if id == json!(unknown) {
                change["type"] = json!("reaction"); // a type from a newer server
            } else if id == json!(garbled) {
                change["message"]["body"] = json!("%%% not base64url %%%");
            } else if id == json!(mistyped) {
                change["message"]["client_ts"] = json!("yesterday");
            }
        }
    });
    w.bob_round();
    assert_eq!(w.bob_sees(), ["one", "five"], "the valid changes of the page were applied");

    let quarantine = run(w.bob.quarantine()).unwrap();
    let reasons: Vec<&str> = quarantine.entries.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons.len(), 3, "{reasons:?}");
    assert!(reasons[0].contains("unknown variant `reaction`"), "{reasons:?}");
    assert!(reasons[1].contains("base64url"), "{reasons:?}");
    assert!(reasons[2].contains("invalid type"), "{reasons:?}");
    assert!(quarantine.entries.iter().all(|e| e.seq.is_some() && e.reader == CHANGE_READER));
    assert!(quarantine.entries.iter().all(|e| e.subject.is_none()), "none of them could be read");
    assert!(quarantine.entries[0].raw.contains("\"reaction\""), "the change is kept as it came");
    assert!(events.borrow().contains(&ClientEvent::Quarantined { count: 3 }));

    // The cursor moved past them: later messages arrive, and a reload
    // neither pulls the bad ones again nor shows anything twice.
    w.bob_net.stop_rewriting_pulls();
    w.alice_sends(&["six"]);
    let bob = open(&w.bob_store, &w.clock, "bob");
    round(&bob, &w.bob_net);
    let w = World { bob, ..w };
    assert_eq!(w.bob_sees(), ["one", "five", "six"]);
    assert_eq!(run(w.bob.quarantine()).unwrap().entries.len(), 3, "kept across the reload, once each");
}

#[test]
fn a_seq_outside_its_page_is_set_aside_and_the_cursor_is_kept() {
    let w = World::new();
    let ids = w.alice_sends(&["one", "two", "three"]);
    alter(&w.bob_net, ids[1], |change| change["seq"] = json!(u64::MAX));
    w.bob_round();
    assert_eq!(w.bob_sees(), ["one", "three"]);
    let quarantine = run(w.bob.quarantine()).unwrap();
    assert_eq!(quarantine.entries.len(), 1);
    assert!(quarantine.entries[0].reason.contains("out of order"), "{:?}", quarantine.entries[0]);
}

#[test]
fn a_later_valid_change_of_a_message_supersedes_its_quarantined_one() {
    let w = World::new();
    let ids = w.alice_sends(&["one", "two"]);
    alter(&w.bob_net, ids[1], |change| change["message"]["body"] = json!("AQID")); // 3 bytes: no envelope
    w.bob_round();
    assert_eq!(run(w.bob.quarantine()).unwrap().entries.len(), 1);
    w.bob_net.stop_rewriting_pulls();
    run(w.alice.edit(ids[1], "two, edited")).unwrap();
    round(&w.alice, &w.alice_net);
    w.bob_round();
    assert_eq!(w.bob_sees(), ["one", "two, edited"]);
    assert!(run(w.bob.quarantine()).unwrap().entries.is_empty(), "the newer state replaced it");
}

#[test]
fn a_change_an_older_build_could_not_read_is_applied_after_the_upgrade() {
    let server = FakeServer::new();
    server.set_now(T0);
    let clock = TestClock(Rc::new(Cell::new(T0)));
    let alice = open(&MemoryStore::new(), &clock, "alice");
    let alice_net = FakeTransport::new(&server, UserId::parse("alice").unwrap(), 1);
    let thread = run(alice.create_thread("Lunch", &[])).unwrap().id;
    run(alice.send(thread, "hello")).unwrap();
    round(&alice, &alice_net);

    // Alice's second device runs a build that does not know thread changes.
    let store = MemoryStore::new();
    let old = open(&store, &clock, "alice");
    old.act_as_older_reader("thread");
    round(&old, &alice_net);
    assert!(run(old.threads()).unwrap().is_empty());
    let quarantine = run(old.quarantine()).unwrap();
    assert_eq!(quarantine.entries.len(), 1);
    assert_eq!(quarantine.entries[0].reader, CHANGE_READER - 1);
    old.close();

    // The upgrade: the newer build reads it at open.
    let new = open(&store, &clock, "alice");
    let threads = run(new.threads()).unwrap();
    assert_eq!(threads.iter().map(|t| t.id).collect::<Vec<_>>(), [thread]);
    assert!(run(new.quarantine()).unwrap().entries.is_empty());
    // The pulled message of that thread was applied all along.
    assert_eq!(run(new.messages(thread, None, 10)).unwrap().len(), 1);
}

#[test]
fn unknown_fields_in_known_changes_and_events_are_ignored() {
    // Forward compatibility: a newer server may add fields anywhere.
    let w = World::new();
    w.bob_net.rewrite_pulls(|page| {
        page["served_by"] = json!("a newer server");
        for change in page["changes"].as_array_mut().unwrap() {
            change["origin"] = json!({"region": "eu"});
            if let Some(message) = change.get_mut("message") {
                message["reactions"] = json!([{"by": "carol", "emoji": "+1"}]);
            }
            if let Some(thread) = change.get_mut("thread") {
                thread["topic"] = json!(null);
            }
        }
    });
    w.alice_sends(&["one", "two"]);
    w.bob_round();
    assert_eq!(w.bob_sees(), ["one", "two"]);
    assert!(run(w.bob.quarantine()).unwrap().entries.is_empty());

    let event: ServerEvent =
        serde_json::from_str(r#"{"type": "poke", "cursor": 7, "reason": "push", "instance": 2}"#).unwrap();
    assert_eq!(event, ServerEvent::Poke { cursor: 7 });
}
