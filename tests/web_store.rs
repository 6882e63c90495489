//! The IndexedDB store in headless Chrome: the store contract suite, the
//! schema migration from v1 data, another tab's upgrade, and recovery from a
//! lost connection.
#![cfg(target_arch = "wasm32")]

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::task::{Context, Waker};

use dovecote::core::model::MessageId;
use dovecote::ports::{Store, StoreError, Write};
use dovecote::testing::contract;
use dovecote::web::idb::{IdbStore, SCHEMA_VERSION};
use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

wasm_bindgen_test_configure!(run_in_browser);

/// A fresh database per test: earlier runs' leftovers are deleted first.
async fn fresh(name: &str) -> IdbStore {
    let name = format!("contract-{name}");
    delete_database(&name).await;
    IdbStore::open(&name).await.expect("database opens")
}

async fn delete_database(name: &str) {
    let factory = idb::Factory::new().unwrap();
    let _ = factory.delete(name).unwrap().await;
}

dovecote::store_contract_tests!(wasm, fresh);

#[wasm_bindgen_test]
async fn v1_data_survives_the_upgrade_to_v2_and_the_new_index_serves_it() {
    assert_eq!(SCHEMA_VERSION, 2);
    let name = "migration-v1-v2";
    delete_database(name).await;

    let v1 = IdbStore::open_at(name, 1).await.unwrap();
    assert_eq!(v1.version(), 1);
    let t = contract::thread(1);
    let messages: Vec<_> =
        (0..20).map(|n| contract::message(t.id, n, if n < 15 { Some(n + 1) } else { None })).collect();
    let mut writes = vec![Write::PutThread(t.clone())];
    writes.extend(messages.iter().cloned().map(Write::PutMessage));
    writes.push(Write::Enqueue(contract::send_mutation(&messages[19])));
    v1.write(writes).await.unwrap();
    v1.close();

    let v2 = IdbStore::open(name).await.unwrap();
    assert_eq!(v2.version(), 2);
    assert_eq!(v2.thread(t.id).await.unwrap(), Some(t.clone()));
    let page = v2.messages_before(t.id, None, 100).await.unwrap();
    assert_eq!(page.len(), 20);
    assert_eq!(
        page.iter().map(|m| m.id).collect::<Vec<MessageId>>(),
        messages.iter().rev().map(|m| m.id).collect::<Vec<_>>()
    );
    assert_eq!(v2.outbox().await.unwrap().len(), 1);

    // The index added by v2 covers the v1 records: sent ones only, by seq.
    let seqs = sent_seqs_via_v2_index(name, &t.id.to_string()).await;
    assert_eq!(seqs, (1..=15).collect::<Vec<u64>>());
    v2.close();
}

/// Reads the `by_thread_seq` index with plain JS IndexedDB calls.
async fn sent_seqs_via_v2_index(db_name: &str, thread: &str) -> Vec<u64> {
    let db = idb::Factory::new().unwrap().open(db_name, None).unwrap().await.unwrap();
    let tx = db.transaction(&["messages"], idb::TransactionMode::ReadOnly).unwrap();
    let index = tx.object_store("messages").unwrap().index("by_thread_seq").unwrap();
    let lower = js_sys::Array::of1(&thread.into());
    let upper = js_sys::Array::of2(&thread.into(), &js_sys::Array::new());
    let range = idb::KeyRange::bound(&lower, &upper, None, None).unwrap();
    let values = index.get_all(Some(idb::Query::KeyRange(range)), None).unwrap().await.unwrap();
    db.close();
    values.iter().map(|v| js_sys::Reflect::get(v, &"seq".into()).unwrap().as_f64().unwrap() as u64).collect()
}

/// Opens `name` at `version` the way a newer build in another tab would,
/// adding an object store; None if that did not finish within 3 s.
async fn upgrade_elsewhere(name: &str, version: u32) -> Option<idb::Database> {
    let mut request = idb::Factory::new().unwrap().open(name, Some(version)).unwrap();
    request.on_upgrade_needed(|event| {
        use idb::DatabaseEvent as _;
        let db = event.database().unwrap();
        db.create_object_store("added_by_a_newer_build", idb::ObjectStoreParams::new()).unwrap();
    });
    let opened: Rc<RefCell<Option<idb::Database>>> = Rc::default();
    let slot = opened.clone();
    wasm_bindgen_futures::spawn_local(async move {
        *slot.borrow_mut() = Some(request.await.unwrap());
    });
    for _ in 0..300 {
        if opened.borrow().is_some() {
            break;
        }
        sleep(10).await;
    }
    opened.take()
}

async fn sleep(ms: i32) {
    let promise = js_sys::Promise::new(&mut |resolve, _| {
        web_sys::window()
            .unwrap()
            .set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms)
            .unwrap();
    });
    wasm_bindgen_futures::JsFuture::from(promise).await.unwrap();
}

