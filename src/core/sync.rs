//! Sync protocol v1: the JSON messages between client and server
//! (DESIGN.md §3, docs/protocol.md). Both sides use these types, so they
//! cannot drift apart.

use serde::{Deserialize, Serialize};

use crate::core::envelope::Envelope;
use crate::core::model::{DeviceId, MessageId, Millis, ThreadId, UserId};

/// The protocol version this build speaks. Anything else is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// A change made on a client, as queued in its outbox and pushed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MutationBody {
    /// Create a thread; the creator is always a member.
    CreateThread {
        /// The new thread's id.
        thread_id: ThreadId,
        /// The title, sealed.
        title: Envelope,
        /// Members besides the creator.
        members: Vec<UserId>,
        /// Creation time by the client's clock.
        created_at: Millis,
    },
    /// Post a new message.
    Send {
        /// The thread.
        thread_id: ThreadId,
        /// The message id, made by the client.
        message_id: MessageId,
        /// The body, sealed.
        body: Envelope,
        /// When it was written, by the client's clock.
        client_ts: Millis,
    },
    /// Replace the body of one's own message.
    Edit {
        /// The thread.
        thread_id: ThreadId,
        /// The message to edit.
        message_id: MessageId,
        /// The new body, sealed.
        body: Envelope,
    },
    /// Delete one's own message (it stays as a tombstone).
    Delete {
        /// The thread.
        thread_id: ThreadId,
        /// The message to delete.
        message_id: MessageId,
    },
    /// Join a thread with an invite token issued by the server.
    Join {
        /// The thread.
        thread_id: ThreadId,
        /// The server's invite token.
        invite: String,
    },
}

impl MutationBody {
    /// The thread this mutation changes.
    pub fn thread_id(&self) -> ThreadId {
        match self {
            MutationBody::CreateThread { thread_id, .. }
            | MutationBody::Send { thread_id, .. }
            | MutationBody::Edit { thread_id, .. }
            | MutationBody::Delete { thread_id, .. }
            | MutationBody::Join { thread_id, .. } => *thread_id,
        }
    }

    /// The message this mutation changes, if it is about one.
    pub fn message_id(&self) -> Option<MessageId> {
        match self {
            MutationBody::Send { message_id, .. }
            | MutationBody::Edit { message_id, .. }
            | MutationBody::Delete { message_id, .. } => Some(*message_id),
            MutationBody::CreateThread { .. } | MutationBody::Join { .. } => None,
        }
    }
}

// The internally tagged enums here ([`MutationBody`], [`Change`],
// [`ServerEvent`]) are read by hand through one flat struct each: serde's
// derive buffers the whole object in its generic `Content` tree first, which
// costs several KiB of wasm per enum. Same JSON; a field of another variant
// is ignored as before, but must then be well-formed.

fn required<T, E: serde::de::Error>(value: Option<T>, field: &'static str) -> Result<T, E> {
    value.ok_or_else(|| E::missing_field(field))
}

impl<'de> Deserialize<'de> for MutationBody {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            kind: String,
            thread_id: ThreadId,
            message_id: Option<MessageId>,
            title: Option<Envelope>,
            members: Option<Vec<UserId>>,
            created_at: Option<Millis>,
            body: Option<Envelope>,
            client_ts: Option<Millis>,
            invite: Option<String>,
        }
        let f = Fields::deserialize(d)?;
        let thread_id = f.thread_id;
        Ok(match f.kind.as_str() {
            "create_thread" => MutationBody::CreateThread {
                thread_id,
                title: required(f.title, "title")?,
                members: required(f.members, "members")?,
                created_at: required(f.created_at, "created_at")?,
            },
            "send" => MutationBody::Send {
                thread_id,
                message_id: required(f.message_id, "message_id")?,
                body: required(f.body, "body")?,
                client_ts: required(f.client_ts, "client_ts")?,
            },
            "edit" => MutationBody::Edit {
                thread_id,
                message_id: required(f.message_id, "message_id")?,
                body: required(f.body, "body")?,
            },
            "delete" => MutationBody::Delete { thread_id, message_id: required(f.message_id, "message_id")? },
            "join" => MutationBody::Join { thread_id, invite: required(f.invite, "invite")? },
            other => {
                return Err(serde::de::Error::unknown_variant(
                    other,
                    &["create_thread", "send", "edit", "delete", "join"],
                ))
            }
        })
    }
}

/// One mutation in a push.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushMutation {
    /// Per-device, strictly increasing.
    pub mutation_id: u64,
    /// What to do.
    #[serde(flatten)]
    pub body: MutationBody,
}

