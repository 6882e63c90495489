//! Several tabs of one app on one database: which tab is the sync leader,
//! and how tabs tell each other about changes.
//!
//! Every tab (or worker) that opens a client writes to the same IndexedDB
//! database, but only one of them, the *leader*, talks to the network: it
//! alone drains the outbox, pulls and keeps the WebSocket. The others are
//! followers; they wake the leader when they queue something and re-read the
//! database when the leader says something changed. Both go through names
//! derived from the database and the user by [`scope_name`]:
//! `dovecote:<dbName>:<userId>`.
//!
//! - [`LeaderElection`] picks the leader with the Web Locks API: every tab
//!   requests the exclusive lock of that name and the holder leads until it
//!   lets go, by dropping the election, or because its tab closed, crashed
//!   or was discarded (the browser then releases the lock itself, and the
//!   next waiting tab gets it at once). Where `navigator.locks` is missing
//!   (Safari before 15.4, pages served over plain `http:` from a host other
//!   than localhost, which are not a secure context) it falls back to a
//!   lease in IndexedDB: see [`Backend::Lease`].
//! - [`TabChannel`] is a BroadcastChannel of that name carrying small JSON
//!   [`TabMessage`]s between the tabs.
//!
//! The leader's work is idempotent (the server ignores a mutation it has
//! already applied, and outbox updates are compare-and-set), so even the
//! rare double leadership the lease fallback allows (a leader frozen past
//! its lease's expiry, a wall clock set back) costs requests, not
//! correctness.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use idb::{DatabaseEvent as _, Factory, KeyPath, ObjectStoreParams, TransactionMode, TransactionResult};
use js_sys::{Function, Object, Promise, Reflect};
use wasm_bindgen::closure::Closure;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use serde::de::Error as _;
use serde::ser::SerializeStruct as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::core::model::MessageId;
use crate::engine::LocalChanges;
use crate::web::idb::{describe, js_text};

/// How long a lease holds without renewal ([`Backend::Lease`]).
pub const LEASE_EXPIRY_MS: u32 = 5_000;
/// How often the leader renews its lease ([`Backend::Lease`]).
pub const LEASE_RENEW_MS: u32 = 2_000;
/// How often a follower checks whether the lease is free ([`Backend::Lease`]).
pub const LEASE_POLL_MS: u32 = 1_000;

/// The database that keeps the leases of [`Backend::Lease`], one per origin.
/// It is apart from the app's databases so that their schema upgrades and
/// deletions never touch it.
pub const LEASE_DATABASE: &str = "dovecote-leases";
const LEASES: &str = "leases";

/// The lock, channel and lease name for one user's database:
/// `dovecote:<db_name>:<user_id>`.
pub fn scope_name(db_name: &str, user_id: &str) -> String {
    format!("dovecote:{db_name}:{user_id}")
}

/// Why a tab coordination part could not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TabError {
    /// The browser context lacks the API (e.g. `BroadcastChannel`).
    #[error("{0} is not available in this browser context")]
    Unsupported(&'static str),
    /// The browser refused the call.
    #[error("{0}")]
    Browser(String),
}

impl TabError {
    /// A stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TabError::Unsupported(_) => "tabs_unsupported",
            TabError::Browser(_) => "tabs",
        }
    }
}

#[wasm_bindgen]
extern "C" {
    /// `navigator.locks` (web-sys has it only behind `web_sys_unstable_apis`).
    type LockManager;

    #[wasm_bindgen(method, catch)]
    fn request(
        this: &LockManager,
        name: &str,
        options: &JsValue,
        callback: &Function,
    ) -> Result<LockRequest, JsValue>;

    /// The promise `LockManager.request` returns.
    type LockRequest;

    /// `then(onFulfilled, onRejected)` with plain JS functions.
    #[wasm_bindgen(method, structural, js_name = then)]
    fn then_either(this: &LockRequest, on_fulfilled: &JsValue, on_rejected: &JsValue) -> JsValue;

    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, ms: u32) -> JsValue;
}

/// `navigator.locks` of this window or worker, if it has a usable one.
fn lock_manager() -> Option<LockManager> {
    let navigator = Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let locks = Reflect::get(&navigator, &"locks".into()).ok()?;
    let request = Reflect::get(&locks, &"request".into()).ok()?;
    (locks.is_object() && request.is_function()).then(|| locks.unchecked_into())
}

