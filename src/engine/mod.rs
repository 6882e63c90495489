//! The engine: runs the pure core over the ports. One [`Client`] per open
//! database; the JS `ChatClient` is a thin wrapper around it.
//!
//! Encryption happens before a store write starts, so a write never waits on
//! anything but the store (IndexedDB transactions auto-commit when idle).

mod error;
mod metrics;
mod mutations;
mod quarantine;
mod sync;
mod views;

pub use error::{Error, Result, ERROR_CODES, ERROR_CODES_TS};
pub use metrics::{Ratio, RoundStats, SyncStats, SyncStatus, ROUNDS_KEPT};
pub use quarantine::{Quarantine, QuarantinedChange, CHANGE_READER, MAX_QUARANTINED};
pub use sync::{Feed, RoundReport};
pub use views::ErrorInfo;
pub use views::{ClientEvent, Message, OutboxEntry, SyncState, Thread, ThreadChange};

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use crate::core::envelope::{Aad, Envelope, SealKind};
use crate::core::keys::{Invite, KeyError, KeyId, KeyRing, ThreadKey};
use crate::core::model::{
    display_order, validate_body, validate_title, DeviceId, Id, IdGenerator, InvalidInput, MessageId,
    MessageRecord, MessageStatus, Millis, ThreadId, ThreadRecord, UserId, MAX_MEMBERS,
};
use crate::core::outbox;
use crate::core::sync::MutationBody;
use crate::ports::{Clock, KeyWrapper, Store, WrappedKey, Write};

/// The metadata key of the device record.
const META_DEVICE: &str = "device";

/// Who this database belongs to, written once when it is created.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct DeviceMeta {
    device_id: DeviceId,
    user_id: UserId,
    device_name: Option<String>,
    created_at: Millis,
}

/// Default and largest page of [`Client::messages`].
pub const DEFAULT_PAGE: u32 = 50;
/// Largest page of [`Client::messages`].
pub const MAX_PAGE: u32 = 1000;

/// Identifies a subscription, to end it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubscriptionId(u64);

type Callback = Rc<dyn Fn(&ThreadChange)>;
type EventCallback = Rc<dyn Fn(&ClientEvent)>;
type ChangeSink = Rc<dyn Fn(&LocalChanges)>;
type RandomSource = Box<dyn FnMut(&mut [u8])>;

/// What one step of this client changed in the store, for other tabs on
/// the same database: they re-read these and tell their own subscribers
/// ([`Client::refresh`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct LocalChanges {
    /// Messages written.
    pub messages: Vec<MessageId>,
    /// Messages whose status changed.
    pub statuses: Vec<MessageId>,
    /// Threads were written.
    pub threads: bool,
    /// Thread keys were added or rotated.
    pub keys: bool,
    /// The outbox got something new to push.
    pub outbox: bool,
}

/// An open chat client over a store, a clock and a key wrapper.
pub struct Client<S: Store, C: Clock, W: KeyWrapper> {
    store: S,
    clock: C,
    wrapper: W,
    device: DeviceMeta,
    ids: IdGenerator,
    keys: RefCell<KeyRing>,
    /// Stored key records, to persist encryption counts and rotations.
    key_records: RefCell<KeyRecords>,
    subscribers: RefCell<Vec<(SubscriptionId, ThreadId, Callback)>>,
    listeners: RefCell<Vec<(SubscriptionId, EventCallback)>>,
    change_sink: RefCell<Option<ChangeSink>>,
    next_subscription: Cell<u64>,
    closed: Cell<bool>,
    /// Serializes this client's read-decide-write steps on the outbox and
    /// messages (user actions and sync), so that none works from a stale
    /// read. Other tabs are kept out by `Write::Expect`.
    write_lock: tokio::sync::Mutex<()>,
    /// One sync round at a time.
    round_lock: tokio::sync::Mutex<()>,
    sync: RefCell<sync::SyncMemory>,
    /// Where ids and backoff jitter get their randomness; the platform's by
    /// default, a seeded one in deterministic simulations.
    random_source: RefCell<Option<RandomSource>>,
    /// The change reader this client acts as ([`CHANGE_READER`] but in a
    /// test of upgrades), and the change type it then refuses.
    reader: Cell<u32>,
    refused_change_kind: Cell<Option<&'static str>>,
}