/// `POST /v1/push` request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushRequest {
    /// Must be [`PROTOCOL_VERSION`].
    pub protocol: u32,
    /// The pushing device.
    pub device_id: DeviceId,
    /// In increasing `mutation_id` order.
    pub mutations: Vec<PushMutation>,
}

/// A mutation the server applied (now or on an earlier push).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The mutation.
    pub mutation_id: u64,
    /// The server order of the change it made.
    pub seq: u64,
    /// When the server applied it.
    pub server_ts: Millis,
}

/// A mutation the server refused for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    /// The mutation.
    pub mutation_id: u64,
    /// Stable machine-readable reason, e.g. `not_member`, `edit_deleted`.
    pub code: String,
    /// Human-readable reason.
    pub message: String,
}

/// `POST /v1/push` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushResponse {
    /// The server's protocol version.
    pub protocol: u32,
    /// Applied mutations, with their original acks when repeated.
    pub acks: Vec<Ack>,
    /// Refused mutations.
    pub rejected: Vec<Rejection>,
    /// The highest mutation id the server has processed for this device.
    pub last_mutation_id: u64,
}

/// A thread as the server holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerThread {
    /// The thread's id.
    pub id: ThreadId,
    /// The title, sealed.
    pub title: Envelope,
    /// Every member, creator included, sorted.
    pub members: Vec<UserId>,
    /// Who created it.
    pub created_by: UserId,
    /// Creation time by the creator's clock.
    pub created_at: Millis,
}

/// A message as the server holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerMessage {
    /// The message id, made by the sender's client.
    pub id: MessageId,
    /// The thread.
    pub thread_id: ThreadId,
    /// The sender, from the sender's token.
    pub sender: UserId,
    /// The body, sealed; `None` once deleted.
    pub body: Option<Envelope>,
    /// The server order of the send.
    pub seq: u64,
    /// When the sender wrote it, by the sender's clock.
    pub client_ts: Millis,
    /// When the server accepted the send.
    pub server_ts: Millis,
    /// Whether the body was edited.
    pub edited: bool,
    /// Whether the message was deleted.
    pub deleted: bool,
}

/// One entry of the change feed: the current state of what changed at `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Change {
    /// A thread was created, or its members changed (the caller may be new to it).
    Thread {
        /// The change's position in server order.
        seq: u64,
        /// The thread as it is now.
        thread: ServerThread,
    },
    /// A message was sent, edited or deleted.
    Message {
        /// The change's position in server order.
        seq: u64,
        /// The message as it is now.
        message: ServerMessage,
    },
}

impl Change {
    /// The change's position in server order.
    pub fn seq(&self) -> u64 {
        match self {
            Change::Thread { seq, .. } | Change::Message { seq, .. } => *seq,
        }
    }

    /// Its `type`: `thread` or `message`.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::Thread { .. } => "thread",
            Change::Message { .. } => "message",
        }
    }

    /// The thread it belongs to.
    pub fn thread_id(&self) -> ThreadId {
        match self {
            Change::Thread { thread, .. } => thread.id,
            Change::Message { message, .. } => message.thread_id,
        }
    }

    /// The id of the thread or message it is about.
    pub fn subject(&self) -> String {
        match self {
            Change::Thread { thread, .. } => thread.id.to_string(),
            Change::Message { message, .. } => message.id.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for Change {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            #[serde(rename = "type")]
            kind: String,
            seq: u64,
            thread: Option<ServerThread>,
            message: Option<ServerMessage>,
        }
        let f = Fields::deserialize(d)?;
        Ok(match f.kind.as_str() {
            "thread" => Change::Thread { seq: f.seq, thread: required(f.thread, "thread")? },
            "message" => Change::Message { seq: f.seq, message: required(f.message, "message")? },
            other => return Err(serde::de::Error::unknown_variant(other, &["thread", "message"])),
        })
    }
}

/// What to pull: `GET /v1/pull?cursor=C&limit=N[&thread=ID]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PullRequest {
    /// Changes after this seq.
    pub cursor: u64,
    /// At most this many (the server lowers it to 1000).
    pub limit: u32,
    /// Only this thread's changes, for the catch-up after joining; its
    /// cursor is separate from the main one.
    pub thread: Option<ThreadId>,
}

/// `GET /v1/pull?cursor=C&limit=N[&thread=ID]` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PullResponse {
    /// The server's protocol version.
    pub protocol: u32,
    /// Changes after the cursor, in increasing `seq`.
    pub changes: Vec<Change>,
    /// Where the next pull starts.
    pub cursor: u64,
    /// Whether more changes wait after `cursor`.
    pub has_more: bool,
}

