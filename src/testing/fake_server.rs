//! An in-memory sync server and a faulty network in front of it, for
//! deterministic simulations of the engine's sync (issue 5, item 6).
//!
//! [`FakeServer`] implements protocol v1 (docs/protocol.md) with the reference
//! server's semantics: devices bound to their first user, exactly-once pushes
//! (per-device `last_mutation_id` and stored results, `out_of_order` for a
//! skipped id at or below the mark), one global strictly increasing `seq`, a
//! feed with one entry per entity at its latest change, membership checks that
//! reveal nothing, delete wins, invites. Where it answers with an HTTP error it
//! returns the [`TransportFailure`] an HTTP transport would make of the
//! reference server's answer, so the engine cannot tell the difference. The
//! reference server's own HTTP tests (`server/tests/api.rs`) pin the same rules;
//! the unit tests below check this fake against the protocol text.
//!
//! [`FakeTransport`] is one user's [`Transport`] to a `FakeServer` through a
//! network that misbehaves on purpose, chosen by a seeded [`SimRng`] (see
//! [`Faults`]): a request lost before the server saw it, an answer lost after
//! the server applied the push, 5xx and 429 answers, a push delivered twice,
//! and a push delayed past the client's timeout that reaches the server later,
//! after the client's next request or before it. With one push in flight per
//! client, that last one is the only reordering a real network can do to it:
//! HTTP pairs each answer with its request, so an abandoned request's late
//! answer is never seen, but the request itself may still arrive. Besides
//! the random faults, a test can take the server down, expire the session
//! (`401` until renewed), and make the next push hang for ever (a tab that
//! dies with it in flight) or wait until resumed (to act meanwhile).
//!
//! Clones share state (`Rc<RefCell<..>>`), like connections to one server:
//! that is how several clients, or one client across restarts, reach the
//! same server and the same network.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::rc::Rc;

use crate::core::envelope::Envelope;
use crate::core::model::{DeviceId, MessageId, Millis, ThreadId, UserId, MAX_MEMBERS};
use crate::core::outbox::{wire_size, TransportFailure};
use crate::core::sync::{
    AcceptResponse, Ack, Change, ErrorDetail, InviteResponse, MutationBody, PullPage, PullRequest,
    PullResponse, PushRequest, PushResponse, Rejection, ServerMessage, ServerThread, PROTOCOL_VERSION,
};
use crate::ports::{Traffic, Transport};

/// A small, fast, seeded random generator (xorshift64*), so that a
/// simulation replays exactly from its seed.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        SimRng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number, uniform over u64.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The reference server's limits (docs/protocol.md §9), which the fake
/// enforces the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Largest envelope, decoded; a larger one is a `too_large` rejection of
    /// its mutation alone.
    pub envelope_bytes: usize,
    /// Largest push body, as JSON; a larger one is `413 too_large`.
    pub body_bytes: usize,
    /// Most mutations per push; more is `413 too_large`.
    pub max_mutations: usize,
    /// How long an invite token stays valid.
    pub invite_ttl: Millis,
    /// Most changes per pull page; a larger `limit` is lowered to this
    /// (the reference server: 1000). A small one makes clients page.
    pub max_pull: u32,
    /// Most bytes of changes (as JSON) per pull page; one larger change
    /// still comes alone (the reference server's `--page-bytes`).
    pub page_bytes: usize,
}

impl Default for ServerLimits {
    /// The reference server's defaults.
    fn default() -> Self {
        ServerLimits {
            envelope_bytes: 96 * 1024,
            body_bytes: 256 * 1024,
            max_mutations: 500,
            invite_ttl: 7 * 24 * 3600 * 1000,
            max_pull: 1000,
            page_bytes: 4 * 1024 * 1024,
        }
    }
}

/// What a [`FakeServer`] has done, for simulations to check.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Push requests that passed the whole-request checks.
    pub pushes: u64,
    /// Pull requests answered.
    pub pulls: u64,
    /// Mutations applied (each made one change).
    pub applied: u64,
    /// Mutations refused (rejections stored as results).
    pub rejected: u64,
    /// Mutation ids answered from stored results (retries, duplicates).
    pub replayed: u64,
    /// Ids at or below the high-water mark that were never processed: a
    /// correct client never sends one.
    pub out_of_order: u64,
    /// Sends of an existing message under a new mutation id, acked by the
    /// second layer of dedup: a correct outbox never needs it.
    pub send_repeats: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Entity {
    Thread(ThreadId),
    Message(MessageId),
}

#[derive(Debug, Clone)]
struct ThreadRow {
    title: Envelope,
    members: BTreeSet<UserId>,
    created_by: UserId,
    created_at: Millis,
    created_seq: u64,
    server_ts: Millis,
}

#[derive(Debug, Clone)]
struct DeviceRow {
    user: UserId,
    last_mutation_id: u64,
    results: HashMap<u64, Result<Ack, Rejection>>,
}

#[derive(Debug, Default)]
struct State {
    limits: ServerLimits,
    now: Millis,
    down: bool,
    seq: u64,
    threads: BTreeMap<ThreadId, ThreadRow>,
    messages: HashMap<MessageId, ServerMessage>,
    /// The feed: one entry per entity, at the seq of its latest change.
    feed: BTreeMap<u64, Entity>,
    /// Each entity's latest change: its seq and server time.
    latest: HashMap<Entity, (u64, Millis)>,
    devices: HashMap<DeviceId, DeviceRow>,
    invites: HashMap<String, (ThreadId, Millis)>,
    invites_issued: u64,
    stats: ServerStats,
}

