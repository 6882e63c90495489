//! The store contract: what every [`Store`] must do, as async test bodies.
//!
//! `store_contract_tests!` turns them into tests: natively on
//! [`MemoryStore`](super::MemoryStore) and in headless Chrome on the
//! IndexedDB store, so a behaviour only the fake has shows up as a failure.

use std::collections::HashSet;

use crate::core::envelope::Envelope;
use crate::core::model::{
    display_order, MessageId, MessageRecord, MessageStatus, Mutation, MutationState, ThreadId, ThreadRecord,
    UserId,
};
use crate::core::sync::MutationBody;
use crate::ports::{Store, Write};

/// Every contract test, by name; `store_contract_tests!` expands this list.
#[macro_export]
macro_rules! store_contract_tests {
    (native, $make:expr) => {
        $crate::store_contract_tests!(@each native, $make,
            threads_round_trip, message_upsert_replaces, pages_are_newest_first_and_complete,
            pages_stop_at_thread_boundaries, mutation_ids_increase_across_removals,
            outbox_rows_update_and_remove, write_is_all_or_nothing_in_effect, meta_round_trip,
            expect_is_compare_and_set, messages_by_id_reads_what_is_stored);
    };
    (wasm, $make:expr) => {
        $crate::store_contract_tests!(@each wasm, $make,
            threads_round_trip, message_upsert_replaces, pages_are_newest_first_and_complete,
            pages_stop_at_thread_boundaries, mutation_ids_increase_across_removals,
            outbox_rows_update_and_remove, write_is_all_or_nothing_in_effect, meta_round_trip,
            expect_is_compare_and_set, messages_by_id_reads_what_is_stored);
    };
    (@each native, $make:expr, $($name:ident),*) => {$(
        #[test]
        fn $name() {
            futures_executor::block_on(async {
                let store = ($make)(stringify!($name)).await;
                $crate::testing::contract::$name(&store).await;
            })
        }
    )*};
    (@each wasm, $make:expr, $($name:ident),*) => {$(
        #[wasm_bindgen_test::wasm_bindgen_test]
        async fn $name() {
            let store = ($make)(stringify!($name)).await;
            $crate::testing::contract::$name(&store).await;
        }
    )*};
}

fn id(n: u64) -> [u8; 10] {
    let mut r = [0u8; 10];
    r[2..].copy_from_slice(&n.to_be_bytes());
    r
}

/// A thread fixture.
pub fn thread(n: u64) -> ThreadRecord {
    ThreadRecord {
        id: ThreadId::from_parts(1_700_000_000_000 + n, id(n)),
        title: Envelope(vec![1, 2, 3, n as u8]),
        members: vec![UserId("alice".into()), UserId("bob".into())],
        created_by: UserId("alice".into()),
        created_at: 1_700_000_000_000 + n,
    }
}

/// A message fixture: sent with `seq` when given, else pending at local time `n`.
pub fn message(thread: ThreadId, n: u64, seq: Option<u64>) -> MessageRecord {
    MessageRecord {
        id: MessageId::from_parts(1_700_000_000_000 + n, id(n)),
        thread_id: thread,
        sender: UserId("alice".into()),
        body: Some(Envelope(n.to_le_bytes().to_vec())),
        seq,
        client_ts: 1_700_000_000_000 + n,
        server_ts: seq.map(|s| 1_700_000_100_000 + s),
        edited: false,
        deleted: false,
        status: if seq.is_some() { MessageStatus::Sent } else { MessageStatus::Pending },
        order: display_order(seq, 1_700_000_000_000 + n),
    }
}

/// An outbox fixture sending `m`.
pub fn send_mutation(m: &MessageRecord) -> Mutation {
    Mutation {
        mutation_id: 0,
        body: MutationBody::Send {
            thread_id: m.thread_id,
            message_id: m.id,
            body: m.body.clone().expect("fixture has a body"),
            client_ts: m.client_ts,
        },
        attempts: 0,
        next_attempt_at: 0,
        state: MutationState::Queued,
        created_at: m.client_ts,
    }
}

/// Threads come back as written, and a put replaces.
pub async fn threads_round_trip<S: Store>(store: &S) {
    assert_eq!(store.threads().await.unwrap(), vec![]);
    let (a, mut b) = (thread(1), thread(2));
    store.write(vec![Write::PutThread(b.clone()), Write::PutThread(a.clone())]).await.unwrap();
    assert_eq!(store.thread(a.id).await.unwrap(), Some(a.clone()));
    assert_eq!(store.thread(thread(3).id).await.unwrap(), None);
    b.members.push(UserId("carol".into()));
    store.write(vec![Write::PutThread(b.clone())]).await.unwrap();
    assert_eq!(store.threads().await.unwrap(), vec![a, b]);
}

