//! Encryption in headless Chrome, through the `ChatClient` API on real
//! IndexedDB: round trips, tampering at rest, key rotation, invites between
//! two databases, the passphrase KEK, and a scan of every object store for
//! plaintext and key bytes.
#![cfg(target_arch = "wasm32")]

use dovecote::core::base64url;
use dovecote::core::envelope::HEADER_LEN;
use dovecote::core::keys::Invite;
use dovecote::core::model::{MessageRecord, ThreadId, ThreadRecord};
use dovecote::ports::{Store, Write};
use dovecote::web::bindings::ChatClient;
use dovecote::web::idb::IdbStore;
use js_sys::{Promise, Reflect, JSON};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

fn js(value: &Value) -> JsValue {
    JSON::parse(&value.to_string()).unwrap()
}

fn rust(value: &JsValue) -> Value {
    if value.is_undefined() {
        return Value::Null;
    }
    serde_json::from_str(&String::from(JSON::stringify(value).unwrap())).unwrap()
}

async fn call(promise: Promise) -> Result<Value, JsValue> {
    JsFuture::from(promise).await.map(|v| rust(&v))
}

fn code(error: &JsValue) -> String {
    Reflect::get(error, &"code".into()).unwrap().as_string().unwrap_or_default()
}

async fn delete_database(name: &str) {
    let _ = idb::Factory::new().unwrap().delete(name).unwrap().await;
}

async fn open(db: &str, user: &str) -> Result<ChatClient, JsValue> {
    ChatClient::open_client(js(&json!({ "dbName": db, "userId": user }))).await
}

async fn open_with_passphrase(db: &str, user: &str, passphrase: &str) -> Result<ChatClient, JsValue> {
    ChatClient::open_client(js(&json!({ "dbName": db, "userId": user, "passphrase": passphrase }))).await
}

async fn fresh(db: &str, user: &str) -> ChatClient {
    delete_database(db).await;
    open(db, user).await.expect("client opens")
}

async fn thread(client: &ChatClient, title: &str) -> String {
    let t = call(client.create_thread(js(&json!({ "title": title })))).await.unwrap();
    t["id"].as_str().unwrap().to_owned()
}

async fn bodies(client: &ChatClient, thread: &str) -> Vec<Value> {
    let page = call(client.messages(thread.into(), js(&json!({ "limit": 1000 })))).await.unwrap();
    page.as_array().unwrap().iter().map(|m| m["body"].clone()).collect()
}

/// Every record of every object store, as JSON text, one line per record.
async fn dump(db: &str, stores: &[&str]) -> String {
    let raw = idb::Factory::new().unwrap().open(db, None).unwrap().await.unwrap();
    let names =
        if stores.is_empty() { raw.store_names() } else { stores.iter().map(|s| s.to_string()).collect() };
    let mut dump = String::new();
    for store in names {
        let tx = raw.transaction(&[&store], idb::TransactionMode::ReadOnly).unwrap();
        for value in tx.object_store(&store).unwrap().get_all(None, None).unwrap().await.unwrap() {
            dump.push_str(&format!("{store}: {}\n", String::from(JSON::stringify(&value).unwrap())));
        }
    }
    raw.close();
    dump
}

/// Rewrites records of an object store in place, at rest, behind the SDK's back.
async fn tamper(db: &str, store: &str, mut edit: impl FnMut(&mut Vec<Value>)) {
    let raw = idb::Factory::new().unwrap().open(db, None).unwrap().await.unwrap();
    let tx = raw.transaction(&[store], idb::TransactionMode::ReadWrite).unwrap();
    let object_store = tx.object_store(store).unwrap();
    let mut records: Vec<Value> =
        object_store.get_all(None, None).unwrap().await.unwrap().iter().map(rust).collect();
    edit(&mut records);
    for record in &records {
        object_store.put(&js(record), None).unwrap();
    }
    tx.await.unwrap();
    raw.close();
}

fn flip_byte(envelope: &str, at: usize) -> String {
    let mut bytes = base64url::decode(envelope).unwrap();
    bytes[at] ^= 0x01;
    base64url::encode(&bytes)
}

