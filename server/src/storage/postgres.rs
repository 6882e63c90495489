//! The PostgreSQL backend: several stateless server instances on one
//! database (`--db postgres://...`), on `tokio-postgres` with a
//! `deadpool-postgres` pool.
//!
//! **Gap-free cursors.** A pull hands out changes with `seq > cursor`, so a
//! change whose seq is below one a client already saw must never become
//! visible later. With a plain sequence it would: transaction A takes seq
//! 5, B takes 6, B commits, a puller sees 6 and moves its cursor past 5,
//! then A commits 5. Here every transaction that makes changes takes one
//! transaction-scoped advisory lock, the **feed lock**, before it reads the
//! shared state it decides on, and holds it to its commit. Seqs are drawn
//! under the lock, so transactions commit (and become visible: PostgreSQL
//! releases locks after a commit is visible) in seq order, and every
//! snapshot holds a prefix of the feed. The price is that writers are
//! serialized across instances, as SQLite serializes them within one; a
//! push that only replays stored results, or whose mutations are all
//! refused by the HTTP layer's checks, does not take the lock.
//! docs/protocol.md §5 states the rule; `server/tests/postgres.rs` checks it
//! under concurrency across instances.
//!
//! **Exactly once.** The device row is locked (`FOR UPDATE`) first, so two
//! copies of one push on two instances run one after the other and the
//! second answers from the first one's stored results. The lock order is
//! always device row, then feed lock, so two pushes cannot deadlock.
//!
//! **Pokes across instances.** A push sends its pokes with `pg_notify` in its
//! own transaction (delivered at commit, dropped on rollback); every
//! instance LISTENs and pokes its own sockets ([`PostgresStorage::listen_for_pokes`]).
//!
//! **Migrations** are numbered ([`MIGRATIONS`]), applied at start under an
//! advisory lock (instances starting together migrate once), each in the
//! transaction that records it; a database newer than the build is refused.

use std::collections::BTreeMap;
use std::sync::Arc;

use deadpool_postgres::{GenericClient, Manager, ManagerConfig, Pool, RecyclingMethod, Transaction};
use dovecote::core::envelope::Envelope;
use dovecote::core::model::{DeviceId, MessageId, Millis, ThreadId, UserId, MAX_MEMBERS};
use dovecote::core::sync::{
    Ack, Change, MutationBody, PullResponse, PushResponse, Rejection, ServerMessage, ServerThread,
    PROTOCOL_VERSION,
};
use serde::{Deserialize, Serialize};
use tokio_postgres::{AsyncMessage, IsolationLevel, NoTls};

use super::{
    edit_deleted, id_unavailable, implausible_id, no_such_message, no_such_thread_to_join, not_member,
    not_sender, out_of_order, thread_full, Applied, Error, IncomingMutation, Joined, PageBuilder, Poke,
    PullQuery, PushOutcome, Refusal, Result, Storage,
};
use crate::auth::random_secret;

/// The schema, one step per version: step `i` takes the database from
/// version `i` to `i + 1`. Append only; never edit a step that shipped.
pub const MIGRATIONS: &[&str] = &["
CREATE TABLE meta (key TEXT PRIMARY KEY, value BYTEA NOT NULL);
CREATE TABLE threads (
    id TEXT PRIMARY KEY,
    title BYTEA NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_seq BIGINT NOT NULL,
    server_ts BIGINT NOT NULL
);
CREATE TABLE members (
    thread_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (thread_id, user_id)
);
CREATE INDEX members_by_user ON members (user_id, thread_id);
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    thread_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    body BYTEA,
    seq BIGINT NOT NULL,
    client_ts BIGINT NOT NULL,
    server_ts BIGINT NOT NULL,
    edited BOOLEAN NOT NULL,
    deleted BOOLEAN NOT NULL
);
-- A sequence never hands a value out twice, even when the newest change
-- row is deleted (superseded); values of rolled-back transactions are
-- skipped, which only leaves holes in the numbering.
CREATE SEQUENCE change_seq;
CREATE TABLE changes (
    seq BIGINT PRIMARY KEY,
    entity TEXT NOT NULL UNIQUE,
    thread_id TEXT NOT NULL,
    message_id TEXT,
    server_ts BIGINT NOT NULL
);
CREATE INDEX changes_by_thread ON changes (thread_id, seq);
CREATE TABLE devices (
    id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    last_mutation_id BIGINT NOT NULL
);
CREATE TABLE mutation_results (
    device_id TEXT NOT NULL,
    mutation_id BIGINT NOT NULL,
    seq BIGINT,
    server_ts BIGINT,
    code TEXT,
    message TEXT,
    PRIMARY KEY (device_id, mutation_id)
);
"];