/// A per-mutation refusal before it is tied to a mutation id.
type Refused = (&'static str, String);

fn http(status: u16, code: &str, message: impl Into<String>) -> TransportFailure {
    TransportFailure::Status {
        status,
        error: Some(ErrorDetail { code: code.to_owned(), message: message.into() }),
        retry_after: None,
    }
}

/// The answer for an id that cannot be used, whatever the reason.
fn id_unavailable() -> Refused {
    ("conflict", "this id cannot be used; make a new one".into())
}

/// Ids carry their creation time; one over a day ahead of the server's
/// clock is not a real id.
fn implausible_id(id: crate::core::model::Id, now: Millis) -> bool {
    id.created_at() > now.saturating_add(24 * 3600 * 1000)
}

fn not_member() -> Refused {
    // The same answer whether or not the thread exists.
    ("not_member", "not a member of this thread".into())
}

impl State {
    fn is_member(&self, user: &UserId, thread: ThreadId) -> bool {
        self.threads.get(&thread).is_some_and(|t| t.members.contains(user))
    }

    fn entity_thread(&self, entity: Entity) -> ThreadId {
        match entity {
            Entity::Thread(t) => t,
            Entity::Message(m) => self.messages[&m].thread_id,
        }
    }

    /// Moves `entity` to the next seq, dropping its older feed entry.
    fn record_change(&mut self, entity: Entity) -> (u64, Millis) {
        self.seq += 1;
        let change = (self.seq, self.now);
        if let Some((old, _)) = self.latest.insert(entity, change) {
            self.feed.remove(&old);
        }
        self.feed.insert(self.seq, entity);
        change
    }

    fn server_thread(&self, id: ThreadId) -> ServerThread {
        let row = &self.threads[&id];
        ServerThread {
            id,
            title: row.title.clone(),
            members: row.members.iter().cloned().collect(),
            created_by: row.created_by.clone(),
            created_at: row.created_at,
        }
    }

    /// Refusals that need no data: sizes, member lists, invites.
    fn precheck(&self, user: &UserId, body: &MutationBody) -> Option<Refused> {
        let limit = self.limits.envelope_bytes;
        let too_large = |what: &str, len: usize| {
            (len > limit).then(|| ("too_large", format!("{what} is {len} bytes, over the limit of {limit}")))
        };
        match body {
            MutationBody::Send { body, .. } | MutationBody::Edit { body, .. } => {
                too_large("message envelope", body.0.len())
            }
            MutationBody::CreateThread { title, members, .. } => too_large("title envelope", title.0.len())
                .or_else(|| {
                    // The creator counts (once), as on the reference server.
                    let bad = members.len() + usize::from(!members.contains(user)) > MAX_MEMBERS
                        || members.iter().any(|m| UserId::parse(m.as_str()).is_err());
                    bad.then(|| ("invalid", "too many members, or a malformed user id".into()))
                }),
            MutationBody::Delete { .. } => None,
            MutationBody::Join { thread_id, invite } => match self.invites.get(invite) {
                Some(&(thread, expires_at)) if thread == *thread_id && self.now < expires_at => None,
                _ => Some(("invite_invalid", "the invite is invalid, expired or for another thread".into())),
            },
        }
    }

    /// Applies one mutation: `(seq, server_ts)` of its change (or of the
    /// original change, for an idempotent repeat), or why it is refused.
    fn apply(&mut self, user: &UserId, body: &MutationBody) -> Result<(u64, Millis), Refused> {
        match body {
            MutationBody::CreateThread { thread_id, title, members, created_at } => {
                if implausible_id(thread_id.0, self.now) {
                    return Err(id_unavailable());
                }
                if let Some(row) = self.threads.get(thread_id) {
                    return if row.created_by == *user {
                        Ok((row.created_seq, row.server_ts))
                    } else {
                        Err(id_unavailable())
                    };
                }
                let mut all: BTreeSet<UserId> = members.iter().cloned().collect();
                all.insert(user.clone());
                // The row goes in first: the feed entry names it.
                self.threads.insert(
                    *thread_id,
                    ThreadRow {
                        title: title.clone(),
                        members: all,
                        created_by: user.clone(),
                        created_at: *created_at,
                        created_seq: 0,
                        server_ts: self.now,
                    },
                );
                let (seq, ts) = self.record_change(Entity::Thread(*thread_id));
                self.threads.get_mut(thread_id).expect("just inserted").created_seq = seq;
                Ok((seq, ts))
            }
            MutationBody::Send { thread_id, message_id, body, client_ts } => {
                if !self.is_member(user, *thread_id) {
                    return Err(not_member());
                }
                if implausible_id(message_id.0, self.now) {
                    return Err(id_unavailable());
                }
                if let Some(existing) = self.messages.get(message_id) {
                    return if existing.thread_id == *thread_id && existing.sender == *user {
                        self.stats.send_repeats += 1;
                        Ok((existing.seq, existing.server_ts))
                    } else {
                        Err(id_unavailable())
                    };
                }
                let message = ServerMessage {
                    id: *message_id,
                    thread_id: *thread_id,
                    sender: user.clone(),
                    body: Some(body.clone()),
                    seq: 0,
                    client_ts: *client_ts,
                    server_ts: self.now,
                    edited: false,
                    deleted: false,
                };
                self.messages.insert(*message_id, message);
                let (seq, ts) = self.record_change(Entity::Message(*message_id));
                self.messages.get_mut(message_id).expect("just inserted").seq = seq;
                Ok((seq, ts))
            }
            MutationBody::Edit { thread_id, message_id, body } => {
                if self.own_message(user, *thread_id, *message_id)? {
                    return Err(("edit_deleted", "the message was deleted".into()));
                }
                let message = self.messages.get_mut(message_id).expect("checked");
                message.body = Some(body.clone());
                message.edited = true;
                Ok(self.record_change(Entity::Message(*message_id)))
            }
            MutationBody::Delete { thread_id, message_id } => {
                if self.own_message(user, *thread_id, *message_id)? {
                    // Nothing changes a deleted message: its latest change is the delete.
                    return Ok(self.latest[&Entity::Message(*message_id)]);
                }
                let message = self.messages.get_mut(message_id).expect("checked");
                message.body = None;
                message.deleted = true;
                Ok(self.record_change(Entity::Message(*message_id)))
            }
            MutationBody::Join { thread_id, .. } => {
                let full = self
                    .threads
                    .get(thread_id)
                    .is_some_and(|row| row.members.len() >= MAX_MEMBERS && !row.members.contains(user));
                if full {
                    return Err(("thread_full", "the thread has the most members there may be".into()));
                }
                self.join(user, *thread_id).ok_or(("invite_invalid", "the invite is not valid".into()))
            }
        }
    }

    /// Whether `user` may edit or delete the message: `Ok(deleted)` if so.
    fn own_message(&self, user: &UserId, thread: ThreadId, message: MessageId) -> Result<bool, Refused> {
        if !self.is_member(user, thread) {
            return Err(not_member());
        }
        match self.messages.get(&message) {
            Some(m) if m.thread_id == thread && m.sender != *user => {
                Err(("not_sender", "only the sender may change a message".into()))
            }
            Some(m) if m.thread_id == thread => Ok(m.deleted),
            _ => Err(("not_found", "no such message in this thread".into())),
        }
    }

    /// Adds `user` to an existing thread: the membership change, or the
    /// thread's latest change if already a member; `None` if no such thread.
    fn join(&mut self, user: &UserId, thread: ThreadId) -> Option<(u64, Millis)> {
        let row = self.threads.get_mut(&thread)?;
        if !row.members.insert(user.clone()) {
            return Some(self.latest[&Entity::Thread(thread)]);
        }
        Some(self.record_change(Entity::Thread(thread)))
    }

    fn push(&mut self, user: &UserId, request: &PushRequest) -> Result<PushResponse, TransportFailure> {
        if request.protocol != PROTOCOL_VERSION {
            return Err(http(400, "unsupported_protocol", format!("protocol {}", request.protocol)));
        }
        if request.mutations.len() > self.limits.max_mutations {
            let message = format!("{} mutations in one push", request.mutations.len());
            return Err(http(413, "too_large", message));
        }
        // `wire_size` bounds each mutation's JSON from above, so only a push
        // that may be over the limit is measured exactly.
        let estimate: usize = request.mutations.iter().map(|m| wire_size(&m.body)).sum::<usize>() + 256;
        let size = if estimate <= self.limits.body_bytes {
            estimate
        } else {
            serde_json::to_vec(request).map_or(usize::MAX, |json| json.len())
        };
        if size > self.limits.body_bytes {
            return Err(http(413, "too_large", format!("a body of {size} bytes")));
        }
        let mut previous = 0;
        for m in &request.mutations {
            if m.mutation_id <= previous {
                return Err(http(
                    400,
                    "bad_request",
                    "mutation ids must be positive and strictly increasing",
                ));
            }
            previous = m.mutation_id;
        }
        if self.devices.get(&request.device_id).is_some_and(|d| d.user != *user) {
            return Err(http(403, "forbidden", "this device id belongs to another user"));
        }
        self.stats.pushes += 1;
        let mut device = self.devices.remove(&request.device_id).unwrap_or_else(|| DeviceRow {
            user: user.clone(),
            last_mutation_id: 0,
            results: HashMap::new(),
        });
        // A push starting at id L says the device will never ask about an
        // id below L again: those results go (docs/protocol.md §4.2).
        if let Some(first) = request.mutations.first() {
            device.results.retain(|&id, _| id >= first.mutation_id);
        }
        let mut response = PushResponse {
            protocol: PROTOCOL_VERSION,
            acks: Vec::new(),
            rejected: Vec::new(),
            last_mutation_id: 0,
        };
        for m in &request.mutations {
            let id = m.mutation_id;
            let result = if id <= device.last_mutation_id {
                match device.results.get(&id) {
                    Some(stored) => {
                        self.stats.replayed += 1;
                        stored.clone()
                    }
                    None => {
                        // Never stored: nothing changes.
                        self.stats.out_of_order += 1;
                        Err(Rejection {
                            mutation_id: id,
                            code: "out_of_order".into(),
                            message: format!(
                                "mutation ids for this device are already past {}",
                                device.last_mutation_id
                            ),
                        })
                    }
                }
            } else {
                let result = match self.precheck(user, &m.body) {
                    Some(refused) => Err(refused),
                    None => self.apply(user, &m.body),
                };
                let result = match result {
                    Ok((seq, server_ts)) => {
                        self.stats.applied += 1;
                        Ok(Ack { mutation_id: id, seq, server_ts })
                    }
                    Err((code, message)) => {
                        self.stats.rejected += 1;
                        Err(Rejection { mutation_id: id, code: code.into(), message })
                    }
                };
                device.results.insert(id, result.clone());
                device.last_mutation_id = id;
                result
            };
            match result {
                Ok(ack) => response.acks.push(ack),
                Err(rejection) => response.rejected.push(rejection),
            }
        }
        response.last_mutation_id = device.last_mutation_id;
        self.devices.insert(request.device_id, device);
        Ok(response)
    }

    fn pull(&mut self, user: &UserId, request: &PullRequest) -> Result<PullResponse, TransportFailure> {
        if request.limit == 0 {
            return Err(http(400, "bad_request", "limit must be at least 1"));
        }
        if let Some(thread) = request.thread {
            if !self.is_member(user, thread) {
                return Err(http(404, "not_found", "not found"));
            }
        }
        let limit = request.limit.min(self.limits.max_pull.max(1)) as usize;
        let entries: Vec<(u64, Entity)> = self
            .feed
            .range(request.cursor.saturating_add(1)..)
            .map(|(&seq, &entity)| (seq, entity))
            .filter(|&(_, entity)| {
                let thread = self.entity_thread(entity);
                request.thread.is_none_or(|t| t == thread) && self.is_member(user, thread)
            })
            .take(limit + 1)
            .collect();
        let mut has_more = entries.len() > limit;
        // At most `page_bytes` of changes as JSON (after the answer's own
        // ~128 bytes), but always at least one, as the reference server.
        let mut bytes = 128;
        let mut changes: Vec<Change> = Vec::new();
        for (seq, entity) in entries.into_iter().take(limit) {
            let change = match entity {
                Entity::Thread(t) => Change::Thread { seq, thread: self.server_thread(t) },
                Entity::Message(m) => Change::Message { seq, message: self.messages[&m].clone() },
            };
            let size = serde_json::to_vec(&change).map_or(0, |v| v.len()) + 1;
            if !changes.is_empty() && bytes + size > self.limits.page_bytes {
                has_more = true;
                break;
            }
            bytes += size;
            changes.push(change);
        }
        self.stats.pulls += 1;
        let cursor = changes.last().map_or(request.cursor, Change::seq);
        Ok(PullResponse { protocol: PROTOCOL_VERSION, changes, cursor, has_more })
    }
}

/// An in-memory sync server (see the module docs). Clones share state.
#[derive(Debug, Clone, Default)]
pub struct FakeServer {
    state: Rc<RefCell<State>>,
}

/// The server's clock before anyone sets it: 2023-11-14.
const START: Millis = 1_700_000_000_000;

impl FakeServer {
    /// An empty server with the reference server's limits.
    pub fn new() -> Self {
        Self::with_limits(ServerLimits::default())
    }

    /// An empty server with these limits.
    pub fn with_limits(limits: ServerLimits) -> Self {
        let server = FakeServer::default();
        {
            let mut state = server.state.borrow_mut();
            state.limits = limits;
            state.now = START;
        }
        server
    }

    /// The server's clock, which stamps `server_ts` and expires invites.
    pub fn now(&self) -> Millis {
        self.state.borrow().now
    }

    /// Sets the server's clock (a simulation keeps it with its manual clock).
    pub fn set_now(&self, now: Millis) {
        self.state.borrow_mut().now = now;
    }

    /// Takes the server down or brings it back: while down, every
    /// [`FakeTransport`] request fails with [`TransportFailure::Network`] and
    /// reaches nothing. The data stays.
    pub fn set_down(&self, down: bool) {
        self.state.borrow_mut().down = down;
    }

    /// Whether the server is down.
    pub fn is_down(&self) -> bool {
        self.state.borrow().down
    }

    /// `POST /v1/push` by `user` (the token's user: the sender of everything).
    pub fn push(&self, user: &UserId, request: &PushRequest) -> Result<PushResponse, TransportFailure> {
        self.state.borrow_mut().push(user, request)
    }

    /// `GET /v1/pull` by `user`.
    pub fn pull(&self, user: &UserId, request: &PullRequest) -> Result<PullResponse, TransportFailure> {
        self.state.borrow_mut().pull(user, request)
    }

    /// `POST /v1/threads/{id}/invites` by `user`: an opaque token, valid for
    /// [`ServerLimits::invite_ttl`]; `404 not_found` for a thread the user is
    /// not in, whether or not it exists.
    pub fn create_invite(&self, user: &UserId, thread: ThreadId) -> Result<InviteResponse, TransportFailure> {
        let mut state = self.state.borrow_mut();
        if !state.is_member(user, thread) {
            return Err(http(404, "not_found", "not found"));
        }
        state.invites_issued += 1;
        let token = format!("fake-invite.{}", state.invites_issued);
        let expires_at = state.now.saturating_add(state.limits.invite_ttl);
        state.invites.insert(token.clone(), (thread, expires_at));
        Ok(InviteResponse { token, expires_at })
    }

    /// `POST /v1/invites/{token}/accept` by `user`: joins the thread (a new
    /// `thread` change unless already a member); `403 invite_invalid` for a
    /// token this server did not issue or that expired.
    pub fn accept_invite(&self, user: &UserId, token: &str) -> Result<AcceptResponse, TransportFailure> {
        let mut state = self.state.borrow_mut();
        let invalid = || http(403, "invite_invalid", "the invite is invalid or expired");
        let (thread, expires_at) = *state.invites.get(token).ok_or_else(invalid)?;
        if state.now >= expires_at {
            return Err(invalid());
        }
        let full = state
            .threads
            .get(&thread)
            .is_some_and(|row| row.members.len() >= MAX_MEMBERS && !row.members.contains(user));
        if full {
            return Err(http(403, "thread_full", "the thread has the most members there may be"));
        }
        state.join(user, thread).ok_or_else(invalid)?;
        Ok(AcceptResponse { thread_id: thread })
    }

    /// Every message, deleted ones included, by seq.
    pub fn messages(&self) -> Vec<ServerMessage> {
        let state = self.state.borrow();
        let mut all: Vec<ServerMessage> = state.messages.values().cloned().collect();
        all.sort_by_key(|m| m.seq);
        all
    }

    /// One message as it is now.
    pub fn message(&self, id: MessageId) -> Option<ServerMessage> {
        self.state.borrow().messages.get(&id).cloned()
    }

    /// One thread as it is now.
    pub fn thread(&self, id: ThreadId) -> Option<ServerThread> {
        let state = self.state.borrow();
        state.threads.contains_key(&id).then(|| state.server_thread(id))
    }

    /// The newest seq handed out (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.state.borrow().seq
    }

    /// A device's high-water mark, if it ever pushed.
    pub fn last_mutation_id(&self, device: DeviceId) -> Option<u64> {
        self.state.borrow().devices.get(&device).map(|d| d.last_mutation_id)
    }

    /// What the server has done so far.
    pub fn stats(&self) -> ServerStats {
        self.state.borrow().stats
    }
}