/// A pull response as the client reads it: the page's frame (protocol,
/// cursor, `has_more`) must parse, but each change is read on its own, so
/// one this build cannot read is set aside (quarantined) instead of failing
/// the whole page and stalling sync on it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PullPage {
    /// The server's protocol version.
    pub protocol: u32,
    /// Changes after the cursor, each read or refused on its own.
    pub changes: Vec<Incoming>,
    /// Where the next pull starts.
    pub cursor: u64,
    /// Whether more changes wait after `cursor`.
    pub has_more: bool,
}

/// One change of a [`PullPage`]: read, or kept as it came with the reason.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A change this build reads, and its JSON text (kept in case a rule
    /// of its page sets it aside).
    Valid(Change, Box<serde_json::value::RawValue>),
    /// A change this build cannot read.
    Invalid(InvalidChange),
}

impl PartialEq for Incoming {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Incoming::Valid(a, _), Incoming::Valid(b, _)) => a == b,
            (Incoming::Invalid(a), Incoming::Invalid(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Incoming {}

/// A pulled change that failed to decode or validate, as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidChange {
    /// Its seq, when that much could be read.
    pub seq: Option<u64>,
    /// The thread or message it is about, when it was read: a later valid
    /// change of the same one supersedes it.
    pub subject: Option<String>,
    /// The change's JSON text.
    pub raw: String,
    /// Why it was refused.
    pub reason: String,
}

impl InvalidChange {
    /// A change refused after it was read (it breaks a rule of its page).
    pub fn refused(change: &Change, raw: &serde_json::value::RawValue, reason: String) -> Self {
        InvalidChange {
            seq: Some(change.seq()),
            subject: Some(change.subject()),
            raw: raw.get().into(),
            reason,
        }
    }

    /// Reads `raw` as a change: the same rules as a pulled page.
    pub fn read(raw: Box<serde_json::value::RawValue>) -> Incoming {
        match serde_json::from_str::<Change>(raw.get()) {
            Ok(change) => Incoming::Valid(change, raw),
            Err(e) => {
                // Its seq, when that much reads, to show where it was.
                #[derive(Deserialize)]
                struct Outline {
                    seq: Option<u64>,
                }
                let seq = serde_json::from_str::<Outline>(raw.get()).ok().and_then(|o| o.seq);
                Incoming::Invalid(InvalidChange {
                    seq,
                    subject: None,
                    raw: raw.get().into(),
                    reason: e.to_string(),
                })
            }
        }
    }
}

impl<'de> Deserialize<'de> for Incoming {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(InvalidChange::read(<Box<serde_json::value::RawValue>>::deserialize(d)?))
    }
}

impl From<PullResponse> for PullPage {
    fn from(response: PullResponse) -> Self {
        let read = |change: Change| {
            let raw = serde_json::value::to_raw_value(&change).expect("changes serialize");
            Incoming::Valid(change, raw)
        };
        PullPage {
            protocol: response.protocol,
            changes: response.changes.into_iter().map(read).collect(),
            cursor: response.cursor,
            has_more: response.has_more,
        }
    }
}

/// A message the server sends on the `/v1/events` WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent {
    /// Something new is there, up to `cursor`; pull to get it.
    Poke {
        /// The newest change's seq.
        cursor: u64,
    },
}

impl<'de> Deserialize<'de> for ServerEvent {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Fields {
            #[serde(rename = "type")]
            kind: String,
            cursor: u64,
        }
        let f = Fields::deserialize(d)?;
        match f.kind.as_str() {
            "poke" => Ok(ServerEvent::Poke { cursor: f.cursor }),
            other => Err(serde::de::Error::unknown_variant(other, &["poke"])),
        }
    }
}

/// The JSON body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong, in an [`ErrorBody`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable machine-readable reason, e.g. `bad_request`, `unauthorized`.
    pub code: String,
    /// Human-readable reason.
    pub message: String,
}

/// `POST /v1/session` request body (dev-only sign-in).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// Who to sign in as.
    pub user: UserId,
}

/// `POST /v1/session` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionResponse {
    /// The bearer token.
    pub token: String,
    /// Who it is for.
    pub user: UserId,
    /// When it stops being accepted.
    pub expires_at: Millis,
}

/// `POST /v1/threads/{id}/invites` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteResponse {
    /// The invite token, to pass to whoever is invited.
    pub token: String,
    /// When it stops being accepted.
    pub expires_at: Millis,
}

/// `POST /v1/invites/{token}/accept` response body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcceptResponse {
    /// The thread joined.
    pub thread_id: ThreadId,
}
