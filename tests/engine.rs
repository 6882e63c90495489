//! The engine natively, on the in-memory store: what a UI would notice.
#![cfg(not(target_arch = "wasm32"))]

use std::cell::RefCell;
use std::rc::Rc;

use dovecote::core::keys::{Invite, Kek, KeyId, ThreadKey, ROTATE_AFTER};
use dovecote::core::model::{MessageStatus, ThreadId, UserId};
use dovecote::engine::{Client, Error, ThreadChange};
use dovecote::ports::{Store, WrappedKey, Write};
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

/// The key id a stored message was sealed with.
fn stored_key_id(store: &MemoryStore, message: dovecote::core::model::MessageId) -> KeyId {
    block_on(store.message(message)).unwrap().unwrap().body.unwrap().key_id().unwrap()
}

fn stored_keys(store: &MemoryStore) -> Vec<WrappedKey> {
    block_on(store.keys()).unwrap()
}

#[test]
fn rotation_seals_new_messages_with_a_new_key_and_old_ones_keep_opening() {
    let store = MemoryStore::new();
    let client = open(&store, "alice").unwrap();
    let thread = block_on(client.create_thread("Rotating", &[])).unwrap();
    let before = block_on(client.send(thread.id, "before")).unwrap();
    let old_key = stored_key_id(&store, before.id);

    block_on(client.rotate_thread_key(thread.id)).unwrap();
    let after = block_on(client.send(thread.id, "after")).unwrap();
    let new_key = stored_key_id(&store, after.id);
    assert_ne!(old_key, new_key);

    let keys = stored_keys(&store);
    assert_eq!(keys.len(), 2);
    let old = keys.iter().find(|k| k.key_id == old_key).unwrap();
    let new = keys.iter().find(|k| k.key_id == new_key).unwrap();
    assert!(!old.current && new.current);
    assert!(old.encryptions >= 2, "the old key's seals (title, one message) stay counted");

    // After a restart: everything opens, and new messages still use the new key.
    drop(client);
    let client = open_at(&store, "alice", KEK, 1_800_000_000_000);
    assert_eq!(block_on(client.threads()).unwrap()[0].title.as_deref(), Some("Rotating"));
    let later = block_on(client.send(thread.id, "later")).unwrap();
    assert_eq!(stored_key_id(&store, later.id), new_key);
    let page = block_on(client.messages(thread.id, None, 10)).unwrap();
    let bodies: Vec<_> = page.iter().map(|m| m.body.as_deref().unwrap()).collect();
    assert_eq!(bodies, ["before", "after", "later"]);
    assert!(page.iter().all(|m| m.undecryptable.is_none()));
}

#[test]
fn a_failed_rotation_changes_nothing_and_an_unknown_thread_cannot_rotate() {
    let store = MemoryStore::new();
    let client = open(&store, "alice").unwrap();
    let thread = block_on(client.create_thread("T", &[])).unwrap();
    let first = block_on(client.send(thread.id, "one")).unwrap();
    let keys_before = stored_keys(&store);

    store.fail_next_writes(1);
    assert_eq!(block_on(client.rotate_thread_key(thread.id)).unwrap_err().code(), "storage");
    assert_eq!(stored_keys(&store), keys_before);
    let second = block_on(client.send(thread.id, "two")).unwrap();
    assert_eq!(stored_key_id(&store, second.id), stored_key_id(&store, first.id), "old key still current");

    let unknown = "01900000-0000-7000-8000-000000000000".parse().unwrap();
    assert_eq!(block_on(client.rotate_thread_key(unknown)).unwrap_err().code(), "not_found");
    assert_eq!(stored_keys(&store), keys_before);
}

#[test]
fn send_rotates_the_key_on_its_own_once_it_reaches_the_threshold() {
    let store = MemoryStore::new();
    let client = open(&store, "alice").unwrap();
    let thread = block_on(client.create_thread("Busy", &[])).unwrap();
    drop(client);
    // Pretend the key has sealed almost ROTATE_AFTER times: on reopen the
    // count resumes one persistence step (1024) above the stored one.
    let mut record = stored_keys(&store).remove(0);
    record.encryptions = ROTATE_AFTER - 1024 - 1;
    block_on(store.write(vec![Write::PutKey(record.clone())])).unwrap();

    let client = open(&store, "alice").unwrap();
    let last_old = block_on(client.send(thread.id, "the key's last seal")).unwrap();
    assert_eq!(stored_key_id(&store, last_old.id), record.key_id);
    assert_eq!(stored_keys(&store).len(), 1, "not rotated before the threshold");

    let first_new = block_on(client.send(thread.id, "sealed with a new key")).unwrap();
    let new_key = stored_key_id(&store, first_new.id);
    assert_ne!(new_key, record.key_id);
    let keys = stored_keys(&store);
    assert_eq!(keys.len(), 2);
    let old = keys.iter().find(|k| k.key_id == record.key_id).unwrap();
    assert!(!old.current);
    assert!(old.encryptions >= ROTATE_AFTER, "the old key's count is kept: {}", old.encryptions);
    assert!(keys.iter().find(|k| k.key_id == new_key).unwrap().current);

    let page = block_on(client.messages(thread.id, None, 10)).unwrap();
    let bodies: Vec<_> = page.iter().map(|m| m.body.as_deref().unwrap()).collect();
    assert_eq!(bodies, ["the key's last seal", "sealed with a new key"]);
}