/// Fresh random bytes from the platform (crypto.getRandomValues in browsers).
pub(crate) fn random<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).expect("the platform has a random source");
    bytes
}

/// Keys' encryption counts are persisted in steps of this many; on reopen the
/// count resumes one step higher, so it is never under-counted.
const COUNT_STEP: u64 = 1024;

impl<S: Store, C: Clock, W: KeyWrapper> Client<S, C, W> {
    /// Opens a client on `store` for `user`, creating the device record on
    /// first use and unwrapping the stored thread keys.
    pub async fn open(
        store: S,
        clock: C,
        wrapper: W,
        user: UserId,
        device_name: Option<String>,
    ) -> Result<Self> {
        let device = match store.meta(META_DEVICE).await? {
            Some(json) => {
                let device: DeviceMeta = serde_json::from_str(&json).map_err(|e| {
                    crate::ports::StoreError::Corrupt { store: "meta", reason: e.to_string() }
                })?;
                if device.user_id != user {
                    return Err(Error::WrongUser { owner: device.user_id.0, user: user.0 });
                }
                device
            }
            None => {
                let now = clock.now();
                let device = DeviceMeta {
                    device_id: DeviceId::from_parts(now, random()),
                    user_id: user,
                    device_name,
                    created_at: now,
                };
                let value = serde_json::to_string(&device).expect("device meta serializes");
                store.write(vec![Write::PutMeta { key: META_DEVICE.into(), value }]).await?;
                device
            }
        };

        let records = store.keys().await?;
        let current = current_keys(&records);
        let mut ring = KeyRing::default();
        let mut key_records = KeyRecords::default();
        for record in records {
            // A key that does not unwrap stays out of the ring: its messages
            // show as undecryptable (key_missing) instead of failing the open.
            // A key id clash means a forged or broken record: it stays out too.
            if let Ok(key) = wrapper.unwrap(record.thread_id, record.key_id, &record.wrapped).await {
                let is_current = current.get(&record.thread_id) == Some(&record.key_id);
                let _ = ring.insert(record.thread_id, key, record.encryptions + COUNT_STEP, is_current);
            }
            key_records.insert(record.key_id, record);
        }

        let client = Client {
            store,
            clock,
            wrapper,
            device,
            ids: IdGenerator::default(),
            keys: RefCell::new(ring),
            key_records: RefCell::new(key_records),
            subscribers: RefCell::default(),
            listeners: RefCell::default(),
            change_sink: RefCell::default(),
            next_subscription: Cell::new(0),
            closed: Cell::new(false),
            write_lock: tokio::sync::Mutex::new(()),
            round_lock: tokio::sync::Mutex::new(()),
            sync: RefCell::default(),
            random_source: RefCell::default(),
            reader: Cell::new(CHANGE_READER),
            refused_change_kind: Cell::new(None),
        };
        client.retry_quarantine().await?;
        Ok(client)
    }

    /// The user this client acts for.
    pub fn user(&self) -> &UserId {
        &self.device.user_id
    }

    /// The store this client runs on.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// This device's id.
    pub fn device_id(&self) -> DeviceId {
        self.device.device_id
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.get() {
            Err(Error::Closed)
        } else {
            Ok(())
        }
    }

    fn new_id(&self) -> Id {
        self.ids.next(self.clock.now(), self.random_bytes())
    }

    /// Draws ids and backoff jitter from `source` instead of the platform:
    /// for simulations whose failures must replay exactly from a seed.
    /// Key material and nonces always come from the platform.
    pub fn set_random_source(&self, source: impl FnMut(&mut [u8]) + 'static) {
        *self.random_source.borrow_mut() = Some(Box::new(source));
    }

    fn random_bytes<const N: usize>(&self) -> [u8; N] {
        match self.random_source.borrow_mut().as_mut() {
            Some(source) => {
                let mut bytes = [0u8; N];
                source(&mut bytes);
                bytes
            }
            None => random(),
        }
    }