/// How a [`LeaderElection`] decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The Web Locks API: hand-over within milliseconds of the leader
    /// letting go, including when its tab closes or crashes.
    WebLocks,
    /// A lease record `{name, holder, expires_at}` in the IndexedDB database
    /// [`LEASE_DATABASE`], taken and renewed by compare-and-set in one
    /// readwrite transaction. The leader renews it every
    /// [`LEASE_RENEW_MS`]; followers check every [`LEASE_POLL_MS`] and take
    /// it when it is free or older than [`LEASE_EXPIRY_MS`]. A leader that
    /// lets go deletes its lease, so the next follower takes over within
    /// about [`LEASE_POLL_MS`]; after a crash it takes up to
    /// [`LEASE_EXPIRY_MS`] + [`LEASE_POLL_MS`]. Browsers slow timers in
    /// background tabs, so a hidden leader may miss a renewal and lose the
    /// lead to another tab; it then steps down at its next renewal.
    Lease,
}

/// This tab's part in choosing the sync leader of one database (see the
/// module docs). Dropping it lets go of the lead, or of the wait for it.
#[must_use = "dropping the election ends this tab's candidacy at once"]
pub struct LeaderElection {
    shared: Rc<Shared>,
}

struct Shared {
    name: String,
    tab: String,
    backend: Backend,
    leader: Cell<bool>,
    closed: Cell<bool>,
    on_change: Box<dyn Fn(bool)>,
    /// Web Locks: cancels the request while it waits.
    abort: RefCell<Option<web_sys::AbortController>>,
    /// Web Locks: resolves the promise that holds the lock.
    release: RefCell<Option<Function>>,
    /// Lease: when our lease runs out, as far as we know.
    lease_until: Cell<f64>,
    /// Lease: ends the loop's current wait.
    wake: RefCell<Option<Function>>,
    /// Lease, tests: stop without letting go, as a crashed tab would.
    crashed: Cell<bool>,
}

impl Shared {
    /// Records the new state and tells the owner if it changed; silent once
    /// the election is dropped.
    fn set_leader(&self, leader: bool) {
        if self.closed.get() {
            return;
        }
        if self.leader.replace(leader) != leader {
            (self.on_change)(leader);
        }
    }
}

impl LeaderElection {
    /// Joins the election `name` (see [`scope_name`]) with the Web Locks API,
    /// or with the lease where that is missing. `on_change(true)` is called
    /// when this tab becomes the leader and `on_change(false)` when it stops
    /// being it without having been dropped; never synchronously from here.
    pub fn start(name: &str, on_change: impl Fn(bool) + 'static) -> Self {
        let backend = if lock_manager().is_some() { Backend::WebLocks } else { Backend::Lease };
        Self::start_with(name, backend, on_change).expect("the backend was available")
    }

    /// Joins the election with the given backend. Fails with
    /// [`TabError::Unsupported`] when it is [`Backend::WebLocks`] and the
    /// context has no `navigator.locks`. Every tab of one app must use the
    /// same backend for one name, or two of them will lead.
    pub fn start_with(
        name: &str,
        backend: Backend,
        on_change: impl Fn(bool) + 'static,
    ) -> Result<Self, TabError> {
        let locks = match backend {
            Backend::WebLocks => Some(lock_manager().ok_or(TabError::Unsupported("navigator.locks"))?),
            Backend::Lease => None,
        };
        let shared = Rc::new(Shared {
            name: name.to_owned(),
            tab: new_tab_id(),
            backend,
            leader: Cell::new(false),
            closed: Cell::new(false),
            on_change: Box::new(on_change),
            abort: RefCell::default(),
            release: RefCell::default(),
            lease_until: Cell::new(0.0),
            wake: RefCell::default(),
            crashed: Cell::new(false),
        });
        match locks {
            Some(locks) => request_lock(&shared, locks),
            None => wasm_bindgen_futures::spawn_local(lease_loop(shared.clone())),
        }
        Ok(LeaderElection { shared })
    }

