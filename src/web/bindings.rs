//! The JS API: class `ChatClient`, converting between JS values and the
//! engine's types. Errors become JS `Error` objects with a stable `code`.

use std::rc::{Rc, Weak};

use js_sys::{Function, Promise};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;
use zeroize::Zeroizing;

use crate::core::model::{InvalidInput, MessageId, ThreadId, UserId};
use crate::engine::{Client, Error, DEFAULT_PAGE};
use crate::web::idb::IdbStore;
use crate::web::kek::WebCryptoKek;
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
  | { state: "failed"; code: string; message: string; recoverable: boolean }
  | { state: "cancelled" };

/** A message, decrypted. */
export interface Message {
  id: string;
  threadId: string;
  sender: string;
  /** The text; null when deleted or undecryptable. */
  body: string | null;
  /** Why the body could not be decrypted (a reason code), else null. */
  undecryptable: "truncated" | "unknown_version" | "key_missing" | "tampered" | "invalid_utf8" | null;
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
  undecryptable: "truncated" | "unknown_version" | "key_missing" | "tampered" | "invalid_utf8" | null;
  members: string[];
  createdBy: string;
  createdAt: number;
}

/** What a thread subscriber is told: these messages were added or changed. */
export interface ThreadChange {
  threadId: string;
  messages: Message[];
}

/** Stable codes on errors thrown by dovecote. */
export type ErrorCode =
  | "invalid_input" | "not_found" | "closed" | "wrong_user" | "storage"
  | "storage_unavailable" | "quota_exceeded" | "version_change" | "crypto"
  | "random_unavailable" | "unwrap_failed" | "wrapped_truncated" | "wrapped_version"
  | "invalid_key_id" | "key_id_conflict"
  | "invite_encoding" | "invite_truncated" | "invite_version" | "invite_malformed"
  | "wrong_passphrase" | "passphrase_required";

/** Every error dovecote throws is an `Error` with `name` "DovecoteError" and a `code`. */
export interface DovecoteError extends Error {
  name: "DovecoteError";
  code: ErrorCode;
}
"#;

/// Turns an engine error into a JS `Error` with `name` and `code`.
fn js_error(error: Error) -> JsValue {
    let js = js_sys::Error::new(&error.to_string());
    js.set_name("DovecoteError");
    let _ = js_sys::Reflect::set(&js, &"code".into(), &error.code().into());
    js.into()
}

fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| js_error(Error::Seal(format!("could not convert a result: {e}"))))
}

fn from_js<T: DeserializeOwned>(value: JsValue, what: &str) -> Result<T, JsValue> {
    serde_wasm_bindgen::from_value(value).map_err(|e| {
        let js = js_sys::Error::new(&format!("invalid {what}: {e}"));
        js.set_name("DovecoteError");
        let _ = js_sys::Reflect::set(&js, &"code".into(), &"invalid_input".into());
        js.into()
    })
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
    passphrase: Option<String>,
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

type BrowserClient = Client<IdbStore, BrowserClock, WebCryptoKek>;

/// A chat client on one IndexedDB database. Open with `ChatClient.open`.
#[wasm_bindgen]
pub struct ChatClient {
    inner: Rc<BrowserClient>,
}

#[wasm_bindgen]
impl ChatClient {
    /// Opens (creating on first use) the client's database.
    pub async fn open(
        #[wasm_bindgen(unchecked_param_type = "OpenOptions")] options: JsValue,
    ) -> Result<ChatClient, JsValue> {
        let mut options: OpenOptions = from_js(options, "options")?;
        // Wiped when this function returns, however it returns.
        let passphrase = Zeroizing::new(options.passphrase.take());
        let user = UserId::parse(&options.user_id).map_err(|e| js_error(e.into()))?;
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
        match Client::open(store, BrowserClock, kek, user, options.device_name).await {
            Ok(client) => Ok(ChatClient { inner: Rc::new(client) }),
            Err(e) => Err(js_error(e)),
        }
    }

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
        future_to_promise(async move {
            let options: CreateThreadOptions = from_js(options, "thread options")?;
            let thread = inner.create_thread(&options.title, &options.members).await.map_err(js_error)?;
            to_js(&thread)
        })
    }

    /// Every thread on this device.
    #[wasm_bindgen(unchecked_return_type = "Promise<Thread[]>")]
    pub fn threads(&self) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move { to_js(&inner.threads().await.map_err(js_error)?) })
    }

    /// Sends a message. Resolves once it is stored, as `pending`;
    /// subscribers see it at once.
    #[wasm_bindgen(unchecked_return_type = "Promise<Message>")]
    pub fn send(&self, #[wasm_bindgen(js_name = threadId)] thread_id: String, text: String) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
            let thread_id = parse_thread_id(&thread_id)?;
            to_js(&inner.send(thread_id, &text).await.map_err(js_error)?)
        })
    }

    /// A page of a thread's messages, oldest first.
    #[wasm_bindgen(unchecked_return_type = "Promise<Message[]>")]
    pub fn messages(
        &self,
        #[wasm_bindgen(js_name = threadId)] thread_id: String,
        #[wasm_bindgen(unchecked_param_type = "PageOptions | undefined")] options: JsValue,
    ) -> Promise {
        let inner = self.inner.clone();
        future_to_promise(async move {
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
        future_to_promise(async move {
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
        future_to_promise(async move {
            let thread_id = parse_thread_id(&thread_id)?;
            // The code holds the key: the Rust copy is wiped once JS has its own.
            let code = Zeroizing::new(inner.export_thread_invite(thread_id, None).map_err(js_error)?);
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
        future_to_promise(async move {
            let code = Zeroizing::new(code);
            let thread_id = inner.import_thread_invite(&code).await.map_err(js_error)?;
            to_js(&serde_json::json!({ "threadId": thread_id.to_string() }))
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
        let id = self.inner.subscribe(thread_id, move |change| {
            if let Ok(value) = to_js(change) {
                // A throwing callback must not break the client or other subscribers.
                if let Err(e) = callback.call1(&JsValue::NULL, &value) {
                    web_sys::console::error_2(&"dovecote: a subscriber threw".into(), &e);
                }
            }
        });
        // Weak: an unsubscribe function kept by JS must not keep the client alive.
        let client: Weak<BrowserClient> = Rc::downgrade(&self.inner);
        let unsubscribe = Closure::<dyn FnMut()>::new(move || {
            if let Some(client) = client.upgrade() {
                client.unsubscribe(id);
            }
        });
        Ok(unsubscribe.into_js_value().unchecked_into())
    }

    /// Closes the client and its database connection. Later calls fail with
    /// code `closed`.
    pub fn close(&self) {
        self.inner.close();
        self.inner.store().close();
    }
}