#[wasm_bindgen_test]
async fn bodies_round_trip_from_one_character_to_64_kib_in_every_unicode_plane() {
    let db = "crypto-round-trip";
    let client = fresh(db, "alice").await;
    let t = thread(&client, "Round trip").await;

    // One character from each of the 17 planes, and the awkward ones of the BMP.
    let mut planes: String =
        (0..=16u32).map(|plane| char::from_u32(plane * 0x10000 + 0x4e2d).unwrap()).collect();
    planes.push_str("\0\u{7f}\u{ad}\u{200d}\u{d7ff}\u{e000}\u{feff}\u{fffd}\u{ffff}\u{1f600}\u{10ffff}");
    let texts = vec![
        "x".to_owned(),
        " \n  padded, kept as given\t ".to_owned(),
        planes,
        "a".repeat(15),
        "b".repeat(16),
        "c".repeat(17),
        "é".repeat(500),
        "y".repeat(64 * 1024 - 1),
        "z".repeat(64 * 1024),
        // Exactly 64 KiB of 4-byte characters.
        "\u{10ffff}".repeat(16 * 1024),
    ];
    assert_eq!(texts[9].len(), 64 * 1024);
    for text in &texts {
        let sent = call(client.send(t.clone(), text.clone())).await.unwrap();
        assert_eq!(sent["body"], json!(text), "send hands back the text as given");
    }
    // Empty after trimming is refused and writes nothing.
    for empty in ["", " ", "\n\t \u{3000}"] {
        assert_eq!(code(&call(client.send(t.clone(), empty.into())).await.unwrap_err()), "invalid_input");
    }
    client.close();

    let client = open(db, "alice").await.unwrap();
    let read = bodies(&client, &t).await;
    assert_eq!(read, texts.iter().map(|t| json!(t)).collect::<Vec<_>>());
    client.close();
    let stored = dump(db, &["messages", "outbox"]).await;
    assert!(!stored.contains("padded") && !stored.contains('\u{4e2d}'));
}

#[wasm_bindgen_test]
async fn tampered_truncated_and_moved_bodies_are_undecryptable_and_their_neighbours_read_fine() {
    let db = "crypto-tamper";
    let client = fresh(db, "alice").await;
    let t = thread(&client, "Untouched title").await;
    for n in 0..12 {
        call(client.send(t.clone(), format!("message {n}"))).await.unwrap();
    }
    let other = thread(&client, "Other thread").await;
    call(client.send(other.clone(), "from the other thread".into())).await.unwrap();
    let ids: Vec<String> = call(client.messages(t.clone(), JsValue::UNDEFINED))
        .await
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    client.close();

    tamper(db, "messages", |records| {
        let find = |records: &[Value], id: &str| records.iter().position(|r| r["id"] == id).unwrap();
        let body = |records: &[Value], i: usize| records[i]["body"].as_str().unwrap().to_owned();
        let (flip, cut, moved_from, moved_to) =
            (find(records, &ids[2]), find(records, &ids[4]), find(records, &ids[6]), find(records, &ids[7]));
        // A flipped bit in the ciphertext.
        records[flip]["body"] = json!(flip_byte(&body(records, flip), HEADER_LEN + 3));
        // A body cut short: shorter than a header and a tag.
        let short = base64url::decode(&body(records, cut)).unwrap()[..HEADER_LEN + 4].to_vec();
        records[cut]["body"] = json!(base64url::encode(&short));
        // One message's envelope moved onto another.
        records[moved_to]["body"] = json!(body(records, moved_from));
        // Another thread's envelope moved here.
        let from_other = records.iter().position(|r| r["thread_id"] == json!(other)).unwrap();
        let envelope = body(records, from_other);
        let target = find(records, &ids[9]);
        records[target]["body"] = json!(envelope);
        // The same envelope, claimed by another sender.
        let spoofed = find(records, &ids[10]);
        records[spoofed]["sender"] = json!("mallory");
        // A version byte from the future, and a key id no one has.
        let future = find(records, &ids[0]);
        records[future]["body"] = json!(flip_byte(&body(records, future), 0));
        let unknown_key = find(records, &ids[11]);
        records[unknown_key]["body"] = json!(flip_byte(&body(records, unknown_key), 1));
    })
    .await;
    tamper(db, "threads", |records| {
        let i = records.iter().position(|r| r["id"] == json!(t)).unwrap();
        let title = records[i]["title"].as_str().unwrap().to_owned();
        records[i]["title"] = json!(flip_byte(&title, HEADER_LEN));
    })
    .await;

    let client = open(db, "alice").await.expect("a tampered database still opens");
    let page = call(client.messages(t.clone(), JsValue::UNDEFINED)).await.unwrap();
    let seen: Vec<(Value, Value)> =
        page.as_array().unwrap().iter().map(|m| (m["body"].clone(), m["undecryptable"].clone())).collect();
    let ok = |n: usize| (json!(format!("message {n}")), Value::Null);
    let bad = |reason: &str| (Value::Null, json!(reason));
    assert_eq!(
        seen,
        vec![
            bad("unknown_version"),
            ok(1),
            bad("tampered"),
            ok(3),
            bad("truncated"),
            ok(5),
            ok(6),
            bad("tampered"),
            ok(8),
            bad("key_missing"),
            bad("tampered"),
            bad("key_missing"),
        ]
    );
    let threads = call(client.threads()).await.unwrap();
    let threads = threads.as_array().unwrap();
    let tampered = threads.iter().find(|th| th["id"] == json!(t)).unwrap();
    assert_eq!((&tampered["title"], &tampered["undecryptable"]), (&Value::Null, &json!("tampered")));
    let intact = threads.iter().find(|th| th["id"] == json!(other)).unwrap();
    assert_eq!((&intact["title"], &intact["undecryptable"]), (&json!("Other thread"), &Value::Null));
    // The thread still works: new messages seal and open.
    call(client.send(t.clone(), "after the damage".into())).await.unwrap();
    assert_eq!(bodies(&client, &t).await.last().unwrap(), "after the damage");
    client.close();
}