    /// Whether this tab leads now. Under the lease, also false once the
    /// lease has run out without renewal, even before the timer notices.
    pub fn is_leader(&self) -> bool {
        let shared = &self.shared;
        shared.leader.get()
            && (shared.backend == Backend::WebLocks || js_sys::Date::now() < shared.lease_until.get())
    }

    /// A random id for this candidate, for [`TabMessage::Leader`].
    pub fn tab_id(&self) -> &str {
        &self.shared.tab
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.shared.backend
    }

    /// Stops as a crashed tab would: no more renewals, and the lease is left
    /// to expire. Only [`Backend::Lease`]; a Web Lock cannot be kept by a
    /// tab that is gone.
    #[doc(hidden)]
    pub fn crash_for_test(&self) {
        self.shared.crashed.set(true);
    }
}

impl Drop for LeaderElection {
    fn drop(&mut self) {
        let shared = &self.shared;
        shared.closed.set(true);
        shared.leader.set(false);
        // Each of these may run JS that calls back into `shared`: take them
        // out of their cells first.
        let release = shared.release.take();
        let abort = shared.abort.take();
        let wake = shared.wake.take();
        if let Some(release) = release {
            let _ = release.call0(&JsValue::UNDEFINED);
        }
        if let Some(abort) = abort {
            abort.abort();
        }
        if let Some(wake) = wake {
            let _ = wake.call0(&JsValue::UNDEFINED);
        }
    }
}

/// Queues this tab for the lock. Its callback holds the lock with a promise
/// that stays pending until the election is dropped.
fn request_lock(shared: &Rc<Shared>, locks: LockManager) {
    let options = Object::new();
    if let Ok(abort) = web_sys::AbortController::new() {
        let _ = Reflect::set(&options, &"signal".into(), &abort.signal());
        *shared.abort.borrow_mut() = Some(abort);
    }
    let granted = {
        let shared = shared.clone();
        Closure::once(move |_lock: JsValue| -> Promise {
            shared.abort.take();
            if shared.closed.get() {
                return Promise::resolve(&JsValue::UNDEFINED);
            }
            let held = Promise::new(&mut |resolve, _reject| {
                *shared.release.borrow_mut() = Some(resolve);
            });
            shared.set_leader(true);
            held
        })
    };
    let request = locks.request(&shared.name, &options, granted.as_ref().unchecked_ref());
    let request = match request {
        Ok(request) => request,
        Err(error) => {
            // E.g. a SecurityError in an opaque origin: nothing will call
            // `granted`. This tab never leads, which a log line should say.
            web_sys::console::warn_2(&"dovecote: the leader lock was refused:".into(), &error);
            return;
        }
    };
    // Settles once the lock is released, or the request fails or is aborted.
    let settled = {
        let shared = shared.clone();
        let mut granted = Some(granted);
        Closure::once_into_js(move |outcome: JsValue| {
            drop(granted.take());
            shared.release.take();
            if shared.closed.get() {
                return;
            }
            let was_leader = shared.leader.get();
            shared.set_leader(false);
            if was_leader {
                // Lost without letting go (another context stole it): queue up again.
                request_lock(&shared, locks);
            } else {
                web_sys::console::warn_2(&"dovecote: the leader lock request failed:".into(), &outcome);
            }
        })
    };
    let _ = request.then_either(&settled, &settled);
}

