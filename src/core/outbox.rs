//! The outbox: the queue of local changes on their way to the server, as a
//! pure state machine (DESIGN.md §2, §3, §5; docs/protocol.md §4).
//!
//! Every local change (create a thread, join one, send, edit or delete a
//! message) is written to the store together with an outbox row, a
//! [`Mutation`]. The engine pushes rows to the server and applies what the
//! functions here decide. Nothing in this module does I/O: each function reads
//! a snapshot of the outbox (rows in any order; they are looked at by
//! increasing `mutation_id`), takes the time and random numbers as arguments,
//! and returns [`Decision`]s that the engine applies to the store **in one
//! write**. A decision is only valid against the snapshot it was computed
//! from: the engine computes and applies it under its own lock, and another
//! tab must not change the same rows in between (see "Tabs" below).
//!
//! # States
//!
//! ```text
//!   enqueue ─► Queued ──on_sent──► Sending ──ack──► row removed, message `sent`
//!                ▲ ▲                 │ │
//!                │ └─────────────────┘ │  transient error: due after a backoff;
//!                │                     │  not processed, or batch split: due now
//!                │                     │
//!                │                     └──rejection / permanent error──► Failed
//!                └────── retry: a copy under a new id, at the tail ◄──────┘
//!
//!   cancel, or delete of a withdrawable Send: rows removed, message `cancelled`
//! ```
//!
//! * **Queued**: waiting for its turn and for `next_attempt_at`. Its message
//!   is `pending` (or `failed` with `recoverable: true` while it waits out a
//!   backoff after a transient error).
//! * **Sending**: carried by the one push request in flight. `attempts` was
//!   incremented when it left ([`on_sent`]), so `attempts > 0` means "the
//!   server may have applied it" (a push refused as a whole, or whose answer
//!   shows it stopped before the row, is uncounted again). A row left
//!   `Sending` by a tab that died is put back to `Queued` by [`recover`]; its
//!   retry has the same id, so the server answers with the stored result and
//!   nothing is applied twice.
//! * **Acked**: the row is removed and the message gets its `seq` and
//!   `server_ts` ([`Decision::MessageSent`]).
//! * **Failed**: refused for good, with the server's code. It stays in the
//!   outbox, does not block the rows after it, and waits for the user:
//!   [`retry`] removes it and enqueues a copy under a **new** mutation id at
//!   the tail (the server answers ids at or below its high-water mark from its
//!   stored results, or with `out_of_order`, so an old id can never be sent
//!   again); [`cancel`] removes it and marks the message `cancelled`.
//!
//! **Invariant: a `Failed` row was never applied by the server.** It failed
//! either by a per-mutation rejection (the stored, final result of its id) or
//! by a whole-request refusal of the only push that ever carried it
//! (`attempts == 1`). A row that an earlier push may have applied (its answer
//! was lost) is *in doubt*: a whole-request refusal does not fail it, it keeps
//! retrying with backoff under the same id until the server answers for it.
//! That is what makes withdrawing a `Failed` row (cancel, delete, edit in
//! place) safe: nothing of it can be on the server.
//!
//! # Errors
//!
//! [`classify`] sorts a failed push into two classes (DESIGN.md §3):
//!
//! * **Transient** (network failure, timeout, 408, 429, 5xx, a malformed
//!   answer or one of another protocol version): every row of the batch goes
//!   back to `Queued` with `next_attempt_at = now + delay`, where the delay is
//!   exponential backoff with full jitter ([`Backoff::DEFAULT`]: base 500 ms,
//!   factor 2, cap 60 s) and never shorter than a `Retry-After`. A malformed
//!   answer is transient because the mutations themselves may be fine and the
//!   server may have applied them; the retry under the same ids asks again.
//!   [`retry_now`] (on `online`, on the tab becoming visible, on a poke) makes
//!   the waiting rows due at once, except that it never moves a row before a
//!   server's `Retry-After` ([`Decision::HoldUntil`]). It does not touch
//!   `Failed` rows: only the user retries those.
//! * **Permanent** (400, 401, 403, 404, 409, 413, 422 and any other 4xx, and
//!   per-mutation `rejected` entries): the mutation becomes `Failed` and the
//!   rest of the queue goes on. A whole-request 400, 413 or 422 of a batch of
//!   more than one mutation may be the fault of one of them (or of the batch
//!   size), so it fails nothing: the batch is split ([`Decision::ShrinkBatch`])
//!   until the culprit is alone, and only it fails.
//!
//! # Order
//!
//! Mutation ids increase in enqueue order and the server applies a push in
//! order, so the outbox sends in id order and keeps **one push in flight**.
//! [`next_batch`] returns the longest run, by increasing id, of rows that are
//! `Queued` and due, skipping `Failed` rows and stopping at the first
//! `Queued` row that is not yet due. Hence: a mutation is pushed only after
//! every mutation enqueued before it has been acked, has failed for good, or
//! sits before it in the same push. That is global FIFO, and so FIFO per
//! thread: a message is never applied before an earlier message of the same
//! device, nor an edit before its send. A `Failed` row does not hold the
//! queue (a later send to the same thread goes on), and retried rows go to the
//! tail by design. The server never sees an id below one it has already
//! processed, so it never answers `out_of_order` to this outbox.
//!
//! # Editing and deleting what is still queued
//!
//! A Send that no push has carried yet (`Queued` with `attempts == 0`) or that
//! has `Failed` is *withdrawable*: nothing of it is on the server. An edit of
//! its message rewrites the queued Send in place ([`edit_queued`]: the new body
//! is sealed as a Send) instead of queueing a second mutation, and a delete or
//! [`cancel`] removes it, leaving the message `cancelled` (the engine also marks
//! it deleted for a delete): it is never sent. A Send in flight, in doubt or
//! acked is not touched, nor one while any row about its message is in
//! flight: an edit or delete queues an Edit or Delete mutation ([`enqueue`]),
//! which the FIFO order puts after the Send.
//!
//! A newer Edit or Delete supersedes older Edits of the same message that
//! the server cannot have applied: [`enqueue`] drops them, and an Edit that
//! is refused while a newer one is queued is dropped rather than failed. So a
//! `Failed` Edit is always its message's newest, and a [`retry`] never puts
//! an older body back over a newer one.
//!
//! # Tabs
//!
//! Only the sync leader pushes, and it calls [`recover`] when it becomes
//! leader. Other tabs enqueue, and may rewrite or remove rows (edit, delete,
//! cancel, retry). Such a decision must be applied only if the rows it names
//! are unchanged since they were read (same `state` and `attempts`), in the
//! same store transaction: otherwise a rewrite could race a push.