/// How often a [`FakeTransport`] misbehaves, in percent of requests, each
/// kind exclusive of the others (their sum is at most 100).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// The request is lost before the server sees it: `Network`.
    pub drop_request: u8,
    /// The server applies the push but the answer is lost: `Network`,
    /// `Timeout` or a proxy's `504`. (For a pull: `Network`.)
    pub drop_answer: u8,
    /// The server fails without changing anything: `500`, `502` or `503`
    /// (sometimes with `Retry-After`).
    pub server_error: u8,
    /// `429` with a `Retry-After` of 1 to 30 seconds.
    pub rate_limit: u8,
    /// The push arrives twice (a retrying proxy); the client gets the answer
    /// to one of the copies.
    pub duplicate: u8,
    /// The push is held past the client's timeout (`Timeout`) and reaches
    /// the server later, just before or just after this client's next
    /// request (which may be its retry, or a pull).
    pub delay: u8,
}

impl Faults {
    /// A network that always works.
    pub const NONE: Faults =
        Faults { drop_request: 0, drop_answer: 0, server_error: 0, rate_limit: 0, duplicate: 0, delay: 0 };

    /// Some of everything: about a third of requests misbehave.
    pub const CHAOS: Faults =
        Faults { drop_request: 6, drop_answer: 8, server_error: 5, rate_limit: 4, duplicate: 5, delay: 5 };

