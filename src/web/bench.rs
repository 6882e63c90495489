//! Exports for the benchmarks in `bench/` (feature `bench`, never in the
//! published package): the envelope seal and open as the SDK does them, a
//! fast way to fill a thread with sealed messages through the real store,
//! applying a pulled page, the three ways of handing a page of messages to
//! JS, a timing split of reading a page, and the push requests that fill a
//! thread on a sync server.

use js_sys::{Array, Object, Reflect};
use wasm_bindgen::prelude::*;

use crate::core::envelope::{Aad, SealKind};
use crate::core::keys::{Invite, KeyRing, ThreadKey};
use crate::core::model::{
    display_order, DeviceId, Id, MessageId, MessageRecord, MessageStatus, Millis, ThreadId, UserId,
};
use crate::core::sync::{
    Change, MutationBody, PullPage, PullResponse, PushMutation, PushRequest, ServerMessage, PROTOCOL_VERSION,
};
use crate::engine::{random, Client, Feed, Message};
use crate::ports::{Store, Write};
use crate::web::idb::IdbStore;
use crate::web::kek::WebCryptoKek;
use crate::web::BrowserClock;

#[wasm_bindgen]
extern "C" {
    /// `performance.now()`: the page's high-resolution clock, for splits.
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
}

fn js_error(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// A key ring with one thread key, to seal and open with.
#[wasm_bindgen]
pub struct BenchCipher {
    ring: KeyRing,
    thread: ThreadId,
    message: MessageId,
    sender: UserId,
}

#[wasm_bindgen]
impl BenchCipher {
    /// A fresh random key for one thread.
    #[wasm_bindgen(constructor)]
    pub fn new() -> Result<BenchCipher, JsError> {
        let thread = ThreadId::from_parts(1, [1; 10]);
        let mut ring = KeyRing::new();
        ring.insert(thread, ThreadKey::generate()?, 0, true)?;
        Ok(BenchCipher {
            ring,
            thread,
            message: MessageId::from_parts(2, [2; 10]),
            sender: UserId("bench".into()),
        })
    }

    /// Seals `text` and opens it again; returns the envelope's length.
    #[wasm_bindgen(js_name = sealOpen)]
    pub fn seal_open(&mut self, text: &str) -> Result<usize, JsError> {
        let aad = Aad {
            thread_id: self.thread,
            message_id: self.message.0,
            sender: &self.sender,
            kind: SealKind::Send,
        };
        let envelope = self.ring.seal(&aad, text.as_bytes())?;
        let opened = self.ring.open(&aad, &envelope)?;
        if opened.len() != text.len() {
            return Err(JsError::new("round trip changed the length"));
        }
        Ok(envelope.0.len())
    }
}

/// An invite code for a new thread with a fresh key: import it into a
/// `ChatClient` with `importThreadInvite`, and fill the thread with
/// [`bench_fill`].
#[wasm_bindgen(js_name = benchThreadInvite)]
pub fn bench_thread_invite() -> Result<String, JsError> {
    let thread_id = ThreadId::from_parts(js_sys::Date::now() as Millis, random());
    Ok(Invite { thread_id, key: ThreadKey::generate()?, server_invite: None }.encode())
}

/// Stores `count` sent messages from `sender` in the thread of `invite`,
/// sealed with its key as a sender's client seals them, through the real
/// IndexedDB store in writes of `batch` messages: filling a thread with
/// 10,000 messages one `send` at a time would take minutes. Seq runs from
/// 1 to `count`; bodies are `body_len` bytes of text.
#[wasm_bindgen(js_name = benchFill)]
pub async fn bench_fill(
    #[wasm_bindgen(js_name = dbName)] db_name: String,
    invite: String,
    sender: String,
    count: u32,
    #[wasm_bindgen(js_name = bodyLen)] body_len: usize,
    batch: u32,
) -> Result<(), JsError> {
    let invite = Invite::decode(&invite)?;
    let thread_id = invite.thread_id;
    let mut ring = KeyRing::new();
    ring.insert(thread_id, invite.key, 0, true)?;
    let sender = UserId::parse(&sender).map_err(js_error)?;
    let store = IdbStore::open(&db_name).await.map_err(js_error)?;
    let start = js_sys::Date::now() as Millis - Millis::from(count);
    let mut seq = 0u64;
    let result = async {
        while seq < u64::from(count) {
            let mut writes = Vec::with_capacity(batch as usize);
            while seq < u64::from(count) && writes.len() < batch as usize {
                seq += 1;
                let ts = start + seq as Millis;
                let id = MessageId(Id::from_parts(ts, random()));
                let aad = Aad { thread_id, message_id: id.0, sender: &sender, kind: SealKind::Send };
                let body = ring.seal(&aad, body_text(seq, body_len).as_bytes())?;
                writes.push(Write::PutMessage(MessageRecord {
                    id,
                    thread_id,
                    sender: sender.clone(),
                    body: Some(body),
                    seq: Some(seq),
                    client_ts: ts,
                    server_ts: Some(ts),
                    edited: false,
                    deleted: false,
                    status: MessageStatus::Sent,
                    order: display_order(Some(seq), 0),
                }));
            }
            store.write(writes).await.map_err(js_error)?;
        }
        Ok::<_, JsError>(())
    }
    .await;
    store.close();
    result
}

/// The bodies of the `POST /v1/push` requests with which one device of
/// `sender` creates the thread of `invite` (title sealed with its key) and
/// sends `count` messages to it, `batch` mutations per push, as its outbox
/// would push them: the same protocol JSON, envelopes sealed by the same
/// code. Message `n` (from 0) has the text `body_text(n, body_len)`.
/// Posting these fills a server in about a second, where sending 10,000
/// messages through a client's outbox takes a minute.
#[wasm_bindgen(js_name = benchSeedPushes)]
pub fn bench_seed_pushes(
    invite: String,
    sender: String,
    count: u32,
    #[wasm_bindgen(js_name = bodyLen)] body_len: usize,
    batch: u32,
) -> Result<Vec<String>, JsError> {
    let invite = Invite::decode(&invite)?;
    let thread_id = invite.thread_id;
    let mut ring = KeyRing::new();
    ring.insert(thread_id, invite.key, 0, true)?;
    let sender = UserId::parse(&sender).map_err(js_error)?;
    let device_id = DeviceId::from_parts(js_sys::Date::now() as Millis, random());
    let start = js_sys::Date::now() as Millis - Millis::from(count);
    let title_aad = Aad { thread_id, message_id: thread_id.0, sender: &sender, kind: SealKind::ThreadTitle };
    let mut bodies = vec![MutationBody::CreateThread {
        thread_id,
        title: ring.seal(&title_aad, b"Seeded")?,
        members: Vec::new(),
        created_at: start,
    }];
    for n in 0..u64::from(count) {
        let ts = start + n as Millis;
        let message_id = MessageId(Id::from_parts(ts, random()));
        let aad = Aad { thread_id, message_id: message_id.0, sender: &sender, kind: SealKind::Send };
        let body = ring.seal(&aad, body_text(n, body_len).as_bytes())?;
        bodies.push(MutationBody::Send { thread_id, message_id, body, client_ts: ts });
    }
    let mut mutation_id = 0;
    bodies
        .chunks(batch.max(1) as usize)
        .map(|chunk| {
            let mutations = chunk
                .iter()
                .map(|body| {
                    mutation_id += 1;
                    PushMutation { mutation_id, body: body.clone() }
                })
                .collect();
            let request = PushRequest { protocol: PROTOCOL_VERSION, device_id, mutations };
            serde_json::to_string(&request).map_err(js_error)
        })
        .collect()
}

/// `invite` with the server's invite token added, as `exportThreadInvite`
/// makes it with a server.
#[wasm_bindgen(js_name = benchInviteWithToken)]
pub fn bench_invite_with_token(invite: String, token: String) -> Result<String, JsError> {
    let mut invite = Invite::decode(&invite)?;
    invite.server_invite = Some(token);
    Ok(invite.encode())
}

/// Text of `len` bytes, different per message.
fn body_text(n: u64, len: usize) -> String {
    let mut text = format!("message {n}: ");
    while text.len() < len {
        text.push_str("the quick brown fox jumps over the lazy dog ");
    }
    text.truncate(len);
    text
}

/// A second client on a database made by `ChatClient.open`, opened as
/// `ChatClient.open` opens its own, for what the JS API does not expose:
/// applying a page of pulled changes (workload 4) and timing the parts of
/// reading a page (workload 5).
#[wasm_bindgen]
pub struct BenchClient {
    client: Client<IdbStore, BrowserClock, WebCryptoKek>,
}

#[wasm_bindgen]
impl BenchClient {
    /// Opens (creating on first use) `db_name` for `user`.
    pub async fn open(
        #[wasm_bindgen(js_name = dbName)] db_name: String,
        user: String,
    ) -> Result<BenchClient, JsError> {
        let store = IdbStore::open(&db_name).await.map_err(js_error)?;
        let kek = WebCryptoKek::load_or_create(&store, None).await.map_err(js_error)?;
        let user = UserId::parse(&user).map_err(js_error)?;
        let client = Client::open(store, BrowserClock, kek, user, None).await.map_err(js_error)?;
        Ok(BenchClient { client })
    }

    /// Applies a pull response, given as the JSON text the server sends,
    /// as sync does: parsed, then `Client::apply_page` (one store write
    /// with the cursor). Returns how many changes it held.
    #[wasm_bindgen(js_name = applyPull)]
    pub async fn apply_pull(&self, json: String) -> Result<u32, JsError> {
        let page: PullPage = serde_json::from_str(&json).map_err(js_error)?;
        self.client.apply_page(&page, Feed::Main).await.map_err(js_error)?;
        Ok(page.changes.len() as u32)
    }

    /// [`apply_pull`](Self::apply_pull) with its parts timed: returns
    /// `[parse the JSON, Client::apply_page]` in milliseconds.
    #[wasm_bindgen(js_name = applyPullSplit)]
    pub async fn apply_pull_split(&self, json: String) -> Result<Vec<f64>, JsError> {
        let t0 = performance_now();
        let page: PullPage = serde_json::from_str(&json).map_err(js_error)?;
        let t1 = performance_now();
        self.client.apply_page(&page, Feed::Main).await.map_err(js_error)?;
        let t2 = performance_now();
        Ok(vec![t1 - t0, t2 - t1])
    }

    /// Reads the newest `limit` messages of a thread three times, stopping
    /// after each part; returns `[store, store + open + views, to JS]` in
    /// milliseconds.
    pub async fn split(&self, thread: String, limit: u32) -> Result<Vec<f64>, JsError> {
        let thread: ThreadId = thread.parse().map_err(js_error)?;
        let t0 = performance_now();
        let records = self.client.store().messages_before(thread, None, limit).await.map_err(js_error)?;
        let t1 = performance_now();
        let page = self.client.messages(thread, None, limit).await.map_err(js_error)?;
        let t2 = performance_now();
        let js = to_js_json_compatible(&page)?;
        let t3 = performance_now();
        if records.len() != page.len() || Array::from(&js).length() as usize != page.len() {
            return Err(JsError::new("the parts read different pages"));
        }
        Ok(vec![t1 - t0, t2 - t1, t3 - t2])
    }

    /// Closes the client's connection.
    pub fn close(&self) {
        self.client.close();
        self.client.store().close();
    }
}

/// The JSON text of a pull response holding `count` messages from `sender`
/// in one new thread, seq 1 to `count`, each sealed (with a fresh key) from
/// `body_len` bytes of text, as the server would send them.
#[wasm_bindgen(js_name = benchPullPage)]
pub fn bench_pull_page(
    count: u32,
    sender: String,
    #[wasm_bindgen(js_name = bodyLen)] body_len: usize,
) -> Result<String, JsError> {
    let thread_id = ThreadId::from_parts(js_sys::Date::now() as Millis, random());
    let mut ring = KeyRing::new();
    ring.insert(thread_id, ThreadKey::generate()?, 0, true)?;
    let sender = UserId::parse(&sender).map_err(js_error)?;
    let start = js_sys::Date::now() as Millis - Millis::from(count);
    let mut changes = Vec::with_capacity(count as usize);
    for seq in 1..=u64::from(count) {
        let ts = start + seq as Millis;
        let id = MessageId(Id::from_parts(ts, random()));
        let aad = Aad { thread_id, message_id: id.0, sender: &sender, kind: SealKind::Send };
        let body = ring.seal(&aad, body_text(seq, body_len).as_bytes())?;
        changes.push(Change::Message {
            seq,
            message: ServerMessage {
                id,
                thread_id,
                sender: sender.clone(),
                body: Some(body),
                seq,
                client_ts: ts,
                server_ts: ts,
                edited: false,
                deleted: false,
            },
        });
    }
    let page =
        PullResponse { protocol: PROTOCOL_VERSION, changes, cursor: u64::from(count), has_more: false };
    serde_json::to_string(&page).map_err(js_error)
}

/// A page of decrypted messages, to hand to JS in three ways (workload 7).
#[wasm_bindgen]
pub struct BenchPage {
    page: Vec<Message>,
}

#[wasm_bindgen]
impl BenchPage {
    /// `count` sent messages with bodies of `body_len` bytes.
    #[wasm_bindgen(constructor)]
    pub fn new(count: u32, body_len: usize) -> BenchPage {
        let thread_id = ThreadId::from_parts(1_700_000_000_000, random());
        let page = (1..=u64::from(count))
            .map(|seq| {
                let ts = 1_700_000_000_000 + seq as Millis;
                Message {
                    id: MessageId(Id::from_parts(ts, random())),
                    thread_id,
                    sender: UserId(format!("user-{}", seq % 3)),
                    body: Some(body_text(seq, body_len)),
                    undecryptable: None,
                    seq: Some(seq),
                    client_ts: ts,
                    server_ts: Some(ts + 40),
                    edited: false,
                    deleted: false,
                    status: MessageStatus::Sent,
                }
            })
            .collect();
        BenchPage { page }
    }

    /// What the bindings do today: serde-wasm-bindgen's JSON-compatible
    /// serializer, one JS call per field.
    #[wasm_bindgen(js_name = serdeWasmBindgen)]
    pub fn serde_wasm_bindgen(&self) -> Result<JsValue, JsError> {
        to_js_json_compatible(&self.page)
    }

    /// One JSON string (serde_json), for the caller to `JSON.parse`.
    #[wasm_bindgen(js_name = jsonString)]
    pub fn json_string(&self) -> Result<String, JsError> {
        serde_json::to_string(&self.page).map_err(js_error)
    }

    /// Plain objects built field by field with `Reflect.set`, with the
    /// property names made once.
    #[wasm_bindgen(js_name = plainObjects)]
    pub fn plain_objects(&self) -> Result<Array, JsValue> {
        let names = Names::new();
        let array = Array::new_with_length(self.page.len() as u32);
        for (i, m) in self.page.iter().enumerate() {
            let o = Object::new();
            let set = |k: &JsValue, v: &JsValue| Reflect::set(&o, k, v).map(drop);
            let opt_str = |s: &Option<String>| s.as_deref().map_or(JsValue::NULL, JsValue::from_str);
            let opt_num = |n: Option<u64>| n.map_or(JsValue::NULL, |n| JsValue::from_f64(n as f64));
            set(&names.id, &JsValue::from_str(&m.id.to_string()))?;
            set(&names.thread_id, &JsValue::from_str(&m.thread_id.to_string()))?;
            set(&names.sender, &JsValue::from_str(&m.sender.0))?;
            set(&names.body, &opt_str(&m.body))?;
            set(&names.undecryptable, &m.undecryptable.map_or(JsValue::NULL, JsValue::from_str))?;
            set(&names.seq, &opt_num(m.seq))?;
            set(&names.client_ts, &JsValue::from_f64(m.client_ts as f64))?;
            set(&names.server_ts, &opt_num(m.server_ts))?;
            set(&names.edited, &JsValue::from_bool(m.edited))?;
            set(&names.deleted, &JsValue::from_bool(m.deleted))?;
            let status = Object::new();
            let state = match &m.status {
                MessageStatus::Pending => "pending",
                MessageStatus::Sending => "sending",
                MessageStatus::Sent => "sent",
                MessageStatus::Cancelled => "cancelled",
                MessageStatus::Failed { code, message, recoverable } => {
                    Reflect::set(&status, &names.code, &JsValue::from_str(code))?;
                    Reflect::set(&status, &names.message, &JsValue::from_str(message))?;
                    Reflect::set(&status, &names.recoverable, &JsValue::from_bool(*recoverable))?;
                    "failed"
                }
            };
            Reflect::set(&status, &names.state, &JsValue::from_str(state))?;
            set(&names.status, &status)?;
            array.set(i as u32, o.into());
        }
        Ok(array)
    }
}

/// Property names of a message, converted to JS once per page.
struct Names {
    id: JsValue,
    thread_id: JsValue,
    sender: JsValue,
    body: JsValue,
    undecryptable: JsValue,
    seq: JsValue,
    client_ts: JsValue,
    server_ts: JsValue,
    edited: JsValue,
    deleted: JsValue,
    status: JsValue,
    state: JsValue,
    code: JsValue,
    message: JsValue,
    recoverable: JsValue,
}

impl Names {
    fn new() -> Names {
        let s = JsValue::from_str;
        Names {
            id: s("id"),
            thread_id: s("threadId"),
            sender: s("sender"),
            body: s("body"),
            undecryptable: s("undecryptable"),
            seq: s("seq"),
            client_ts: s("clientTs"),
            server_ts: s("serverTs"),
            edited: s("edited"),
            deleted: s("deleted"),
            status: s("status"),
            state: s("state"),
            code: s("code"),
            message: s("message"),
            recoverable: s("recoverable"),
        }
    }
}

fn to_js_json_compatible<T: serde::Serialize>(value: &T) -> Result<JsValue, JsError> {
    value.serialize(&serde_wasm_bindgen::Serializer::json_compatible()).map_err(js_error)
}
