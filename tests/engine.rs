//! The engine natively, on the in-memory store: what a UI would notice.
#![cfg(not(target_arch = "wasm32"))]

use std::cell::RefCell;
use std::rc::Rc;

use dovecote::core::keys::Kek;
use dovecote::core::model::{MessageStatus, UserId};
use dovecote::engine::{Client, Error, ThreadChange};
use dovecote::ports::Store;
use dovecote::testing::{ManualClock, MemoryStore};
use futures_executor::block_on;

const KEK: [u8; 32] = [7; 32];

fn open(store: &MemoryStore, user: &str) -> Result<Client<MemoryStore, ManualClock, Kek>, Error> {
    block_on(Client::open(
        store.clone(),
        ManualClock::new(1_700_000_000_000),
        Kek::from_bytes(&KEK),
        UserId::parse(user).unwrap(),
        None,
    ))
}

#[test]
fn messages_survive_a_restart_in_send_order_even_within_one_millisecond() {
    let store = MemoryStore::new();
    let client = open(&store, "alice").unwrap();
    let thread = block_on(client.create_thread("Lunch", &["bob".into()])).unwrap();
    assert_eq!(thread.title.as_deref(), Some("Lunch"));
    // The manual clock stands still: every message has the same timestamp.
    for n in 0..30 {
        block_on(client.send(thread.id, &format!("m{n}"))).unwrap();
    }
    drop(client);

    let client = open(&store, "alice").unwrap();
    let page = block_on(client.messages(thread.id, None, 100)).unwrap();
    let bodies: Vec<_> = page.iter().map(|m| m.body.clone().unwrap()).collect();
    assert_eq!(bodies, (0..30).map(|n| format!("m{n}")).collect::<Vec<_>>());
    assert!(page.iter().all(|m| m.status == MessageStatus::Pending && m.undecryptable.is_none()));
    assert_eq!(block_on(store.outbox()).unwrap().len(), 31, "one create_thread and 30 sends queued");
}

#[test]
fn a_failed_write_stores_nothing_and_tells_subscribers() {
    let store = MemoryStore::new();
    let client = open(&store, "alice").unwrap();
    let thread = block_on(client.create_thread("T", &[])).unwrap();
    let seen: Rc<RefCell<Vec<ThreadChange>>> = Rc::default();
    let seen_in = seen.clone();
    client.subscribe(thread.id, move |change| seen_in.borrow_mut().push(change.clone()));

    store.fail_next_writes(1);
    let error = block_on(client.send(thread.id, "lost?")).unwrap_err();
    assert_eq!(error.code(), "storage");
    assert_eq!(block_on(client.messages(thread.id, None, 10)).unwrap(), vec![]);
    assert_eq!(block_on(store.outbox()).unwrap().len(), 1, "only the create_thread");
    let seen = seen.borrow();
    assert_eq!(seen.len(), 2, "the local echo, then its failure");
    assert_eq!(seen[0].messages[0].status, MessageStatus::Pending);
    assert!(matches!(seen[1].messages[0].status, MessageStatus::Failed { recoverable: false, .. }));
}

#[test]
fn a_failed_thread_creation_leaves_no_thread_and_no_key() {
    let store = MemoryStore::new();
    let client = open(&store, "alice").unwrap();
    store.fail_next_writes(1);
    assert!(block_on(client.create_thread("T", &[])).is_err());
    assert!(block_on(store.keys()).unwrap().is_empty());
    assert!(block_on(client.threads()).unwrap().is_empty());
}

#[test]
fn another_user_cannot_open_the_database_and_a_closed_client_refuses_calls() {
    let store = MemoryStore::new();
    let client = open(&store, "alice").unwrap();
    let thread = block_on(client.create_thread("T", &[])).unwrap();
    assert_eq!(open(&store, "mallory").err().unwrap().code(), "wrong_user");
    client.close();
    assert_eq!(block_on(client.send(thread.id, "x")).unwrap_err().code(), "closed");
    assert_eq!(block_on(client.threads()).unwrap_err().code(), "closed");
}

#[test]
fn bodies_and_titles_are_sealed_at_rest_and_open_with_the_right_key_only() {
    let store = MemoryStore::new();
    let client = open(&store, "alice").unwrap();
    let thread = block_on(client.create_thread("Secret plans", &[])).unwrap();
    block_on(client.send(thread.id, "the canary sings")).unwrap();
    let stored = format!("{:?}{:?}", block_on(store.threads()).unwrap(), block_on(store.outbox()).unwrap());
    assert!(!stored.contains("canary") && !stored.contains("Secret"));

    // The same data under another device key: nothing opens, nothing crashes.
    let other = block_on(Client::open(
        store.clone(),
        ManualClock::new(0),
        Kek::from_bytes(&[9; 32]),
        UserId::parse("alice").unwrap(),
        None,
    ))
    .unwrap();
    let threads = block_on(other.threads()).unwrap();
    assert_eq!((threads[0].title.clone(), threads[0].undecryptable), (None, Some("key_missing")));
    let page = block_on(other.messages(thread.id, None, 10)).unwrap();
    assert_eq!((page[0].body.clone(), page[0].undecryptable), (None, Some("key_missing")));
}
