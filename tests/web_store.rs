//! The IndexedDB store in headless Chrome: the store contract suite, and the
//! schema migration from v1 data.
#![cfg(target_arch = "wasm32")]

use dovecote::core::model::MessageId;
use dovecote::ports::{Store, Write};
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
