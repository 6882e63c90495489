//! The [`Store`] on IndexedDB.
//!
//! Object stores (DESIGN.md §2): `threads` (key `id`), `messages` (key `id`;
//! index `by_thread_order` on `[thread_id, order, id]` for paging, and from
//! schema v2 `by_thread_seq` on `[thread_id, seq]`), `outbox` (key
//! `mutation_id`, generated: the key generator never hands out an id twice,
//! even across tabs), `keys` (key `key_id`) and `meta` (key `key`).
//!
//! A [`Store::write`] is one readwrite transaction: every record is converted
//! to JS before it opens, every request is issued at once, and nothing but
//! IndexedDB is awaited until it completes.
//!
//! Other tabs and the browser can take the connection away:
//! - A newer build in another tab upgrades the schema: this connection
//!   closes at once so that the upgrade is not blocked, every later call
//!   fails with [`StoreError::VersionChange`], and the callbacks given to
//!   [`IdbStore::on_version_change`] run (the UI says "reload to update").
//! - The browser closes or loses the connection (Safari: "Connection to
//!   Indexed Database server lost"; Chrome: "The database connection is
//!   closing"): the store opens a new connection and tries once more. A
//!   read is retried whole. A write is retried only when its transaction
//!   could not even be created, so that it certainly never ran: after that
//!   point a failure may have followed a commit, and a second run could
//!   enqueue twice, so it is reported instead.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::rc::Rc;
use std::task::Poll;