#[wasm_bindgen_test]
async fn rotation_seals_new_messages_with_a_new_key_and_old_ones_keep_opening() {
    let db = "crypto-rotation";
    let client = fresh(db, "alice").await;
    let t = thread(&client, "Rotating").await;
    call(client.send(t.clone(), "before".into())).await.unwrap();
    let first_invite = call(client.export_thread_invite(t.clone())).await.unwrap();
    assert_eq!(call(client.rotate_thread_key(t.clone())).await.unwrap(), Value::Null);
    call(client.send(t.clone(), "after".into())).await.unwrap();
    let second_invite = call(client.export_thread_invite(t.clone())).await.unwrap();
    let key_id = |invite: &Value| Invite::decode(invite.as_str().unwrap()).unwrap().key.id();
    assert_ne!(key_id(&first_invite), key_id(&second_invite));

    for (bad, expected) in [("01900000-0000-7000-8000-000000000000", "not_found"), ("nope", "invalid_input")]
    {
        assert_eq!(code(&call(client.rotate_thread_key(bad.into())).await.unwrap_err()), expected);
    }
    client.close();

    // At rest: two wrapped keys, one current; each message names its key.
    let keys = dump(db, &["keys"]).await;
    assert_eq!(keys.lines().count(), 2, "{keys}");
    assert_eq!(keys.matches("\"current\":true").count(), 1);
    let store = IdbStore::open(db).await.unwrap();
    let t_id: ThreadId = t.parse().unwrap();
    let records = store.messages_before(t_id, None, 10).await.unwrap();
    let sealed_with: Vec<_> =
        records.iter().rev().map(|m| m.body.as_ref().unwrap().key_id().unwrap()).collect();
    assert_eq!(sealed_with, vec![key_id(&first_invite), key_id(&second_invite)]);
    store.close();

    let client = open(db, "alice").await.unwrap();
    call(client.send(t.clone(), "later".into())).await.unwrap();
    assert_eq!(bodies(&client, &t).await, vec![json!("before"), json!("after"), json!("later")]);
    assert_eq!(call(client.threads()).await.unwrap()[0]["title"], "Rotating");
    client.close();
}

/// What sync will do: copy a thread's records from one database to another.
async fn copy_thread(from: &str, to: &str, thread: ThreadId) -> Vec<MessageRecord> {
    let (from, to) = (IdbStore::open(from).await.unwrap(), IdbStore::open(to).await.unwrap());
    let record: ThreadRecord = from.thread(thread).await.unwrap().unwrap();
    let messages = from.messages_before(thread, None, 1000).await.unwrap();
    let mut writes = vec![Write::PutThread(record)];
    writes.extend(messages.iter().cloned().map(Write::PutMessage));
    to.write(writes).await.unwrap();
    from.close();
    to.close();
    messages
}