    /// Creates a thread with a fresh key; `members` besides the caller.
    pub async fn create_thread(&self, title: &str, members: &[String]) -> Result<Thread> {
        self.check_open()?;
        validate_title(title)?;
        if members.len() > MAX_MEMBERS {
            return Err(InvalidInput::TooManyMembers(members.len()).into());
        }
        let mut all = vec![self.device.user_id.clone()];
        for member in members {
            all.push(UserId::parse(member)?);
        }
        crate::core::model::sort_by_key(&mut all, |u| u);
        all.dedup();
        // The caller counts: the server holds a thread to MAX_MEMBERS in all.
        if all.len() > MAX_MEMBERS {
            return Err(InvalidInput::TooManyMembers(all.len()).into());
        }

        let now = self.clock.now();
        let thread_id = ThreadId(self.new_id());
        let (key, key_record) = self.new_current_key(thread_id).await?;
        let title_aad = title_aad(thread_id, &self.device.user_id);
        let mut ring = KeyRing::default();
        ring.insert(thread_id, key.clone(), 0, true)?;
        let sealed = ring.seal(&title_aad, title.as_bytes()).map_err(|e| Error::Seal(e.to_string()))?;
        let record = ThreadRecord {
            id: thread_id,
            title: sealed.clone(),
            members: all.clone(),
            created_by: self.device.user_id.clone(),
            created_at: now,
        };
        let mutation = outbox::new_row(
            MutationBody::CreateThread {
                thread_id,
                title: sealed,
                members: all.iter().filter(|m| **m != self.device.user_id).cloned().collect(),
                created_at: now,
            },
            now,
        );
        self.store
            .write(vec![
                Write::PutKey(key_record.clone()),
                Write::PutThread(record.clone()),
                Write::Enqueue(mutation),
            ])
            .await?;
        // Only a stored key joins the ring: a failed write leaves no trace.
        self.keys.borrow_mut().insert(thread_id, key, 1, true)?;
        self.key_records.borrow_mut().insert(key_record.key_id, key_record);
        // The thread first, then what is queued for it (the `outbox` event).
        self.emit(&ClientEvent::Threads);
        self.changed(LocalChanges { threads: true, keys: true, outbox: true, ..LocalChanges::default() });
        Ok(self.thread_view(&record))
    }

    /// A fresh key for `thread_id` and its wrapped record, marked current.
    async fn new_current_key(&self, thread_id: ThreadId) -> Result<(ThreadKey, WrappedKey)> {
        let key = ThreadKey::generate()?;
        let record = WrappedKey {
            key_id: key.id(),
            thread_id,
            wrapped: self.wrapper.wrap(thread_id, &key).await?,
            current: true,
            encryptions: 0,
            created_at: self.clock.now(),
        };
        Ok((key, record))
    }

    /// Every thread on this device.
    pub async fn threads(&self) -> Result<Vec<Thread>> {
        self.check_open()?;
        let records = self.store.threads().await?;
        Ok(records.iter().map(|r| self.thread_view(r)).collect())
    }

    /// Sends `text` to a thread: the message is stored with its outbox row in
    /// one write and returned as `pending`. Subscribers see it at once, before
    /// the write (a local echo); if the write fails they see it `failed`.
    pub async fn send(&self, thread_id: ThreadId, text: &str) -> Result<Message> {
        self.check_open()?;
        validate_body(text)?;
        if !self.keys.borrow().has_thread(thread_id) {
            return Err(Error::NotFound { what: "thread", id: thread_id.to_string() });
        }
        // Rotation is its own write, before this message is sealed: if it
        // fails, the message is not sent and the old key stays current.
        let needs_rotation = self.keys.borrow().needs_rotation(thread_id);
        if needs_rotation {
            self.rotate_thread_key(thread_id).await?;
        }
        let now = self.clock.now();
        let id = MessageId(self.new_id());
        let aad = Aad { thread_id, message_id: id.0, sender: &self.device.user_id, kind: SealKind::Send };
        let body = self.seal(&aad, text.as_bytes())?;
        let record = MessageRecord {
            id,
            thread_id,
            sender: self.device.user_id.clone(),
            body: Some(body.clone()),
            seq: None,
            client_ts: now,
            server_ts: None,
            edited: false,
            deleted: false,
            status: MessageStatus::Pending,
            order: display_order(None, now),
        };
        let mut view = self.message_view_with_body(&record, Some(text.to_owned()));
        self.notify(thread_id, vec![view.clone()]);

        let mutation =
            outbox::new_row(MutationBody::Send { thread_id, message_id: id, body, client_ts: now }, now);
        let mut writes = vec![Write::PutMessage(record), Write::Enqueue(mutation)];
        writes.extend(self.key_count_update(thread_id));
        if let Err(e) = self.store.write(writes).await {
            let error = Error::from(e);
            view.status = MessageStatus::Failed {
                code: error.code().into(),
                message: error.to_string(),
                recoverable: false,
            };
            self.notify(thread_id, vec![view]);
            return Err(error);
        }
        self.changed(LocalChanges { messages: vec![id], outbox: true, ..LocalChanges::default() });
        Ok(view)
    }

