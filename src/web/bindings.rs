//! The JS API: class `ChatClient`, converting between JS values and the
//! engine's types. Errors become JS `Error` objects with a stable `code`.

use std::cell::RefCell;
use std::rc::{Rc, Weak};

use js_sys::{Function, Promise};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::spawn_local;
use zeroize::Zeroizing;

use crate::core::model::{InvalidInput, MessageId, Millis, ThreadId, UserId};
use crate::engine::{Client, ClientEvent, Error, SubscriptionId, DEFAULT_PAGE};
use crate::ports::Transport as _;
use crate::web::driver::{Session, SyncDriver};
use crate::web::fatal::{self, guarded};
use crate::web::http::ServerUrl;
use crate::web::idb::IdbStore;
use crate::web::kek::WebCryptoKek;
use crate::web::tabs::{scope_name, LeaderElection, TabChannel, TabMessage};
use crate::web::BrowserClock;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** Options of `ChatClient.open`. */
export interface OpenOptions {
  /** IndexedDB database name; one database per user and device. */
  dbName: string;
  /** The signed-in user's id. A database belongs to one user. */
  userId: string;
  /** A name for this device, shown to the user only. */
  deviceName?: string;
  /**
   * Protect the thread keys with a passphrase instead of a device key: the
   * key-encryption key is derived from it with PBKDF2-SHA256 (600,000
   * iterations) on every open. Decided when the database is created: a
   * database made with one needs it (`passphrase_required`, or
   * `wrong_passphrase`), one made without refuses it (`invalid_input`).
   * Compared as UTF-8 bytes: normalize (e.g. NFC) before passing it if
   * users may type it on different keyboards.
   */
  passphrase?: string;
  /**
   * Base URL of a dovecote sync server (e.g. "https://chat.example"). Without
   * it the client is local-only. With it, the client syncs in the background:
   * pushes the outbox, pulls changes, listens for pokes on a WebSocket.
   */
  serverUrl?: string;
  /**
   * Bearer token for the server: a JWT from your identity provider. With
   * `serverUrl`, one of `token`, `getToken` or `devSignIn: true` is required
   * (`invalid_input` otherwise).
   */
  token?: string;
  /**
   * Gets a fresh bearer token: called at start (unless `token` is given) and
   * whenever the server answers 401. While it rejects, sync waits with
   * backoff and calls it again; queued messages wait, they never fail
   * because a token expired.
   */
  getToken?: () => Promise<string>;
  /**
   * Sign in with the reference server's DEV-ONLY `POST /v1/session` as
   * `userId` (a server started with `--dev-sign-in`): anyone can be anyone.
   * For demos and tests only.
   */
  devSignIn?: boolean;
  /**
   * How often the event socket checks that the server still answers, in ms
   * (default 25,000). A socket that hears nothing, neither a poke nor a pong,
   * for one whole interval is closed and reconnected with backoff.
   */
  heartbeatMs?: number;
}

/** Where background sync stands. */
export type SyncState = "online" | "offline" | "syncing" | "idle" | "error";

/** Where sync stood when this tab's last round ended, and its state now (the `sync` event). */
export interface SyncSnapshot {
  state: SyncState;
  /** When a round last finished without failure, since the client opened (ms since the epoch). */
  lastSyncedAt: number | null;
  /** Outbox rows on their way (queued or sending). */
  pending: number;
  /** Outbox rows refused for good: retry or cancel them. */
  failed: number;
  /** Pulled changes set aside (`quarantine()`). */
  quarantined: number;
  /** The server seq this device has pulled up to. */
  cursor: number;
}

/** What one sync round did (the `round` event, `syncStats().rounds`). */
export interface RoundStats {
  startedAt: number;
  durationMs: number;
  /** Mutations pushed (a batch sent again counts again). */
  pushed: number;
  /** Changes pulled, quarantined ones included. */
  pulled: number;
  /** Request and response body bytes. */
  bytesUp: number;
  bytesDown: number;
  /** Pulled changes that won over a local one (`conflict` events). */
  conflicts: number;
  /** Mutations pushed again after an earlier attempt. */
  retries: number;
  /** Failed requests and mutations the server refused. */
  errors: number;
  /** Envelope content over plaintext bytes sealed in this tab since its previous round (below 1 when compression helped); null when it sealed nothing. */
  compressionRatio: number | null;
}