use crate::core::envelope::Envelope;
use crate::core::model::{MessageId, MessageStatus, Millis, Mutation, MutationState};
use crate::core::sync::{Ack, ErrorDetail, MutationBody, PushResponse, PROTOCOL_VERSION};

/// Exponential backoff with full jitter: the n-th wait is uniform in
/// `[0, min(cap, base · factor^n)]` ("Exponential Backoff And Jitter", AWS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first wait.
    pub base_ms: Millis,
    /// How much the ceiling grows per attempt.
    pub factor: u32,
    /// The largest ceiling.
    pub cap_ms: Millis,
}

impl Backoff {
    /// Base 500 ms, factor 2, cap 60 s (DESIGN.md §3).
    pub const DEFAULT: Backoff = Backoff { base_ms: 500, factor: 2, cap_ms: 60_000 };

    /// The largest wait after failure number `attempt` (0 for the first).
    /// Saturates instead of overflowing.
    pub fn ceiling(&self, attempt: u32) -> Millis {
        u64::from(self.factor).saturating_pow(attempt).saturating_mul(self.base_ms).min(self.cap_ms)
    }

    /// The wait after failure number `attempt` (0 for the first), chosen by
    /// `random` (uniform over u64) in `[0, ceiling(attempt)]`.
    pub fn delay(&self, attempt: u32, random: u64) -> Millis {
        match self.ceiling(attempt).checked_add(1) {
            Some(span) => random % span,
            None => random,
        }
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::DEFAULT
    }
}

/// How many mutations and how many bytes one push may carry.
///
/// The reference server allows 500 mutations and 256 KiB per request
/// (docs/protocol.md §9); the defaults stay well below both. A push always
/// carries at least one mutation, however large.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimit {
    /// Mutations per push.
    pub mutations: usize,
    /// Estimated JSON bytes per push (see [`wire_size`]).
    pub bytes: usize,
}

impl BatchLimit {
    /// 100 mutations, 192 KiB.
    pub const DEFAULT: BatchLimit = BatchLimit { mutations: 100, bytes: 192 * 1024 };
}

impl Default for BatchLimit {
    fn default() -> Self {
        BatchLimit::DEFAULT
    }
}