/// Advisory lock keys (any constants, the same in every instance).
const FEED_LOCK: i64 = 0x646f_7665_636f_7465; // "dovecote"
const MIGRATION_LOCK: i64 = FEED_LOCK + 1;

/// The NOTIFY channel for pokes.
const POKE_CHANNEL: &str = "dovecote_pokes";
/// PostgreSQL refuses NOTIFY payloads from 8000 bytes; a poke with more
/// members than fit is sent in several notifications.
const NOTIFY_PAYLOAD_MAX: usize = 7000;

/// Pooled connections per instance unless told otherwise.
pub const DEFAULT_POOL_SIZE: usize = 16;

/// One notification: pokes for `users` up to `cursor`, from instance `origin`.
#[derive(Serialize, Deserialize)]
struct PokeNote {
    #[serde(rename = "o")]
    origin: u64,
    #[serde(rename = "c")]
    cursor: u64,
    #[serde(rename = "u")]
    users: Vec<UserId>,
}

struct Inner {
    pool: Pool,
    config: tokio_postgres::Config,
    secret: [u8; 32],
    /// This instance's id in notifications, so that it does not poke its
    /// own sockets twice (the HTTP layer pokes them as soon as it commits).
    origin: u64,
}

/// [`Storage`] on a PostgreSQL database. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStorage {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PostgresStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PostgresStorage")
    }
}

/// Whether `db` names a PostgreSQL database rather than a SQLite file.
pub fn is_postgres_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

fn pool_error(e: impl std::fmt::Display) -> Error {
    Error::Pool(e.to_string())
}

/// u64 values (seqs, mutation ids, times) are BIGINT, stored bit for bit
/// (read back `as u64`): values past `i64::MAX` read as negative in SQL, so
/// an ordered comparison of them needs [`u64_order_below`] or [`seq_bound`].
/// (Clamped to `i64::MAX` instead, two mutation ids past it were one row,
/// and the second insert failed the push with a 500.)
fn big(v: u64) -> i64 {
    v as i64
}

/// A cursor as a seq bound: seqs never pass `i64::MAX`, so a cursor past
/// it is past every seq.
fn seq_bound(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// SQL for "`column` < `param` as u64", both stored by [`big`]: the upper
/// half (negative) after the lower, each half in its own order.
fn u64_order_below(column: &str, param: &str) -> String {
    format!("({column} < 0, {column}) < ({param} < 0, {param})")
}

fn parse_id<T: std::str::FromStr>(s: &str) -> Result<T> {
    s.parse().map_err(|_| Error::Corrupt(format!("not an id: {s:?}")))
}

fn thread_entity(id: ThreadId) -> String {
    format!("t:{id}")
}

fn message_entity(id: MessageId) -> String {
    format!("m:{id}")
}

impl PostgresStorage {
    /// Connects to `url` (a libpq-style URL) with a pool of `pool_size`
    /// connections, migrates the schema and loads (or makes) the token secret.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self> {
        let config: tokio_postgres::Config = url.parse().map_err(|e| Error::BadUrl(format!("{e}")))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager).max_size(pool_size.max(1)).build().map_err(pool_error)?;
        let secret = {
            let mut client = pool.get().await.map_err(pool_error)?;
            migrate(&mut client).await?;
            load_secret(&mut client).await?
        };
        let origin = u64::from_le_bytes(random_secret()[..8].try_into().expect("8 bytes"));
        Ok(PostgresStorage { inner: Arc::new(Inner { pool, config, secret, origin }) })
    }

    /// LISTENs for other instances' pokes and hands each to `deliver`.
    /// Returns once the first LISTEN is in place (so that a socket opened
    /// after startup misses no poke); then runs until the process ends,
    /// reconnecting with backoff when the connection drops. Pokes sent
    /// while it is down are lost, which costs latency only (a poke only
    /// says "pull now", docs/protocol.md §6).
    pub async fn listen_for_pokes(
        &self,
        deliver: impl Fn(Vec<Poke>) + Send + Sync + 'static,
    ) -> Result<tokio::task::JoinHandle<()>> {
        let first = listen(&self.inner.config).await?;
        let inner = self.inner.clone();
        Ok(tokio::spawn(async move {
            let mut notes = Some(first);
            let mut backoff = std::time::Duration::from_millis(100);
            loop {
                if let Some(mut rx) = notes.take() {
                    backoff = std::time::Duration::from_millis(100);
                    while let Some(payload) = rx.recv().await {
                        match serde_json::from_str::<PokeNote>(&payload) {
                            Ok(note) if note.origin != inner.origin => {
                                deliver(vec![Poke { users: note.users, cursor: note.cursor }])
                            }
                            Ok(_) => {}
                            Err(e) => eprintln!("warning: unreadable poke notification: {e}"),
                        }
                    }
                    eprintln!("warning: the poke listener lost its connection; reconnecting");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(std::time::Duration::from_secs(5));
                match listen(&inner.config).await {
                    Ok(rx) => notes = Some(rx),
                    Err(e) => eprintln!("warning: the poke listener cannot reconnect: {e}"),
                }
            }
        }))
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.inner.pool.get().await.map_err(pool_error)
    }
}