    fn total(&self) -> u32 {
        [self.drop_request, self.drop_answer, self.server_error, self.rate_limit, self.duplicate, self.delay]
            .iter()
            .map(|&p| u32::from(p))
            .sum()
    }
}

/// What a [`FakeTransport`] has carried and broken.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Push requests made by the client.
    pub pushes: u64,
    /// Pull requests made by the client.
    pub pulls: u64,
    /// Mutations carried by those pushes (each attempt counts).
    pub mutations: u64,
    /// Invite requests made.
    pub invites: u64,
    /// Requests that failed because the server was down.
    pub down: u64,
    /// Requests lost before the server saw them.
    pub dropped_requests: u64,
    /// Answers lost after the server handled the request.
    pub dropped_answers: u64,
    /// Injected 5xx answers.
    pub server_errors: u64,
    /// Injected 429 answers.
    pub rate_limited: u64,
    /// Pushes delivered twice.
    pub duplicated: u64,
    /// Pushes held and delivered late.
    pub delayed: u64,
    /// Held pushes that were lost because the server was down when they
    /// would have arrived.
    pub delayed_lost: u64,
    /// Requests refused `401` because the session had expired.
    pub unauthorized: u64,
    /// Requests made before a `Retry-After` the client was given had passed
    /// (by the server's clock).
    pub before_retry_after: u64,
    /// Of those, pushes.
    pub pushes_before_retry_after: u64,
}

#[derive(Debug)]
struct Network {
    rng: SimRng,
    faults: Faults,
    held: Vec<PushRequest>,
    /// The next push never answers; `Some(true)` if it reaches the server.
    hang: Option<bool>,
    /// The session token expired: every request gets `401` until renewed.
    expired: bool,
    /// The next push waits at the gate until [`FakeTransport::resume`].
    pause_next: bool,
    /// A push is waiting at the gate.
    paused: bool,
    retry_after_until: Millis,
    stats: TransportStats,
    /// Body bytes, as JSON text: requests that left, answers that arrived.
    traffic: Traffic,
    /// Alters every pull answer's JSON on its way, as a proxy would.
    rewrite_pulls: Option<PageRewrite>,
}

/// A function that alters a pull answer's JSON in flight.
#[derive(Clone)]
struct PageRewrite(Rc<dyn Fn(&mut serde_json::Value)>);

impl std::fmt::Debug for PageRewrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PageRewrite")
    }
}

/// One user's connection to a [`FakeServer`] through a faulty network (see
/// the module docs). Clones share the network and its counters; a client
/// rebuilt after a restart keeps using the same one, so a push delayed before
/// the restart can still arrive after it.
#[derive(Debug, Clone)]
pub struct FakeTransport {
    server: FakeServer,
    user: UserId,
    net: Rc<RefCell<Network>>,
}

/// What the fault roll picked for one request.
enum Fault {
    None,
    DropRequest,
    DropAnswer,
    ServerError,
    RateLimit,
    Duplicate,
    Delay,
}

impl FakeTransport {
    /// A transport for `user`, with no faults until [`set_faults`](Self::set_faults);
    /// `seed` drives every fault decision.
    pub fn new(server: &FakeServer, user: UserId, seed: u64) -> Self {
        FakeTransport {
            server: server.clone(),
            user,
            net: Rc::new(RefCell::new(Network {
                rng: SimRng::new(seed),
                faults: Faults::NONE,
                held: Vec::new(),
                hang: None,
                expired: false,
                pause_next: false,
                paused: false,
                retry_after_until: 0,
                stats: TransportStats::default(),
                traffic: Traffic::default(),
                rewrite_pulls: None,
            })),
        }
    }

    /// The user this transport signs in as.
    pub fn user(&self) -> &UserId {
        &self.user
    }

    /// The server behind it.
    pub fn server(&self) -> &FakeServer {
        &self.server
    }

    /// Changes how often requests misbehave from now on.
    ///
    /// # Panics
    /// If the percentages add up to more than 100.
    pub fn set_faults(&self, faults: Faults) {
        assert!(faults.total() <= 100, "fault percentages add up to {}", faults.total());
        self.net.borrow_mut().faults = faults;
    }

    /// The current fault rates.
    pub fn faults(&self) -> Faults {
        self.net.borrow().faults
    }

    /// What was carried and broken so far.
    pub fn stats(&self) -> TransportStats {
        self.net.borrow().stats
    }

    /// How many delayed pushes have not reached the server yet.
    pub fn held(&self) -> usize {
        self.net.borrow().held.len()
    }

    /// Expires the session (every request then gets `401 unauthorized`,
    /// before the server sees it) or renews it.
    pub fn set_session_expired(&self, expired: bool) {
        self.net.borrow_mut().expired = expired;
    }