/// A push that got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransportFailure {
    /// The request did not complete (offline, DNS, connection reset, CORS).
    Network,
    /// No answer in time.
    Timeout,
    /// An HTTP error status.
    Status {
        /// The HTTP status.
        status: u16,
        /// The server's error body, if it sent one.
        error: Option<ErrorDetail>,
        /// The `Retry-After` header, converted to milliseconds.
        retry_after: Option<Millis>,
    },
    /// A success status with a body that is not a protocol v1 answer.
    Protocol(String),
}

/// What a failure means for the mutations it hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry on their own, after a backoff (and never before `retry_after`).
    Transient {
        /// Stable machine-readable reason, shown in a recoverable `failed` status.
        code: String,
        /// Human-readable reason.
        message: String,
        /// The server's `Retry-After`, if any.
        retry_after: Option<Millis>,
    },
    /// Fail for good; wait for the user.
    Permanent {
        /// Stable machine-readable reason.
        code: String,
        /// Human-readable reason.
        message: String,
    },
}

/// Sorts a failed push (DESIGN.md §3). The code and message come from the
/// server's error body when it sent one.
pub fn classify(failure: &TransportFailure) -> ErrorClass {
    let transient = |code: &str, message: String, retry_after| ErrorClass::Transient {
        code: code.to_owned(),
        message,
        retry_after,
    };
    match failure {
        TransportFailure::Network => transient("network", "the server could not be reached".into(), None),
        TransportFailure::Timeout => transient("timeout", "the server did not answer in time".into(), None),
        TransportFailure::Protocol(why) => transient("protocol", format!("unusable answer: {why}"), None),
        TransportFailure::Status { status, error, retry_after } => {
            let (default_code, permanent) = match status {
                408 => ("timeout", false),
                429 => ("rate_limited", false),
                500..=599 => ("server_error", false),
                400 => ("bad_request", true),
                401 => ("unauthorized", true),
                403 => ("forbidden", true),
                404 => ("not_found", true),
                409 => ("conflict", true),
                413 => ("too_large", true),
                422 => ("invalid", true),
                // Another client error would come back for the same request.
                402..=499 => ("http_error", true),
                // 1xx, 2xx or 3xx as a failure: a proxy or portal in the way.
                _ => ("unexpected_status", false),
            };
            let (code, message) = match error {
                Some(e) => (e.code.clone(), e.message.clone()),
                None => (default_code.to_owned(), format!("the server answered HTTP {status}")),
            };
            if permanent {
                ErrorClass::Permanent { code, message }
            } else {
                ErrorClass::Transient { code, message, retry_after: *retry_after }
            }
        }
    }
}

/// One change for the engine to apply; all decisions of one call go into one
/// store write, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Replace the outbox row with this `mutation_id` by this one.
    Put(Mutation),
    /// Remove the outbox row with this `mutation_id`.
    Remove(u64),
    /// Append this row at the tail: the store gives it a new `mutation_id`,
    /// larger than every earlier one (it is 0 here). Several `Enqueue`s of
    /// one call get increasing ids in the order given.
    Enqueue(Mutation),
    /// Set a message's status.
    MessageStatus {
        /// The message.
        message_id: MessageId,
        /// Its new status.
        status: MessageStatus,
    },
    /// A message's Send was acked: set its `seq`, `server_ts`, status `sent`
    /// and display order ([`display_order`](crate::core::model::display_order)`(Some(seq), _)`).
    MessageSent {
        /// The message.
        message_id: MessageId,
        /// Its server order.
        seq: u64,
        /// When the server accepted it.
        server_ts: Millis,
    },
    /// The server applied a mutation (of any kind; a Send also gets
    /// [`MessageSent`](Decision::MessageSent)). For follow-ups such as the
    /// catch-up pull after a `join`.
    Applied {
        /// What was applied.
        body: MutationBody,
        /// The server's ack.
        ack: Ack,
    },
    /// A mutation failed for good (of any kind; a Send also gets a `failed`
    /// [`MessageStatus`](Decision::MessageStatus)). For surfacing the error.
    Failed {
        /// Its id.
        mutation_id: u64,
        /// What failed.
        body: MutationBody,
        /// Stable machine-readable reason.
        code: String,
        /// Human-readable reason.
        message: String,
    },
    /// The server refused a batch as a whole in a way one of its mutations or
    /// its size may cause: push at most this many mutations per request
    /// until a push gets a 200 answer.
    ShrinkBatch {
        /// The new largest batch.
        max_mutations: usize,
    },
    /// The server asked not to be called before this time (`Retry-After`).
    /// Keep it in memory and pass it to [`retry_now`].
    HoldUntil(Millis),
}