    /// Gives a thread a new current key: new messages are sealed with it,
    /// while older ones keep opening with the key they name. The new key and
    /// the demoted old one are stored in one write; if it fails, nothing
    /// changes. [`send`](Self::send) also rotates on its own once a key has
    /// sealed [`ROTATE_AFTER`](crate::core::keys::ROTATE_AFTER) times.
    pub async fn rotate_thread_key(&self, thread_id: ThreadId) -> Result<()> {
        self.check_open()?;
        if self.keys.borrow().current_key_id(thread_id).is_none() {
            return Err(Error::NotFound { what: "thread", id: thread_id.to_string() });
        }
        let (key, new_record) = self.new_current_key(thread_id).await?;
        // Read the current key after the wrap's await: a send may have
        // counted a seal meanwhile, and a concurrent rotation may have won.
        let old_record = {
            let keys = self.keys.borrow();
            let old_id = keys
                .current_key_id(thread_id)
                .ok_or_else(|| Error::NotFound { what: "thread", id: thread_id.to_string() })?;
            self.key_records.borrow().get(&old_id).map(|record| WrappedKey {
                current: false,
                encryptions: record.encryptions.max(keys.encryption_count(old_id)),
                ..record.clone()
            })
        };
        let mut writes = vec![Write::PutKey(new_record.clone())];
        writes.extend(old_record.clone().map(Write::PutKey));
        self.store.write(writes).await?;
        self.keys.borrow_mut().insert(thread_id, key, 0, true)?;
        let mut records = self.key_records.borrow_mut();
        if let Some(old) = old_record {
            records.insert(old.key_id, old);
        }
        records.insert(new_record.key_id, new_record);
        self.changed(LocalChanges { keys: true, ..LocalChanges::default() });
        Ok(())
    }

    /// An invite code for a thread: its id and current key as base64url, to
    /// put in the fragment of a link (`#k=<code>`), which browsers do not
    /// send to servers. The code *is* the key: never log it or send it to
    /// a server.
    ///
    /// `server_invite` is the server's invite token for the thread
    /// ([`Transport::create_invite`](crate::ports::Transport::create_invite)),
    /// which lets the invitee join it there; without one the code only
    /// carries the key (for a member added by other means).
    pub fn export_thread_invite(&self, thread_id: ThreadId, server_invite: Option<String>) -> Result<String> {
        self.check_open()?;
        let keys = self.keys.borrow();
        let key = keys
            .current_key(thread_id)
            .ok_or_else(|| Error::NotFound { what: "thread", id: thread_id.to_string() })?;
        Ok(Invite { thread_id, key: key.clone(), server_invite }.encode())
    }

