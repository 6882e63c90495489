//! The JS API (`ChatClient`) on real IndexedDB in headless Chrome: what a
//! page sees. Calls go through the same bindings JS uses.
#![cfg(target_arch = "wasm32")]

use std::cell::RefCell;
use std::rc::Rc;

use dovecote::web::bindings::ChatClient;
use js_sys::{Function, Promise, JSON};
use serde_json::{json, Value};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

fn js(value: &Value) -> JsValue {
    JSON::parse(&value.to_string()).unwrap()
}

fn rust(value: &JsValue) -> Value {
    serde_json::from_str(&String::from(JSON::stringify(value).unwrap())).unwrap()
}

async fn call(promise: Promise) -> Result<Value, JsValue> {
    JsFuture::from(promise).await.map(|v| rust(&v))
}

fn code(error: &JsValue) -> String {
    js_sys::Reflect::get(error, &"code".into()).unwrap().as_string().unwrap_or_default()
}

async fn delete_database(name: &str) {
    let _ = idb::Factory::new().unwrap().delete(name).unwrap().await;
}

async fn open(db: &str, user: &str) -> Result<ChatClient, JsValue> {
    ChatClient::open_client(js(&json!({ "dbName": db, "userId": user }))).await
}

async fn fresh(db: &str, user: &str) -> ChatClient {
    delete_database(db).await;
    open(db, user).await.expect("client opens")
}

async fn thread(client: &ChatClient, title: &str) -> String {
    let t = call(client.create_thread(js(&json!({ "title": title, "members": ["bob"] })))).await.unwrap();
    t["id"].as_str().unwrap().to_owned()
}

async fn all_messages(client: &ChatClient, thread: &str, page: u32) -> Vec<Value> {
    let mut all = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let options = match &before {
            Some(id) => json!({ "before": id, "limit": page }),
            None => json!({ "limit": page }),
        };
        let batch = call(client.messages(thread.into(), js(&options))).await.unwrap();
        let batch = batch.as_array().unwrap().clone();
        assert!(batch.len() <= page as usize);
        let Some(first) = batch.first() else { break };
        before = Some(first["id"].as_str().unwrap().to_owned());
        let mut batch = batch;
        batch.extend(all);
        all = batch;
    }
    all
}

#[wasm_bindgen_test]
async fn a_thousand_messages_survive_close_and_reopen_in_order_and_page_exactly_once() {
    let db = "client-thousand";
    let client = fresh(db, "alice").await;
    let t = thread(&client, "Lunch").await;
    for n in 0..1000 {
        let sent = call(client.send(t.clone(), format!("message {n}"))).await.unwrap();
        assert_eq!(sent["status"]["state"], "pending");
    }
    client.close();
    assert_eq!(code(&call(client.threads()).await.unwrap_err()), "closed");

    let client = open(db, "alice").await.unwrap();
    let threads = call(client.threads()).await.unwrap();
    assert_eq!(threads[0]["title"], "Lunch");
    assert_eq!(threads[0]["members"], json!(["alice", "bob"]));
    let all = all_messages(&client, &t, 64).await;
    let bodies: Vec<&str> = all.iter().map(|m| m["body"].as_str().unwrap()).collect();
    let expected: Vec<String> = (0..1000).map(|n| format!("message {n}")).collect();
    assert_eq!(bodies, expected);
    let mut ids: Vec<&str> = all.iter().map(|m| m["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 1000, "each message exactly once");
    assert!(all.iter().all(|m| m["status"]["state"] == "pending" && m["sender"] == "alice"));
    client.close();
}

#[wasm_bindgen_test]
async fn subscribers_see_each_send_at_once_until_they_unsubscribe() {
    let client = fresh("client-subscribe", "alice").await;
    let t = thread(&client, "News").await;
    let other = thread(&client, "Other").await;
    let seen: Rc<RefCell<Vec<Value>>> = Rc::default();
    let seen_in = seen.clone();
    let callback =
        Closure::<dyn Fn(JsValue)>::new(move |change: JsValue| seen_in.borrow_mut().push(rust(&change)));
    let unsubscribe =
        client.subscribe(t.clone(), callback.as_ref().unchecked_ref::<Function>().clone()).unwrap();

    let promise = client.send(t.clone(), "hello".into());
    // The local echo arrives before the send's write completes.
    assert_eq!(seen.borrow().len(), 0, "echo is not synchronous with the call itself");
    let sent = call(promise).await.unwrap();
    call(client.send(other.clone(), "elsewhere".into())).await.unwrap();
    call(client.send(t.clone(), "again".into())).await.unwrap();
    {
        let seen = seen.borrow();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0]["threadId"], json!(t));
        assert_eq!(seen[0]["messages"][0]["id"], sent["id"]);
        assert_eq!(seen[0]["messages"][0]["body"], "hello");
        assert_eq!(seen[0]["messages"][0]["status"]["state"], "pending");
        assert_eq!(seen[1]["messages"][0]["body"], "again");
    }
    unsubscribe.call0(&JsValue::NULL).unwrap();
    call(client.send(t.clone(), "unheard".into())).await.unwrap();
    assert_eq!(seen.borrow().len(), 2);
    client.close();
}