    /// The `401` of an expired session, counted; `None` while it is valid.
    /// Refusals before any fault roll: the server is down (what was held
    /// back lands first, as on a real network) or the session expired.
    fn unreachable(&self) -> Option<TransportFailure> {
        if self.server.is_down() {
            self.net.borrow_mut().stats.down += 1;
            let held = std::mem::take(&mut self.net.borrow_mut().held);
            self.deliver(held);
            return Some(TransportFailure::Network);
        }
        self.unauthorized()
    }

    fn unauthorized(&self) -> Option<TransportFailure> {
        let mut net = self.net.borrow_mut();
        net.expired.then(|| {
            net.stats.unauthorized += 1;
            http(401, "unauthorized", "the session expired")
        })
    }

    /// Makes the next push hang: its future never completes, so the client
    /// is stuck between sending and hearing back, which is where a tab that
    /// is closed or crashes mid-push leaves it (drop the future to model
    /// that). With `reaches_server`, the server applies the push first.
    pub fn hang_next_push(&self, reaches_server: bool) {
        self.net.borrow_mut().hang = Some(reaches_server);
    }

    /// Takes back a [`hang_next_push`](Self::hang_next_push) that no push
    /// used; returns whether one was still armed.
    pub fn clear_hang(&self) -> bool {
        self.net.borrow_mut().hang.take().is_some()
    }

    /// Makes the next push wait, before anything else happens to it, until
    /// [`resume`](Self::resume): a simulation can then act (in the same
    /// client or another tab) while a push is in flight, and let it go on.
    pub fn pause_next_push(&self) {
        self.net.borrow_mut().pause_next = true;
    }

    /// Whether a push is waiting at the gate.
    pub fn is_paused(&self) -> bool {
        self.net.borrow().paused
    }

    /// Lets a paused push go on (when its future is polled again), and takes
    /// back a pause that no push used.
    pub fn resume(&self) {
        let mut net = self.net.borrow_mut();
        net.paused = false;
        net.pause_next = false;
    }

    /// Delivers every delayed push now (if the server is up; otherwise they
    /// are lost), as when the network settles.
    pub fn deliver_held(&self) {
        let held = std::mem::take(&mut self.net.borrow_mut().held);
        self.deliver(held);
    }

    fn deliver(&self, requests: Vec<PushRequest>) {
        for request in requests {
            if self.server.is_down() {
                self.net.borrow_mut().stats.delayed_lost += 1;
            } else {
                // Nobody waits for this answer any more.
                let _ = self.server.push(&self.user, &request);
            }
        }
    }

    /// Counts the request, checks `Retry-After`, and picks its fate. Held
    /// pushes come back split by when they arrive: before or after this one.
    fn roll(&self, push: bool) -> (Fault, Vec<PushRequest>, Vec<PushRequest>) {
        let now = self.server.now();
        let mut net = self.net.borrow_mut();
        if now < net.retry_after_until {
            net.stats.before_retry_after += 1;
            net.stats.pushes_before_retry_after += u64::from(push);
        }
        let held = std::mem::take(&mut net.held);
        let (mut before, mut after) = (Vec::new(), Vec::new());
        for request in held {
            if net.rng.chance(50) {
                before.push(request);
            } else {
                after.push(request);
            }
        }
        let f = net.faults;
        let mut roll = net.rng.below(100) as u32;
        let mut pick = |percent: u8| {
            let hit = roll < u32::from(percent);
            roll = roll.saturating_sub(u32::from(percent));
            hit
        };
        let fault = if pick(f.drop_request) {
            Fault::DropRequest
        } else if pick(f.drop_answer) {
            Fault::DropAnswer
        } else if pick(f.server_error) {
            Fault::ServerError
        } else if pick(f.rate_limit) {
            Fault::RateLimit
        } else if pick(f.duplicate) {
            Fault::Duplicate
        } else if pick(f.delay) {
            Fault::Delay
        } else {
            Fault::None
        };
        (fault, before, after)
    }

    /// The failure for an injected fault that stops the request before the
    /// server; `None` for faults that let it through.
    fn refuse(&self, fault: &Fault) -> Option<TransportFailure> {
        let mut net = self.net.borrow_mut();
        match fault {
            Fault::DropRequest => {
                net.stats.dropped_requests += 1;
                Some(TransportFailure::Network)
            }
            Fault::ServerError => {
                net.stats.server_errors += 1;
                let status = [500, 502, 503][net.rng.below(3) as usize];
                let retry_after =
                    (status == 503 && net.rng.chance(50)).then(|| 1_000 * (1 + net.rng.below(5)));
                if let Some(after) = retry_after {
                    net.retry_after_until = self.server.now() + after;
                }
                Some(TransportFailure::Status {
                    status,
                    error: Some(ErrorDetail { code: "internal".into(), message: "injected".into() }),
                    retry_after,
                })
            }
            Fault::RateLimit => {
                net.stats.rate_limited += 1;
                let after = 1_000 * (1 + net.rng.below(30));
                net.retry_after_until = self.server.now() + after;
                Some(TransportFailure::Status {
                    status: 429,
                    error: Some(ErrorDetail { code: "rate_limited".into(), message: "injected".into() }),
                    retry_after: Some(after),
                })
            }
            _ => None,
        }
    }
}

impl FakeTransport {
    /// Alters every later pull answer's JSON with `rewrite` (until
    /// [`FakeTransport::stop_rewriting_pulls`]), as a broken proxy or a
    /// newer server would: the client reads what comes out.
    pub fn rewrite_pulls(&self, rewrite: impl Fn(&mut serde_json::Value) + 'static) {
        self.net.borrow_mut().rewrite_pulls = Some(PageRewrite(Rc::new(rewrite)));
    }

    /// Ends [`FakeTransport::rewrite_pulls`].
    pub fn stop_rewriting_pulls(&self) {
        self.net.borrow_mut().rewrite_pulls = None;
    }

    /// The page as the client reads it off the wire: as JSON text, through
    /// the rewrite if one is set.
    fn as_received(&self, page: &PullResponse) -> Result<PullPage, TransportFailure> {
        let rewrite = self.net.borrow().rewrite_pulls.clone();
        let text = match rewrite {
            None => serde_json::to_string(page),
            Some(PageRewrite(rewrite)) => {
                let mut value = serde_json::to_value(page).expect("pages serialize");
                rewrite(&mut value);
                serde_json::to_string(&value)
            }
        }
        .expect("pages serialize");
        self.net.borrow_mut().traffic.down += text.len() as u64;
        serde_json::from_str(&text).map_err(|e| TransportFailure::Protocol(e.to_string()))
    }
}

