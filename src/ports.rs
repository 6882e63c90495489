//! Ports: the small traits the engine runs over. The browser adapters in
//! `web` implement them on IndexedDB, fetch and timers; `testing` has fakes.
//!
//! Async fns carry no `Send` bounds: the browser is single-threaded.
#![allow(async_fn_in_trait)]

use crate::core::keys::{KeyId, ThreadKey};
use crate::core::model::{MessageId, MessageRecord, Millis, Mutation, ThreadId, ThreadRecord};
use crate::core::outbox::TransportFailure;
use crate::core::sync::{InviteResponse, PullPage, PullRequest, PushRequest, PushResponse};

/// Why the store failed. Nothing of a failed `write` is kept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database could not be opened (blocked upgrade, private mode, ...).
    #[error("could not open the database: {0}")]
    Open(String),
    /// The browser refused to store more (quota).
    #[error("storage quota exceeded: {0}")]
    Quota(String),
    /// Another tab upgraded the database; this connection is closed.
    #[error("the database was upgraded by another tab; reload to continue")]
    VersionChange,
    /// A stored record could not be read back.
    #[error("corrupt record in {store}: {reason}")]
    Corrupt {
        /// The object store.
        store: &'static str,
        /// What was wrong with it.
        reason: String,
    },
    /// A [`Write::Expect`] did not hold: another tab or task changed the
    /// outbox since it was read. Read again and retry.
    #[error("the outbox changed meanwhile")]
    Conflict,
    /// Any other storage failure.
    #[error("storage failed: {0}")]
    Other(String),
}

/// The store's result type.
pub type StoreResult<T> = Result<T, StoreError>;

/// A thread key, wrapped by the device key-encryption key, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WrappedKey {
    /// The key's id.
    pub key_id: KeyId,
    /// The thread it belongs to.
    pub thread_id: ThreadId,
    /// The key bytes, encrypted by the device key-encryption key.
    #[serde(with = "crate::core::base64url")]
    pub wrapped: Vec<u8>,
    /// Whether new messages of the thread are sealed with it.
    pub current: bool,
    /// How many payloads were sealed with it (a lower bound, for rotation).
    pub encryptions: u64,
    /// When it was added.
    pub created_at: Millis,
}

/// One change in an atomic [`Store::write`].
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Insert or replace a thread.
    PutThread(ThreadRecord),
    /// Insert or replace a message.
    PutMessage(MessageRecord),
    /// Add a mutation to the outbox; the store assigns its `mutation_id`.
    Enqueue(Mutation),
    /// Replace an outbox row (same `mutation_id`).
    PutMutation(Mutation),
    /// Remove an outbox row.
    RemoveMutation(u64),
    /// Fail the whole write with [`StoreError::Conflict`] unless the outbox
    /// row with this `mutation_id` is stored and equal to this one: a
    /// compare-and-set, so that a decision computed from a snapshot of the
    /// outbox is never applied over a change made meanwhile by another tab.
    Expect(Mutation),
    /// Insert or replace a wrapped thread key.
    PutKey(WrappedKey),
    /// Set a metadata value.
    PutMeta {
        /// The name.
        key: String,
        /// The value (JSON text).
        value: String,
    },
}

/// Durable local storage: threads, messages, the outbox, keys and metadata.
///
/// Every implementation passes the contract suite in `testing::contract`.
pub trait Store {
    /// Applies `writes` atomically: all or nothing. Returns the mutation ids
    /// assigned to the [`Write::Enqueue`] entries, in order. Mutation ids are
    /// strictly increasing for the life of the store, even across removals.
    async fn write(&self, writes: Vec<Write>) -> StoreResult<Vec<u64>>;
    /// One thread.
    async fn thread(&self, id: ThreadId) -> StoreResult<Option<ThreadRecord>>;
    /// Every thread, by id.
    async fn threads(&self) -> StoreResult<Vec<ThreadRecord>>;
    /// One message.
    async fn message(&self, id: MessageId) -> StoreResult<Option<MessageRecord>>;
    /// The stored messages among `ids` (missing ones are left out), read
    /// together: one transaction where the store has them.
    async fn messages_by_id(&self, ids: &[MessageId]) -> StoreResult<Vec<MessageRecord>> {
        let mut found = Vec::with_capacity(ids.len());
        for &id in ids {
            found.extend(self.message(id).await?);
        }
        Ok(found)
    }
    /// Up to `limit` messages of a thread, newest first by (`order`, `id`),
    /// strictly before `before` when given. Reads no more than it returns.
    async fn messages_before(
        &self,
        thread: ThreadId,
        before: Option<(u64, MessageId)>,
        limit: u32,
    ) -> StoreResult<Vec<MessageRecord>>;
    /// The outbox, by increasing `mutation_id`.
    async fn outbox(&self) -> StoreResult<Vec<Mutation>>;
    /// Every wrapped key.
    async fn keys(&self) -> StoreResult<Vec<WrappedKey>>;
    /// A metadata value.
    async fn meta(&self, key: &str) -> StoreResult<Option<String>>;
}

/// Wall-clock time.
pub trait Clock {
    /// Milliseconds since the Unix epoch.
    fn now(&self) -> Millis;
}

/// Wraps thread keys for storage with a device key-encryption key that
/// never leaves its keeper (a non-extractable WebCrypto key in the browser).
pub trait KeyWrapper {
    /// Encrypts `key` for storage, bound to its thread and key id.
    async fn wrap(&self, thread: ThreadId, key: &ThreadKey) -> Result<Vec<u8>, crate::core::keys::KeyError>;
    /// Decrypts a stored key; fails if it was wrapped for another thread or key id.
    async fn unwrap(
        &self,
        thread: ThreadId,
        key_id: KeyId,
        wrapped: &[u8],
    ) -> Result<ThreadKey, crate::core::keys::KeyError>;
}

/// The network side of sync: the server's push, pull and invites
/// (docs/protocol.md). Implementations own the session token; a failure
/// carries what [`classify`](crate::core::outbox::classify) needs.
pub trait Transport {
    /// `POST /v1/push`.
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, TransportFailure>;
    /// `GET /v1/pull`, each change read on its own ([`PullPage`]).
    async fn pull(&self, request: &PullRequest) -> Result<PullPage, TransportFailure>;
    /// `POST /v1/threads/{id}/invites`: a server invite token for a thread
    /// the user belongs to.
    async fn create_invite(&self, thread: ThreadId) -> Result<InviteResponse, TransportFailure>;
    /// Bytes of request and response bodies exchanged so far, failed
    /// exchanges included (the round metrics take differences).
    fn traffic(&self) -> Traffic;
}

/// Body bytes a [`Transport`] sent and received.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Request bodies.
    pub up: u64,
    /// Response bodies.
    pub down: u64,
}