#[wasm_bindgen_test]
async fn bad_input_gets_a_typed_error_and_writes_nothing() {
    let client = fresh("client-bad-input", "alice").await;
    let t = thread(&client, "Bad").await;
    call(client.send(t.clone(), "kept".into())).await.unwrap();

    let cases: Vec<(&str, Promise)> = vec![
        ("invalid_input", client.send(t.clone(), "".into())),
        ("invalid_input", client.send(t.clone(), " \n\t ".into())),
        ("invalid_input", client.send(t.clone(), "x".repeat(64 * 1024 + 1))),
        ("not_found", client.send("01900000-0000-7000-8000-000000000000".into(), "hi".into())),
        ("invalid_input", client.send("not-an-id".into(), "hi".into())),
        ("invalid_input", client.create_thread(js(&json!({ "title": "   " })))),
        ("invalid_input", client.create_thread(js(&json!({ "title": "ok", "members": [""] })))),
        ("invalid_input", client.create_thread(js(&json!({ "name": "wrong field" })))),
        ("invalid_input", client.messages(t.clone(), js(&json!({ "limit": "ten" })))),
        ("invalid_input", client.messages(t.clone(), js(&json!({ "limt": 5 })))),
        ("invalid_input", client.edit("not-an-id".into(), "hi".into())),
        ("not_found", client.delete("01900000-0000-7000-8000-000000000000".into())),
        ("not_queued", client.cancel("01900000-0000-7000-8000-000000000000".into())),
        (
            "not_found",
            client.messages(t.clone(), js(&json!({ "before": "01900000-0000-7000-8000-000000000000" }))),
        ),
    ];
    for (expected, promise) in cases {
        let error = call(promise).await.unwrap_err();
        assert_eq!(code(&error), expected, "{error:?}");
        assert_eq!(js_sys::Reflect::get(&error, &"name".into()).unwrap(), "DovecoteError");
        assert!(error.is_instance_of::<js_sys::Error>());
    }
    // The largest allowed body is fine.
    call(client.send(t.clone(), "y".repeat(64 * 1024))).await.unwrap();

    let messages = call(client.messages(t.clone(), JsValue::UNDEFINED)).await.unwrap();
    assert_eq!(messages.as_array().unwrap().len(), 2);
    assert_eq!(messages[0]["body"], "kept");
    assert_eq!(call(client.threads()).await.unwrap().as_array().unwrap().len(), 1);

    client.close();
    for promise in [
        client.send(t.clone(), "late".into()),
        client.threads(),
        client.messages(t.clone(), JsValue::UNDEFINED),
    ] {
        assert_eq!(code(&call(promise).await.unwrap_err()), "closed");
    }
    let client = open("client-bad-input", "alice").await.unwrap();
    assert_eq!(call(client.messages(t, JsValue::UNDEFINED)).await.unwrap().as_array().unwrap().len(), 2);
    client.close();
}