/// A message written again (as on an ack) replaces the old record and moves
/// to its new place, without appearing twice.
pub async fn message_upsert_replaces<S: Store>(store: &S) {
    let t = thread(1);
    let earlier = message(t.id, 1, Some(10));
    let pending = message(t.id, 2, None);
    store.write(vec![Write::PutMessage(earlier.clone()), Write::PutMessage(pending.clone())]).await.unwrap();
    assert_eq!(store.message(pending.id).await.unwrap(), Some(pending.clone()));

    let mut acked = pending.clone();
    acked.seq = Some(11);
    acked.status = MessageStatus::Sent;
    acked.order = display_order(Some(11), 0);
    store.write(vec![Write::PutMessage(acked.clone())]).await.unwrap();
    assert_eq!(store.message(acked.id).await.unwrap(), Some(acked.clone()));
    let page = store.messages_before(t.id, None, 10).await.unwrap();
    assert_eq!(page, vec![acked, earlier]);
}

/// Paging newest-first through a thread of sent and pending messages returns
/// each message exactly once, sent ones by seq, then pending ones after them.
pub async fn pages_are_newest_first_and_complete<S: Store>(store: &S) {
    let t = thread(1);
    let mut all: Vec<MessageRecord> = (0..60).map(|n| message(t.id, n, Some(1000 - n * 7))).collect();
    all.extend((60..75).map(|n| message(t.id, n, None)));
    // Two pending messages in the same millisecond are ordered by id.
    let mut twin = message(t.id, 75, None);
    twin.order = all.last().unwrap().order;
    all.push(twin);
    store.write(all.iter().cloned().map(Write::PutMessage).collect()).await.unwrap();

    let mut expected = all.clone();
    expected.sort_by(|a, b| (b.order, b.id).partial_cmp(&(a.order, a.id)).unwrap());
    let mut seen = Vec::new();
    let mut before = None;
    loop {
        let page = store.messages_before(t.id, before, 7).await.unwrap();
        assert!(page.len() <= 7);
        let Some(last) = page.last() else { break };
        before = Some((last.order, last.id));
        seen.extend(page);
    }
    assert_eq!(seen.len(), all.len());
    assert_eq!(seen.iter().map(|m| m.id).collect::<HashSet<_>>().len(), all.len());
    assert_eq!(seen, expected);
    assert!(seen[0].seq.is_none(), "pending messages are the newest");
}

/// A page never crosses into another thread.
pub async fn pages_stop_at_thread_boundaries<S: Store>(store: &S) {
    let (a, b) = (thread(1), thread(2));
    let writes = (0..10)
        .map(|n| message(if n % 2 == 0 { a.id } else { b.id }, n, if n < 6 { Some(n + 1) } else { None }))
        .map(Write::PutMessage)
        .collect();
    store.write(writes).await.unwrap();
    let page = store.messages_before(a.id, None, 100).await.unwrap();
    assert_eq!(page.len(), 5);
    assert!(page.iter().all(|m| m.thread_id == a.id));
    assert_eq!(store.messages_before(thread(3).id, None, 100).await.unwrap(), vec![]);
    assert_eq!(store.messages_before(a.id, None, 0).await.unwrap(), vec![]);
}

/// Mutation ids strictly increase, and an id is never handed out twice, even
/// after the rows before it were removed.
pub async fn mutation_ids_increase_across_removals<S: Store>(store: &S) {
    let t = thread(1);
    let m1 = message(t.id, 1, None);
    let m2 = message(t.id, 2, None);
    let ids = store
        .write(vec![
            Write::PutMessage(m1.clone()),
            Write::Enqueue(send_mutation(&m1)),
            Write::Enqueue(send_mutation(&m2)),
        ])
        .await
        .unwrap();
    assert_eq!(ids.len(), 2);
    assert!(ids[0] > 0 && ids[1] > ids[0]);
    store.write(vec![Write::RemoveMutation(ids[0]), Write::RemoveMutation(ids[1])]).await.unwrap();
    let again = store.write(vec![Write::Enqueue(send_mutation(&m1))]).await.unwrap();
    assert!(again[0] > ids[1], "{again:?} after {ids:?}");
    let outbox = store.outbox().await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].mutation_id, again[0]);
}