    /// Adds the thread key carried by an invite code (bare, or as a link
    /// fragment `#k=<code>`) to this device, stored wrapped, and returns the
    /// thread's id. The thread's messages, and its title and members, open
    /// once they arrive (by sync); importing the same invite twice is
    /// harmless.
    ///
    /// For a thread this device has no key for yet, the key becomes the one
    /// new messages are sealed with. For a thread it already has a key for,
    /// the key is only added for opening: an invite, which anyone who knows
    /// the thread id can craft, never changes which key this device seals
    /// with. A key id already held with other bytes, or for another thread,
    /// is refused with `key_id_conflict`, and nothing is written.
    pub async fn import_thread_invite(&self, code: &str) -> Result<ThreadId> {
        self.check_open()?;
        let invite = Invite::from_fragment(code)?;
        let thread_id = invite.thread_id;
        let key_id = invite.key.id();
        let current = {
            let keys = self.keys.borrow();
            if let Some((held_thread, held)) = keys.key(key_id) {
                if held_thread != thread_id || !same_secret(held, &invite.key) {
                    return Err(KeyError::KeyIdConflict(key_id).into());
                }
                return Ok(thread_id);
            }
            // A stored record that did not unwrap (another device key, say)
            // may be replaced by the real key, but only for its own thread.
            if self.key_records.borrow().get(&key_id).is_some_and(|r| r.thread_id != thread_id) {
                return Err(KeyError::KeyIdConflict(key_id).into());
            }
            keys.current_key_id(thread_id).is_none()
        };
        let record = WrappedKey {
            key_id,
            thread_id,
            wrapped: self.wrapper.wrap(thread_id, &invite.key).await?,
            current,
            encryptions: 0,
            created_at: self.clock.now(),
        };
        // Check again after the await: a concurrent import may have added it.
        if let Some((held_thread, held)) = self.keys.borrow().key(key_id) {
            if held_thread != thread_id || !same_secret(held, &invite.key) {
                return Err(KeyError::KeyIdConflict(key_id).into());
            }
            return Ok(thread_id);
        }
        let mut writes = vec![Write::PutKey(record.clone())];
        // With the server's invite token, joining goes through the outbox:
        // it survives reloads and offline time like any other change.
        if let Some(invite) = invite.server_invite.clone() {
            let join = MutationBody::Join { thread_id, invite };
            writes.push(Write::Enqueue(outbox::new_row(join, self.clock.now())));
        }
        self.store.write(writes).await?;
        let current = current && self.keys.borrow().current_key_id(thread_id).is_none();
        self.keys.borrow_mut().insert(thread_id, invite.key, 0, current)?;
        self.key_records.borrow_mut().insert(key_id, record);
        self.changed(LocalChanges { keys: true, outbox: true, ..LocalChanges::default() });
        Ok(thread_id)
    }

