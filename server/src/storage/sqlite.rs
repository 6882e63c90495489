//! The SQLite backend: one file, WAL mode, one writer connection and one
//! reader connection, each behind a mutex and used from `spawn_blocking`.
//!
//! One writer is not a bottleneck to hide: SQLite serializes writers anyway,
//! and serializing in-process means concurrent retries of the same push are
//! answered from the first one's stored results rather than racing. The
//! reader lets pulls run while a push commits (WAL readers see the last
//! committed snapshot, never a half-applied push).
//!
//! The change feed keeps one row per entity (`t:<thread>` or `m:<message>`),
//! at the seq of its latest change; pull joins it with the entity's current
//! state. `AUTOINCREMENT` matters: without it SQLite may reuse the rowid of a
//! deleted newest row, and a seq handed out twice would be skipped by clients
//! whose cursor already passed it.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use dovecote::core::envelope::Envelope;
use dovecote::core::model::{DeviceId, MessageId, Millis, ThreadId, UserId};
use dovecote::core::sync::{
    Ack, Change, MutationBody, PullResponse, PushResponse, Rejection, ServerMessage, ServerThread,
    PROTOCOL_VERSION,
};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior};

use super::{
    edit_deleted, id_unavailable, implausible_id, no_such_message, no_such_thread_to_join, not_member,
    not_sender, out_of_order, thread_full, Applied, Error, IncomingMutation, Joined, PageBuilder, Poke,
    PullQuery, PushOutcome, Refusal, Result, Storage,
};
use crate::auth::random_secret;
use crate::config::Durability;

const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE threads (
    id TEXT PRIMARY KEY,
    title BLOB NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    created_seq INTEGER NOT NULL,
    server_ts INTEGER NOT NULL
);
CREATE TABLE members (
    thread_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (thread_id, user_id)
) WITHOUT ROWID;
CREATE INDEX members_by_user ON members (user_id, thread_id);
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    body BLOB,
    seq INTEGER NOT NULL,
    client_ts INTEGER NOT NULL,
    server_ts INTEGER NOT NULL,
    edited INTEGER NOT NULL,
    deleted INTEGER NOT NULL
);
CREATE TABLE changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    entity TEXT NOT NULL UNIQUE,
    thread_id TEXT NOT NULL,
    message_id TEXT,
    server_ts INTEGER NOT NULL
);
CREATE INDEX changes_by_thread ON changes (thread_id, seq);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    last_mutation_id INTEGER NOT NULL
);
CREATE TABLE mutation_results (
    device_id TEXT NOT NULL,
    mutation_id INTEGER NOT NULL,
    seq INTEGER,
    server_ts INTEGER,
    code TEXT,
    message TEXT,
    PRIMARY KEY (device_id, mutation_id)
) WITHOUT ROWID;
";

/// Tables in [`SqliteStorage::dump`] order.
const TABLES: &[&str] =
    &["meta", "threads", "members", "messages", "changes", "devices", "mutation_results", "sqlite_sequence"];

struct Inner {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
    secret: [u8; 32],
}

/// [`Storage`] on one SQLite file. Cheap to clone.
#[derive(Clone)]
pub struct SqliteStorage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStorage")
    }
}

fn lock(m: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    // A panic while holding the lock rolled back its transaction (rusqlite
    // rolls back on drop), so the connection is still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqliteStorage {
    /// Opens (or creates) the database at `path` and migrates it.
    pub fn open(path: &Path, durability: Durability) -> Result<Self> {
        let mut writer = Connection::open(path)?;
        writer.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        writer.pragma_update(None, "synchronous", sync)?;
        writer.busy_timeout(std::time::Duration::from_secs(5))?;
        migrate(&mut writer)?;
        let secret = load_secret(&mut writer)?;

        let reader = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
        )?;
        reader.busy_timeout(std::time::Duration::from_secs(5))?;
        Ok(SqliteStorage {
            inner: Arc::new(Inner { writer: Mutex::new(writer), reader: Mutex::new(reader), secret }),
        })
    }

    /// Every row of every table as text, in a stable order: for tests that
    /// check a refused request changed nothing, and for debugging.
    pub fn dump(&self) -> Result<String> {
        let conn = lock(&self.inner.writer);
        let mut out = String::new();
        for table in TABLES {
            out.push_str(&format!("-- {table}\n"));
            let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))?;
            let columns = stmt.column_count();
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let cells: Vec<String> =
                    (0..columns).map(|i| format!("{:?}", row.get_ref(i).map(|v| v.to_owned()))).collect();
                out.push_str(&cells.join("|"));
                out.push('\n');
            }
        }
        Ok(out)
    }

    async fn with_writer<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&inner.writer)))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }

    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&mut lock(&inner.reader)))
            .await
            .map_err(|e| Error::Task(e.to_string()))?
    }
}