impl Transport for FakeTransport {
    async fn push(&self, request: &PushRequest) -> Result<PushResponse, TransportFailure> {
        {
            let mut net = self.net.borrow_mut();
            net.traffic.up += serde_json::to_string(request).expect("pushes serialize").len() as u64;
            net.stats.pushes += 1;
            net.stats.mutations += request.mutations.len() as u64;
        }
        if std::mem::take(&mut self.net.borrow_mut().pause_next) {
            self.net.borrow_mut().paused = true;
            std::future::poll_fn(|_| {
                if self.net.borrow().paused {
                    std::task::Poll::Pending
                } else {
                    std::task::Poll::Ready(())
                }
            })
            .await;
        }
        let hang = self.net.borrow_mut().hang.take();
        if let Some(reaches_server) = hang {
            if reaches_server && !self.server.is_down() {
                let _ = self.server.push(&self.user, request);
            }
            return std::future::pending().await;
        }
        if let Some(failure) = self.unreachable() {
            return Err(failure);
        }
        let (fault, before, after) = self.roll(true);
        self.deliver(before);
        let answer = match self.refuse(&fault) {
            Some(failure) => Err(failure),
            None => match fault {
                Fault::DropAnswer => {
                    let _ = self.server.push(&self.user, request);
                    let mut net = self.net.borrow_mut();
                    net.stats.dropped_answers += 1;
                    Err(match net.rng.below(3) {
                        0 => TransportFailure::Network,
                        1 => TransportFailure::Timeout,
                        _ => TransportFailure::Status { status: 504, error: None, retry_after: None },
                    })
                }
                Fault::Duplicate => {
                    let first = self.server.push(&self.user, request);
                    let second = self.server.push(&self.user, request);
                    let mut net = self.net.borrow_mut();
                    net.stats.duplicated += 1;
                    if net.rng.chance(50) {
                        first
                    } else {
                        second
                    }
                }
                Fault::Delay => {
                    let mut net = self.net.borrow_mut();
                    net.stats.delayed += 1;
                    net.held.push(request.clone());
                    Err(TransportFailure::Timeout)
                }
                _ => self.server.push(&self.user, request),
            },
        };
        if let Ok(response) = &answer {
            self.net.borrow_mut().traffic.down +=
                serde_json::to_string(response).expect("answers serialize").len() as u64;
        }
        self.deliver(after);
        answer
    }

    async fn pull(&self, request: &PullRequest) -> Result<PullPage, TransportFailure> {
        self.net.borrow_mut().stats.pulls += 1;
        if let Some(failure) = self.unreachable() {
            return Err(failure);
        }
        let (fault, before, after) = self.roll(false);
        self.deliver(before);
        let answer = match self.refuse(&fault) {
            Some(failure) => Err(failure),
            None => match fault {
                Fault::DropAnswer => {
                    self.net.borrow_mut().stats.dropped_answers += 1;
                    Err(TransportFailure::Network)
                }
                // A pull changes nothing, so a duplicate is invisible, and a
                // late answer to an abandoned request is never read.
                Fault::Delay => Err(TransportFailure::Timeout),
                _ => self.server.pull(&self.user, request).and_then(|page| self.as_received(&page)),
            },
        };
        self.deliver(after);
        answer
    }

    async fn create_invite(&self, thread: ThreadId) -> Result<InviteResponse, TransportFailure> {
        self.net.borrow_mut().stats.invites += 1;
        if self.server.is_down() {
            self.net.borrow_mut().stats.down += 1;
            return Err(TransportFailure::Network);
        }
        if let Some(failure) = self.unauthorized() {
            return Err(failure);
        }
        self.server.create_invite(&self.user, thread)
    }