/// A connection of its own (not the pool's: it stays in LISTEN) and the
/// payloads of its notifications; the channel closes when the connection does.
async fn listen(config: &tokio_postgres::Config) -> Result<tokio::sync::mpsc::UnboundedReceiver<String>> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (notes, rx) = tokio::sync::mpsc::unbounded_channel();
    let (ready, listening) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        // The connection makes progress only while polled, the LISTEN's
        // answer included; the client must live as long as the connection.
        let drive = async {
            while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match message {
                    Ok(AsyncMessage::Notification(n)) => {
                        if notes.send(n.payload().to_owned()).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        };
        tokio::pin!(drive);
        let listen = format!("LISTEN {POKE_CHANNEL}");
        tokio::select! {
            listened = client.batch_execute(&listen) => {
                let ok = listened.is_ok();
                let _ = ready.send(listened);
                if ok {
                    drive.await;
                }
            }
            _ = &mut drive => {}
        }
    });
    match listening.await {
        Ok(listened) => listened?,
        Err(_) => return Err(Error::Pool("the LISTEN connection closed at once".into())),
    }
    Ok(rx)
}

async fn migrate(client: &mut deadpool_postgres::Object) -> Result<()> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
    )
    .await?;
    let current: i64 =
        tx.query_one("SELECT coalesce(max(version), 0) FROM schema_migrations", &[]).await?.get(0);
    if current > MIGRATIONS.len() as i64 {
        return Err(Error::SchemaTooNew(current));
    }
    for (done, step) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        tx.batch_execute(step).await?;
        tx.execute(
            "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
            &[&(done as i64 + 1), &big(crate::routes::now_ms())],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn load_secret(client: &mut deadpool_postgres::Object) -> Result<[u8; 32]> {
    let tx = client.transaction().await?;
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('token_secret', $1) ON CONFLICT (key) DO NOTHING",
        &[&random_secret().as_slice()],
    )
    .await?;
    let value: Vec<u8> = tx.query_one("SELECT value FROM meta WHERE key = 'token_secret'", &[]).await?.get(0);
    tx.commit().await?;
    <[u8; 32]>::try_from(value).map_err(|_| Error::Corrupt("the token secret is not 32 bytes".into()))
}

/// Takes the feed lock (module docs): held to this transaction's end.
async fn lock_feed(tx: &Transaction<'_>) -> Result<()> {
    let stmt = tx.prepare_cached("SELECT pg_advisory_xact_lock($1)").await?;
    tx.execute(&stmt, &[&FEED_LOCK]).await?;
    Ok(())
}

/// Appends a change for `entity` at the next seq, dropping its older change.
async fn record_change(
    tx: &Transaction<'_>,
    entity: &str,
    thread: ThreadId,
    message: Option<MessageId>,
    now: Millis,
) -> Result<u64> {
    let drop_old = tx.prepare_cached("DELETE FROM changes WHERE entity = $1").await?;
    tx.execute(&drop_old, &[&entity]).await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO changes (seq, entity, thread_id, message_id, server_ts)
             VALUES (nextval('change_seq'), $1, $2, $3, $4) RETURNING seq",
        )
        .await?;
    let message = message.map(|m| m.to_string());
    let row = tx.query_one(&insert, &[&entity, &thread.to_string(), &message, &big(now)]).await?;
    Ok(row.get::<_, i64>(0) as u64)
}