/** `syncStats()`: in memory since the client opened. */
export interface SyncStats {
  /** Rounds run, and how many of them ended with a failure. */
  roundCount: number;
  failedRounds: number;
  /** Every round summed: `startedAt` is the first round's start, `durationMs` and the counts are sums, `compressionRatio` is over everything sealed. */
  totals: RoundStats;
  /** The last 100 rounds, oldest first. */
  rounds: RoundStats[];
}

/** A client-wide event (`onEvent`). */
export type ClientEvent =
  /** Sync moved to `state`; the other fields are as of the end of this tab's last round (0 and null before its first). */
  | ({ type: "sync"; error: { code: DovecoteErrorCode; message: string } | null } & SyncSnapshot)
  /** A sync round finished: what it did. */
  | { type: "round"; round: RoundStats }
  | { type: "status"; message: Message }
  | { type: "threads" }
  /** The outbox may have changed (a local write here or in another tab): read `outbox()` again. */
  | { type: "outbox" }
  | { type: "conflict"; threadId: string; messageId: string; code: "deleted_remotely" }
  /**
   * Pulled changes this build cannot read (a newer server's, or damaged)
   * were set aside; the rest of their page was applied: see `quarantine()`.
   */
  | { type: "quarantined"; count: number }
  | { type: "version_change" }
  | { type: "leader"; leader: boolean }
  /**
   * The wasm instance trapped (an internal error): every pending and later
   * call rejects with code `fatal`, nothing more is written, and this tab
   * lets go of syncing. Reload the page: what was stored is all there.
   */
  | { type: "fatal" };

/** A change waiting in the outbox (`outbox()`). */
export interface OutboxEntry {
  mutationId: number;
  kind: "create_thread" | "send" | "edit" | "delete" | "join";
  threadId: string;
  messageId: string | null;
  state: "queued" | "sending" | "failed";
  /** How many pushes carried it. */
  attempts: number;
  /** Not sent before this time (ms since epoch). */
  nextAttemptAt: number;
  /** Why it failed, or why its last push failed while it waits to retry. */
  error: { code: DovecoteErrorCode; message: string } | null;
  createdAt: number;
}

/** A pulled change set aside (`quarantine()`). */
export interface QuarantinedChange {
  /** Its position in server order, when that much could be read. */
  seq: number | null;
  /** The thread or message it is about, when that much could be read. */
  subject: string | null;
  /** Why it was set aside. */
  reason: string;
  /** Its JSON text as it came (cut at 16 KiB). */
  raw: string;
  /** When it was set aside (ms since epoch). */
  receivedAt: number;
  /** The change reader version of the build that set it aside. */
  reader: number;
}

/**
 * Pulled changes set aside, oldest first: re-read when a newer build opens
 * the database, dropped when a later change of the same thread or message
 * arrives. At most 200 are kept; `dropped` counts those that made room.
 */
export interface Quarantine {
  entries: QuarantinedChange[];
  dropped: number;
}

/** What `importThreadInvite` resolves to. */
export interface ImportedInvite {
  /** The thread the invite is for; it shows in `threads()` once synced. */
  threadId: string;
}

/** Options of `createThread`. */
export interface CreateThreadOptions {
  /** The title, 1 to 1024 bytes, not only white space. Encrypted at rest. */
  title: string;
  /** User ids of the other members. */
  members?: string[];
}

/** Options of `messages`. */
export interface PageOptions {
  /** Return messages before this message id (the first of the previous page). */
  before?: string;
  /** At most this many (default 50, at most 1000). */
  limit?: number;
}

/** Where a message stands on its way to the server. */
export type MessageStatus =
  | { state: "pending" }
  | { state: "sending" }
  | { state: "sent" }
  | { state: "failed"; code: DovecoteErrorCode; message: string; recoverable: boolean }
  | { state: "cancelled" };

/** A message, decrypted. */
export interface Message {
  id: string;
  threadId: string;
  sender: string;
  /** The text; null when deleted or undecryptable. */
  body: string | null;
  /** Why the body could not be decrypted (a reason code), else null. */
  undecryptable: "truncated" | "unknown_version" | "key_missing" | "tampered" | "malformed" | "too_large" | "invalid_utf8" | null;
  /** Server order; null until sent. */
  seq: number | null;
  /** When it was written (ms since epoch, sender's clock). */
  clientTs: number;
  /** When the server accepted it; null until sent. */
  serverTs: number | null;
  edited: boolean;
  deleted: boolean;
  status: MessageStatus;
}