#[wasm_bindgen_test]
async fn an_invite_carries_a_thread_key_between_two_databases() {
    let (db_a, db_b) = ("crypto-invite-alice", "crypto-invite-bob");
    let alice = fresh(db_a, "alice").await;
    let bob = fresh(db_b, "bob").await;
    let t = call(alice.create_thread(js(&json!({ "title": "Shared", "members": ["bob"] })))).await.unwrap();
    let t = t["id"].as_str().unwrap().to_owned();
    for text in ["hello bob", "how are you?"] {
        call(alice.send(t.clone(), text.into())).await.unwrap();
    }
    let bobs_own = thread(&bob, "Bob's own").await;
    let copied = copy_thread(db_a, db_b, t.parse().unwrap()).await;
    assert_eq!(copied.len(), 2);

    // Before the invite: bob's database holds alice's envelopes, but no key.
    let page = call(bob.messages(t.clone(), JsValue::UNDEFINED)).await.unwrap();
    assert!(page
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["body"].is_null() && m["undecryptable"] == "key_missing"));
    let shared =
        |threads: &Value| threads.as_array().unwrap().iter().find(|th| th["id"] == json!(t)).cloned();
    assert_eq!(shared(&call(bob.threads()).await.unwrap()).unwrap()["undecryptable"], "key_missing");

    let invite = call(alice.export_thread_invite(t.clone())).await.unwrap();
    let invite = invite.as_str().unwrap().to_owned();
    assert!(invite.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{invite}");

    // Broken or hostile invites: typed errors, and bob's keys do not change.
    let keys_before = dump(db_b, &["keys"]).await;
    let decoded = Invite::decode(&invite).unwrap();
    let hijack =
        Invite { thread_id: bobs_own.parse().unwrap(), key: decoded.key.clone(), server_invite: None };
    let bad_invites = [
        (invite[..40].to_owned(), "invite_truncated"),
        ("not an invite!".to_owned(), "invite_encoding"),
        (format!("B{}", &invite[1..]), "invite_version"),
    ];
    for (bad, expected) in bad_invites {
        let error = call(bob.import_thread_invite(bad.clone())).await.unwrap_err();
        assert_eq!(code(&error), expected, "{bad}");
        assert_eq!(Reflect::get(&error, &"name".into()).unwrap(), "DovecoteError");
    }
    assert_eq!(dump(db_b, &["keys"]).await, keys_before);

    let imported = call(bob.import_thread_invite(format!("#k={invite}"))).await.unwrap();
    assert_eq!(imported, json!({ "threadId": t }));
    assert_eq!(bodies(&bob, &t).await, vec![json!("hello bob"), json!("how are you?")]);
    assert_eq!(shared(&call(bob.threads()).await.unwrap()).unwrap()["title"], "Shared");
    // The same key claimed for another thread is refused.
    let error = call(bob.import_thread_invite(hijack.encode())).await.unwrap_err();
    assert_eq!(code(&error), "key_id_conflict");

    // Bob's key is stored wrapped and survives a reopen; his reply opens for alice.
    bob.close();
    let bob = open(db_b, "bob").await.unwrap();
    assert_eq!(bodies(&bob, &t).await.len(), 2);
    call(bob.send(t.clone(), "fine, thanks".into())).await.unwrap();
    bob.close();
    copy_thread(db_b, db_a, t.parse().unwrap()).await;
    assert_eq!(bodies(&alice, &t).await.last().unwrap(), "fine, thanks");
    alice.close();
}