use idb::{
    CursorDirection, Database, DatabaseEvent as _, Event as _, Factory, IndexParams, KeyPath, KeyRange,
    ObjectStoreParams, Query, Request as _, TransactionMode, TransactionResult,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use wasm_bindgen::{JsCast, JsValue};

use crate::core::model::{MessageId, MessageRecord, Mutation, ThreadId, ThreadRecord};
use crate::ports::{Store, StoreError, StoreResult, WrappedKey, Write};

/// The schema version this build writes. Raise it by one with each schema
/// change, and add that version's step to [`upgrade`].
pub const SCHEMA_VERSION: u32 = 2;

const THREADS: &str = "threads";
const MESSAGES: &str = "messages";
const OUTBOX: &str = "outbox";
const KEYS: &str = "keys";
const META: &str = "meta";
const BY_THREAD_ORDER: &str = "by_thread_order";
const BY_THREAD_SEQ: &str = "by_thread_seq";

/// Brings a database from `old` to `new`, one version step at a time, inside
/// the upgrade transaction.
fn upgrade(db: &Database, tx: &idb::Transaction, old: u32, new: u32) -> Result<(), idb::Error> {
    for version in old + 1..=new {
        match version {
            1 => {
                let mut by_id = ObjectStoreParams::new();
                by_id.key_path(Some(KeyPath::new_single("id")));
                db.create_object_store(THREADS, by_id.clone())?;
                let messages = db.create_object_store(MESSAGES, by_id)?;
                messages.create_index(
                    BY_THREAD_ORDER,
                    KeyPath::new_array(["thread_id", "order", "id"]),
                    None,
                )?;

                let mut outbox = ObjectStoreParams::new();
                outbox.key_path(Some(KeyPath::new_single("mutation_id"))).auto_increment(true);
                db.create_object_store(OUTBOX, outbox)?;

                let mut keys = ObjectStoreParams::new();
                keys.key_path(Some(KeyPath::new_single("key_id")));
                db.create_object_store(KEYS, keys)?;

                let mut meta = ObjectStoreParams::new();
                meta.key_path(Some(KeyPath::new_single("key")));
                db.create_object_store(META, meta)?;
            }
            2 => {
                // Pending messages have no seq and so stay out of this index.
                let mut params = IndexParams::new();
                params.unique(false);
                tx.object_store(MESSAGES)?.create_index(
                    BY_THREAD_SEQ,
                    KeyPath::new_array(["thread_id", "seq"]),
                    Some(params),
                )?;
            }
            _ => unreachable!("no upgrade step for schema version {version}"),
        }
    }
    Ok(())
}

/// A [`Store`] on one IndexedDB database.
pub struct IdbStore {
    name: String,
    /// The version this store opened, and reopens, the database at.
    version: u32,
    connection: RefCell<Connection>,
    tabs: Rc<TabState>,
    /// Set by [`IdbStore::close`]: no reopening after that.
    closed: Cell<bool>,
}

/// One open connection; replaced when the browser loses it.
struct Connection {
    db: Database,
    /// Which connection of this store it is (0, 1, ... as they are reopened).
    generation: u64,
    /// Set when the browser closed it (a `close` event).
    lost: Rc<Cell<bool>>,
}

/// What other tabs did to this database, shared with the connection's
/// event handlers.
#[derive(Default)]
struct TabState {
    /// Another tab upgraded (or deleted) the database; this store is done.
    superseded: Cell<bool>,
    on_version_change: RefCell<Vec<Rc<dyn Fn()>>>,
}

impl TabState {
    fn supersede(&self) {
        if self.superseded.replace(true) {
            return;
        }
        // Cloned out, so a callback may register another or use the store.
        let callbacks = self.on_version_change.borrow().clone();
        for callback in callbacks {
            callback();
        }
    }
}

impl IdbStore {
    /// Opens (creating or upgrading) the database `name` at [`SCHEMA_VERSION`].
    pub async fn open(name: &str) -> StoreResult<Self> {
        Self::open_at(name, SCHEMA_VERSION).await
    }

    /// Opens the database at an older schema version; for migration tests.
    #[doc(hidden)]
    pub async fn open_at(name: &str, version: u32) -> StoreResult<Self> {
        if name.is_empty() || name.len() > 256 {
            return Err(StoreError::Open("database names are 1 to 256 characters".into()));
        }
        let tabs = Rc::new(TabState::default());
        let connection = connect(name, version, &tabs, 0).await?;
        Ok(IdbStore {
            name: name.to_owned(),
            version,
            connection: RefCell::new(connection),
            tabs,
            closed: Cell::new(false),
        })
    }

    /// Closes the connection (after running transactions finish). Later
    /// calls fail; the store does not reopen.
    pub fn close(&self) {
        self.closed.set(true);
        self.connection.borrow().db.close();
    }

    /// The schema version of the open database.
    pub fn version(&self) -> u32 {
        self.connection.borrow().db.version().unwrap_or(0)
    }

    /// Whether another tab's upgrade closed this connection.
    pub fn superseded(&self) -> bool {
        self.tabs.superseded.get()
    }

    /// Calls `callback` once when another tab upgrades or deletes the
    /// database and this store closes for it; at once if that happened
    /// already. Tell the user to reload: this page's code is older than the
    /// database now.
    pub fn on_version_change(&self, callback: impl Fn() + 'static) {
        if self.tabs.superseded.get() {
            callback();
        } else {
            self.tabs.on_version_change.borrow_mut().push(Rc::new(callback));
        }
    }

    /// Closes the connection behind the store's back, as the browser does
    /// when it loses it; the next call reopens.
    #[doc(hidden)]
    pub fn close_connection_for_test(&self) {
        self.connection.borrow().db.close();
    }

    /// How many times the connection was reopened.
    #[doc(hidden)]
    pub fn reopened_for_test(&self) -> u64 {
        self.connection.borrow().generation
    }

    /// A new transaction; if the connection turns out closed or lost (and
    /// not by an upgrade), reopens it and tries once more. Nothing ran in a
    /// transaction that could not be created, so this retry is always safe.
    async fn transaction(&self, stores: &[&str], mode: TransactionMode) -> StoreResult<idb::Transaction> {
        let (generation, attempt) = self.try_transaction(stores, mode)?;
        match attempt {
            Ok(tx) => Ok(tx),
            Err(e) if connection_gone(&e) => {
                self.reopen(generation).await?;
                match self.try_transaction(stores, mode)?.1 {
                    Ok(tx) => Ok(tx),
                    Err(e) => Err(classify(&e)),
                }
            }
            Err(e) => Err(classify(&e)),
        }
    }

    #[allow(clippy::type_complexity)]
    fn try_transaction(
        &self,
        stores: &[&str],
        mode: TransactionMode,
    ) -> StoreResult<(u64, Result<idb::Transaction, idb::Error>)> {
        if self.tabs.superseded.get() {
            return Err(StoreError::VersionChange);
        }
        if self.closed.get() {
            return Err(StoreError::Other("the database connection was closed".into()));
        }
        let connection = self.connection.borrow();
        let attempt = if connection.lost.get() {
            Err(idb::Error::TransactionOpenFailed(lost_error()))
        } else {
            connection.db.transaction(stores, mode)
        };
        Ok((connection.generation, attempt))
    }

    /// Replaces the connection `failed` with a new one, unless another call
    /// did that meanwhile.
    async fn reopen(&self, failed: u64) -> StoreResult<()> {
        if self.connection.borrow().generation != failed {
            return Ok(());
        }
        let fresh = match connect(&self.name, self.version, &self.tabs, failed + 1).await {
            Ok(fresh) => fresh,
            Err(e) => {
                // Upgraded by another tab while we were not connected to hear of it.
                if matches!(&e, StoreError::Open(text) if text.contains("VersionError")) {
                    self.tabs.supersede();
                    return Err(StoreError::VersionChange);
                }
                return Err(e);
            }
        };
        if self.connection.borrow().generation != failed || self.closed.get() || self.tabs.superseded.get() {
            fresh.db.close();
            return Ok(());
        }
        let old = self.connection.replace(fresh);
        old.db.close();
        Ok(())
    }

    /// Runs `fetch` in a new readonly transaction; if it fails as a lost
    /// connection does, reopens and runs it once more. Not generic, so that
    /// one copy serves every read; the caller decodes the raw value.
    async fn read(&self, fetch: &Fetch) -> StoreResult<JsValue> {
        let mut retried = false;
        loop {
            let tx = self.transaction(&[fetch.store()], TransactionMode::ReadOnly).await?;
            match fetch.run(tx).await {
                Ok(value) => return Ok(value),
                Err(e) if !retried && connection_gone(&e) => {
                    retried = true;
                    // The next transaction reopens (unless superseded meanwhile).
                    self.connection.borrow().lost.set(true);
                }
                Err(e) => return Err(classify(&e)),
            }
        }
    }

    async fn get<T: DeserializeOwned>(&self, store: &'static str, key: JsValue) -> StoreResult<Option<T>> {
        let value = self.read(&Fetch::Get(store, key)).await?;
        if value.is_undefined() {
            return Ok(None);
        }
        from_js(store, &value).map(Some)
    }

    async fn get_all<T: DeserializeOwned>(&self, store: &'static str) -> StoreResult<Vec<T>> {
        from_js(store, &self.read(&Fetch::All(store)).await?)
    }

    /// Reads a raw JS value from `meta` (e.g. a non-extractable CryptoKey).
    pub async fn raw_meta(&self, key: &str) -> StoreResult<Option<JsValue>> {
        let record = self.read(&Fetch::Get(META, JsValue::from_str(key))).await?;
        if record.is_undefined() {
            return Ok(None);
        }
        Ok(Some(js_sys::Reflect::get(&record, &"value".into()).unwrap_or(JsValue::UNDEFINED)))
    }

    /// Writes a raw JS value to `meta`, only if no value is there yet; returns
    /// the value that is stored afterwards (another tab may have won the race).
    pub async fn raw_meta_insert(&self, key: &str, value: &JsValue) -> StoreResult<JsValue> {
        let record = meta_record(key, value)?;
        let tx = self.transaction(&[META], TransactionMode::ReadWrite).await?;
        let store = tx.object_store(META).map_err(|e| classify(&e))?;
        // `add` fails if the key exists; that failure is the race being lost.
        let added = store.add(&record, None).map_err(|e| classify(&e))?.await;
        let _ = tx.await;
        match added {
            Ok(_) => Ok(value.clone()),
            Err(_) => {
                self.raw_meta(key).await?.ok_or_else(|| StoreError::Other("meta record vanished".into()))
            }
        }
    }
}

impl Store for IdbStore {
    async fn write(&self, writes: Vec<Write>) -> StoreResult<Vec<u64>> {
        // After a trap, whatever decided this write may have stopped halfway.
        if crate::web::fatal::is_fatal() {
            return Err(StoreError::Other("the client stopped after a fatal error".into()));
        }
        enum Op {
            Put(&'static str, JsValue),
            Add(JsValue),
            Delete(&'static str, JsValue),
        }
        // Everything is converted before the transaction opens.
        let mut ops = Vec::with_capacity(writes.len());
        let mut expected = Vec::new();
        for write in &writes {
            ops.push(match write {
                Write::Expect(m) => {
                    expected.push(m);
                    continue;
                }
                Write::PutThread(t) => Op::Put(THREADS, to_js(t)?),
                Write::PutMessage(m) => Op::Put(MESSAGES, to_js(m)?),
                Write::Enqueue(m) => {
                    let value = to_js(m)?;
                    // Without the key field, the key generator assigns it.
                    let _ = js_sys::Reflect::delete_property(
                        value.unchecked_ref::<js_sys::Object>(),
                        &"mutation_id".into(),
                    );
                    Op::Add(value)
                }
                Write::PutMutation(m) => Op::Put(OUTBOX, to_js(m)?),
                Write::RemoveMutation(id) => Op::Delete(OUTBOX, JsValue::from_f64(*id as f64)),
                Write::PutKey(k) => Op::Put(KEYS, to_js(k)?),
                Write::PutMeta { key, value } => Op::Put(META, meta_record(key, &JsValue::from_str(value))?),
            });
        }
        // The stores the transaction spans, each once (at most five: no sort).
        let mut names: Vec<&str> = Vec::new();
        let used = ops.iter().map(|op| match op {
            Op::Put(s, _) | Op::Delete(s, _) => *s,
            Op::Add(_) => OUTBOX,
        });
        for name in used.chain(expected.first().map(|_| OUTBOX)) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
        if names.is_empty() {
            return Ok(Vec::new());
        }

        // The one point where a write may be retried on a new connection:
        // a transaction that could not be created never ran.
        let tx = self.transaction(&names, TransactionMode::ReadWrite).await?;
        // Compare-and-set: read the expected rows first, in this transaction,
        // and write nothing unless each is as the caller saw it.
        for want in expected {
            let key = JsValue::from_f64(want.mutation_id as f64);
            let read = match tx.object_store(OUTBOX).and_then(|s| s.get(key)) {
                Ok(request) => request.await,
                Err(e) => Err(e),
            };
            let found = match read {
                Ok(found) => found,
                Err(e) => {
                    let _ = tx.abort();
                    return Err(classify(&e));
                }
            };
            let same = found.map(|v| from_js::<Mutation>(OUTBOX, &v)).transpose().ok().flatten();
            if same.as_ref() != Some(want) {
                let _ = tx.abort();
                return Err(StoreError::Conflict);
            }
        }
        let mut adds = Vec::new();
        for op in ops {
            let issued = match op {
                Op::Put(store, value) => tx.object_store(store).and_then(|s| s.put(&value, None)).map(drop),
                Op::Delete(store, key) => tx.object_store(store).and_then(|s| s.delete(key)).map(drop),
                Op::Add(value) => tx.object_store(OUTBOX).and_then(|s| s.add(&value, None)).map(|request| {
                    adds.push(std::future::IntoFuture::into_future(request));
                }),
            };
            if let Err(e) = issued {
                let _ = tx.abort();
                return Err(classify(&e));
            }
        }
        let mut ids = Vec::with_capacity(adds.len());
        let mut failure = None;
        for add in adds {
            match add.await {
                Ok(key) => ids.push(key.as_f64().unwrap_or(0.0) as u64),
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        match tx.await {
            Ok(TransactionResult::Committed) if failure.is_none() => Ok(ids),
            Ok(_) => {
                Err(failure.map(|e| classify(&e)).unwrap_or(StoreError::Other("transaction aborted".into())))
            }
            Err(e) => Err(classify(failure.as_ref().unwrap_or(&e))),
        }
    }

    async fn thread(&self, id: ThreadId) -> StoreResult<Option<ThreadRecord>> {
        self.get(THREADS, JsValue::from_str(&id.to_string())).await
    }

    async fn threads(&self) -> StoreResult<Vec<ThreadRecord>> {
        self.get_all(THREADS).await
    }

    async fn messages_by_id(&self, ids: &[MessageId]) -> StoreResult<Vec<MessageRecord>> {
        let keys = ids.iter().map(|id| JsValue::from_str(&id.to_string())).collect();
        from_js(MESSAGES, &self.read(&Fetch::Many(MESSAGES, keys)).await?)
    }

    async fn message(&self, id: MessageId) -> StoreResult<Option<MessageRecord>> {
        self.get(MESSAGES, JsValue::from_str(&id.to_string())).await
    }

    async fn messages_before(
        &self,
        thread: ThreadId,
        before: Option<(u64, MessageId)>,
        limit: u32,
    ) -> StoreResult<Vec<MessageRecord>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let thread = JsValue::from_str(&thread.to_string());
        let lower = js_sys::Array::of1(&thread);
        let (upper, upper_open) = match before {
            Some((order, id)) => (
                js_sys::Array::of3(
                    &thread,
                    &JsValue::from_f64(order as f64),
                    &JsValue::from_str(&id.to_string()),
                ),
                true,
            ),
            // An array sorts above every number: this bound is past the newest.
            None => (js_sys::Array::of2(&thread, &js_sys::Array::new()), false),
        };
        let page = self.read(&Fetch::Page { lower, upper, upper_open, limit }).await?;
        from_js(MESSAGES, &page)
    }

    async fn outbox(&self) -> StoreResult<Vec<Mutation>> {
        self.get_all(OUTBOX).await
    }

    async fn keys(&self) -> StoreResult<Vec<WrappedKey>> {
        self.get_all(KEYS).await
    }

    async fn meta(&self, key: &str) -> StoreResult<Option<String>> {
        match self.raw_meta(key).await? {
            None => Ok(None),
            Some(value) => value.as_string().map(Some).ok_or(StoreError::Corrupt {
                store: META,
                reason: format!("{key}: the value is not a string"),
            }),
        }
    }
}

/// Opens one connection at `version`, running the upgrade steps if needed,
/// and hooks it to the tab events: on `versionchange` it closes at once
/// (so the other tab's upgrade goes ahead) and the store is superseded; on
/// `close` (the browser dropped it) it is marked lost, to be reopened.
async fn connect(name: &str, version: u32, tabs: &Rc<TabState>, generation: u64) -> StoreResult<Connection> {
    let factory = Factory::new().map_err(|e| StoreError::Open(describe(&e)))?;
    let mut request = factory.open(name, Some(version)).map_err(|e| StoreError::Open(describe(&e)))?;

    let upgrade_error: Rc<Cell<Option<String>>> = Rc::default();
    let upgrade_error_in = upgrade_error.clone();
    request.on_upgrade_needed(move |event| {
        let result = (|| {
            let old = event.old_version()?;
            let new = event.new_version()?.unwrap_or(version);
            let db = event.database()?;
            let tx = event.target()?.transaction().ok_or(idb::Error::EventTargetNotFound)?;
            upgrade(&db, &tx, old, new).inspect_err(|_| {
                // Abort, so the version stays where it was and no half-made schema remains.
                let _ = tx.abort();
            })
        })();
        if let Err(e) = result {
            upgrade_error_in.set(Some(format!("the database could not be upgraded: {}", describe(&e))));
        }
    });
    // Another tab holds an older version open and does not let go.
    let (blocked_tx, mut blocked_rx) = tokio::sync::oneshot::channel::<()>();
    let mut blocked_tx = Some(blocked_tx);
    request.on_blocked(move |_| {
        if let Some(tx) = blocked_tx.take() {
            let _ = tx.send(());
        }
    });

    let mut opening = Box::pin(std::future::IntoFuture::into_future(request));
    let opened = std::future::poll_fn(|cx| {
        if let Poll::Ready(result) = opening.as_mut().poll(cx) {
            return Poll::Ready(Some(result));
        }
        match std::pin::Pin::new(&mut blocked_rx).poll(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(None),
            _ => Poll::Pending,
        }
    })
    .await;
    let mut db = match opened {
        Some(Ok(db)) => db,
        Some(Err(e)) => {
            let reason = upgrade_error.take().unwrap_or_else(|| describe(&e));
            return Err(StoreError::Open(reason));
        }
        None => {
            // The request stays queued in the browser; keep its handlers
            // alive so that, once the other tab lets go, the upgrade runs
            // properly and the connection it opens is closed again.
            wasm_bindgen_futures::spawn_local(async move {
                if let Ok(db) = opening.await {
                    db.close();
                }
            });
            return Err(StoreError::Open(
                "the database upgrade is blocked by another open tab of this app; close it and retry".into(),
            ));
        }
    };
    // A newer tab wants to upgrade: let go at once instead of blocking it.
    let tabs_in = tabs.clone();
    db.on_version_change(move |event| {
        if let Ok(db) = event.database() {
            db.close();
        }
        tabs_in.supersede();
    });
    let lost = Rc::new(Cell::new(false));
    let lost_in = lost.clone();
    db.on_close(move |_| lost_in.set(true));
    Ok(Connection { db, generation, lost })
}

impl Drop for IdbStore {
    fn drop(&mut self) {
        // An open connection would block other tabs' upgrades until garbage
        // collection, and its `versionchange` handler is dropped with it.
        self.connection.get_mut().db.close();
    }
}

/// A `meta` record: `{key, value}`.
fn meta_record(key: &str, value: &JsValue) -> StoreResult<JsValue> {
    let record = js_sys::Object::new();
    let set = |k: &str, v: &JsValue| js_sys::Reflect::set(&record, &k.into(), v);
    set("key", &key.into()).and_then(|_| set("value", value)).map_err(|e| StoreError::Other(js_text(&e)))?;
    Ok(record.into())
}

/// What a [`IdbStore::read`] fetches.
enum Fetch {
    /// One record by key; `undefined` when there is none.
    Get(&'static str, JsValue),
    /// Every record of a store, as an array.
    All(&'static str),
    /// The records of these keys that exist, as an array, in one transaction.
    Many(&'static str, Vec<JsValue>),
    /// Up to `limit` messages of the `by_thread_order` range, newest first,
    /// as an array.
    Page { lower: js_sys::Array, upper: js_sys::Array, upper_open: bool, limit: u32 },
}

impl Fetch {
    fn store(&self) -> &'static str {
        match self {
            Fetch::Get(store, _) | Fetch::All(store) | Fetch::Many(store, _) => store,
            Fetch::Page { .. } => MESSAGES,
        }
    }

    async fn run(&self, tx: idb::Transaction) -> Result<JsValue, idb::Error> {
        let store = tx.object_store(self.store())?;
        match self {
            Fetch::Get(_, key) => Ok(store.get(key.clone())?.await?.unwrap_or(JsValue::UNDEFINED)),
            Fetch::All(_) => {
                Ok(store.get_all(None, None)?.await?.into_iter().collect::<js_sys::Array>().into())
            }
            Fetch::Many(_, keys) => {
                // Every request is issued before the first is awaited: they
                // run together, in one transaction.
                let requests =
                    keys.iter().map(|key| store.get(key.clone())).collect::<Result<Vec<_>, _>>()?;
                let found = js_sys::Array::new();
                for request in requests {
                    if let Some(value) = request.await? {
                        found.push(&value);
                    }
                }
                Ok(found.into())
            }
            Fetch::Page { lower, upper, upper_open, limit } => {
                // Three requests whatever the page size, instead of one cursor
                // step per record: a key cursor jumps back `limit - 1` keys to
                // the oldest of the page, then one `getAll` reads the page.
                let range = KeyRange::bound(lower, upper, Some(false), Some(*upper_open))?;
                let index = store.index(BY_THREAD_ORDER)?;
                let cursor =
                    index.open_key_cursor(Some(Query::KeyRange(range)), Some(CursorDirection::Prev))?.await?;
                let Some(cursor) = cursor else { return Ok(js_sys::Array::new().into()) };
                let mut cursor = cursor.into_managed();
                if *limit > 1 {
                    cursor.advance(limit - 1).await?;
                }
                // Fewer records than `limit`: the page is the whole range.
                let oldest = cursor.key()?.unwrap_or_else(|| lower.clone().into());
                let page = KeyRange::bound(&oldest, upper, Some(false), Some(*upper_open))?;
                let values = index.get_all(Some(Query::KeyRange(page)), Some(*limit))?.await?;
                Ok(values.into_iter().rev().collect::<js_sys::Array>().into())
            }
        }
    }
}

/// The DOMException name inside an error, where there is one.
fn exception_name(error: &idb::Error) -> Option<String> {
    if let idb::Error::DomException(e) = error {
        return Some(e.name());
    }
    js_sys::Reflect::get(js_value(error)?, &"name".into()).ok()?.as_string()
}

/// The JS value (exception, error or event) an error carries, where there is one.
fn js_value(error: &idb::Error) -> Option<&JsValue> {
    use idb::Error as E;
    Some(match error {
        E::DomException(e) => e,
        E::AddFailed(v)
        | E::ClearFailed(v)
        | E::CountFailed(v)
        | E::CursorAdvanceFailed(v)
        | E::CursorContinueFailed(v)
        | E::CursorKeyNotFound(v)
        | E::CursorPrimaryKeyNotFound(v)
        | E::CursorValueNotFound(v)
        | E::DeleteFailed(v)
        | E::GetAllFailed(v)
        | E::GetAllKeysFailed(v)
        | E::GetFailed(v)
        | E::GetKeyFailed(v)
        | E::IndexCreateFailed(v)
        | E::IndexDeleteFailed(v)
        | E::IndexedDbDeleteFailed(v)
        | E::IndexedDbNotFound(v)
        | E::IndexedDbOpenFailed(v)
        | E::IndexNotFound(v)
        | E::KeyPathNotFound(v)
        | E::KeyRangeBoundNotFound(v)
        | E::KeyRangeCreateFailed(v)
        | E::KeyRangeIncludesFailed(v)
        | E::ObjectStoreCreateFailed(v)
        | E::ObjectStoreDeleteFailed(v)
        | E::ObjectStoreNotFound(v)
        | E::OpenCursorFailed(v)
        | E::OpenKeyCursorFailed(v)
        | E::RequestErrorNotFound(v)
        | E::RequestResultNotFound(v)
        | E::TransactionAbortError(v)
        | E::TransactionCommitError(v)
        | E::TransactionModeNotFound(v)
        | E::TransactionOpenFailed(v)
        | E::UnexpectedJsType(_, v)
        | E::UpdateFailed(v) => v,
        _ => return None,
    })
}

/// Whether the error says the connection is closed or gone: Chrome and
/// Safari throw InvalidStateError ("The database connection is closing")
/// from `transaction()` on a closed connection, and Safari fails requests
/// with UnknownError ("Connection to Indexed Database server lost").
fn connection_gone(error: &idb::Error) -> bool {
    matches!(exception_name(error).as_deref(), Some("InvalidStateError" | "UnknownError"))
}

/// Stands for the error a lost connection would give.
fn lost_error() -> JsValue {
    let error = js_sys::Error::new("the browser closed the database connection");
    error.set_name("InvalidStateError");
    error.into()
}

/// Records cross between Rust and IndexedDB as JSON text: serde_json is in
/// the bundle for the sync protocol anyway, so each record type's
/// (de)serializer exists once instead of once more for a JS-value
/// (de)serializer. The stored objects are what `JSON.parse` makes of
/// the records' JSON: plain objects, arrays, strings, numbers, booleans and
/// nulls.
fn to_js<T: Serialize + ?Sized>(value: &T) -> StoreResult<JsValue> {
    let text = serde_json::to_string(value)
        .map_err(|e| StoreError::Other(format!("could not convert a record: {e}")))?;
    js_sys::JSON::parse(&text).map_err(|_| StoreError::Other("could not convert a record".into()))
}

fn from_js<T: DeserializeOwned>(store: &'static str, value: &JsValue) -> StoreResult<T> {
    let text = json_text(store, value)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt { store, reason: e.to_string() })
}

/// `JSON.stringify` of a stored record (not generic: one copy for every record type).
fn json_text(store: &'static str, value: &JsValue) -> StoreResult<String> {
    js_sys::JSON::stringify(value)
        .ok()
        .and_then(|text| text.as_string())
        .ok_or_else(|| StoreError::Corrupt { store, reason: "not a JSON value".into() })
}

/// The error's text: what JS's `String()` makes of the value it carries
/// ("QuotaExceededError: ..." for a DOMException), else a fixed one. Not
/// idb's `Display`: its per-variant messages cost 2-3 KiB of wasm.
pub(crate) fn describe(error: &idb::Error) -> String {
    js_value(error).map_or_else(|| "IndexedDB request failed".into(), js_text)
}

/// What JS's `String()` makes of a value. The wasm is built without
/// `Debug` output (-Zfmt-debug=none, scripts/wasm.sh): not `{:?}`.
pub(crate) fn js_text(value: &JsValue) -> String {
    if value.is_undefined() {
        "undefined".into()
    } else if value.is_null() {
        "null".into()
    } else {
        value.unchecked_ref::<js_sys::Object>().to_string().into()
    }
}

/// Sorts a failure into the classes callers act on.
fn classify(error: &idb::Error) -> StoreError {
    let text = describe(error);
    if text.contains("QuotaExceededError") {
        StoreError::Quota(text)
    } else {
        StoreError::Other(text)
    }
}