/// A client whose clock shows `now`: messages of one thread sort by time
/// first, so a later client (or restart) needs a later clock.
fn open_at(
    store: &MemoryStore,
    user: &str,
    kek: [u8; 32],
    now: u64,
) -> Client<MemoryStore, ManualClock, Kek> {
    block_on(Client::open(
        store.clone(),
        ManualClock::new(now),
        Kek::from_bytes(&kek),
        UserId::parse(user).unwrap(),
        None,
    ))
    .unwrap()
}

/// What sync will do: copy a thread's records from one store to another.
fn copy_thread(from: &MemoryStore, to: &MemoryStore, thread: ThreadId) {
    let mut writes: Vec<Write> =
        block_on(from.thread(thread)).unwrap().into_iter().map(Write::PutThread).collect();
    let messages = block_on(from.messages_before(thread, None, 1000)).unwrap();
    writes.extend(messages.into_iter().map(Write::PutMessage));
    block_on(to.write(writes)).unwrap();
}

#[test]
fn an_invite_carries_the_thread_key_from_one_device_to_another() {
    let (a_store, b_store) = (MemoryStore::new(), MemoryStore::new());
    let alice = open_at(&a_store, "alice", [1; 32], 1_000);
    let bob = open_at(&b_store, "bob", [2; 32], 2_000);
    let thread = block_on(alice.create_thread("Shared", &["bob".into()])).unwrap();
    block_on(alice.send(thread.id, "hi bob")).unwrap();
    copy_thread(&a_store, &b_store, thread.id);

    // Without the key, bob sees the records but nothing of their contents.
    let page = block_on(bob.messages(thread.id, None, 10)).unwrap();
    assert_eq!((page[0].body.as_deref(), page[0].undecryptable), (None, Some("key_missing")));
    assert_eq!(block_on(bob.threads()).unwrap()[0].undecryptable, Some("key_missing"));
    assert_eq!(block_on(bob.send(thread.id, "x")).unwrap_err().code(), "not_found");

    let code = alice.export_thread_invite(thread.id, None).unwrap();
    assert!(code.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "base64url");
    assert_eq!(block_on(bob.import_thread_invite(&format!("#k={code}"))).unwrap(), thread.id);
    let page = block_on(bob.messages(thread.id, None, 10)).unwrap();
    assert_eq!(page[0].body.as_deref(), Some("hi bob"));
    assert_eq!(block_on(bob.threads()).unwrap()[0].title.as_deref(), Some("Shared"));

    // The key is stored wrapped by bob's device key (not in clear), survives a
    // restart, and bob's replies open for alice.
    let stored = stored_keys(&b_store);
    assert_eq!(stored.len(), 1);
    let secret = Invite::decode(&code).unwrap().key.secret_bytes().to_vec();
    assert!(!stored[0].wrapped.windows(32).any(|w| w == secret.as_slice()));
    drop(bob);
    let bob = open_at(&b_store, "bob", [2; 32], 2_000);
    block_on(bob.send(thread.id, "hi alice")).unwrap();
    copy_thread(&b_store, &a_store, thread.id);
    let page = block_on(alice.messages(thread.id, None, 10)).unwrap();
    let bodies: Vec<_> = page.iter().map(|m| m.body.as_deref().unwrap()).collect();
    assert_eq!(bodies, ["hi bob", "hi alice"]);

    // Importing the same invite again changes nothing.
    let before = stored_keys(&b_store);
    assert_eq!(block_on(bob.import_thread_invite(&code)).unwrap(), thread.id);
    assert_eq!(stored_keys(&b_store), before);
}