fn new_tab_id() -> String {
    let mut bytes = [0u8; 8];
    if getrandom::fill(&mut bytes).is_err() {
        bytes = (js_sys::Math::random() * 2f64.powi(53)).to_bits().to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Resolves after `ms`, or earlier when the function left in `wake` is called.
fn sleep(ms: u32, wake: &RefCell<Option<Function>>) -> JsFuture {
    JsFuture::from(Promise::new(&mut |resolve, _reject| {
        let _ = set_timeout(&resolve, ms);
        *wake.borrow_mut() = Some(resolve);
    }))
}

async fn lease_loop(shared: Rc<Shared>) {
    while !shared.closed.get() && !shared.crashed.get() {
        let now = js_sys::Date::now();
        match take_lease(&shared, now).await {
            Ok(true) => {
                shared.lease_until.set(now + f64::from(LEASE_EXPIRY_MS));
                shared.set_leader(true);
            }
            Ok(false) => shared.set_leader(false),
            // The lease we hold may still run; lead until it ends.
            Err(_) if js_sys::Date::now() < shared.lease_until.get() => {}
            Err(error) => {
                web_sys::console::warn_1(
                    &format!("dovecote: leader lease check failed: {}", describe(&error)).into(),
                );
                shared.set_leader(false);
            }
        }
        if shared.closed.get() || shared.crashed.get() {
            break;
        }
        let wait = if shared.leader.get() { LEASE_RENEW_MS } else { LEASE_POLL_MS };
        let _ = sleep(wait, &shared.wake).await;
    }
    if !shared.crashed.get() {
        if let Err(error) = release_lease(&shared).await {
            web_sys::console::warn_1(
                &format!("dovecote: leader lease release failed: {}", describe(&error)).into(),
            );
        }
    }
}

async fn open_leases() -> Result<idb::Database, idb::Error> {
    let mut request = Factory::new()?.open(LEASE_DATABASE, Some(1))?;
    request.on_upgrade_needed(|event| {
        if let Ok(db) = event.database() {
            let mut params = ObjectStoreParams::new();
            params.key_path(Some(KeyPath::new_single("name")));
            let _ = db.create_object_store(LEASES, params);
        }
    });
    let mut db = request.await?;
    // Never block someone deleting the database.
    db.on_version_change(|event| {
        if let Ok(db) = event.database() {
            db.close();
        }
    });
    Ok(db)
}

fn lease_field(record: &JsValue, field: &str) -> JsValue {
    Reflect::get(record, &field.into()).unwrap_or(JsValue::UNDEFINED)
}

/// Takes or renews the lease if it is free, expired or ours, all in one
/// readwrite transaction (IndexedDB runs those on one store one at a time,
/// across tabs, so two tabs cannot both see it free). True if we hold it.
async fn take_lease(shared: &Shared, now: f64) -> Result<bool, idb::Error> {
    let db = open_leases().await?;
    let result = async {
        // Checked right before the transaction opens: a drop after this point
        // finds our lease in place when the loop releases it.
        if shared.closed.get() {
            return Ok(false);
        }
        let tx = db.transaction(&[LEASES], TransactionMode::ReadWrite)?;
        let store = tx.object_store(LEASES)?;
        let current = store.get(JsValue::from_str(&shared.name))?.await?;
        let free = match &current {
            None => true,
            Some(record) => {
                lease_field(record, "holder").as_string().as_deref() == Some(shared.tab.as_str())
                    || lease_field(record, "expires_at").as_f64().is_none_or(|expires| expires <= now)
            }
        };
        if free {
            let record = Object::new();
            let _ = Reflect::set(&record, &"name".into(), &shared.name.as_str().into());
            let _ = Reflect::set(&record, &"holder".into(), &shared.tab.as_str().into());
            let expires_at = JsValue::from_f64(now + f64::from(LEASE_EXPIRY_MS));
            let _ = Reflect::set(&record, &"expires_at".into(), &expires_at);
            store.put(&record, None)?;
        }
        Ok(matches!(tx.await?, TransactionResult::Committed) && free)
    }
    .await;
    db.close();
    result
}

/// Deletes the lease if it is still ours, so that a follower takes over at
/// its next check instead of waiting for the expiry.
async fn release_lease(shared: &Shared) -> Result<(), idb::Error> {
    let db = open_leases().await?;
    let result = async {
        let tx = db.transaction(&[LEASES], TransactionMode::ReadWrite)?;
        let store = tx.object_store(LEASES)?;
        let key = JsValue::from_str(&shared.name);
        let current = store.get(key.clone())?.await?;
        if current.is_some_and(|r| lease_field(&r, "holder").as_string().as_deref() == Some(&shared.tab)) {
            store.delete(key)?;
        }
        tx.await.map(drop)
    }
    .await;
    db.close();
    result
}

/// What tabs tell each other. Sent as JSON text with a `type` field, e.g.
/// `{"type":"changed","messages":["…"],"threads":true}`. A message a tab does
/// not understand (garbage, or a newer version's) is ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TabMessage {
    /// A follower queued mutations: the leader should push now.
    Wake,
    /// A tab wrote to the database (the leader pulled or moved statuses, any
    /// tab wrote a message or a key): re-read what it names and tell
    /// subscribers (`Client::refresh`).
    Changed {
        /// What changed; its fields sit next to `type`.
        changes: LocalChanges,
    },
    /// The sender became the sync leader.
    Leader {
        /// Its [`LeaderElection::tab_id`].
        tab: String,
    },
}

// By hand rather than `#[serde(tag = "type")]` with a flattened field: the
// derived form buffers every message into serde's generic `Content` tree
// first, which costs about 8 KiB of wasm for three small messages. The JSON
// is the same.
impl Serialize for TabMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let (kind, len) = match self {
            TabMessage::Wake => ("wake", 1),
            TabMessage::Changed { .. } => ("changed", 6),
            TabMessage::Leader { .. } => ("leader", 2),
        };
        let mut out = serializer.serialize_struct("TabMessage", len)?;
        out.serialize_field("type", kind)?;
        match self {
            TabMessage::Wake => {}
            TabMessage::Changed { changes } => {
                out.serialize_field("messages", &changes.messages)?;
                out.serialize_field("statuses", &changes.statuses)?;
                out.serialize_field("threads", &changes.threads)?;
                out.serialize_field("keys", &changes.keys)?;
                out.serialize_field("outbox", &changes.outbox)?;
            }
            TabMessage::Leader { tab } => out.serialize_field("tab", tab)?,
        }
        out.end()
    }
}