/// Why a user action on the outbox was refused. Nothing changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// Nothing in the outbox for it: already sent, or never queued.
    #[error("nothing for this message is waiting in the outbox")]
    NotQueued,
    /// A push carrying it is in flight; ask again when it has its answer.
    #[error("a push carrying it is in flight")]
    InFlight,
    /// An earlier push may have delivered it (its answer was lost), so it can
    /// no longer be withdrawn; delete the message instead.
    #[error("it may already have reached the server")]
    MaybeSent,
    /// Nothing for it has failed.
    #[error("nothing for this message has failed")]
    NotFailed,
}

/// A new outbox row for `body`, due at once; the store assigns its
/// `mutation_id`. Prefer [`enqueue`], which also drops what it supersedes.
pub fn new_row(body: MutationBody, now: Millis) -> Mutation {
    Mutation {
        mutation_id: 0,
        body,
        attempts: 0,
        next_attempt_at: now,
        state: MutationState::Queued,
        created_at: now,
    }
}

/// Queues a local change (write these decisions with the change itself).
///
/// An Edit or Delete of a message supersedes its older Edits that the server
/// cannot have applied (`Failed`, or never carried by a push): they are
/// dropped, so that a [`retry`] can never bring an older body back over a
/// newer one. Older Edits in flight or in doubt stay; they go first, so the
/// newest still wins. (For a message whose Send is still withdrawable, use
/// [`edit_queued`] / [`delete_queued`] first.)
pub fn enqueue(outbox: &[Mutation], body: MutationBody, now: Millis) -> Vec<Decision> {
    let mut out = Vec::new();
    if let MutationBody::Edit { message_id, .. } | MutationBody::Delete { message_id, .. } = &body {
        out.extend(
            message_rows(outbox, *message_id)
                .into_iter()
                .filter(|m| matches!(m.body, MutationBody::Edit { .. }) && is_withdrawable(m))
                .map(|m| Decision::Remove(m.mutation_id)),
        );
    }
    out.push(Decision::Enqueue(new_row(body, now)));
    out
}

/// Whether a later Edit or Delete of the same message makes this Edit moot.
fn superseded(outbox: &[Mutation], row: &Mutation) -> bool {
    matches!(row.body, MutationBody::Edit { .. })
        && outbox.iter().any(|m| {
            m.mutation_id > row.mutation_id
                && m.body.message_id() == row.body.message_id()
                && matches!(m.body, MutationBody::Edit { .. } | MutationBody::Delete { .. })
        })
}

/// Whether nothing of this row can be on the server, so that it may be
/// rewritten or removed: no push has carried it yet, or it has failed (see
/// the invariant in the module docs).
pub fn is_withdrawable(row: &Mutation) -> bool {
    match row.state {
        MutationState::Queued => row.attempts == 0,
        MutationState::Sending => false,
        MutationState::Failed { .. } => true,
    }
}

/// An estimate of a mutation's size in a push request, in bytes of JSON: its
/// envelopes in base64 plus a generous allowance for ids and field names.
pub fn wire_size(body: &MutationBody) -> usize {
    let b64 = |n: usize| n.div_ceil(3) * 4;
    256 + match body {
        MutationBody::CreateThread { title, members, .. } => {
            b64(title.0.len()) + members.iter().map(|m| m.0.len() + 8).sum::<usize>()
        }
        MutationBody::Send { body, .. } | MutationBody::Edit { body, .. } => b64(body.0.len()),
        MutationBody::Delete { .. } => 0,
        MutationBody::Join { invite, .. } => invite.len(),
    }
}

fn sorted(outbox: &[Mutation]) -> Vec<&Mutation> {
    let mut rows: Vec<&Mutation> = outbox.iter().collect();
    crate::core::model::sort_by_key(&mut rows, |m| &m.mutation_id);
    rows
}

fn row(outbox: &[Mutation], mutation_id: u64) -> Option<&Mutation> {
    outbox.iter().find(|m| m.mutation_id == mutation_id)
}

fn send_message(row: &Mutation) -> Option<MessageId> {
    match row.body {
        MutationBody::Send { message_id, .. } => Some(message_id),
        _ => None,
    }
}