    fn traffic(&self) -> Traffic {
        self.net.borrow().traffic
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::sync::PushMutation;

    fn user(name: &str) -> UserId {
        UserId(name.into())
    }

    fn device(n: u8) -> DeviceId {
        DeviceId::from_parts(1, [n; 10])
    }

    fn thread(n: u8) -> ThreadId {
        ThreadId::from_parts(2, [n; 10])
    }

    fn message(n: u8) -> MessageId {
        MessageId::from_parts(3, [n; 10])
    }

    fn create(t: u8, members: &[&str]) -> MutationBody {
        MutationBody::CreateThread {
            thread_id: thread(t),
            title: Envelope(vec![t]),
            members: members.iter().map(|m| user(m)).collect(),
            created_at: 5,
        }
    }

    fn send(t: u8, m: u8, body: &[u8]) -> MutationBody {
        MutationBody::Send {
            thread_id: thread(t),
            message_id: message(m),
            body: Envelope(body.to_vec()),
            client_ts: 9,
        }
    }

    fn edit(t: u8, m: u8, body: &[u8]) -> MutationBody {
        MutationBody::Edit { thread_id: thread(t), message_id: message(m), body: Envelope(body.to_vec()) }
    }

    fn delete(t: u8, m: u8) -> MutationBody {
        MutationBody::Delete { thread_id: thread(t), message_id: message(m) }
    }

    fn push(d: u8, mutations: Vec<(u64, MutationBody)>) -> PushRequest {
        PushRequest {
            protocol: PROTOCOL_VERSION,
            device_id: device(d),
            mutations: mutations
                .into_iter()
                .map(|(mutation_id, body)| PushMutation { mutation_id, body })
                .collect(),
        }
    }

    fn pull_all(server: &FakeServer, who: &str, cursor: u64) -> PullResponse {
        server.pull(&user(who), &PullRequest { cursor, limit: 1000, thread: None }).unwrap()
    }

    fn codes(response: &PushResponse) -> Vec<(u64, &str)> {
        response.rejected.iter().map(|r| (r.mutation_id, r.code.as_str())).collect()
    }

    fn status_code(failure: TransportFailure) -> (u16, String) {
        match failure {
            TransportFailure::Status { status, error: Some(e), .. } => (status, e.code),
            other => panic!("not an HTTP error: {other:?}"),
        }
    }

    #[test]
    fn a_retried_push_gets_the_original_acks_and_changes_nothing() {
        let server = FakeServer::new();
        let alice = user("alice");
        let request = push(1, vec![(1, create(1, &["bob"])), (2, send(1, 1, b"hi")), (3, send(1, 2, b"yo"))]);
        let first = server.push(&alice, &request).unwrap();
        assert_eq!(first.acks.iter().map(|a| a.seq).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(first.last_mutation_id, 3);
        server.set_now(START + 50);
        let again = server.push(&alice, &request).unwrap();
        assert_eq!(again, first, "same seqs and server times");
        assert_eq!(server.last_seq(), 3);
        assert_eq!(server.messages().len(), 2);
        assert_eq!(server.stats().replayed, 3);
        // The same message under a new mutation id: the second layer of dedup.
        let repeat = server.push(&alice, &push(1, vec![(4, send(1, 1, b"hi"))])).unwrap();
        assert_eq!(repeat.acks[0].seq, 2);
        assert_eq!(server.stats().send_repeats, 1);
        assert_eq!(server.last_seq(), 3);
    }

    #[test]
    fn a_skipped_id_below_the_mark_is_out_of_order_and_not_stored() {
        let server = FakeServer::new();
        let alice = user("alice");
        server.push(&alice, &push(1, vec![(1, create(1, &[])), (5, send(1, 1, b"a"))])).unwrap();
        let late = server.push(&alice, &push(1, vec![(3, send(1, 2, b"b"))])).unwrap();
        assert_eq!(codes(&late), [(3, "out_of_order")]);
        assert_eq!(late.last_mutation_id, 5);
        assert!(server.message(message(2)).is_none());
        assert_eq!(server.stats().out_of_order, 1);
    }

    #[test]
    fn whole_request_refusals_change_nothing() {
        let server = FakeServer::with_limits(ServerLimits { max_mutations: 2, ..ServerLimits::default() });
        let (alice, bob) = (user("alice"), user("bob"));
        server.push(&alice, &push(1, vec![(1, create(1, &["bob"]))])).unwrap();
        let cases = [
            (
                push(1, vec![(2, send(1, 1, b"a")), (2, send(1, 2, b"b"))]),
                alice.clone(),
                (400, "bad_request"),
            ),
            (push(1, vec![(0, send(1, 1, b"a"))]), alice.clone(), (400, "bad_request")),
            (PushRequest { protocol: 2, ..push(1, vec![]) }, alice.clone(), (400, "unsupported_protocol")),
            (
                push(1, (2..5).map(|i| (i, send(1, i as u8, b"a"))).collect()),
                alice.clone(),
                (413, "too_large"),
            ),
            (push(1, vec![(2, send(1, 1, b"a"))]), bob.clone(), (403, "forbidden")),
        ];
        for (request, who, expected) in cases {
            let (status, code) = status_code(server.push(&who, &request).unwrap_err());
            assert_eq!((status, code.as_str()), expected);
        }
        assert_eq!(server.last_mutation_id(device(1)), Some(1));
        assert_eq!(server.last_seq(), 1);
        let big = ServerLimits { body_bytes: 300, ..ServerLimits::default() };
        let server = FakeServer::with_limits(big);
        let failure = server.push(&alice, &push(1, vec![(1, send(1, 1, &[0; 300]))])).unwrap_err();
        assert_eq!(status_code(failure), (413, "too_large".into()));
        assert_eq!(server.last_mutation_id(device(1)), None, "not even bound");
    }

    #[test]
    fn rejections_are_per_mutation_final_and_repeated() {
        let server = FakeServer::with_limits(ServerLimits { envelope_bytes: 8, ..ServerLimits::default() });
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        server.push(&alice, &push(1, vec![(1, create(1, &["bob"])), (2, send(1, 1, b"a"))])).unwrap();
        let bob_push = push(
            2,
            vec![
                (1, edit(1, 1, b"x")),
                (2, delete(1, 9)),
                (3, send(1, 1, b"b")),
                (4, create(1, &[])),
                (5, send(1, 2, &[0; 9])),
                (6, send(1, 3, b"ok")),
            ],
        );
        let answer = server.push(&bob, &bob_push).unwrap();
        let expected =
            [(1, "not_sender"), (2, "not_found"), (3, "conflict"), (4, "conflict"), (5, "too_large")];
        assert_eq!(codes(&answer), expected);
        assert_eq!(answer.acks.len(), 1, "the rest of the push goes on");
        assert_eq!(server.push(&bob, &bob_push).unwrap(), answer, "refusals are stored like acks");

        // Not a member and no such thread look the same.
        let carol_push = push(3, vec![(1, send(1, 4, b"c")), (2, send(7, 5, b"c"))]);
        let answer = server.push(&carol, &carol_push).unwrap();
        assert_eq!(answer.rejected[0].message, answer.rejected[1].message);
        assert_eq!(codes(&answer), [(1, "not_member"), (2, "not_member")]);
    }

    #[test]
    fn delete_wins_and_the_feed_holds_each_entity_once_at_its_latest_change() {
        let server = FakeServer::new();
        let (alice, bob) = (user("alice"), user("bob"));
        server
            .push(
                &alice,
                &push(1, vec![(1, create(1, &["bob"])), (2, send(1, 1, b"v1")), (3, send(1, 2, b"k"))]),
            )
            .unwrap();
        let answer = server
            .push(
                &alice,
                &push(
                    1,
                    vec![
                        (4, edit(1, 1, b"v2")),
                        (5, delete(1, 1)),
                        (6, edit(1, 1, b"v3")),
                        (7, delete(1, 1)),
                    ],
                ),
            )
            .unwrap();
        assert_eq!(codes(&answer), [(6, "edit_deleted")]);
        assert_eq!(
            answer.acks.iter().map(|a| a.seq).collect::<Vec<_>>(),
            [4, 5, 5],
            "a second delete is idempotent"
        );

        let page = pull_all(&server, "bob", 0);
        assert_eq!(page.changes.iter().map(Change::seq).collect::<Vec<_>>(), [1, 3, 5]);
        let Change::Message { message, .. } = &page.changes[2] else { panic!("a message") };
        assert!(message.deleted && message.body.is_none() && message.edited);
        assert_eq!(message.seq, 2, "a message keeps the seq of its send");
        assert_eq!((page.cursor, page.has_more), (5, false));

        // Paging: cursor and has_more.
        let first = server.pull(&bob, &PullRequest { cursor: 0, limit: 2, thread: None }).unwrap();
        assert_eq!((first.changes.len(), first.cursor, first.has_more), (2, 3, true));
        let rest = server.pull(&bob, &PullRequest { cursor: 3, limit: 2, thread: None }).unwrap();
        assert_eq!((rest.changes.len(), rest.cursor, rest.has_more), (1, 5, false));
        let empty = server.pull(&bob, &PullRequest { cursor: 5, limit: 2, thread: None }).unwrap();
        assert_eq!((empty.changes.len(), empty.cursor, empty.has_more), (0, 5, false));
        let zero = server.pull(&bob, &PullRequest { cursor: 0, limit: 0, thread: None }).unwrap_err();
        assert_eq!(status_code(zero).0, 400);
        assert!(pull_all(&server, "carol", 0).changes.is_empty(), "not a member: sees nothing");
    }

    #[test]
    fn invites_join_through_the_api_or_the_outbox_and_thread_pulls_catch_up() {
        let server = FakeServer::new();
        let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
        server.push(&alice, &push(1, vec![(1, create(1, &[])), (2, send(1, 1, b"early"))])).unwrap();
        assert_eq!(
            status_code(server.create_invite(&bob, thread(1)).unwrap_err()),
            (404, "not_found".into())
        );
        let thread_pull = PullRequest { cursor: 0, limit: 10, thread: Some(thread(1)) };
        assert_eq!(status_code(server.pull(&bob, &thread_pull).unwrap_err()), (404, "not_found".into()));

        let invite = server.create_invite(&alice, thread(1)).unwrap();
        let join = |t: u8, token: &str| MutationBody::Join { thread_id: thread(t), invite: token.into() };
        let answer = server
            .push(
                &bob,
                &push(
                    2,
                    vec![(1, join(2, &invite.token)), (2, join(1, "forged")), (3, join(1, &invite.token))],
                ),
            )
            .unwrap();
        assert_eq!(codes(&answer), [(1, "invite_invalid"), (2, "invite_invalid")]);
        assert_eq!(answer.acks[0].seq, 3, "the membership change");
        let again = server.push(&bob, &push(2, vec![(4, join(1, &invite.token))])).unwrap();
        assert_eq!(again.acks[0].seq, 3, "already a member: the thread's latest change");

        // Bob's main cursor past the join misses the older message; a thread pull catches up.
        let main = pull_all(&server, "bob", 0);
        assert_eq!(main.changes.iter().map(Change::seq).collect::<Vec<_>>(), [2, 3]);
        let Change::Thread { thread: t, .. } = &main.changes[1] else { panic!("a thread change") };
        assert_eq!(t.members, [alice.clone(), bob.clone()]);
        assert_eq!(server.pull(&bob, &thread_pull).unwrap().changes.len(), 2);

        assert_eq!(server.accept_invite(&carol, &invite.token).unwrap().thread_id, thread(1));
        assert_eq!(server.last_seq(), 4);
        server.accept_invite(&carol, &invite.token).unwrap();
        assert_eq!(server.last_seq(), 4, "accepting again changes nothing");
        server.set_now(invite.expires_at);
        assert_eq!(
            status_code(server.accept_invite(&user("dave"), &invite.token).unwrap_err()).1,
            "invite_invalid"
        );
    }

    fn block_on<F: std::future::Future>(future: F) -> F::Output {
        // The fake transport never waits: one poll finishes it.
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut future = std::pin::pin!(future);
        match future.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(out) => out,
            std::task::Poll::Pending => panic!("the fake transport never waits"),
        }
    }

    #[test]
    fn the_faulty_network_loses_answers_duplicates_and_delays_but_the_server_applies_once() {
        let server = FakeServer::new();
        let alice = user("alice");
        let transport = FakeTransport::new(&server, alice.clone(), 42);
        block_on(transport.push(&push(1, vec![(1, create(1, &[]))]))).unwrap();

        // Lost answers and late deliveries: each push's effect lands once,
        // and the retry under the same id gets the original ack.
        transport.set_faults(Faults { drop_answer: 50, delay: 50, ..Faults::NONE });
        let mut next_id = 2;
        for m in 0..40u8 {
            let request = push(1, vec![(next_id, send(1, m, b"x"))]);
            next_id += 1;
            assert!(block_on(transport.push(&request)).is_err());
            transport.set_faults(Faults::NONE);
            let answer = block_on(transport.push(&request)).unwrap();
            assert_eq!(answer.acks.len(), 1);
            assert_eq!(server.message(message(m)).unwrap().seq, answer.acks[0].seq);
            transport.set_faults(Faults { drop_answer: 50, delay: 50, ..Faults::NONE });
        }
        transport.deliver_held();
        let stats = transport.stats();
        assert!(stats.dropped_answers > 5 && stats.delayed > 5, "{stats:?}");
        assert_eq!(server.messages().len(), 40);
        assert_eq!(server.last_seq(), 41, "one change per message, however many copies arrived");

        // Duplicates and refusals before the server.
        transport.set_faults(Faults { duplicate: 50, drop_request: 25, server_error: 25, ..Faults::NONE });
        for m in 40..80u8 {
            let request = push(1, vec![(next_id, send(1, m, b"y"))]);
            next_id += 1;
            let before = server.last_seq();
            match block_on(transport.push(&request)) {
                Ok(answer) => assert_eq!(answer.acks[0].seq, before + 1),
                Err(_) => assert_eq!(server.last_seq(), before, "refused before the server"),
            }
        }
        let stats = transport.stats();
        assert!(stats.duplicated > 5 && stats.dropped_requests > 2 && stats.server_errors > 2, "{stats:?}");
        assert_eq!(server.stats().out_of_order, 0);

        // Down: nothing gets through, nothing changes.
        server.set_down(true);
        transport.set_faults(Faults::NONE);
        let before = server.last_seq();
        assert_eq!(
            block_on(transport.push(&push(1, vec![(next_id, send(1, 99, b"z"))]))),
            Err(TransportFailure::Network)
        );
        assert_eq!(
            block_on(transport.pull(&PullRequest { cursor: 0, limit: 5, thread: None })),
            Err(TransportFailure::Network)
        );
        assert_eq!(server.last_seq(), before);
        server.set_down(false);
        assert_eq!(
            block_on(transport.pull(&PullRequest { cursor: before, limit: 5, thread: None })).unwrap().cursor,
            before
        );
    }

    #[test]
    fn an_expired_session_is_refused_before_the_server_until_renewed() {
        let server = FakeServer::new();
        let transport = FakeTransport::new(&server, user("alice"), 1);
        transport.set_session_expired(true);
        let request = push(1, vec![(1, create(1, &[]))]);
        let failure = block_on(transport.push(&request)).unwrap_err();
        assert_eq!(status_code(failure), (401, "unauthorized".into()));
        assert_eq!(server.last_seq(), 0);
        transport.set_session_expired(false);
        assert_eq!(block_on(transport.push(&request)).unwrap().acks.len(), 1);
        assert_eq!(transport.stats().unauthorized, 1);
    }

    #[test]
    fn a_paused_push_waits_for_resume_and_a_hung_one_never_answers() {
        use std::future::Future;
        use std::task::{Context, Poll};
        let server = FakeServer::with_limits(ServerLimits { max_pull: 1, ..ServerLimits::default() });
        let alice = user("alice");
        let transport = FakeTransport::new(&server, alice.clone(), 1);
        let mut cx = Context::from_waker(std::task::Waker::noop());

        transport.pause_next_push();
        let request = push(1, vec![(1, create(1, &[])), (2, send(1, 1, b"a"))]);
        let mut paused = std::pin::pin!(transport.push(&request));
        assert!(paused.as_mut().poll(&mut cx).is_pending());
        assert!(transport.is_paused());
        assert_eq!(server.last_seq(), 0, "nothing reached the server yet");
        transport.resume();
        let Poll::Ready(Ok(answer)) = paused.as_mut().poll(&mut cx) else { panic!("answered after resume") };
        assert_eq!(answer.acks.len(), 2);

        transport.hang_next_push(true);
        let request = push(1, vec![(3, send(1, 2, b"b"))]);
        let mut hung = std::pin::pin!(transport.push(&request));
        assert!(hung.as_mut().poll(&mut cx).is_pending());
        assert!(hung.as_mut().poll(&mut cx).is_pending());
        assert!(server.message(message(2)).is_some(), "it reached the server");
        assert!(!transport.clear_hang(), "the hang was used");

        // A server that lowers the limit makes the client page.
        let page = server.pull(&alice, &PullRequest { cursor: 0, limit: 500, thread: None }).unwrap();
        assert_eq!((page.changes.len(), page.cursor, page.has_more), (1, 1, true));
    }

    #[test]
    fn rate_limits_carry_retry_after_and_early_requests_are_counted() {
        let server = FakeServer::new();
        let transport = FakeTransport::new(&server, user("alice"), 7);
        transport.set_faults(Faults { rate_limit: 100, ..Faults::NONE });
        let pull = PullRequest { cursor: 0, limit: 5, thread: None };
        let Err(TransportFailure::Status { status: 429, retry_after: Some(after), .. }) =
            block_on(transport.pull(&pull))
        else {
            panic!("a 429 with Retry-After")
        };
        assert!((1_000..=30_000).contains(&after));
        transport.set_faults(Faults::NONE);
        server.set_now(START + after - 1);
        block_on(transport.pull(&pull)).unwrap();
        assert_eq!(transport.stats().before_retry_after, 1);
        server.set_now(START + after);
        block_on(transport.pull(&pull)).unwrap();
        assert_eq!(transport.stats().before_retry_after, 1);
    }

    #[test]
    fn the_same_seed_breaks_the_same_requests() {
        let run = |seed| {
            let server = FakeServer::new();
            let transport = FakeTransport::new(&server, user("alice"), seed);
            transport.set_faults(Faults::CHAOS);
            (0..200)
                .map(|_| block_on(transport.pull(&PullRequest { cursor: 0, limit: 5, thread: None })).is_ok())
                .collect::<Vec<bool>>()
        };
        assert_eq!(run(3), run(3));
        assert_ne!(run(3), run(4));
    }
}