/** A thread, decrypted. */
export interface Thread {
  id: string;
  /** The title; null when undecryptable. */
  title: string | null;
  undecryptable: "truncated" | "unknown_version" | "key_missing" | "tampered" | "malformed" | "too_large" | "invalid_utf8" | null;
  members: string[];
  createdBy: string;
  createdAt: number;
}

/** What a thread subscriber is told: these messages were added or changed. */
export interface ThreadChange {
  threadId: string;
  messages: Message[];
}
"#;

/// `DovecoteErrorCode`, from the one list in the engine. The class
/// `DovecoteError` and `isDovecoteError` are plain JS (js/error.js), added
/// to the package by scripts/package.mjs: no wasm bytes.
#[wasm_bindgen(typescript_custom_section)]
const ERROR_CODE_TYPE: &'static str = crate::engine::ERROR_CODES_TS;

/// A JS `Error` with `name` "DovecoteError" and a stable `code`: the one
/// shape of every error dovecote throws.
pub(crate) fn dovecote_error(code: &str, message: &str) -> JsValue {
    let js = js_sys::Error::new(message);
    js.set_name("DovecoteError");
    let _ = js_sys::Reflect::set(&js, &"code".into(), &code.into());
    js.into()
}

/// Turns an engine error into a JS `Error` with `name` and `code`.
fn js_error(error: Error) -> JsValue {
    dovecote_error(error.code(), &error.to_string())
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsValue> {
    let text = serde_json::to_string(value)
        .map_err(|e| js_error(Error::Seal(format!("could not convert a result: {e}"))))?;
    js_sys::JSON::parse(&text)
}

fn from_js<T: DeserializeOwned>(value: JsValue, what: &str) -> Result<T, JsValue> {
    let text =
        Zeroizing::new(js_sys::JSON::stringify(&value).ok().and_then(|t| t.as_string()).unwrap_or_default());
    serde_json::from_str(&text).map_err(|e| dovecote_error("invalid_input", &format!("invalid {what}: {e}")))
}

/// Takes `key` out of the open options: its value, if set, and a copy of
/// the options without it (the caller's object is left alone).
fn take_option(options: &JsValue, key: &str) -> Option<(JsValue, JsValue)> {
    let object = options.dyn_ref::<js_sys::Object>()?;
    let key = JsValue::from_str(key);
    let value = js_sys::Reflect::get(object, &key).ok().filter(|v| !v.is_undefined())?;
    let rest = js_sys::Object::assign(&js_sys::Object::new(), object);
    let _ = js_sys::Reflect::delete_property(&rest, &key);
    Some((value, rest.into()))
}

/// Splits `passphrase` from the open options (see [`take_option`]). A
/// passphrase that is not a string is refused.
fn take_passphrase(options: JsValue) -> Result<(Option<String>, JsValue), JsValue> {
    let Some((value, rest)) = take_option(&options, "passphrase") else { return Ok((None, options)) };
    let Some(passphrase) = value.as_string() else {
        return Err(js_error(Error::PassphraseRefused("the passphrase must be a string")));
    };
    Ok((Some(passphrase), rest))
}

fn parse_thread_id(id: &str) -> Result<ThreadId, JsValue> {
    id.parse().map_err(|e| js_error(InvalidInput::from(e).into()))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OpenOptions {
    db_name: String,
    user_id: String,
    device_name: Option<String>,
    server_url: Option<String>,
    token: Option<String>,
    dev_sign_in: Option<bool>,
    heartbeat_ms: Option<u32>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateThreadOptions {
    title: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PageOptions {
    before: Option<String>,
    limit: Option<u32>,
}

/// The engine on the browser's ports.
pub(crate) type BrowserClient = Client<IdbStore, BrowserClock, WebCryptoKek>;

/// A chat client on one IndexedDB database. Open with `ChatClient.open`.
#[wasm_bindgen]
pub struct ChatClient {
    inner: Rc<BrowserClient>,
    tabs: Rc<Tabs>,
}

/// What ties this client to the other tabs on its database, and to the
/// server. Dropped (stopped) on `close()` and when another tab upgrades the
/// database.
#[derive(Default)]
struct Tabs {
    /// The background sync loop, when the client has a server.
    driver: RefCell<Option<Rc<SyncDriver>>>,
    /// Whether this tab may run the loop (only with a server).
    election: RefCell<Option<LeaderElection>>,
    /// News to and from the other tabs.
    channel: RefCell<Option<TabChannel>>,
}

impl Tabs {
    fn driver(&self) -> Option<Rc<SyncDriver>> {
        self.driver.borrow().clone()
    }

    fn post(&self, message: &TabMessage) {
        if let Some(channel) = self.channel.borrow().as_ref() {
            let _ = channel.post(message);
        }
    }

    /// Local changes: wake the loop that pushes them, here or in the leader.
    fn wake_leader(&self) {
        match self.driver() {
            Some(driver) if driver.is_leader() => driver.wake(),
            Some(_) => self.post(&TabMessage::Wake),
            None => {}
        }
    }

    /// Another tab has something to push: only a leader acts on it.
    fn wake_leader_here(&self) {
        if let Some(driver) = self.driver().filter(|d| d.is_leader()) {
            driver.wake();
        }
    }

    fn stop(&self) {
        self.election.borrow_mut().take();
        self.driver.borrow_mut().take();
        self.channel.borrow_mut().take();
    }

    /// [`Tabs::stop`] for a trapped instance: a cell the trap left borrowed
    /// is left as it is.
    fn stop_after_trap(&self) {
        let _ = self.election.try_borrow_mut().map(|mut e| e.take());
        let _ = self.driver.try_borrow_mut().map(|mut d| d.take());
        let _ = self.channel.try_borrow_mut().map(|mut c| c.take());
    }
}

#[wasm_bindgen]
impl ChatClient {
    /// Opens (creating on first use) the client's database.
    #[wasm_bindgen(unchecked_return_type = "Promise<ChatClient>")]
    pub fn open(#[wasm_bindgen(unchecked_param_type = "OpenOptions")] options: JsValue) -> Promise {
        fatal::install();
        guarded(async move { Self::open_client(options).await.map(JsValue::from) })
    }
}

impl ChatClient {
    /// [`ChatClient::open`] for Rust callers (the browser tests): the client
    /// itself rather than a promise of it.
    pub async fn open_client(options: JsValue) -> Result<ChatClient, JsValue> {
        // The passphrase is taken out before the rest is parsed as JSON: the
        // parser's scratch buffers are not wiped. Wiped when this function
        // returns, however it returns.
        let (passphrase, options) = take_passphrase(options)?;
        let passphrase = Zeroizing::new(passphrase);
        // `getToken` is a function, not JSON: taken out before parsing.
        let (get_token, options) = match take_option(&options, "getToken") {
            None => (None, options),
            Some((get, rest)) => match get.dyn_into::<Function>() {
                Ok(get) => (Some(get), rest),
                Err(_) => return Err(dovecote_error("invalid_input", "getToken is not a function")),
            },
        };
        let options: OpenOptions = from_js(options, "options")?;
        let user = UserId::parse(&options.user_id).map_err(|e| js_error(e.into()))?;
        // Checked before anything is opened: refused input writes nothing.
        let server = options
            .server_url
            .as_deref()
            .map(ServerUrl::parse)
            .transpose()
            .map_err(|e| js_error(InvalidInput::ServerUrl(e.to_string()).into()))?;
        let dev_sign_in = options.dev_sign_in == Some(true);
        let session = match (options.token, get_token, dev_sign_in) {
            (token, None, false) if token.is_some() || server.is_none() => token.map(Session::Token),
            (token, Some(get), false) => Some(Session::GetToken { token, get }),
            (None, None, true) => Some(Session::DevSignIn(user.clone())),
            (None, None, false) => {
                return Err(dovecote_error(
                    "invalid_input",
                    "with serverUrl, give token or getToken (your identity provider's token), or \
                     devSignIn: true (the server's dev-only sign-in, for demos and tests)",
                ))
            }
            _ => {
                return Err(dovecote_error(
                    "invalid_input",
                    "devSignIn cannot be combined with token or getToken",
                ))
            }
        };
        if passphrase.as_deref() == Some("") {
            return Err(js_error(Error::PassphraseRefused("the passphrase is empty")));
        }
        let store = IdbStore::open(&options.db_name).await.map_err(|e| js_error(e.into()))?;
        let kek = match WebCryptoKek::load_or_create(&store, passphrase.as_deref()).await {
            Ok(kek) => kek,
            Err(e) => {
                store.close();
                return Err(js_error(e));
            }
        };
        let inner = match Client::open(store, BrowserClock, kek, user.clone(), options.device_name).await {
            Ok(client) => Rc::new(client),
            Err(e) => return Err(js_error(e)),
        };
        let tabs = Rc::new(Tabs::default());
        let scope = scope_name(&options.db_name, &options.user_id);
        if let (Some(server), Some(session)) = (server, session) {
            // Every tab has a loop; only the leader's runs.
            let heartbeat = options.heartbeat_ms.map(|ms| Millis::from(ms.max(100)));
            let driver = Rc::new(SyncDriver::start(inner.clone(), server, session, heartbeat, false));
            let weak = Rc::downgrade(&driver);
            *tabs.driver.borrow_mut() = Some(driver);
            *tabs.election.borrow_mut() = Some(LeaderElection::start(&scope, move |leader| {
                if let Some(driver) = weak.upgrade() {
                    driver.set_leader(leader);
                }
            }));
        }
        // Where BroadcastChannel is missing, tabs do not hear each other:
        // each still sees its own writes, and the leader still syncs all.
        let client = Rc::downgrade(&inner);
        let from_tabs = Rc::downgrade(&tabs);
        *tabs.channel.borrow_mut() = TabChannel::open(&scope, move |message| {
            let (Some(client), Some(tabs)) = (client.upgrade(), from_tabs.upgrade()) else { return };
            match message {
                TabMessage::Wake => tabs.wake_leader_here(),
                TabMessage::Changed { changes } => {
                    if changes.outbox {
                        tabs.wake_leader_here();
                    }
                    spawn_local(async move {
                        let _ = client.refresh(&changes).await;
                    });
                }
                _ => {}
            }
        })
        .ok();
        let to_tabs = Rc::downgrade(&tabs);
        inner.set_change_sink(move |changes| {
            let Some(tabs) = to_tabs.upgrade() else { return };
            if changes.outbox {
                tabs.wake_leader();
            }
            tabs.post(&TabMessage::Changed { changes: changes.clone() });
        });
        // A newer version of the app upgraded the database in another tab:
        // this one lets go (so the upgrade is not blocked) and tells the UI.
        let client = Rc::downgrade(&inner);
        let stopped = Rc::downgrade(&tabs);
        inner.store().on_version_change(move || {
            if let Some(tabs) = stopped.upgrade() {
                tabs.stop();
            }
            if let Some(client) = client.upgrade() {
                client.emit(&ClientEvent::VersionChange);
            }
        });
        // After a trap: let go of the leader lock (another tab takes over)
        // and tell the UI. Nothing here may wait on what the trap left held.
        let client = Rc::downgrade(&inner);
        let stopped = Rc::downgrade(&tabs);
        fatal::on_fatal(move || {
            if let Some(tabs) = stopped.upgrade() {
                tabs.stop_after_trap();
            }
            if let Some(client) = client.upgrade() {
                client.emit(&ClientEvent::Fatal);
            }
        });
        Ok(ChatClient { inner, tabs })
    }
}

#[wasm_bindgen]
impl ChatClient {
    /// The user this client acts for.
    #[wasm_bindgen(getter, js_name = userId)]
    pub fn user_id(&self) -> String {
        self.inner.user().to_string()
    }

    /// This device's id.
    #[wasm_bindgen(getter, js_name = deviceId)]
    pub fn device_id(&self) -> String {
        self.inner.device_id().to_string()
    }

    /// Creates a thread (with a fresh encryption key) and returns it.
    #[wasm_bindgen(js_name = createThread, unchecked_return_type = "Promise<Thread>")]
    pub fn create_thread(
        &self,
        #[wasm_bindgen(unchecked_param_type = "CreateThreadOptions")] options: JsValue,
    ) -> Promise {
        let inner = self.inner.clone();
        guarded(async move {
            let options: CreateThreadOptions = from_js(options, "thread options")?;
            let thread = inner.create_thread(&options.title, &options.members).await.map_err(js_error)?;
            to_js(&thread)
        })
    }

    /// Every thread on this device.
    #[wasm_bindgen(unchecked_return_type = "Promise<Thread[]>")]
    pub fn threads(&self) -> Promise {
        let inner = self.inner.clone();
        guarded(async move { to_js(&inner.threads().await.map_err(js_error)?) })
    }

    /// Sends a message. Resolves once it is stored, as `pending`;
    /// subscribers see it at once.
    #[wasm_bindgen(unchecked_return_type = "Promise<Message>")]
    pub fn send(&self, #[wasm_bindgen(js_name = threadId)] thread_id: String, text: String) -> Promise {
        let inner = self.inner.clone();
        guarded(async move {
            let thread_id = parse_thread_id(&thread_id)?;
            to_js(&inner.send(thread_id, &text).await.map_err(js_error)?)
        })
    }

    /// A page of a thread's messages, oldest first.
    #[wasm_bindgen(unchecked_return_type = "Promise<Message[]>")]
    pub fn messages(
        &self,
        #[wasm_bindgen(js_name = threadId)] thread_id: String,
        // `options?:` in the types, as documented.
        #[wasm_bindgen(unchecked_optional_param_type = "PageOptions")] options: JsValue,
    ) -> Promise {
        let inner = self.inner.clone();
        guarded(async move {
            let thread_id = parse_thread_id(&thread_id)?;
            let options: PageOptions = if options.is_undefined() || options.is_null() {
                PageOptions::default()
            } else {
                from_js(options, "page options")?
            };
            let before = match options.before {
                Some(id) => {
                    Some(id.parse::<MessageId>().map_err(|e| js_error(InvalidInput::from(e).into()))?)
                }
                None => None,
            };
            let page = inner
                .messages(thread_id, before, options.limit.unwrap_or(DEFAULT_PAGE))
                .await
                .map_err(js_error)?;
            to_js(&page)
        })
    }

    /// Gives the thread a new key: new messages are encrypted with it, older
    /// ones keep opening with theirs. Sending also rotates on its own long
    /// before a key is worn out.
    #[wasm_bindgen(js_name = rotateThreadKey, unchecked_return_type = "Promise<void>")]
    pub fn rotate_thread_key(&self, #[wasm_bindgen(js_name = threadId)] thread_id: String) -> Promise {
        let inner = self.inner.clone();
        guarded(async move {
            let thread_id = parse_thread_id(&thread_id)?;
            inner.rotate_thread_key(thread_id).await.map_err(js_error)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// An invite code for the thread (its id and current key, base64url), to
    /// put in the fragment of a link: `https://app.example/#k=<code>`.
    /// Browsers do not send fragments to servers. The code is the thread's
    /// key: never put it in a query string, a log or analytics.
    #[wasm_bindgen(js_name = exportThreadInvite, unchecked_return_type = "Promise<string>")]
    pub fn export_thread_invite(&self, #[wasm_bindgen(js_name = threadId)] thread_id: String) -> Promise {
        let inner = self.inner.clone();
        let driver = self.tabs.driver();
        let tabs = self.tabs.clone();
        guarded(async move {
            let thread_id = parse_thread_id(&thread_id)?;
            // With a server, the code also carries its invite token, which
            // lets the invitee join there. The thread must be on the server
            // first: push what is queued.
            let server_invite = match &driver {
                None => None,
                Some(driver) => {
                    // Fails early for an unknown thread; the code (a key) is wiped.
                    Zeroizing::new(inner.export_thread_invite(thread_id, None).map_err(js_error)?);
                    Some(server_invite(&inner, &tabs, driver, thread_id).await?)
                }
            };
            // The code holds the key: the Rust copy is wiped once JS has its own.
            let code =
                Zeroizing::new(inner.export_thread_invite(thread_id, server_invite).map_err(js_error)?);
            Ok(JsValue::from_str(&code))
        })
    }

    /// Adds the thread key of an invite code (bare, or a fragment `#k=...`)
    /// to this device. The thread's records open once they arrive by sync.
    /// Errors: `invite_encoding`, `invite_truncated`, `invite_version`,
    /// `invite_malformed`, `key_id_conflict`; nothing is written then.
    #[wasm_bindgen(js_name = importThreadInvite, unchecked_return_type = "Promise<ImportedInvite>")]
    pub fn import_thread_invite(&self, code: String) -> Promise {
        let inner = self.inner.clone();
        guarded(async move {
            let code = Zeroizing::new(code);
            let thread_id = inner.import_thread_invite(&code).await.map_err(js_error)?;
            {
                #[derive(Serialize)]
                #[serde(rename_all = "camelCase")]
                struct Imported {
                    thread_id: ThreadId,
                }
                to_js(&Imported { thread_id })
            }
        })
    }

    /// Calls `callback` with every change to the thread's messages; returns
    /// a function that ends the subscription.
    #[wasm_bindgen(unchecked_return_type = "() => void")]
    pub fn subscribe(
        &self,
        #[wasm_bindgen(js_name = threadId)] thread_id: String,
        #[wasm_bindgen(unchecked_param_type = "(change: ThreadChange) => void")] callback: Function,
    ) -> Result<Function, JsValue> {
        let thread_id = parse_thread_id(&thread_id)?;
        let id = self.inner.subscribe(thread_id, js_listener(callback, "a subscriber"));
        Ok(self.unsubscriber(id))
    }

    /// Replaces the text of one of the user's messages.
    #[wasm_bindgen(unchecked_return_type = "Promise<Message>")]
    pub fn edit(&self, #[wasm_bindgen(js_name = messageId)] message_id: String, text: String) -> Promise {
        let inner = self.inner.clone();
        guarded(async move {
            let message_id = parse_message_id(&message_id)?;
            to_js(&inner.edit(message_id, &text).await.map_err(js_error)?)
        })
    }

    /// Deletes one of the user's messages (a tombstone stays).
    #[wasm_bindgen(unchecked_return_type = "Promise<Message>")]
    pub fn delete(&self, #[wasm_bindgen(js_name = messageId)] message_id: String) -> Promise {
        let inner = self.inner.clone();
        guarded(async move {
            let message_id = parse_message_id(&message_id)?;
            to_js(&inner.delete(message_id).await.map_err(js_error)?)
        })
    }

    /// Sends a failed message again, at the end of the queue.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn retry(&self, #[wasm_bindgen(js_name = messageId)] message_id: String) -> Promise {
        let inner = self.inner.clone();
        guarded(async move {
            inner.retry(parse_message_id(&message_id)?).await.map_err(js_error)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Withdraws a queued or failed message: it is never sent.
    #[wasm_bindgen(unchecked_return_type = "Promise<void>")]
    pub fn cancel(&self, #[wasm_bindgen(js_name = messageId)] message_id: String) -> Promise {
        let inner = self.inner.clone();
        guarded(async move {
            inner.cancel(parse_message_id(&message_id)?).await.map_err(js_error)?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// What waits to be sent, in order, with states, attempts and errors.
    #[wasm_bindgen(unchecked_return_type = "Promise<OutboxEntry[]>")]
    pub fn outbox(&self) -> Promise {
        let inner = self.inner.clone();
        guarded(async move { to_js(&inner.outbox().await.map_err(js_error)?) })
    }

    /// Pulled changes set aside because this build could not read them.
    #[wasm_bindgen(unchecked_return_type = "Promise<Quarantine>")]
    pub fn quarantine(&self) -> Promise {
        let inner = self.inner.clone();
        guarded(async move { to_js(&inner.quarantine().await.map_err(js_error)?) })
    }

    /// Syncs now: pushes what is queued (also what waits out a backoff) and
    /// pulls what is new. Resolves when the round is done (at once in a tab
    /// that is not the sync leader, or without a server); its outcome shows
    /// in `syncState` and the `sync` event.
    #[wasm_bindgen(js_name = syncNow, unchecked_return_type = "Promise<void>")]
    pub fn sync_now(&self) -> Promise {
        let driver = self.tabs.driver();
        if driver.as_ref().is_some_and(|d| !d.is_leader()) {
            self.tabs.post(&TabMessage::Wake);
        }
        guarded(async move {
            if let Some(driver) = driver {
                driver.sync_now().await.map_err(js_error)?;
            }
            Ok(JsValue::UNDEFINED)
        })
    }

    /// Where background sync stands.
    #[wasm_bindgen(getter, js_name = syncState, unchecked_return_type = "SyncState")]
    pub fn sync_state(&self) -> JsValue {
        to_js(&self.inner.sync_state()).unwrap_or(JsValue::NULL)
    }

    /// What this tab's sync rounds did since the client opened: totals and
    /// the last 100 rounds (only the sync leader runs rounds).
    #[wasm_bindgen(js_name = syncStats, unchecked_return_type = "SyncStats")]
    pub fn sync_stats(&self) -> JsValue {
        to_js(&self.inner.sync_stats()).unwrap_or(JsValue::NULL)
    }

    /// Uses a new session token (after the app's own sign-in).
    #[wasm_bindgen(js_name = setToken)]
    pub fn set_token(&self, token: String) {
        if let Some(driver) = self.tabs.driver() {
            driver.set_token(&token);
        }
    }

    /// Calls `callback` with every client-wide event (sync state, message
    /// status, thread list, conflicts, tabs); returns a function that stops it.
    #[wasm_bindgen(js_name = onEvent, unchecked_return_type = "() => void")]
    pub fn on_event(
        &self,
        #[wasm_bindgen(unchecked_param_type = "(event: ClientEvent) => void")] callback: Function,
    ) -> Function {
        let id = self.inner.on_event(js_listener::<ClientEvent>(callback, "an event listener"));
        self.unsubscriber(id)
    }

    /// A JS function that ends subscription `id`. It holds the client
    /// weakly: a function kept by JS must not keep the client alive.
    fn unsubscriber(&self, id: SubscriptionId) -> Function {
        let client: Weak<BrowserClient> = Rc::downgrade(&self.inner);
        let stop = Closure::<dyn FnMut()>::new(move || {
            if let Some(client) = client.upgrade() {
                client.unsubscribe(id);
            }
        });
        stop.into_js_value().unchecked_into()
    }

    /// Closes the client, its sync loop and its database connection. Later
    /// calls fail with code `closed`.
    pub fn close(&self) {
        self.tabs.stop();
        self.inner.close();
        self.inner.store().close();
    }
}

/// The server's invite token for a thread. The thread must be on the server
/// first: its creation is pushed (by this tab, or by the leader tab, which
/// may still be getting elected) and the request repeated while the server
/// does not know it yet and it still waits in the outbox (up to ~10 s).
async fn server_invite(
    inner: &BrowserClient,
    tabs: &Tabs,
    driver: &SyncDriver,
    thread_id: ThreadId,
) -> Result<String, JsValue> {
    let as_js = |f: &crate::core::outbox::TransportFailure| sync_error(crate::engine::ErrorInfo::from(f));
    for _ in 0..50 {
        if !driver.is_leader() {
            tabs.post(&TabMessage::Wake);
        }
        driver.sync_now().await.map_err(js_error)?;
        let transport = driver.transport().await.map_err(sync_error)?;
        match transport.create_invite(thread_id).await {
            Ok(invite) => return Ok(invite.token),
            Err(f @ crate::core::outbox::TransportFailure::Status { status: 404, .. }) => {
                let queued =
                    inner.outbox().await.map_err(js_error)?.iter().any(|e| {
                        e.kind == "create_thread" && e.thread_id == thread_id && e.state != "failed"
                    });
                if !queued {
                    return Err(as_js(&f));
                }
                crate::web::timers::sleep(200).await;
            }
            Err(f) => return Err(as_js(&f)),
        }
    }
    Err(sync_error(crate::engine::ErrorInfo {
        code: "timeout".into(),
        message: "the thread did not reach the server in time".into(),
    }))
}

/// Calls a JS callback with each value. A throwing callback is logged: it
/// must not break the client or the other listeners.
fn js_listener<T: Serialize>(callback: Function, who: &'static str) -> impl Fn(&T) + 'static {
    move |value| {
        if let Ok(value) = to_js(value) {
            if let Err(e) = callback.call1(&JsValue::NULL, &value) {
                web_sys::console::error_2(&format!("dovecote: {who} threw").into(), &e);
            }
        }
    }
}

fn parse_message_id(id: &str) -> Result<MessageId, JsValue> {
    id.parse().map_err(|e| js_error(InvalidInput::from(e).into()))
}

/// A sync failure outside a round (invites) as a JS error.
fn sync_error(info: crate::engine::ErrorInfo) -> JsValue {
    dovecote_error(&info.code, &info.message)
}
