//! Persistence behind one trait, so that a PostgreSQL backend can follow the
//! SQLite one (DESIGN.md §6).
//!
//! The trait is at the level of protocol operations, not rows: each method is
//! one database transaction, which is what makes exactly-once and
//! all-or-nothing hold whatever the backend. The rules each backend must
//! follow (membership, dedup, delete wins, ...) are written down in
//! docs/protocol.md; the HTTP tests in `server/tests/` are the contract suite.
//!
//! Input checks that need no data (sizes, invite signatures) are made by the
//! HTTP layer and arrive as [`IncomingMutation::precheck`], so a backend only
//! has to store such a refusal like any other result.

pub mod sqlite;

use std::future::Future;

use dovecote::core::model::{DeviceId, Millis, ThreadId, UserId};
use dovecote::core::sync::{MutationBody, PullResponse, PushResponse};

/// Why storage failed. Everything but [`Error::DeviceForbidden`] is a
/// server fault (500) and left the database unchanged.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The device id is bound to another user.
    #[error("this device id belongs to another user")]
    DeviceForbidden,
    /// The database said no.
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The database holds a schema this build does not know.
    #[error("database schema version {0} is newer than this server understands")]
    SchemaTooNew(i64),
    /// A blocking task died (a panic in a database call).
    #[error("database task failed: {0}")]
    Task(String),
}

/// Storage results.
pub type Result<T> = std::result::Result<T, Error>;

/// A per-mutation refusal: a stable code and a human-readable message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// Stable code, e.g. `not_member`.
    pub code: String,
    /// Human-readable reason.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Refusal { code: code.to_owned(), message: message.into() }
    }
}

/// One mutation of a push, after the HTTP layer's data-free checks.
#[derive(Debug, Clone)]
pub struct IncomingMutation {
    /// Per-device id; the caller has checked they strictly increase.
    pub mutation_id: u64,
    /// What to do.
    pub body: MutationBody,
    /// A refusal decided without the database (e.g. `too_large`). It is
    /// stored as this mutation's result unless the id was processed before.
    pub precheck: Option<Refusal>,
}

/// Who to poke after a commit, and up to which seq.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poke {
    /// Every member of a changed thread.
    pub users: Vec<UserId>,
    /// The newest seq in that thread.
    pub cursor: u64,
}

/// What a push did.
#[derive(Debug, Clone)]
pub struct PushOutcome {
    /// The answer to send.
    pub response: PushResponse,
    /// Pokes to send now that the transaction has committed.
    pub pokes: Vec<Poke>,
}

/// What accepting an invite did.
#[derive(Debug, Clone)]
pub struct Joined {
    /// The seq of the thread's membership change (or of its latest change,
    /// when the user was a member already).
    pub seq: u64,
    /// Pokes to send.
    pub pokes: Vec<Poke>,
}

/// A pull request, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullQuery {
    /// Changes after this seq.
    pub cursor: u64,
    /// At most this many (1..=1000).
    pub limit: u32,
    /// Only this thread.
    pub thread: Option<ThreadId>,
    /// At most this many bytes of changes (as JSON); a single larger change
    /// still goes alone, so that a feed can never get stuck.
    pub max_bytes: usize,
}

/// The server's database. Every method is one transaction.
///
/// Futures are `Send` because axum runs handlers on a multi-threaded runtime.
pub trait Storage: Send + Sync + 'static {
    /// The secret that signs tokens, made at first start and kept.
    fn token_secret(&self) -> [u8; 32];

    /// Processes a push for `user` from `device` (see docs/protocol.md): each
    /// new mutation's effect, its result and the device's `last_mutation_id`
    /// commit together; repeated ids get their stored result.
    fn push(
        &self,
        user: UserId,
        device: DeviceId,
        mutations: Vec<IncomingMutation>,
        now: Millis,
    ) -> impl Future<Output = Result<PushOutcome>> + Send;

    /// Changes after `query.cursor` visible to `user`; `None` when
    /// `query.thread` is set and `user` is not a member of it (or it does not
    /// exist: the two are indistinguishable on purpose).
    fn pull(
        &self,
        user: UserId,
        query: PullQuery,
    ) -> impl Future<Output = Result<Option<PullResponse>>> + Send;

    /// Whether `user` is a member of `thread` (false if there is no such thread).
    fn is_member(&self, user: UserId, thread: ThreadId) -> impl Future<Output = Result<bool>> + Send;

    /// Makes `user` a member of `thread` (its invite already checked); a
    /// refusal if the thread does not exist (`invite_invalid`) or already has
    /// [`MAX_MEMBERS`](dovecote::core::model::MAX_MEMBERS) members (`thread_full`).
    fn join(
        &self,
        user: UserId,
        thread: ThreadId,
        now: Millis,
    ) -> impl Future<Output = Result<std::result::Result<Joined, Refusal>>> + Send;
}