    /// Up to `limit` messages of a thread before the message `before` (or the
    /// newest), oldest first. Pass the first message's id to page further back.
    pub async fn messages(
        &self,
        thread_id: ThreadId,
        before: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<Message>> {
        self.check_open()?;
        let limit = limit.min(MAX_PAGE);
        let before = match before {
            None => None,
            Some(id) => {
                let anchor = self.store.message(id).await?;
                match anchor {
                    Some(m) if m.thread_id == thread_id => Some((m.order, m.id)),
                    _ => return Err(Error::NotFound { what: "message", id: id.to_string() }),
                }
            }
        };
        let mut page = self.store.messages_before(thread_id, before, limit).await?;
        page.reverse();
        Ok(page.iter().map(|m| self.message_view(m)).collect())
    }

    /// Calls `callback` on every change to a thread's messages made or seen by
    /// this client, until [`unsubscribe`](Self::unsubscribe).
    pub fn subscribe(
        &self,
        thread_id: ThreadId,
        callback: impl Fn(&ThreadChange) + 'static,
    ) -> SubscriptionId {
        let id = SubscriptionId(self.next_subscription.get());
        self.next_subscription.set(id.0 + 1);
        self.subscribers.borrow_mut().push((id, thread_id, Rc::new(callback)));
        id
    }

    /// Calls `callback` on every client-wide event (sync state, message
    /// status, thread list, conflicts), until [`unsubscribe`](Self::unsubscribe).
    pub fn on_event(&self, callback: impl Fn(&ClientEvent) + 'static) -> SubscriptionId {
        let id = SubscriptionId(self.next_subscription.get());
        self.next_subscription.set(id.0 + 1);
        self.listeners.borrow_mut().push((id, Rc::new(callback)));
        id
    }

    /// Ends a subscription or event listener; ending one twice is harmless.
    pub fn unsubscribe(&self, id: SubscriptionId) {
        self.subscribers.borrow_mut().retain(|(s, _, _)| *s != id);
        self.listeners.borrow_mut().retain(|(s, _)| *s != id);
    }

    /// Closes the client: later calls fail with [`Error::Closed`] and
    /// subscribers hear nothing more.
    pub fn close(&self) {
        self.closed.set(true);
        self.subscribers.borrow_mut().clear();
        self.listeners.borrow_mut().clear();
    }

    /// Tells every event listener.
    pub fn emit(&self, event: &ClientEvent) {
        let listeners: Vec<EventCallback> =
            self.listeners.borrow().iter().map(|(_, cb)| cb.clone()).collect();
        for listener in listeners {
            listener(event);
        }
    }

    /// Calls `sink` with what each step of this client wrote (for telling
    /// other tabs); one sink, replacing any earlier one.
    pub fn set_change_sink(&self, sink: impl Fn(&LocalChanges) + 'static) {
        *self.change_sink.borrow_mut() = Some(Rc::new(sink));
    }

    fn changed(&self, changes: LocalChanges) {
        if changes.outbox {
            self.emit(&ClientEvent::Outbox);
        }
        let sink = self.change_sink.borrow().clone();
        if let Some(sink) = sink {
            sink(&changes);
        }
    }

    /// Another tab wrote `changes` to the shared store: re-read them and
    /// tell this client's subscribers and listeners, as if made here.
    pub async fn refresh(&self, changes: &LocalChanges) -> Result<()> {
        self.check_open()?;
        if changes.keys {
            self.reload_keys().await?;
        }
        let mut ids = changes.messages.clone();
        ids.extend(changes.statuses.iter().copied());
        crate::core::model::sort_by_key(&mut ids, |id| id);
        ids.dedup();
        let mut applied =
            mutations::Applied { messages: self.store.messages_by_id(&ids).await?, ..Default::default() };
        applied.status_changed = changes.statuses.clone();
        self.announce_here(&applied);
        if changes.threads {
            self.emit(&ClientEvent::Threads);
        }
        if changes.outbox {
            self.emit(&ClientEvent::Outbox);
        }
        Ok(())
    }

    /// Adds keys another tab stored (a thread it created or joined, a
    /// rotation) to this client's ring.
    pub async fn reload_keys(&self) -> Result<()> {
        let records = self.store.keys().await?;
        let current = current_keys(&records);
        for record in records {
            let is_current = current.get(&record.thread_id) == Some(&record.key_id);
            let held = self.keys.borrow().key(record.key_id).map(|(_, key)| key.clone());
            let key = match held {
                Some(key) => key,
                None => match self.wrapper.unwrap(record.thread_id, record.key_id, &record.wrapped).await {
                    Ok(key) => key,
                    Err(_) => continue,
                },
            };
            let counted = record.encryptions + COUNT_STEP;
            let _ = self.keys.borrow_mut().insert(record.thread_id, key, counted, is_current);
            let mut records = self.key_records.borrow_mut();
            let encryptions =
                records.get(&record.key_id).map_or(0, |r| r.encryptions).max(record.encryptions);
            records.insert(record.key_id, WrappedKey { encryptions, ..record });
        }
        Ok(())
    }

    /// Whether anyone listens to this thread's changes (views are built
    /// only for them).
    fn has_subscribers(&self, thread_id: ThreadId) -> bool {
        self.subscribers.borrow().iter().any(|(_, t, _)| *t == thread_id)
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.closed.get()
    }

    fn notify(&self, thread_id: ThreadId, messages: Vec<Message>) {
        // Callbacks may call back into the client: call them on a copy.
        let callbacks: Vec<Callback> = self
            .subscribers
            .borrow()
            .iter()
            .filter(|(_, t, _)| *t == thread_id)
            .map(|(_, _, cb)| cb.clone())
            .collect();
        let change = ThreadChange { thread_id, messages };
        for callback in callbacks {
            callback(&change);
        }
    }

    fn seal(&self, aad: &Aad<'_>, plaintext: &[u8]) -> Result<Envelope> {
        self.keys.borrow_mut().seal(aad, plaintext).map_err(|e| Error::Seal(e.to_string()))
    }

    /// A key record update when the thread key's count passed the next
    /// persisted step, to go in the same write as the seal it counts.
    fn key_count_update(&self, thread_id: ThreadId) -> Option<Write> {
        let keys = self.keys.borrow();
        let key_id = keys.current_key_id(thread_id)?;
        let count = keys.encryption_count(key_id);
        let mut records = self.key_records.borrow_mut();
        let record = records.get_mut(&key_id)?;
        if count < record.encryptions + COUNT_STEP {
            return None;
        }
        record.encryptions = count;
        Some(Write::PutKey(record.clone()))
    }

    fn thread_view(&self, record: &ThreadRecord) -> Thread {
        let aad = title_aad(record.id, &record.created_by);
        let (title, undecryptable) = self.open_text(&aad, &record.title);
        Thread {
            id: record.id,
            title,
            undecryptable,
            members: record.members.clone(),
            created_by: record.created_by.clone(),
            created_at: record.created_at,
        }
    }

    fn message_view(&self, record: &MessageRecord) -> Message {
        match &record.body {
            None => self.message_view_with_body(record, None),
            Some(body) => {
                let kind = if record.edited { SealKind::Edit } else { SealKind::Send };
                let aad = Aad {
                    thread_id: record.thread_id,
                    message_id: record.id.0,
                    sender: &record.sender,
                    kind,
                };
                let (text, undecryptable) = self.open_text(&aad, body);
                Message { undecryptable, ..self.message_view_with_body(record, text) }
            }
        }
    }

    fn message_view_with_body(&self, record: &MessageRecord, body: Option<String>) -> Message {
        Message {
            id: record.id,
            thread_id: record.thread_id,
            sender: record.sender.clone(),
            body,
            undecryptable: None,
            seq: record.seq,
            client_ts: record.client_ts,
            server_ts: record.server_ts,
            edited: record.edited,
            deleted: record.deleted,
            status: record.status.clone(),
        }
    }

    /// Opens sealed text, failing closed: on any failure the text is `None`
    /// and the reason code says why; nothing else is ever shown.
    fn open_text(&self, aad: &Aad<'_>, envelope: &Envelope) -> (Option<String>, Option<&'static str>) {
        match self.keys.borrow().open(aad, envelope) {
            Ok(bytes) => match String::from_utf8(bytes.to_vec()) {
                Ok(text) => (Some(text), None),
                Err(_) => (None, Some("invalid_utf8")),
            },
            Err(e) => (None, Some(e.code())),
        }
    }
}

/// One current key per thread: the newest record that says so. Two can say
/// so if two rotations of a thread raced (each demotes the key it saw as
/// current); either key works for everyone, so picking one deterministically
/// is enough.
fn current_keys(records: &[WrappedKey]) -> CurrentKeys {
    let mut current: Vec<(ThreadId, (Millis, KeyId))> = Vec::new();
    for record in records.iter().filter(|r| r.current) {
        let candidate = (record.created_at, record.key_id);
        match current.iter_mut().find(|(thread, _)| *thread == record.thread_id) {
            Some((_, best)) => *best = (*best).max(candidate),
            None => current.push((record.thread_id, candidate)),
        }
    }
    CurrentKeys(current.into_iter().map(|(thread, (_, key))| (thread, key)).collect())
}

/// The current key of each thread (see [`current_keys`]).
struct CurrentKeys(Vec<(ThreadId, KeyId)>);

impl CurrentKeys {
    fn get(&self, thread_id: &ThreadId) -> Option<&KeyId> {
        self.0.iter().find(|(thread, _)| thread == thread_id).map(|(_, key)| key)
    }
}

/// The stored record of each key in the ring, by key id. A few per thread:
/// a scan costs nothing next to the store, and far less wasm than a map.
#[derive(Default)]
struct KeyRecords(Vec<WrappedKey>);

impl KeyRecords {
    fn get(&self, key_id: &KeyId) -> Option<&WrappedKey> {
        self.0.iter().find(|r| r.key_id == *key_id)
    }

    fn get_mut(&mut self, key_id: &KeyId) -> Option<&mut WrappedKey> {
        self.0.iter_mut().find(|r| r.key_id == *key_id)
    }

    fn insert(&mut self, key_id: KeyId, record: WrappedKey) {
        match self.get_mut(&key_id) {
            Some(slot) => *slot = record,
            None => self.0.push(record),
        }
    }
}

/// Whether two keys have the same bytes, in time that does not depend on
/// where they differ.
fn same_secret(a: &ThreadKey, b: &ThreadKey) -> bool {
    let diff = a.secret_bytes().iter().zip(b.secret_bytes().iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    diff == 0
}

fn title_aad(thread_id: ThreadId, creator: &UserId) -> Aad<'_> {
    Aad { thread_id, message_id: thread_id.0, sender: creator, kind: SealKind::ThreadTitle }
}