fn migrate(conn: &mut Connection) -> Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(Error::SchemaTooNew(version));
    }
    if version == 0 {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(SCHEMA)?;
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
        tx.commit()?;
    }
    Ok(())
}

fn load_secret(conn: &mut Connection) -> Result<[u8; 32]> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let stored: Option<Vec<u8>> =
        tx.query_row("SELECT value FROM meta WHERE key = 'token_secret'", [], |r| r.get(0)).optional()?;
    let secret = match stored.and_then(|v| <[u8; 32]>::try_from(v).ok()) {
        Some(secret) => secret,
        None => {
            let secret = random_secret();
            tx.execute(
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('token_secret', ?1)",
                [secret.as_slice()],
            )?;
            secret
        }
    };
    tx.commit()?;
    Ok(secret)
}

fn thread_entity(id: ThreadId) -> String {
    format!("t:{id}")
}

fn message_entity(id: MessageId) -> String {
    format!("m:{id}")
}

/// Appends a change for `entity` at the next seq, dropping its older change.
fn record_change(
    tx: &Transaction<'_>,
    entity: &str,
    thread: ThreadId,
    message: Option<MessageId>,
    now: Millis,
) -> Result<u64> {
    tx.execute("DELETE FROM changes WHERE entity = ?1", [entity])?;
    tx.execute(
        "INSERT INTO changes (entity, thread_id, message_id, server_ts) VALUES (?1, ?2, ?3, ?4)",
        params![entity, thread.to_string(), message.map(|m| m.to_string()), now as i64],
    )?;
    Ok(tx.last_insert_rowid() as u64)
}

/// The latest change of `entity`, for acks of idempotent repeats.
fn latest_change(tx: &Transaction<'_>, entity: &str) -> Result<(u64, Millis)> {
    Ok(tx.query_row("SELECT seq, server_ts FROM changes WHERE entity = ?1", [entity], |r| {
        Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
    })?)
}

fn is_member(conn: &Connection, user: &UserId, thread: ThreadId) -> Result<bool> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM members WHERE thread_id = ?1 AND user_id = ?2",
            params![thread.to_string(), user.as_str()],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

fn members(conn: &Connection, thread: ThreadId) -> Result<Vec<UserId>> {
    let mut stmt =
        conn.prepare_cached("SELECT user_id FROM members WHERE thread_id = ?1 ORDER BY user_id")?;
    let rows = stmt.query_map([thread.to_string()], |r| r.get::<_, String>(0))?;
    Ok(rows.map(|r| r.map(UserId)).collect::<rusqlite::Result<_>>()?)
}