#[test]
fn an_invite_exports_the_current_key_and_cannot_switch_a_known_threads_sealing_key() {
    let (a_store, b_store) = (MemoryStore::new(), MemoryStore::new());
    let alice = open_at(&a_store, "alice", [1; 32], 1_000);
    let bob = open_at(&b_store, "bob", [2; 32], 2_000);
    let thread = block_on(alice.create_thread("Shared", &["bob".into()])).unwrap();
    let first = alice.export_thread_invite(thread.id, None).unwrap();
    block_on(bob.import_thread_invite(&first)).unwrap();

    block_on(alice.rotate_thread_key(thread.id)).unwrap();
    let after = block_on(alice.send(thread.id, "after rotation")).unwrap();
    let second = alice.export_thread_invite(thread.id, None).unwrap();
    assert_eq!(Invite::decode(&second).unwrap().key.id(), stored_key_id(&a_store, after.id));

    block_on(bob.import_thread_invite(&second)).unwrap();
    copy_thread(&a_store, &b_store, thread.id);
    assert_eq!(
        block_on(bob.messages(thread.id, None, 10)).unwrap()[0].body.as_deref(),
        Some("after rotation")
    );
    // Bob keeps sealing with the key he had; alice holds both, so it opens.
    let reply = block_on(bob.send(thread.id, "reply")).unwrap();
    assert_eq!(stored_key_id(&b_store, reply.id), Invite::decode(&first).unwrap().key.id());
    let bob_keys = stored_keys(&b_store);
    assert_eq!(bob_keys.iter().filter(|k| k.current).count(), 1);
}

#[test]
fn bad_and_conflicting_invites_get_typed_errors_and_write_nothing() {
    let (a_store, b_store) = (MemoryStore::new(), MemoryStore::new());
    let alice = open_at(&a_store, "alice", [1; 32], 1_000);
    let bob = open_at(&b_store, "bob", [2; 32], 2_000);
    let thread = block_on(alice.create_thread("Shared", &[])).unwrap();
    let other = block_on(bob.create_thread("Bob's own", &[])).unwrap();
    let code = alice.export_thread_invite(thread.id, None).unwrap();
    block_on(bob.import_thread_invite(&code)).unwrap();
    let keys_before = stored_keys(&b_store);

    let invite = Invite::decode(&code).unwrap();
    let key_id = invite.key.id();
    let same_id_other_bytes =
        Invite { thread_id: thread.id, key: ThreadKey::from_parts(key_id, [0xab; 32]), server_invite: None };
    let same_key_other_thread = Invite { thread_id: other.id, key: invite.key.clone(), server_invite: None };
    let cases = [
        ("key_id_conflict", same_id_other_bytes.encode()),
        ("key_id_conflict", same_key_other_thread.encode()),
        ("invite_truncated", code[..40].to_owned()),
        ("invite_truncated", String::new()),
        ("invite_encoding", "not an invite!".to_owned()),
        ("invite_version", format!("B{}", &code[1..])),
    ];
    for (expected, bad) in cases {
        let error = block_on(bob.import_thread_invite(&bad)).unwrap_err();
        assert_eq!(error.code(), expected, "{bad}: {error}");
        assert!(!error.to_string().contains(&code), "the error does not echo the key");
    }
    assert_eq!(stored_keys(&b_store), keys_before);
    // Bob's own thread still seals and opens with its own key.
    block_on(bob.send(other.id, "still mine")).unwrap();
    assert_eq!(block_on(bob.messages(other.id, None, 1)).unwrap()[0].body.as_deref(), Some("still mine"));

    let unknown = "01900000-0000-7000-8000-000000000000".parse().unwrap();
    assert_eq!(alice.export_thread_invite(unknown, None).unwrap_err().code(), "not_found");
}

#[test]
fn when_two_stored_keys_claim_to_be_current_the_newest_one_seals() {
    // Two rotations that raced (in two tabs, say) each leave a current key.
    let store = MemoryStore::new();
    let client = open(&store, "alice").unwrap();
    let thread = block_on(client.create_thread("Raced", &[])).unwrap();
    block_on(client.send(thread.id, "before")).unwrap();
    block_on(client.rotate_thread_key(thread.id)).unwrap();
    drop(client);
    // The store lists keys by id, so make the newest the one listed first:
    // "the last one read wins" would then pick the other.
    let mut keys = stored_keys(&store);
    keys.sort_by_key(|k| k.key_id.to_string());
    let (mut newest, mut other) = (keys[0].clone(), keys[1].clone());
    newest.current = true;
    other.current = true;
    newest.created_at = newest.created_at.max(other.created_at) + 1;
    block_on(store.write(vec![Write::PutKey(newest.clone()), Write::PutKey(other)])).unwrap();

    let client = open_at(&store, "alice", KEK, 1_800_000_000_000);
    let after = block_on(client.send(thread.id, "after")).unwrap();
    assert_eq!(stored_key_id(&store, after.id), newest.key_id);
    let page = block_on(client.messages(thread.id, None, 10)).unwrap();
    assert!(page.iter().all(|m| m.undecryptable.is_none()));
}