fn status(row: &Mutation, status: MessageStatus) -> Option<Decision> {
    send_message(row).map(|message_id| Decision::MessageStatus { message_id, status })
}

/// The mutation ids to push now, in increasing order (see "Order" in the
/// module docs): empty while a push is in flight; otherwise the longest run of
/// due `Queued` rows, skipping `Failed` ones, stopping at the first `Queued`
/// row that is not due yet, and within `limit` (at least one row).
pub fn next_batch(outbox: &[Mutation], now: Millis, limit: BatchLimit) -> Vec<u64> {
    if outbox.iter().any(|m| m.state == MutationState::Sending) {
        return Vec::new();
    }
    let mut batch = Vec::new();
    let mut bytes = 0;
    for row in sorted(outbox) {
        match row.state {
            MutationState::Failed { .. } => continue,
            MutationState::Sending => unreachable!("checked above"),
            MutationState::Queued => {
                if row.next_attempt_at > now || batch.len() >= limit.mutations.max(1) {
                    break;
                }
                let size = wire_size(&row.body);
                if !batch.is_empty() && bytes + size > limit.bytes {
                    break;
                }
                bytes += size;
                batch.push(row.mutation_id);
            }
        }
    }
    batch
}

/// When the engine should next try a push: now or later when the head of the
/// queue is waiting (the earliest `next_attempt_at` of a `Queued` row that
/// nothing holds back), `None` when nothing can be pushed (empty, only
/// `Failed` rows, or a push in flight).
pub fn next_wake(outbox: &[Mutation]) -> Option<Millis> {
    if outbox.iter().any(|m| m.state == MutationState::Sending) {
        return None;
    }
    sorted(outbox).into_iter().find(|m| m.state == MutationState::Queued).map(|m| m.next_attempt_at)
}

/// The batch is about to be pushed: its rows become `Sending` (counting the
/// attempt) and their messages `sending`. Apply before the request goes out.
pub fn on_sent(outbox: &[Mutation], batch: &[u64]) -> Vec<Decision> {
    let mut out = Vec::new();
    for &id in batch {
        let Some(row) = row(outbox, id) else { continue };
        out.push(Decision::Put(Mutation {
            state: MutationState::Sending,
            attempts: row.attempts.saturating_add(1),
            ..row.clone()
        }));
        out.extend(status(row, MessageStatus::Sending));
    }
    out
}

/// This tab became the sync leader (or the client opened): rows left
/// `Sending` by a push whose answer never came are queued again, due now.
/// Their retry keeps the same ids, so the server answers for them exactly
/// once.
pub fn recover(outbox: &[Mutation], now: Millis) -> Vec<Decision> {
    let mut out = Vec::new();
    for row in sorted(outbox) {
        if row.state == MutationState::Sending {
            out.push(Decision::Put(Mutation {
                state: MutationState::Queued,
                next_attempt_at: now,
                ..row.clone()
            }));
            out.extend(status(row, MessageStatus::Pending));
        }
    }
    out
}

/// A trigger (online, tab visible, poke, `syncNow()`): rows waiting out a
/// transient backoff become due at once, but not before `hold_until` (the
/// last [`Decision::HoldUntil`], 0 if none). `Failed` rows stay as they are.
pub fn retry_now(outbox: &[Mutation], now: Millis, hold_until: Millis) -> Vec<Decision> {
    let due = now.max(hold_until);
    sorted(outbox)
        .into_iter()
        .filter(|m| m.state == MutationState::Queued && m.next_attempt_at > due)
        .map(|m| Decision::Put(Mutation { next_attempt_at: due, ..m.clone() }))
        .collect()
}