fn apply(tx: &Transaction<'_>, user: &UserId, body: &MutationBody, now: Millis) -> Result<Applied> {
    match body {
        MutationBody::CreateThread { thread_id, title, members: named, created_at } => {
            if implausible_id(thread_id.0, now) {
                return Ok(Err(id_unavailable()));
            }
            let existing: Option<(String, i64, i64)> = tx
                .query_row(
                    "SELECT created_by, created_seq, server_ts FROM threads WHERE id = ?1",
                    [thread_id.to_string()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            if let Some((created_by, seq, ts)) = existing {
                return Ok(if created_by == user.as_str() {
                    Ok((seq as u64, ts as u64))
                } else {
                    Err(id_unavailable())
                });
            }
            let seq = record_change(tx, &thread_entity(*thread_id), *thread_id, None, now)?;
            tx.execute(
                "INSERT INTO threads (id, title, created_by, created_at, created_seq, server_ts)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    thread_id.to_string(),
                    title.0,
                    user.as_str(),
                    *created_at as i64,
                    seq as i64,
                    now as i64
                ],
            )?;
            let mut add =
                tx.prepare_cached("INSERT OR IGNORE INTO members (thread_id, user_id) VALUES (?1, ?2)")?;
            for member in std::iter::once(user).chain(named) {
                add.execute(params![thread_id.to_string(), member.as_str()])?;
            }
            Ok(Ok((seq, now)))
        }
        MutationBody::Send { thread_id, message_id, body, client_ts } => {
            if !is_member(tx, user, *thread_id)? {
                return Ok(Err(not_member()));
            }
            if implausible_id(message_id.0, now) {
                return Ok(Err(id_unavailable()));
            }
            let existing: Option<(String, String, i64, i64)> = tx
                .query_row(
                    "SELECT thread_id, sender, seq, server_ts FROM messages WHERE id = ?1",
                    [message_id.to_string()],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            if let Some((thread, sender, seq, ts)) = existing {
                // Second layer of dedup, for a send repeated under a new
                // mutation id (e.g. after the client lost its outbox state).
                return Ok(if thread == thread_id.to_string() && sender == user.as_str() {
                    Ok((seq as u64, ts as u64))
                } else {
                    Err(id_unavailable())
                });
            }
            let seq = record_change(tx, &message_entity(*message_id), *thread_id, Some(*message_id), now)?;
            tx.execute(
                "INSERT INTO messages (id, thread_id, sender, body, seq, client_ts, server_ts, edited, deleted)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 0, 0)",
                params![
                    message_id.to_string(),
                    thread_id.to_string(),
                    user.as_str(),
                    body.0,
                    seq as i64,
                    *client_ts as i64,
                    now as i64
                ],
            )?;
            Ok(Ok((seq, now)))
        }
        MutationBody::Edit { thread_id, message_id, body } => {
            let target = own_message(tx, user, *thread_id, *message_id)?;
            let deleted = match target {
                Err(refusal) => return Ok(Err(refusal)),
                Ok(deleted) => deleted,
            };
            if deleted {
                return Ok(Err(edit_deleted()));
            }
            let seq = record_change(tx, &message_entity(*message_id), *thread_id, Some(*message_id), now)?;
            tx.execute(
                "UPDATE messages SET body = ?2, edited = 1 WHERE id = ?1",
                params![message_id.to_string(), body.0],
            )?;
            Ok(Ok((seq, now)))
        }
        MutationBody::Delete { thread_id, message_id } => {
            let deleted = match own_message(tx, user, *thread_id, *message_id)? {
                Err(refusal) => return Ok(Err(refusal)),
                Ok(deleted) => deleted,
            };
            if deleted {
                // Delete is idempotent; nothing can change a deleted message,
                // so its latest change is the delete.
                return Ok(Ok(latest_change(tx, &message_entity(*message_id))?));
            }
            let seq = record_change(tx, &message_entity(*message_id), *thread_id, Some(*message_id), now)?;
            tx.execute(
                "UPDATE messages SET body = NULL, deleted = 1 WHERE id = ?1",
                [message_id.to_string()],
            )?;
            Ok(Ok((seq, now)))
        }
        MutationBody::Join { thread_id, .. } => {
            // The invite was checked by the HTTP layer (a precheck).
            join_thread(tx, user, *thread_id, now)
        }
    }
}

/// Checks that `user` may edit or delete the message: `Ok(Ok(deleted))` if so.
fn own_message(
    tx: &Transaction<'_>,
    user: &UserId,
    thread_id: ThreadId,
    message_id: MessageId,
) -> Result<std::result::Result<bool, Refusal>> {
    if !is_member(tx, user, thread_id)? {
        return Ok(Err(not_member()));
    }
    let row: Option<(String, String, bool)> = tx
        .query_row(
            "SELECT thread_id, sender, deleted FROM messages WHERE id = ?1",
            [message_id.to_string()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    Ok(match row {
        Some((thread, _, _)) if thread != thread_id.to_string() => Err(no_such_message()),
        None => Err(no_such_message()),
        Some((_, sender, _)) if sender != user.as_str() => Err(not_sender()),
        Some((_, _, deleted)) => Ok(deleted),
    })
}

/// Adds `user` to an existing thread: `(seq, server_ts)` of the membership
/// change, or of the thread's latest change if already a member; refused if
/// the thread does not exist or is full.
fn join_thread(tx: &Transaction<'_>, user: &UserId, thread: ThreadId, now: Millis) -> Result<Applied> {
    let exists = tx
        .query_row("SELECT 1 FROM threads WHERE id = ?1", [thread.to_string()], |_| Ok(()))
        .optional()?
        .is_some();
    if !exists {
        return Ok(Err(no_such_thread_to_join()));
    }
    if is_member(tx, user, thread)? {
        return Ok(Ok(latest_change(tx, &thread_entity(thread))?));
    }
    let count: i64 =
        tx.query_row("SELECT count(*) FROM members WHERE thread_id = ?1", [thread.to_string()], |r| {
            r.get(0)
        })?;
    if count as usize >= dovecote::core::model::MAX_MEMBERS {
        return Ok(Err(thread_full(count as usize)));
    }
    tx.execute(
        "INSERT INTO members (thread_id, user_id) VALUES (?1, ?2)",
        params![thread.to_string(), user.as_str()],
    )?;
    Ok(Ok((record_change(tx, &thread_entity(thread), thread, None, now)?, now)))
}

fn pokes_for(tx: &Transaction<'_>, touched: &BTreeMap<ThreadId, u64>) -> Result<Vec<Poke>> {
    touched.iter().map(|(&thread, &cursor)| Ok(Poke { users: members(tx, thread)?, cursor })).collect()
}

/// A `mutation_results` row: `(seq, server_ts)` for an ack, `(code, message)` for a refusal.
type StoredResult = (Option<i64>, Option<i64>, Option<String>, Option<String>);

fn push_blocking(
    conn: &mut Connection,
    user: &UserId,
    device: DeviceId,
    mutations: Vec<IncomingMutation>,
    now: Millis,
) -> Result<PushOutcome> {
    let device_key = device.to_string();
    // IMMEDIATE: take the write lock up front, so the read of the device row
    // and the writes after it cannot interleave with another writer.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let bound: Option<(String, i64)> = tx
        .query_row("SELECT user_id, last_mutation_id FROM devices WHERE id = ?1", [&device_key], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .optional()?;
    let mut last = match bound {
        Some((owner, _)) if owner != user.as_str() => return Err(Error::DeviceForbidden),
        Some((_, last)) => last as u64,
        None => {
            tx.execute(
                "INSERT INTO devices (id, user_id, last_mutation_id) VALUES (?1, ?2, 0)",
                params![&device_key, user.as_str()],
            )?;
            0
        }
    };
    // The client pushes its outbox oldest first and drops what was answered,
    // so a push starting at id L says it will never ask about an id below L
    // again: those stored results can go (docs/protocol.md §4.2).
    if let Some(first) = mutations.first() {
        // Mutation ids are u64 stored as i64 bit for bit, so ids past
        // i64::MAX read as negative: compare in u64 order, the upper half
        // (negative) after the lower, each half in its own order.
        tx.execute(
            "DELETE FROM mutation_results WHERE device_id = ?1
             AND (mutation_id < 0, mutation_id) < (?2 < 0, ?2)",
            params![&device_key, first.mutation_id as i64],
        )?;
    }
    let mut acks = Vec::new();
    let mut rejected = Vec::new();
    let mut touched: BTreeMap<ThreadId, u64> = BTreeMap::new();
    for m in mutations {
        if m.mutation_id <= last {
            let stored: Option<StoredResult> = tx
                .query_row(
                    "SELECT seq, server_ts, code, message FROM mutation_results
                     WHERE device_id = ?1 AND mutation_id = ?2",
                    params![&device_key, m.mutation_id as i64],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            match stored {
                Some((Some(seq), Some(ts), _, _)) => {
                    acks.push(Ack { mutation_id: m.mutation_id, seq: seq as u64, server_ts: ts as u64 })
                }
                Some((_, _, code, message)) => rejected.push(Rejection {
                    mutation_id: m.mutation_id,
                    code: code.unwrap_or_default(),
                    message: message.unwrap_or_default(),
                }),
                // An id below the device's high-water mark that was never
                // pushed: applying it now would break the per-device order.
                None => rejected.push(out_of_order(last).rejection(m.mutation_id)),
            }
            continue;
        }
        let result = match m.precheck {
            Some(refusal) => Err(refusal),
            None => apply(&tx, user, &m.body, now)?,
        };
        match result {
            Ok((seq, server_ts)) => {
                tx.execute(
                    "INSERT INTO mutation_results (device_id, mutation_id, seq, server_ts) VALUES (?1, ?2, ?3, ?4)",
                    params![&device_key, m.mutation_id as i64, seq as i64, server_ts as i64],
                )?;
                let newest = touched.entry(m.body.thread_id()).or_default();
                *newest = (*newest).max(seq);
                acks.push(Ack { mutation_id: m.mutation_id, seq, server_ts });
            }
            Err(refusal) => {
                tx.execute(
                    "INSERT INTO mutation_results (device_id, mutation_id, code, message) VALUES (?1, ?2, ?3, ?4)",
                    params![&device_key, m.mutation_id as i64, refusal.code, refusal.message],
                )?;
                rejected.push(refusal.rejection(m.mutation_id));
            }
        }
        last = m.mutation_id;
    }
    tx.execute("UPDATE devices SET last_mutation_id = ?2 WHERE id = ?1", params![&device_key, last as i64])?;
    let pokes = pokes_for(&tx, &touched)?;
    tx.commit()?;
    Ok(PushOutcome {
        response: PushResponse { protocol: PROTOCOL_VERSION, acks, rejected, last_mutation_id: last },
        pokes,
    })
}

fn envelope(bytes: Vec<u8>) -> Envelope {
    Envelope(bytes)
}

fn parse_id<T: std::str::FromStr>(s: String) -> rusqlite::Result<T> {
    s.parse().map_err(|_| rusqlite::Error::InvalidColumnType(0, s, rusqlite::types::Type::Text))
}

fn load_thread(tx: &Transaction<'_>, thread: ThreadId) -> Result<ServerThread> {
    let (title, created_by, created_at): (Vec<u8>, String, i64) = tx.query_row(
        "SELECT title, created_by, created_at FROM threads WHERE id = ?1",
        [thread.to_string()],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(ServerThread {
        id: thread,
        title: envelope(title),
        members: members(tx, thread)?,
        created_by: UserId(created_by),
        created_at: created_at as u64,
    })
}

fn load_message(tx: &Transaction<'_>, id: MessageId) -> Result<ServerMessage> {
    let mut stmt = tx.prepare_cached(
        "SELECT thread_id, sender, body, seq, client_ts, server_ts, edited, deleted FROM messages WHERE id = ?1",
    )?;
    Ok(stmt.query_row([id.to_string()], |r| {
        Ok(ServerMessage {
            id,
            thread_id: parse_id(r.get(0)?)?,
            sender: UserId(r.get(1)?),
            body: r.get::<_, Option<Vec<u8>>>(2)?.map(envelope),
            seq: r.get::<_, i64>(3)? as u64,
            client_ts: r.get::<_, i64>(4)? as u64,
            server_ts: r.get::<_, i64>(5)? as u64,
            edited: r.get(6)?,
            deleted: r.get(7)?,
        })
    })?)
}

/// Rows of one thread's feed read per index probe in a main-feed pull, at
/// first and on each refill.
const FIRST_BATCH: i64 = 4;
const FEED_BATCH: i64 = 64;

/// A feed row: `(seq, thread_id, message_id)`.
type FeedRow = (u64, String, Option<String>);

/// Up to `n` feed rows of `thread` after `after`, by the `changes_by_thread` index.
fn thread_feed(tx: &Transaction<'_>, thread: &str, after: u64, n: i64) -> Result<Vec<FeedRow>> {
    let mut stmt = tx.prepare_cached(
        "SELECT seq, thread_id, message_id FROM changes
         WHERE thread_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )?;
    // Seqs never pass i64::MAX, so a cursor past it is past every seq (cast
    // as is, it would read as negative and return the whole feed).
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let rows = stmt
        .query_map(params![thread, after, n], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The caller's main feed after `cursor`, at most `n` rows in seq order: a
/// k-way merge of the feeds of the caller's threads, each read from its
/// index in batches. The cost is one probe per thread of the caller plus
/// the rows returned, whatever the size of the whole change table (a scan
/// of the global feed filtered by membership costs the whole table for a
/// user with few changes).
fn main_feed(tx: &Transaction<'_>, user: &UserId, cursor: u64, n: usize) -> Result<Vec<FeedRow>> {
    use std::cmp::Reverse;
    use std::collections::{BinaryHeap, VecDeque};
    let threads: Vec<String> = {
        let mut stmt = tx.prepare_cached("SELECT thread_id FROM members WHERE user_id = ?1")?;
        let rows = stmt.query_map([user.as_str()], |r| r.get(0))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    // A first probe reads a few rows per thread (a user in many threads must
    // not read `FEED_BATCH` rows of each one per page); refills read more.
    let first = FIRST_BATCH.min(n as i64).max(1);
    let batch = FEED_BATCH.min(n as i64).max(1);
    let mut buffers: Vec<(VecDeque<FeedRow>, bool)> = Vec::with_capacity(threads.len());
    let mut heap = BinaryHeap::new();
    for (i, thread) in threads.iter().enumerate() {
        let rows = thread_feed(tx, thread, cursor, first)?;
        let exhausted = (rows.len() as i64) < first;
        if let Some(first) = rows.first() {
            heap.push(Reverse((first.0, i)));
        }
        buffers.push((rows.into(), exhausted));
    }
    let mut out = Vec::with_capacity(n.min(1024));
    while out.len() < n {
        let Some(Reverse((_, i))) = heap.pop() else { break };
        let (buffer, exhausted) = &mut buffers[i];
        let row = buffer.pop_front().expect("a thread in the heap has a buffered row");
        if buffer.is_empty() && !*exhausted {
            let rows = thread_feed(tx, &threads[i], row.0, batch)?;
            *exhausted = (rows.len() as i64) < batch;
            buffer.extend(rows);
        }
        if let Some(next) = buffer.front() {
            heap.push(Reverse((next.0, i)));
        }
        out.push(row);
    }
    Ok(out)
}

fn pull_blocking(conn: &mut Connection, user: &UserId, q: PullQuery) -> Result<Option<PullResponse>> {
    // One read transaction: the page is one consistent snapshot.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
    let fetch = q.limit as usize + 1; // one extra row tells has_more
    let rows = match q.thread {
        Some(thread) => {
            if !is_member(&tx, user, thread)? {
                return Ok(None);
            }
            thread_feed(&tx, &thread.to_string(), q.cursor, fetch as i64)?
        }
        None => main_feed(&tx, user, q.cursor, fetch)?,
    };
    let mut page = PageBuilder::new(&q, rows.len());
    for (seq, thread, message) in rows.into_iter().take(q.limit as usize) {
        let change = match message {
            Some(message) => Change::Message { seq, message: load_message(&tx, parse_id(message)?)? },
            None => Change::Thread { seq, thread: load_thread(&tx, parse_id(thread)?)? },
        };
        if !page.offer(change) {
            break;
        }
    }
    tx.commit()?;
    Ok(Some(page.finish()))
}

impl Storage for SqliteStorage {
    fn token_secret(&self) -> [u8; 32] {
        self.inner.secret
    }

    async fn push(
        &self,
        user: UserId,
        device: DeviceId,
        mutations: Vec<IncomingMutation>,
        now: Millis,
    ) -> Result<PushOutcome> {
        self.with_writer(move |conn| push_blocking(conn, &user, device, mutations, now)).await
    }

    async fn pull(&self, user: UserId, query: PullQuery) -> Result<Option<PullResponse>> {
        self.with_reader(move |conn| pull_blocking(conn, &user, query)).await
    }

    async fn is_member(&self, user: UserId, thread: ThreadId) -> Result<bool> {
        self.with_reader(move |conn| is_member(conn, &user, thread)).await
    }

    async fn join(
        &self,
        user: UserId,
        thread: ThreadId,
        now: Millis,
    ) -> Result<std::result::Result<Joined, Refusal>> {
        self.with_writer(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let seq = match join_thread(&tx, &user, thread, now)? {
                Ok((seq, _)) => seq,
                Err(refusal) => return Ok(Err(refusal)),
            };
            let pokes = pokes_for(&tx, &BTreeMap::from([(thread, seq)]))?;
            tx.commit()?;
            Ok(Ok(Joined { seq, pokes }))
        })
        .await
    }
}