#[wasm_bindgen_test]
async fn another_tabs_upgrade_completes_and_this_store_says_reload() {
    let name = "tabs-upgrade";
    let store = fresh(name).await;
    let name = "contract-tabs-upgrade";
    let t = contract::thread(1);
    store.write(vec![Write::PutThread(t.clone())]).await.unwrap();
    let told = Rc::new(Cell::new(0));
    store.on_version_change({
        let told = told.clone();
        move || told.set(told.get() + 1)
    });

    let newer = upgrade_elsewhere(name, SCHEMA_VERSION + 1).await.expect("the upgrade is not blocked");
    assert_eq!(newer.version().unwrap(), SCHEMA_VERSION + 1);
    assert_eq!(told.get(), 1, "the UI is told once");
    assert!(store.superseded());
    assert_eq!(store.thread(t.id).await, Err(StoreError::VersionChange));
    assert_eq!(store.write(vec![Write::PutThread(t.clone())]).await, Err(StoreError::VersionChange));
    assert_eq!(store.reopened_for_test(), 0, "an old build does not reopen an upgraded database");
    assert_eq!(told.get(), 1);

    // A callback registered late hears of it at once.
    let late = Rc::new(Cell::new(false));
    store.on_version_change({
        let late = late.clone();
        move || late.set(true)
    });
    assert!(late.get());

    // The data went through the upgrade.
    let tx = newer.transaction(&["threads"], idb::TransactionMode::ReadOnly).unwrap();
    let threads = tx.object_store("threads").unwrap().get_all(None, None).unwrap().await.unwrap();
    assert_eq!(threads.len(), 1);
    newer.close();
}

#[wasm_bindgen_test]
async fn a_lost_connection_is_reopened_and_reads_and_writes_go_on() {
    let store = fresh("lost-connection").await;
    let t = contract::thread(1);
    let first = contract::message(t.id, 1, None);
    let ids = store
        .write(vec![
            Write::PutThread(t.clone()),
            Write::PutMessage(first.clone()),
            Write::Enqueue(contract::send_mutation(&first)),
        ])
        .await
        .unwrap();

    store.close_connection_for_test();
    assert_eq!(store.thread(t.id).await.unwrap(), Some(t.clone()), "a read after the loss");
    assert_eq!(store.reopened_for_test(), 1);

    store.close_connection_for_test();
    let second = contract::message(t.id, 2, None);
    let more = store
        .write(vec![Write::PutMessage(second.clone()), Write::Enqueue(contract::send_mutation(&second))])
        .await
        .expect("a write after the loss");
    assert!(more[0] > ids[0]);
    assert_eq!(store.reopened_for_test(), 2);

    for step in 0..4 {
        store.close_connection_for_test();
        match step {
            0 => assert_eq!(
                store.messages_before(t.id, None, 10).await.unwrap(),
                vec![second.clone(), first.clone()]
            ),
            1 => assert_eq!(store.outbox().await.unwrap().len(), 2, "nothing lost, nothing doubled"),
            2 => assert_eq!(store.threads().await.unwrap(), vec![t.clone()]),
            _ => assert!(store.raw_meta("absent").await.unwrap().is_none()),
        }
    }
    assert_eq!(store.reopened_for_test(), 6);
    store.close();
}

#[wasm_bindgen_test]
async fn a_write_running_when_the_connection_closes_is_kept_once() {
    let store = fresh("closed-mid-write").await;
    let t = contract::thread(1);
    let m = contract::message(t.id, 1, None);
    let mut write = Box::pin(store.write(vec![
        Write::PutThread(t.clone()),
        Write::PutMessage(m.clone()),
        Write::Enqueue(contract::send_mutation(&m)),
    ]));
    // One poll opens the transaction and issues its requests.
    assert!(write.as_mut().poll(&mut Context::from_waker(Waker::noop())).is_pending());
    store.close_connection_for_test();
    let ids = write.await.expect("a transaction that was running when the connection closed commits");
    assert_eq!(ids.len(), 1);

    assert_eq!(store.outbox().await.unwrap().len(), 1, "the write was not run twice");
    assert_eq!(store.message(m.id).await.unwrap(), Some(m));
    assert_eq!(store.reopened_for_test(), 1);
    store.close();
}

#[wasm_bindgen_test]
async fn a_store_closed_on_purpose_stays_closed() {
    let store = fresh("closed-on-purpose").await;
    store.close();
    assert!(matches!(store.threads().await, Err(StoreError::Other(_))));
    assert!(store.write(vec![Write::PutThread(contract::thread(1))]).await.is_err());
    assert_eq!(store.reopened_for_test(), 0);
}

#[wasm_bindgen_test]
async fn an_upgrade_while_the_connection_was_lost_is_found_on_reopen() {
    let store = fresh("upgraded-while-lost").await;
    let told = Rc::new(Cell::new(false));
    store.on_version_change({
        let told = told.clone();
        move || told.set(true)
    });
    // Lost first, so this store hears no versionchange.
    store.close_connection_for_test();
    let newer = upgrade_elsewhere("contract-upgraded-while-lost", SCHEMA_VERSION + 1).await.unwrap();
    newer.close();

    assert_eq!(store.threads().await, Err(StoreError::VersionChange));
    assert!(told.get() && store.superseded());
    // Nothing downgraded or recreated the database.
    let raw = idb::Factory::new().unwrap().open("contract-upgraded-while-lost", None).unwrap().await.unwrap();
    assert_eq!(raw.version().unwrap(), SCHEMA_VERSION + 1);
    raw.close();
}