/// The server answered a push of `batch` with 200 and `response`.
///
/// * An ack removes the row (acks for ids outside the batch are ignored).
/// * A rejection fails the row (the rest of the batch goes on), or drops it if
///   it is an Edit that a later Edit or Delete of its message supersedes.
/// * A row with neither, above `last_mutation_id`, was not processed: it is
///   queued again, due now, and the push does not count as one of its
///   attempts. If the answer made no progress at all, it waits out a backoff
///   instead, so a server that processes nothing is not hammered.
/// * A row with neither, at or below `last_mutation_id`, was processed but
///   its result is missing: the answer is malformed, so the row is treated as
///   a transient failure and asked for again under the same id (the server
///   then repeats its stored result).
/// * An answer of another protocol version is a transient failure of the
///   whole batch.
pub fn on_push_result(
    outbox: &[Mutation],
    batch: &[u64],
    response: &PushResponse,
    now: Millis,
    random: u64,
) -> Vec<Decision> {
    if response.protocol != PROTOCOL_VERSION {
        let why = format!("protocol version {} instead of {PROTOCOL_VERSION}", response.protocol);
        return on_transport_failure(outbox, batch, &TransportFailure::Protocol(why), now, random);
    }
    // A batch is at most a few hundred rows: a scan is cheap, and small in wasm.
    let ack_of = |id: u64| response.acks.iter().find(|a| a.mutation_id == id);
    let rejection_of = |id: u64| response.rejected.iter().find(|r| r.mutation_id == id);
    let progress = batch.iter().any(|id| ack_of(*id).is_some() || rejection_of(*id).is_some());

    let mut out = Vec::new();
    let mut unanswered = Vec::new();
    for &id in batch {
        let Some(row) = row(outbox, id) else { continue };
        if let Some(ack) = ack_of(id) {
            out.push(Decision::Remove(id));
            if let Some(message_id) = send_message(row) {
                out.push(Decision::MessageSent { message_id, seq: ack.seq, server_ts: ack.server_ts });
            }
            out.push(Decision::Applied { body: row.body.clone(), ack: *ack });
        } else if let Some(rejection) = rejection_of(id) {
            out.extend(fail(outbox, row, &rejection.code, &rejection.message));
        } else if id > response.last_mutation_id && progress {
            out.extend(requeue_untried(row, now));
        } else {
            unanswered.push(id);
        }
    }
    if !unanswered.is_empty() {
        let failure = TransportFailure::Protocol("the server did not answer for every mutation".into());
        out.extend(on_transport_failure(outbox, &unanswered, &failure, now, random));
    }
    out
}

/// The server refused the push of `batch` before looking at it because the
/// session is not (or no longer) valid (401): nothing was applied, so the
/// rows go back to `Queued`, uncounted and due now. The engine pauses pushing
/// until it has a new token; failing the rows would lose messages to an
/// expired session.
pub fn on_unauthorized(outbox: &[Mutation], batch: &[u64], now: Millis) -> Vec<Decision> {
    batch.iter().filter_map(|&id| row(outbox, id)).flat_map(|row| requeue_untried(row, now)).collect()
}

/// A push of `batch` failed without a usable answer; see [`classify`] and
/// "Errors" in the module docs. `random` picks the jitter.
pub fn on_transport_failure(
    outbox: &[Mutation],
    batch: &[u64],
    failure: &TransportFailure,
    now: Millis,
    random: u64,
) -> Vec<Decision> {
    let rows: Vec<&Mutation> = batch.iter().filter_map(|&id| row(outbox, id)).collect();
    let mut out = Vec::new();
    match classify(failure) {
        ErrorClass::Transient { code, message, retry_after } => {
            out.extend(back_off(&rows, &code, &message, retry_after, now, random));
        }
        ErrorClass::Permanent { code, message } => {
            let splittable = matches!(failure, TransportFailure::Status { status: 400 | 413 | 422, .. });
            if splittable && rows.len() > 1 {
                for row in &rows {
                    out.extend(requeue_untried(row, now));
                }
                out.push(Decision::ShrinkBatch { max_mutations: rows.len() / 2 });
            } else {
                // The request was refused as a whole, so it applied nothing;
                // but a row an earlier push may have applied stays in doubt
                // and must be asked about again, not failed.
                let (in_doubt, fresh): (Vec<&Mutation>, Vec<&Mutation>) =
                    rows.iter().partition(|row| row.attempts > 1);
                for row in fresh {
                    out.extend(fail(outbox, row, &code, &message));
                }
                out.extend(back_off(&in_doubt, &code, &message, None, now, random));
            }
        }
    }
    out
}

/// Rows of a refused or unprocessed push: due again now, and the push does
/// not count (it cannot have applied them).
fn requeue_untried(row: &Mutation, now: Millis) -> Vec<Decision> {
    let mut out = vec![Decision::Put(Mutation {
        state: MutationState::Queued,
        attempts: row.attempts.saturating_sub(1),
        next_attempt_at: now,
        ..row.clone()
    })];
    out.extend(status(row, MessageStatus::Pending));
    out
}