/// The latest change of `entity`, for acks of idempotent repeats.
async fn latest_change(tx: &Transaction<'_>, entity: &str) -> Result<(u64, Millis)> {
    let stmt = tx.prepare_cached("SELECT seq, server_ts FROM changes WHERE entity = $1").await?;
    let row = tx.query_one(&stmt, &[&entity]).await?;
    Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
}

async fn is_member(client: &impl GenericClient, user: &UserId, thread: ThreadId) -> Result<bool> {
    let stmt = client.prepare_cached("SELECT 1 FROM members WHERE thread_id = $1 AND user_id = $2").await?;
    Ok(client.query_opt(&stmt, &[&thread.to_string(), &user.as_str()]).await?.is_some())
}

async fn members(client: &impl GenericClient, thread: ThreadId) -> Result<Vec<UserId>> {
    let stmt =
        client.prepare_cached("SELECT user_id FROM members WHERE thread_id = $1 ORDER BY user_id").await?;
    let rows = client.query(&stmt, &[&thread.to_string()]).await?;
    Ok(rows.iter().map(|r| UserId(r.get(0))).collect())
}

async fn apply(tx: &Transaction<'_>, user: &UserId, body: &MutationBody, now: Millis) -> Result<Applied> {
    match body {
        MutationBody::CreateThread { thread_id, title, members: named, created_at } => {
            if implausible_id(thread_id.0, now) {
                return Ok(Err(id_unavailable()));
            }
            let stmt = tx
                .prepare_cached("SELECT created_by, created_seq, server_ts FROM threads WHERE id = $1")
                .await?;
            if let Some(row) = tx.query_opt(&stmt, &[&thread_id.to_string()]).await? {
                let created_by: String = row.get(0);
                return Ok(if created_by == user.as_str() {
                    Ok((row.get::<_, i64>(1) as u64, row.get::<_, i64>(2) as u64))
                } else {
                    Err(id_unavailable())
                });
            }
            let seq = record_change(tx, &thread_entity(*thread_id), *thread_id, None, now).await?;
            let insert = tx
                .prepare_cached(
                    "INSERT INTO threads (id, title, created_by, created_at, created_seq, server_ts)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await?;
            tx.execute(
                &insert,
                &[&thread_id.to_string(), &title.0, &user.as_str(), &big(*created_at), &big(seq), &big(now)],
            )
            .await?;
            let everyone: Vec<&str> = std::iter::once(user).chain(named).map(UserId::as_str).collect();
            let add = tx
                .prepare_cached(
                    "INSERT INTO members (thread_id, user_id) SELECT $1, unnest($2::text[])
                     ON CONFLICT DO NOTHING",
                )
                .await?;
            tx.execute(&add, &[&thread_id.to_string(), &everyone]).await?;
            Ok(Ok((seq, now)))
        }
        MutationBody::Send { thread_id, message_id, body, client_ts } => {
            if !is_member(tx, user, *thread_id).await? {
                return Ok(Err(not_member()));
            }
            if implausible_id(message_id.0, now) {
                return Ok(Err(id_unavailable()));
            }
            let stmt = tx
                .prepare_cached("SELECT thread_id, sender, seq, server_ts FROM messages WHERE id = $1")
                .await?;
            if let Some(row) = tx.query_opt(&stmt, &[&message_id.to_string()]).await? {
                let (thread, sender): (String, String) = (row.get(0), row.get(1));
                // Second layer of dedup, for a send repeated under a new
                // mutation id (e.g. after the client lost its outbox state).
                return Ok(if thread == thread_id.to_string() && sender == user.as_str() {
                    Ok((row.get::<_, i64>(2) as u64, row.get::<_, i64>(3) as u64))
                } else {
                    Err(id_unavailable())
                });
            }
            let seq =
                record_change(tx, &message_entity(*message_id), *thread_id, Some(*message_id), now).await?;
            let insert = tx
                .prepare_cached(
                    "INSERT INTO messages (id, thread_id, sender, body, seq, client_ts, server_ts, edited, deleted)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, false, false)",
                )
                .await?;
            tx.execute(
                &insert,
                &[
                    &message_id.to_string(),
                    &thread_id.to_string(),
                    &user.as_str(),
                    &body.0,
                    &big(seq),
                    &big(*client_ts),
                    &big(now),
                ],
            )
            .await?;
            Ok(Ok((seq, now)))
        }
        MutationBody::Edit { thread_id, message_id, body } => {
            match own_message(tx, user, *thread_id, *message_id).await? {
                Err(refusal) => return Ok(Err(refusal)),
                Ok(true) => return Ok(Err(edit_deleted())),
                Ok(false) => {}
            }
            let seq =
                record_change(tx, &message_entity(*message_id), *thread_id, Some(*message_id), now).await?;
            let stmt =
                tx.prepare_cached("UPDATE messages SET body = $2, edited = true WHERE id = $1").await?;
            tx.execute(&stmt, &[&message_id.to_string(), &body.0]).await?;
            Ok(Ok((seq, now)))
        }
        MutationBody::Delete { thread_id, message_id } => {
            match own_message(tx, user, *thread_id, *message_id).await? {
                Err(refusal) => return Ok(Err(refusal)),
                // Idempotent: nothing changes a deleted message, so its
                // latest change is the delete.
                Ok(true) => return Ok(Ok(latest_change(tx, &message_entity(*message_id)).await?)),
                Ok(false) => {}
            }
            let seq =
                record_change(tx, &message_entity(*message_id), *thread_id, Some(*message_id), now).await?;
            let stmt =
                tx.prepare_cached("UPDATE messages SET body = NULL, deleted = true WHERE id = $1").await?;
            tx.execute(&stmt, &[&message_id.to_string()]).await?;
            Ok(Ok((seq, now)))
        }
        // The invite was checked by the HTTP layer (a precheck).
        MutationBody::Join { thread_id, .. } => join_thread(tx, user, *thread_id, now).await,
    }
}

/// Checks that `user` may edit or delete the message: `Ok(Ok(deleted))` if so.
async fn own_message(
    tx: &Transaction<'_>,
    user: &UserId,
    thread_id: ThreadId,
    message_id: MessageId,
) -> Result<std::result::Result<bool, Refusal>> {
    if !is_member(tx, user, thread_id).await? {
        return Ok(Err(not_member()));
    }
    let stmt = tx.prepare_cached("SELECT thread_id, sender, deleted FROM messages WHERE id = $1").await?;
    let Some(row) = tx.query_opt(&stmt, &[&message_id.to_string()]).await? else {
        return Ok(Err(no_such_message()));
    };
    let (thread, sender, deleted): (String, String, bool) = (row.get(0), row.get(1), row.get(2));
    Ok(if thread != thread_id.to_string() {
        Err(no_such_message())
    } else if sender != user.as_str() {
        Err(not_sender())
    } else {
        Ok(deleted)
    })
}

/// Adds `user` to an existing thread (see the SQLite backend's `join_thread`).
async fn join_thread(tx: &Transaction<'_>, user: &UserId, thread: ThreadId, now: Millis) -> Result<Applied> {
    let stmt = tx.prepare_cached("SELECT 1 FROM threads WHERE id = $1").await?;
    if tx.query_opt(&stmt, &[&thread.to_string()]).await?.is_none() {
        return Ok(Err(no_such_thread_to_join()));
    }
    if is_member(tx, user, thread).await? {
        return Ok(Ok(latest_change(tx, &thread_entity(thread)).await?));
    }
    let stmt = tx.prepare_cached("SELECT count(*) FROM members WHERE thread_id = $1").await?;
    let count: i64 = tx.query_one(&stmt, &[&thread.to_string()]).await?.get(0);
    if count as usize >= MAX_MEMBERS {
        return Ok(Err(thread_full(count as usize)));
    }
    let stmt = tx.prepare_cached("INSERT INTO members (thread_id, user_id) VALUES ($1, $2)").await?;
    tx.execute(&stmt, &[&thread.to_string(), &user.as_str()]).await?;
    Ok(Ok((record_change(tx, &thread_entity(thread), thread, None, now).await?, now)))
}

/// The pokes for the touched threads, also sent to the other instances by
/// NOTIFY in the same transaction (delivered only if it commits).
async fn pokes_for(
    tx: &Transaction<'_>,
    origin: u64,
    touched: &BTreeMap<ThreadId, u64>,
) -> Result<Vec<Poke>> {
    let mut pokes = Vec::with_capacity(touched.len());
    for (&thread, &cursor) in touched {
        let users = members(tx, thread).await?;
        let notify = tx.prepare_cached("SELECT pg_notify($1, $2)").await?;
        for payload in poke_notes(origin, cursor, &users) {
            tx.execute(&notify, &[&POKE_CHANNEL, &payload]).await?;
        }
        pokes.push(Poke { users, cursor });
    }
    Ok(pokes)
}

/// A poke as NOTIFY payloads, each under PostgreSQL's limit (user ids are
/// at most 128 bytes, so a chunk always has room for one).
fn poke_notes(origin: u64, cursor: u64, users: &[UserId]) -> Vec<String> {
    let mut notes = Vec::new();
    let mut chunk: Vec<UserId> = Vec::new();
    let mut size = 64;
    for user in users {
        let cost = user.as_str().len() * 6 + 3; // worst case JSON escaping
        if !chunk.is_empty() && size + cost > NOTIFY_PAYLOAD_MAX {
            notes.push(std::mem::take(&mut chunk));
            size = 64;
        }
        size += cost;
        chunk.push(user.clone());
    }
    if !chunk.is_empty() {
        notes.push(chunk);
    }
    notes
        .into_iter()
        .map(|users| serde_json::to_string(&PokeNote { origin, cursor, users }).expect("pokes serialize"))
        .collect()
}

async fn push_tx(
    storage: &PostgresStorage,
    user: &UserId,
    device: DeviceId,
    mutations: Vec<IncomingMutation>,
    now: Millis,
) -> Result<PushOutcome> {
    let mut client = storage.client().await?;
    let tx = client.build_transaction().isolation_level(IsolationLevel::ReadCommitted).start().await?;
    let device_key = device.to_string();
    let claim = tx
        .prepare_cached(
            "INSERT INTO devices (id, user_id, last_mutation_id) VALUES ($1, $2, 0) ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    tx.execute(&claim, &[&device_key, &user.as_str()]).await?;
    // The row lock serializes pushes of one device across instances.
    let bound =
        tx.prepare_cached("SELECT user_id, last_mutation_id FROM devices WHERE id = $1 FOR UPDATE").await?;
    let row = tx.query_one(&bound, &[&device_key]).await?;
    if row.get::<_, String>(0) != user.as_str() {
        return Err(Error::DeviceForbidden); // dropping `tx` rolls back
    }
    let mut last = row.get::<_, i64>(1) as u64;
    // Results below the push's first id are never asked for again
    // (docs/protocol.md §4.2).
    if let Some(first) = mutations.first() {
        let prune = tx
            .prepare_cached(&format!(
                "DELETE FROM mutation_results WHERE device_id = $1 AND {}",
                u64_order_below("mutation_id", "$2::BIGINT")
            ))
            .await?;
        tx.execute(&prune, &[&device_key, &big(first.mutation_id)]).await?;
    }
    let stored = tx
        .prepare_cached(
            "SELECT seq, server_ts, code, message FROM mutation_results WHERE device_id = $1 AND mutation_id = $2",
        )
        .await?;
    let record = tx
        .prepare_cached(
            "INSERT INTO mutation_results (device_id, mutation_id, seq, server_ts, code, message)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .await?;
    let mut acks = Vec::new();
    let mut rejected = Vec::new();
    let mut touched: BTreeMap<ThreadId, u64> = BTreeMap::new();
    let mut feed_locked = false;
    for m in mutations {
        if m.mutation_id <= last {
            match tx.query_opt(&stored, &[&device_key, &big(m.mutation_id)]).await? {
                Some(row) => match (row.get::<_, Option<i64>>(0), row.get::<_, Option<i64>>(1)) {
                    (Some(seq), Some(ts)) => {
                        acks.push(Ack { mutation_id: m.mutation_id, seq: seq as u64, server_ts: ts as u64 })
                    }
                    _ => rejected.push(Rejection {
                        mutation_id: m.mutation_id,
                        code: row.get::<_, Option<String>>(2).unwrap_or_default(),
                        message: row.get::<_, Option<String>>(3).unwrap_or_default(),
                    }),
                },
                None => {
                    rejected.push(out_of_order(last).rejection(m.mutation_id));
                }
            }
            continue;
        }
        let result = match m.precheck {
            Some(refusal) => Err(refusal),
            None => {
                if !feed_locked {
                    lock_feed(&tx).await?;
                    feed_locked = true;
                }
                apply(&tx, user, &m.body, now).await?
            }
        };
        match result {
            Ok((seq, server_ts)) => {
                let none: Option<&str> = None;
                tx.execute(
                    &record,
                    &[&device_key, &big(m.mutation_id), &Some(big(seq)), &Some(big(server_ts)), &none, &none],
                )
                .await?;
                let newest = touched.entry(m.body.thread_id()).or_default();
                *newest = (*newest).max(seq);
                acks.push(Ack { mutation_id: m.mutation_id, seq, server_ts });
            }
            Err(refusal) => {
                let none: Option<i64> = None;
                tx.execute(
                    &record,
                    &[
                        &device_key,
                        &big(m.mutation_id),
                        &none,
                        &none,
                        &Some(refusal.code.as_str()),
                        &Some(refusal.message.as_str()),
                    ],
                )
                .await?;
                rejected.push(refusal.rejection(m.mutation_id));
            }
        }
        last = m.mutation_id;
    }
    let mark = tx.prepare_cached("UPDATE devices SET last_mutation_id = $2 WHERE id = $1").await?;
    tx.execute(&mark, &[&device_key, &big(last)]).await?;
    let pokes = pokes_for(&tx, storage.inner.origin, &touched).await?;
    tx.commit().await?;
    Ok(PushOutcome {
        response: PushResponse { protocol: PROTOCOL_VERSION, acks, rejected, last_mutation_id: last },
        pokes,
    })
}

/// Feed rows per thread read in one probe of a main-feed pull.
const FEED_SQL_MAIN: &str = "
SELECT f.seq, f.thread_id, f.message_id
FROM members m
CROSS JOIN LATERAL (
    SELECT c.seq, c.thread_id, c.message_id FROM changes c
    WHERE c.thread_id = m.thread_id AND c.seq > $2 ORDER BY c.seq LIMIT $3
) f
WHERE m.user_id = $1
ORDER BY f.seq LIMIT $3";

const FEED_SQL_THREAD: &str = "
SELECT seq, thread_id, message_id FROM changes WHERE thread_id = $1 AND seq > $2 ORDER BY seq LIMIT $3";

/// Bodies are loaded this many rows at a time, so that a page cut short by
/// its byte limit loads little more than it sends.
const LOAD_BATCH: usize = 32;

async fn load_thread(client: &impl GenericClient, thread: ThreadId) -> Result<ServerThread> {
    let stmt =
        client.prepare_cached("SELECT title, created_by, created_at FROM threads WHERE id = $1").await?;
    let row = client.query_one(&stmt, &[&thread.to_string()]).await?;
    Ok(ServerThread {
        id: thread,
        title: Envelope(row.get(0)),
        members: members(client, thread).await?,
        created_by: UserId(row.get(1)),
        created_at: row.get::<_, i64>(2) as u64,
    })
}

async fn load_messages(
    client: &impl GenericClient,
    ids: &[String],
) -> Result<std::collections::HashMap<String, ServerMessage>> {
    let stmt = client
        .prepare_cached(
            "SELECT id, thread_id, sender, body, seq, client_ts, server_ts, edited, deleted
             FROM messages WHERE id = ANY($1)",
        )
        .await?;
    let mut out = std::collections::HashMap::with_capacity(ids.len());
    for row in client.query(&stmt, &[&ids]).await? {
        let id: String = row.get(0);
        let message = ServerMessage {
            id: parse_id(&id)?,
            thread_id: parse_id(row.get::<_, &str>(1))?,
            sender: UserId(row.get(2)),
            body: row.get::<_, Option<Vec<u8>>>(3).map(Envelope),
            seq: row.get::<_, i64>(4) as u64,
            client_ts: row.get::<_, i64>(5) as u64,
            server_ts: row.get::<_, i64>(6) as u64,
            edited: row.get(7),
            deleted: row.get(8),
        };
        out.insert(id, message);
    }
    Ok(out)
}

async fn pull_tx(storage: &PostgresStorage, user: &UserId, q: PullQuery) -> Result<Option<PullResponse>> {
    let mut client = storage.client().await?;
    // One snapshot for the page. Under the feed lock every snapshot holds
    // a prefix of the feed (module docs), so `seq > cursor` skips nothing.
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let fetch = q.limit as i64 + 1; // one extra row tells has_more
    let rows = match q.thread {
        Some(thread) => {
            if !is_member(&tx, user, thread).await? {
                return Ok(None);
            }
            let stmt = tx.prepare_cached(FEED_SQL_THREAD).await?;
            tx.query(&stmt, &[&thread.to_string(), &seq_bound(q.cursor), &fetch]).await?
        }
        None => {
            let stmt = tx.prepare_cached(FEED_SQL_MAIN).await?;
            tx.query(&stmt, &[&user.as_str(), &seq_bound(q.cursor), &fetch]).await?
        }
    };
    let feed: Vec<(u64, String, Option<String>)> =
        rows.iter().map(|r| (r.get::<_, i64>(0) as u64, r.get(1), r.get(2))).collect();
    let mut page = PageBuilder::new(&q, feed.len());
    let mut threads: std::collections::HashMap<String, ServerThread> = Default::default();
    'batches: for batch in feed.chunks(LOAD_BATCH) {
        let wanted: Vec<String> = batch.iter().filter_map(|(_, _, m)| m.clone()).collect();
        let mut messages = load_messages(&tx, &wanted).await?;
        for (seq, thread, message) in batch {
            let change = match message {
                Some(id) => {
                    let message = messages
                        .remove(id)
                        .ok_or_else(|| Error::Corrupt(format!("change for missing {id}")))?;
                    Change::Message { seq: *seq, message }
                }
                None => {
                    let loaded = match threads.get(thread) {
                        Some(t) => t.clone(),
                        None => load_thread(&tx, parse_id(thread)?).await?,
                    };
                    threads.insert(thread.clone(), loaded.clone());
                    Change::Thread { seq: *seq, thread: loaded }
                }
            };
            if !page.offer(change) {
                break 'batches;
            }
        }
    }
    tx.commit().await?;
    Ok(Some(page.finish()))
}

async fn join_tx(
    storage: &PostgresStorage,
    user: &UserId,
    thread: ThreadId,
    now: Millis,
) -> Result<std::result::Result<Joined, Refusal>> {
    let mut client = storage.client().await?;
    let tx = client.transaction().await?;
    lock_feed(&tx).await?;
    let seq = match join_thread(&tx, user, thread, now).await? {
        Ok((seq, _)) => seq,
        Err(refusal) => return Ok(Err(refusal)),
    };
    let pokes = pokes_for(&tx, storage.inner.origin, &BTreeMap::from([(thread, seq)])).await?;
    tx.commit().await?;
    Ok(Ok(Joined { seq, pokes }))
}

impl Storage for PostgresStorage {
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
        push_tx(self, &user, device, mutations, now).await
    }

    async fn pull(&self, user: UserId, query: PullQuery) -> Result<Option<PullResponse>> {
        pull_tx(self, &user, query).await
    }

    async fn is_member(&self, user: UserId, thread: ThreadId) -> Result<bool> {
        let client = self.client().await?;
        is_member(&client, &user, thread).await
    }

    async fn join(
        &self,
        user: UserId,
        thread: ThreadId,
        now: Millis,
    ) -> Result<std::result::Result<Joined, Refusal>> {
        join_tx(self, &user, thread, now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pokes_for_many_members_fit_notify_payloads() {
        let users: Vec<UserId> = (0..256).map(|i| UserId(format!("{i:0>128}"))).collect();
        let notes = poke_notes(7, 42, &users);
        assert!(notes.len() > 1);
        let mut seen = Vec::new();
        for note in &notes {
            assert!(note.len() < NOTIFY_PAYLOAD_MAX, "{}", note.len());
            let note: PokeNote = serde_json::from_str(note).unwrap();
            assert_eq!((note.origin, note.cursor), (7, 42));
            seen.extend(note.users);
        }
        assert_eq!(seen, users);
    }
}