impl<'de> Deserialize<'de> for TabMessage {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        /// Every variant's fields in one flat struct; absent ones default.
        #[derive(Deserialize, Default)]
        #[serde(default)]
        struct Wire {
            #[serde(rename = "type")]
            kind: String,
            messages: Vec<MessageId>,
            statuses: Vec<MessageId>,
            threads: bool,
            keys: bool,
            outbox: bool,
            tab: Option<String>,
        }
        let wire = Wire::deserialize(deserializer)?;
        match wire.kind.as_str() {
            "wake" => Ok(TabMessage::Wake),
            "changed" => Ok(TabMessage::Changed {
                changes: LocalChanges {
                    messages: wire.messages,
                    statuses: wire.statuses,
                    threads: wire.threads,
                    keys: wire.keys,
                    outbox: wire.outbox,
                },
            }),
            "leader" => {
                wire.tab.map(|tab| TabMessage::Leader { tab }).ok_or_else(|| D::Error::missing_field("tab"))
            }
            other => Err(D::Error::unknown_variant(other, &["wake", "changed", "leader"])),
        }
    }
}

/// A BroadcastChannel between the tabs of one database (see [`scope_name`]).
/// It reaches every other `TabChannel` of that name in the same origin,
/// including others in the same page, but not itself. Dropping it closes it.
pub struct TabChannel {
    channel: web_sys::BroadcastChannel,
    _on_message: Closure<dyn FnMut(web_sys::MessageEvent)>,
}

impl TabChannel {
    /// Opens the channel `name`; `on_message` gets every well-formed message
    /// from the other instances.
    pub fn open(name: &str, on_message: impl Fn(TabMessage) + 'static) -> Result<Self, TabError> {
        let constructor = Reflect::get(&js_sys::global(), &"BroadcastChannel".into());
        if !constructor.is_ok_and(|c| c.is_function()) {
            return Err(TabError::Unsupported("BroadcastChannel"));
        }
        let channel = web_sys::BroadcastChannel::new(name).map_err(|e| TabError::Browser(js_text(&e)))?;
        let on_message =
            Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |event: web_sys::MessageEvent| {
                let message = event.data().as_string().and_then(|text| serde_json::from_str(&text).ok());
                if let Some(message) = message {
                    on_message(message);
                }
            });
        channel.set_onmessage(Some(on_message.as_ref().unchecked_ref()));
        Ok(TabChannel { channel, _on_message: on_message })
    }

    /// Sends `message` to the other instances.
    pub fn post(&self, message: &TabMessage) -> Result<(), TabError> {
        let text = serde_json::to_string(message).map_err(|e| TabError::Browser(e.to_string()))?;
        self.channel.post_message(&text.into()).map_err(|e| TabError::Browser(js_text(&e)))
    }
}

impl Drop for TabChannel {
    fn drop(&mut self) {
        // A closed channel delivers nothing more, so the handler can go.
        self.channel.set_onmessage(None);
        self.channel.close();
    }
}