#[wasm_bindgen_test]
async fn bad_open_options_and_another_users_database_are_refused() {
    delete_database("client-owner").await;
    for options in [
        json!({}),
        json!({ "dbName": "x" }),
        json!({ "dbName": "", "userId": "a" }),
        json!({ "dbName": "x", "userId": "" }),
        // A typo is refused, not silently ignored (the client would never sync).
        json!({ "dbName": "x", "userId": "a", "servrUrl": "http://127.0.0.1:1" }),
        json!({ "dbName": "x", "userId": "a", "serverUrl": "ftp://example.org" }),
        json!({ "dbName": "x", "userId": "a", "serverUrl": "not a url" }),
    ] {
        let error = ChatClient::open_client(js(&options)).await.err().expect("refused");
        assert!(
            ["invalid_input", "storage_unavailable"].contains(&code(&error).as_str()),
            "{options}: {error:?}"
        );
    }
    let client = open("client-owner", "alice").await.unwrap();
    let t = thread(&client, "Mine").await;
    client.close();
    let error = open("client-owner", "mallory").await.err().expect("refused");
    assert_eq!(code(&error), "wrong_user");
    let client = open("client-owner", "alice").await.unwrap();
    assert_eq!(call(client.threads()).await.unwrap()[0]["id"], json!(t));
    client.close();
}

#[wasm_bindgen_test]
async fn a_blocked_upgrade_and_a_newer_database_fail_with_storage_unavailable() {
    // Another tab (an older build) holds version 1 open and ignores requests to let go.
    let db = "client-blocked";
    delete_database(db).await;
    dovecote::web::idb::IdbStore::open_at(db, 1).await.unwrap().close();
    let old = idb::Factory::new().unwrap().open(db, Some(1)).unwrap().await.unwrap();
    let error = open(db, "alice").await.err().expect("blocked");
    assert_eq!(code(&error), "storage_unavailable");
    assert!(String::from(js_sys::Error::from(error).message()).contains("blocked"));
    old.close();
    let client = open(db, "alice").await.expect("opens once the old connection is gone");
    client.close();

    // A database written by a newer dovecote is not opened (nor downgraded).
    let db = "client-newer";
    delete_database(db).await;
    idb::Factory::new().unwrap().open(db, Some(99)).unwrap().await.unwrap().close();
    let error = open(db, "alice").await.err().expect("newer schema");
    assert_eq!(code(&error), "storage_unavailable");

    // A database of the same name that is not dovecote's is refused, not half-upgraded.
    let db = "client-foreign";
    delete_database(db).await;
    idb::Factory::new().unwrap().open(db, Some(1)).unwrap().await.unwrap().close();
    let error = open(db, "alice").await.err().expect("foreign database");
    assert_eq!(code(&error), "storage_unavailable");
    let raw = idb::Factory::new().unwrap().open(db, None).unwrap().await.unwrap();
    assert_eq!(raw.version().unwrap(), 1, "the failed upgrade left the version alone");
    raw.close();
}

#[wasm_bindgen_test]
async fn no_plaintext_or_key_bytes_reach_indexeddb() {
    let db = "client-canary";
    let client = fresh(db, "alice").await;
    let canary = "canary-7f3a9c-plaintext";
    let t = call(client.create_thread(js(&json!({ "title": format!("{canary} title") })))).await.unwrap();
    let t = t["id"].as_str().unwrap().to_owned();
    for n in 0..20 {
        call(client.send(t.clone(), format!("{canary} {n}"))).await.unwrap();
    }
    client.close();

    let raw = idb::Factory::new().unwrap().open(db, None).unwrap().await.unwrap();
    let mut dump = String::new();
    for store in raw.store_names() {
        let tx = raw.transaction(&[&store], idb::TransactionMode::ReadOnly).unwrap();
        for value in tx.object_store(&store).unwrap().get_all(None, None).unwrap().await.unwrap() {
            dump.push_str(&String::from(JSON::stringify(&value).unwrap()));
        }
    }
    raw.close();
    assert!(dump.len() > 2000, "the dump holds the records: {}", dump.len());
    assert!(!dump.contains("canary"), "plaintext found in IndexedDB");

    let client = open(db, "alice").await.unwrap();
    let messages = call(client.messages(t, JsValue::UNDEFINED)).await.unwrap();
    assert_eq!(messages[19]["body"], format!("{canary} 19"));
    client.close();
}