/// Outbox rows come back in mutation order, and can be replaced and removed.
pub async fn outbox_rows_update_and_remove<S: Store>(store: &S) {
    let t = thread(1);
    let rows: Vec<Write> = (0..5).map(|n| Write::Enqueue(send_mutation(&message(t.id, n, None)))).collect();
    let ids = store.write(rows).await.unwrap();
    let mut outbox = store.outbox().await.unwrap();
    assert_eq!(outbox.iter().map(|m| m.mutation_id).collect::<Vec<_>>(), ids);

    let mut failed = outbox[2].clone();
    failed.attempts = 3;
    failed.state = MutationState::Failed { code: "too_large".into(), message: "no".into() };
    store.write(vec![Write::PutMutation(failed.clone()), Write::RemoveMutation(ids[0])]).await.unwrap();
    outbox.remove(0);
    outbox[1] = failed;
    assert_eq!(store.outbox().await.unwrap(), outbox);
}

/// A write of a message and its outbox row lands as one: both are there.
pub async fn write_is_all_or_nothing_in_effect<S: Store>(store: &S) {
    let t = thread(1);
    let m = message(t.id, 1, None);
    let ids = store
        .write(vec![
            Write::PutThread(t.clone()),
            Write::PutMessage(m.clone()),
            Write::Enqueue(send_mutation(&m)),
        ])
        .await
        .unwrap();
    assert_eq!(store.message(m.id).await.unwrap(), Some(m.clone()));
    let outbox = store.outbox().await.unwrap();
    assert_eq!(outbox.len(), 1);
    assert_eq!(outbox[0].mutation_id, ids[0]);
    assert_eq!(outbox[0].body.message_id(), Some(m.id));
}

/// Metadata values round-trip and can be replaced.
pub async fn meta_round_trip<S: Store>(store: &S) {
    assert_eq!(store.meta("cursor").await.unwrap(), None);
    store.write(vec![Write::PutMeta { key: "cursor".into(), value: "12".into() }]).await.unwrap();
    store.write(vec![Write::PutMeta { key: "cursor".into(), value: "13".into() }]).await.unwrap();
    assert_eq!(store.meta("cursor").await.unwrap().as_deref(), Some("13"));
}

/// `Write::Expect` is a compare-and-set: the whole write lands only while
/// the expected rows are stored exactly as given; otherwise `Conflict` and
/// nothing changes.
pub async fn expect_is_compare_and_set<S: Store>(store: &S) {
    use crate::ports::StoreError;
    let t = thread(1);
    let m = message(t.id, 1, None);
    let ids = store.write(vec![Write::Enqueue(send_mutation(&m))]).await.unwrap();
    let row = store.outbox().await.unwrap().remove(0);
    assert_eq!(row.mutation_id, ids[0]);

    let sending = Mutation { state: MutationState::Sending, attempts: 1, ..row.clone() };
    store.write(vec![Write::Expect(row.clone()), Write::PutMutation(sending.clone())]).await.unwrap();
    assert_eq!(store.outbox().await.unwrap(), vec![sending.clone()]);

    // The same decision again, from the stale snapshot: refused, no trace.
    let stale = vec![
        Write::Expect(row.clone()),
        Write::PutMessage(m.clone()),
        Write::RemoveMutation(row.mutation_id),
        Write::Enqueue(send_mutation(&m)),
    ];
    assert_eq!(store.write(stale).await, Err(StoreError::Conflict));
    assert_eq!(store.outbox().await.unwrap(), vec![sending.clone()]);
    assert_eq!(store.message(m.id).await.unwrap(), None);

    // A removed row cannot be expected either.
    store.write(vec![Write::RemoveMutation(row.mutation_id)]).await.unwrap();
    assert_eq!(store.write(vec![Write::Expect(sending)]).await, Err(StoreError::Conflict));
    // The refused Enqueue above did not use up an id in a way that breaks order.
    let next = store.write(vec![Write::Enqueue(send_mutation(&m))]).await.unwrap();
    assert!(next[0] > ids[0]);
}

/// `messages_by_id` returns the stored messages among the ids, leaving out
/// unknown ones, whatever their order.
pub async fn messages_by_id_reads_what_is_stored<S: Store>(store: &S) {
    let t = thread(1);
    let stored: Vec<MessageRecord> = (0..5).map(|n| message(t.id, n, None)).collect();
    store.write(stored.iter().cloned().map(Write::PutMessage).collect()).await.unwrap();
    let unknown = message(t.id, 99, None).id;
    let ids = [stored[3].id, unknown, stored[0].id, stored[3].id];
    let mut found = store.messages_by_id(&ids).await.unwrap();
    found.sort_by_key(|m| m.id);
    found.dedup_by_key(|m| m.id);
    assert_eq!(found, vec![stored[0].clone(), stored[3].clone()]);
    assert_eq!(store.messages_by_id(&[]).await.unwrap(), vec![]);
    assert_eq!(store.messages_by_id(&[unknown]).await.unwrap(), vec![]);
}