#[wasm_bindgen_test]
async fn no_plaintext_or_thread_key_bytes_in_any_object_store() {
    let db = "crypto-canary";
    let client = fresh(db, "alice").await;
    let canary = "canary-4b1d-plaintext";
    let t = thread(&client, &format!("{canary} title")).await;
    let mut invites = Vec::new();
    for round in 0..2 {
        for n in 0..10 {
            call(client.send(t.clone(), format!("{canary} {round} {n}"))).await.unwrap();
        }
        invites
            .push(call(client.export_thread_invite(t.clone())).await.unwrap().as_str().unwrap().to_owned());
        call(client.rotate_thread_key(t.clone())).await.unwrap();
    }
    // And a key that arrived by invite.
    let foreign = fresh("crypto-canary-other", "bob").await;
    let foreign_thread = thread(&foreign, "Bob's").await;
    let foreign_invite = call(foreign.export_thread_invite(foreign_thread)).await.unwrap();
    foreign.close();
    invites.push(foreign_invite.as_str().unwrap().to_owned());
    call(client.import_thread_invite(invites[2].clone())).await.unwrap();
    client.close();

    let dump = dump(db, &[]).await;
    assert_eq!(dump.lines().filter(|l| l.starts_with("keys: ")).count(), 4, "{dump}");
    assert!(dump.len() > 5000, "the dump holds the records: {}", dump.len());
    assert!(!dump.contains("canary"), "plaintext found in IndexedDB");
    for invite in &invites {
        assert!(!dump.contains(invite.as_str()), "an invite code is stored");
        let key = Invite::decode(invite).unwrap().key;
        let bytes = key.secret_bytes();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let decimal: Vec<String> = bytes.iter().map(u8::to_string).collect();
        let std_base64 = base64url::encode(bytes).replace('-', "+").replace('_', "/");
        for form in [base64url::encode(bytes), std_base64, hex.clone(), hex.to_uppercase(), decimal.join(",")]
        {
            assert!(!dump.contains(&form), "key bytes found in IndexedDB as {form}");
        }
        // The key id is public (every envelope carries it): the scan does see it.
        assert!(dump.contains(&key.id().to_string()));
    }
}

#[wasm_bindgen_test]
async fn a_passphrase_database_refuses_a_wrong_or_missing_passphrase_and_writes_nothing() {
    let db = "crypto-passphrase";
    delete_database(db).await;
    let passphrase = "correct horse battery staple";
    let client = open_with_passphrase(db, "alice", passphrase).await.expect("creates with a passphrase");
    let t = thread(&client, "Protected").await;
    call(client.send(t.clone(), "behind the passphrase".into())).await.unwrap();
    client.close();

    let meta = dump(db, &["meta"]).await;
    assert!(!meta.contains("\"kek\""), "no device key beside the passphrase: {meta}");
    let params_line = meta.lines().find(|l| l.contains("kek_params")).expect("parameters stored");
    let record: Value = serde_json::from_str(params_line.trim_start_matches("meta: ")).unwrap();
    let params: Value = serde_json::from_str(record["value"].as_str().unwrap()).unwrap();
    assert!(params["iterations"].as_u64().unwrap() >= 600_000, "{params}");
    assert_eq!((&params["kdf"], &params["hash"]), (&json!("PBKDF2"), &json!("SHA-256")));
    assert_eq!(base64url::decode(params["salt"].as_str().unwrap()).unwrap().len(), 16);
    let everything = dump(db, &[]).await;
    assert!(!everything.contains("horse") && !everything.contains("behind"));

    let before = dump(db, &[]).await;
    let error =
        open_with_passphrase(db, "alice", "correct horse battery stapler").await.err().expect("refused");
    assert_eq!(code(&error), "wrong_passphrase");
    let error = open(db, "alice").await.err().expect("refused");
    assert_eq!(code(&error), "passphrase_required");
    let error = open_with_passphrase(db, "alice", "").await.err().expect("refused");
    assert_eq!(code(&error), "invalid_input");
    assert_eq!(dump(db, &[]).await, before, "a refused open writes nothing");

    let client = open_with_passphrase(db, "alice", passphrase).await.expect("the right passphrase opens");
    assert_eq!(bodies(&client, &t).await, vec![json!("behind the passphrase")]);
    assert_eq!(call(client.threads()).await.unwrap()[0]["title"], "Protected");
    client.close();

    // A database made without a passphrase does not pretend to use one.
    let plain = "crypto-no-passphrase";
    fresh(plain, "alice").await.close();
    let before = dump(plain, &[]).await;
    let error = open_with_passphrase(plain, "alice", passphrase).await.err().expect("refused");
    assert_eq!(code(&error), "invalid_input");
    assert_eq!(dump(plain, &[]).await, before);
}