fn back_off(
    rows: &[&Mutation],
    code: &str,
    message: &str,
    retry_after: Option<Millis>,
    now: Millis,
    random: u64,
) -> Vec<Decision> {
    let mut out = Vec::new();
    if rows.is_empty() {
        return out;
    }
    // One wait for the whole batch keeps it together for the next push.
    let failures = rows.iter().map(|m| m.attempts).max().unwrap_or(1).max(1);
    let wait = Backoff::DEFAULT.delay(failures - 1, random).max(retry_after.unwrap_or(0));
    let at = now.saturating_add(wait);
    for row in rows {
        out.push(Decision::Put(Mutation {
            state: MutationState::Queued,
            next_attempt_at: at,
            ..(*row).clone()
        }));
        out.extend(status(
            row,
            MessageStatus::Failed { code: code.to_owned(), message: message.to_owned(), recoverable: true },
        ));
    }
    if let Some(after) = retry_after {
        out.push(Decision::HoldUntil(now.saturating_add(after)));
    }
    out
}

/// A row fails for good; an Edit that a later Edit or Delete supersedes is
/// dropped instead (its retry could only bring an older body back).
fn fail(outbox: &[Mutation], row: &Mutation, code: &str, message: &str) -> Vec<Decision> {
    if superseded(outbox, row) {
        return vec![Decision::Remove(row.mutation_id)];
    }
    let mut out = vec![Decision::Put(Mutation {
        state: MutationState::Failed { code: code.to_owned(), message: message.to_owned() },
        ..row.clone()
    })];
    out.extend(status(
        row,
        MessageStatus::Failed { code: code.to_owned(), message: message.to_owned(), recoverable: false },
    ));
    out.push(Decision::Failed {
        mutation_id: row.mutation_id,
        body: row.body.clone(),
        code: code.to_owned(),
        message: message.to_owned(),
    });
    out
}

/// The outbox rows about one message, by increasing id.
fn message_rows(outbox: &[Mutation], message_id: MessageId) -> Vec<&Mutation> {
    sorted(outbox).into_iter().filter(|m| m.body.message_id() == Some(message_id)).collect()
}

/// The Send of a message, if it is still in the outbox and withdrawable
/// ([`is_withdrawable`]) and nothing about the message is in flight. When
/// this is `Some`, an edit of the message is sealed as a Send and given to
/// [`edit_queued`], and a delete goes to [`delete_queued`]; otherwise they
/// queue an Edit or Delete mutation.
///
/// An Edit in flight (queued while its Send was in doubt) cannot be dropped,
/// and its older body would come back on a [`retry`]; so while one flies, a
/// newer edit is queued behind it instead of rewriting the Send.
pub fn queued_send(outbox: &[Mutation], message_id: MessageId) -> Option<&Mutation> {
    let rows = message_rows(outbox, message_id);
    if rows.iter().any(|m| m.state == MutationState::Sending) {
        return None;
    }
    rows.into_iter().find(|m| matches!(m.body, MutationBody::Send { .. }) && is_withdrawable(m))
}

/// An edit of a message whose Send is withdrawable: the Send is rewritten in
/// place with `body` (sealed as a Send, since it is the first body the server
/// will see), keeping its place in the queue and its state, and Edits queued
/// behind it (older bodies) are dropped. A `Failed` Send
/// stays failed until the user retries it. `None` if the Send is not
/// withdrawable: queue an Edit instead.
pub fn edit_queued(outbox: &[Mutation], message_id: MessageId, body: Envelope) -> Option<Vec<Decision>> {
    let send = queued_send(outbox, message_id)?;
    let MutationBody::Send { thread_id, message_id, client_ts, .. } = send.body else {
        unreachable!("queued_send returns Sends")
    };
    let body = MutationBody::Send { thread_id, message_id, body, client_ts };
    let mut out = vec![Decision::Put(Mutation { body, ..send.clone() })];
    // Edits queued behind the Send while it was in doubt carry older bodies;
    // the Send now has the newest one. Nothing of them can be applied: their
    // message is not on the server.
    out.extend(
        message_rows(outbox, message_id)
            .into_iter()
            .filter(|m| m.mutation_id > send.mutation_id && m.state != MutationState::Sending)
            .filter(|m| matches!(m.body, MutationBody::Edit { .. }))
            .map(|m| Decision::Remove(m.mutation_id)),
    );
    Some(out)
}

/// A delete of a message whose Send is withdrawable: the Send is dropped and
/// the message becomes `cancelled` (the engine marks it deleted locally too);
/// nothing is ever sent. `None` if the Send is not withdrawable: queue a
/// Delete instead.
pub fn delete_queued(outbox: &[Mutation], message_id: MessageId) -> Option<Vec<Decision>> {
    queued_send(outbox, message_id)?;
    Some(withdraw(outbox, message_id))
}

