//! Persistence behind one trait, with two backends (DESIGN.md §6): SQLite
//! (one file, the embedded default) and PostgreSQL (several server
//! instances on one database).
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

pub mod postgres;
pub mod sqlite;

use std::future::Future;

use dovecote::core::model::{DeviceId, Millis, ThreadId, UserId};
use dovecote::core::sync::{Change, MutationBody, PullResponse, PushResponse, Rejection, PROTOCOL_VERSION};

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
    /// PostgreSQL said no (or the connection broke).
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had from the pool.
    #[error("postgres pool: {0}")]
    Pool(String),
    /// A `--db postgres://` URL that does not parse.
    #[error("bad database URL: {0}")]
    BadUrl(String),
    /// A stored row that does not decode (an id that is not an id).
    #[error("corrupt row: {0}")]
    Corrupt(String),
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

    /// The push answer's entry for mutation `mutation_id` refused so.
    pub fn rejection(self, mutation_id: u64) -> Rejection {
        Rejection { mutation_id, code: self.code, message: self.message }
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

// Rules that do not depend on the backend live here once, so that the
// backends cannot answer the same case differently.

/// `Ok((seq, server_ts))` applied (or an idempotent repeat), `Err(refusal)`
/// refused with nothing written.
pub(crate) type Applied = std::result::Result<(u64, Millis), Refusal>;

/// One answer for every id the server will not take: a thread or message id
/// someone else holds, or an id stamped more than a day in the future. The
/// same code and text either way, so a refusal does not tell that the id
/// exists (docs/protocol.md §4.3).
pub(crate) fn id_unavailable() -> Refusal {
    Refusal::new("conflict", "this id cannot be used; make a new one")
}

/// Ids carry their creation time; one far in the future is not a real id.
pub(crate) fn implausible_id(id: dovecote::core::model::Id, now: Millis) -> bool {
    id.created_at() > now.saturating_add(24 * 3600 * 1000)
}

/// Same answer whether or not the thread exists: existence is not leaked.
pub(crate) fn not_member() -> Refusal {
    Refusal::new("not_member", "not a member of this thread")
}

pub(crate) fn no_such_message() -> Refusal {
    Refusal::new("not_found", "no such message in this thread")
}

pub(crate) fn not_sender() -> Refusal {
    Refusal::new("not_sender", "only the sender may change a message")
}

pub(crate) fn edit_deleted() -> Refusal {
    Refusal::new("edit_deleted", "the message was deleted")
}

pub(crate) fn no_such_thread_to_join() -> Refusal {
    Refusal::new("invite_invalid", "the invite is not valid")
}

pub(crate) fn thread_full(count: usize) -> Refusal {
    Refusal::new("thread_full", format!("the thread has {count} members, the most there may be"))
}

pub(crate) fn out_of_order(last: u64) -> Refusal {
    Refusal::new("out_of_order", format!("mutation ids for this device are already past {last}"))
}

/// Bytes of a pull answer around its changes (`{"protocol":1,"changes":[...]...}`).
const PAGE_OVERHEAD: usize = 128;

/// Builds a pull page from the feed rows after the cursor, in seq order:
/// at most `limit` changes (the caller fetched one row more, which says
/// `has_more`) and at most `max_bytes` of JSON; a single larger change
/// still goes alone, so that a feed never gets stuck. Changes are offered
/// one by one, so that a backend loads no body it will not send.
pub(crate) struct PageBuilder<'q> {
    query: &'q PullQuery,
    changes: Vec<Change>,
    bytes: usize,
    has_more: bool,
}

impl<'q> PageBuilder<'q> {
    /// A page for `query`, whose feed read found `rows` rows (at most `limit + 1`).
    pub(crate) fn new(query: &'q PullQuery, rows: usize) -> Self {
        PageBuilder {
            query,
            changes: Vec::with_capacity(rows.min(query.limit as usize)),
            bytes: PAGE_OVERHEAD,
            has_more: rows > query.limit as usize,
        }
    }

    /// How many more rows the page may take (loading more is wasted).
    pub(crate) fn room(&self) -> usize {
        (self.query.limit as usize).saturating_sub(self.changes.len())
    }

    /// Adds `change`; false (and the change dropped) when the page is full.
    pub(crate) fn offer(&mut self, change: Change) -> bool {
        if self.room() == 0 {
            return false;
        }
        // Measured as sent (base64 envelopes and all), plus a comma.
        let size = serde_json::to_vec(&change).map_or(0, |v| v.len()) + 1;
        if !self.changes.is_empty() && self.bytes + size > self.query.max_bytes {
            self.has_more = true; // the rest waits for the next page
            return false;
        }
        self.bytes += size;
        self.changes.push(change);
        true
    }

    /// The answer: `cursor` is the last seq returned, or the request's.
    pub(crate) fn finish(self) -> PullResponse {
        let cursor = self.changes.last().map_or(self.query.cursor, Change::seq);
        PullResponse { protocol: PROTOCOL_VERSION, changes: self.changes, cursor, has_more: self.has_more }
    }
}