/// The user cancels a message that is not sent yet: its Send (and any later
/// row about it, which could only fail once the Send is gone) is removed, and
/// the message becomes `cancelled`. Refused while anything about the message
/// is in flight, or once the Send may have reached the server.
pub fn cancel(outbox: &[Mutation], message_id: MessageId) -> Result<Vec<Decision>, Refusal> {
    let rows = message_rows(outbox, message_id);
    let send = rows.iter().find(|m| matches!(m.body, MutationBody::Send { .. })).ok_or(Refusal::NotQueued)?;
    if rows.iter().any(|m| m.state == MutationState::Sending) {
        Err(Refusal::InFlight)
    } else if !is_withdrawable(send) {
        Err(Refusal::MaybeSent)
    } else {
        Ok(withdraw(outbox, message_id))
    }
}

fn withdraw(outbox: &[Mutation], message_id: MessageId) -> Vec<Decision> {
    let mut out: Vec<Decision> = message_rows(outbox, message_id)
        .into_iter()
        .filter(|m| m.state != MutationState::Sending)
        .map(|m| Decision::Remove(m.mutation_id))
        .collect();
    out.push(Decision::MessageStatus { message_id, status: MessageStatus::Cancelled });
    out
}

/// The user retries a message: its first `Failed` row and every later row
/// about it are removed and enqueued again at the tail, in the same order,
/// under new ids and with fresh attempts (an edit queued behind a failed Send
/// must stay behind it). A retried Send's message becomes `pending`.
pub fn retry(outbox: &[Mutation], message_id: MessageId, now: Millis) -> Result<Vec<Decision>, Refusal> {
    let rows = message_rows(outbox, message_id);
    if rows.is_empty() {
        return Err(Refusal::NotQueued);
    }
    let first_failed = rows
        .iter()
        .position(|m| matches!(m.state, MutationState::Failed { .. }))
        .ok_or(Refusal::NotFailed)?;
    let moved = &rows[first_failed..];
    if moved.iter().any(|m| m.state == MutationState::Sending) {
        return Err(Refusal::InFlight);
    }
    Ok(reenqueue(moved, now))
}

/// The user retries a failed mutation that is not about a message (a thread
/// creation or a join), by id; see [`retry`].
pub fn retry_mutation(outbox: &[Mutation], mutation_id: u64, now: Millis) -> Result<Vec<Decision>, Refusal> {
    let row = row(outbox, mutation_id).ok_or(Refusal::NotQueued)?;
    if !matches!(row.state, MutationState::Failed { .. }) {
        return Err(Refusal::NotFailed);
    }
    Ok(reenqueue(&[row], now))
}

fn reenqueue(rows: &[&Mutation], now: Millis) -> Vec<Decision> {
    let mut out: Vec<Decision> = rows.iter().map(|m| Decision::Remove(m.mutation_id)).collect();
    for row in rows {
        out.push(Decision::Enqueue(Mutation {
            created_at: row.created_at,
            ..new_row(row.body.clone(), now)
        }));
        out.extend(status(row, MessageStatus::Pending));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_ceiling_doubles_to_the_cap() {
        let b = Backoff::DEFAULT;
        assert_eq!([0, 1, 2, 6, 7, 40].map(|n| b.ceiling(n)), [500, 1000, 2000, 32_000, 60_000, 60_000]);
        assert_eq!(b.delay(0, u64::MAX), u64::MAX % 501);
        let huge = Backoff { base_ms: u64::MAX, factor: u32::MAX, cap_ms: u64::MAX };
        assert_eq!(huge.delay(u32::MAX, 12345), 12345);
    }

    #[test]
    fn the_wire_size_estimate_covers_the_real_json() {
        use crate::core::model::{MessageId, ThreadId};
        use crate::core::sync::PushMutation;
        let body = MutationBody::Send {
            thread_id: ThreadId::from_parts(1, [1; 10]),
            message_id: MessageId::from_parts(2, [2; 10]),
            body: Envelope(vec![7; 1000]),
            client_ts: u64::MAX,
        };
        let json =
            serde_json::to_string(&PushMutation { mutation_id: u64::MAX, body: body.clone() }).unwrap();
        assert!(json.len() <= wire_size(&body), "{} > {}", json.len(), wire_size(&body));
    }
}
