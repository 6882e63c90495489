//! What the engine hands to the UI: decrypted, plain data. The JS bindings
//! pass these through as objects with camelCase fields.

use serde::Serialize;

use crate::core::model::{MessageId, MessageStatus, Millis, ThreadId, UserId};
use crate::core::outbox::{classify, ErrorClass, TransportFailure};

/// A message as a UI shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Its id; never changes, also not when the server acknowledges it.
    pub id: MessageId,
    /// Its thread.
    pub thread_id: ThreadId,
    /// Who wrote it.
    pub sender: UserId,
    /// The text; `None` when deleted or undecryptable.
    pub body: Option<String>,
    /// Why the body could not be opened (a reason code), if it could not.
    pub undecryptable: Option<&'static str>,
    /// Server order, once sent.
    pub seq: Option<u64>,
    /// When it was written, by the sender's clock.
    pub client_ts: Millis,
    /// When the server accepted it.
    pub server_ts: Option<Millis>,
    /// Whether it was edited.
    pub edited: bool,
    /// Whether it was deleted.
    pub deleted: bool,
    /// Where it stands on its way to the server.
    pub status: MessageStatus,
}

/// A thread as a UI shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Thread {
    /// Its id.
    pub id: ThreadId,
    /// The title; `None` when undecryptable.
    pub title: Option<String>,
    /// Why the title could not be opened, if it could not.
    pub undecryptable: Option<&'static str>,
    /// Its members, sorted.
    pub members: Vec<UserId>,
    /// Who created it.
    pub created_by: UserId,
    /// When it was created.
    pub created_at: Millis,
}

/// What a thread subscriber is told: these messages were added or changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ThreadChange {
    /// The thread.
    pub thread_id: ThreadId,
    /// The messages as they are now.
    pub messages: Vec<Message>,
}

/// Where background sync stands, as a UI shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Connected to the server (its event socket is open), nothing running.
    Online,
    /// The server cannot be reached; the outbox waits and retries.
    Offline,
    /// A round (push, then pull) is running.
    Syncing,
    /// The last round finished: everything that could go is sent and
    /// everything new is pulled.
    Idle,
    /// The server refused to sync (e.g. `unauthorized`); see the event's error.
    Error,
}

/// A machine-readable reason with a human-readable text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorInfo {
    /// Stable code, e.g. `unauthorized`, `network`.
    pub code: String,
    /// What happened.
    pub message: String,
}

impl From<&TransportFailure> for ErrorInfo {
    /// The code and message [`classify`] gives a failed request.
    fn from(failure: &TransportFailure) -> Self {
        match classify(failure) {
            ErrorClass::Transient { code, message, .. } | ErrorClass::Permanent { code, message } => {
                ErrorInfo { code, message }
            }
        }
    }
}

impl ErrorInfo {
    /// The sync state this failure leaves: `offline` when the server could
    /// not be reached in time, `error` when it refused.
    pub fn sync_state(&self) -> SyncState {
        match self.code.as_str() {
            "network" | "timeout" => SyncState::Offline,
            _ => SyncState::Error,
        }
    }
}

/// A client-wide event, for UIs that show sync state and message status.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum ClientEvent {
    /// Sync moved to `state`; `error` says why for `offline` and `error`.
    Sync {
        /// The new state.
        state: SyncState,
        /// Why, when something failed.
        error: Option<ErrorInfo>,
        /// The rest of [`SyncStatus`](super::metrics::SyncStatus), as of the
        /// end of the last round (`None`/0 before the first).
        last_synced_at: Option<Millis>,
        /// Outbox rows on their way.
        pending: usize,
        /// Outbox rows refused for good.
        failed: usize,
        /// Pulled changes set aside.
        quarantined: usize,
        /// The main pull cursor.
        cursor: u64,
    },
    /// A sync round finished: what it did.
    Round {
        /// Its figures.
        round: super::metrics::RoundStats,
    },
    /// A message's status changed (sending, sent, failed, cancelled, ...).
    Status {
        /// The message as it is now.
        message: Message,
    },
    /// Threads were added or changed (created, joined, members changed).
    Threads,
    /// A local write (here or in another tab) queued, rewrote or withdrew a
    /// change in the outbox: read `outbox()` again. Status changes of queued
    /// changes come as `Status` events.
    Outbox,
    /// A local change lost to a remote one: a pending edit of a message that
    /// was deleted meanwhile (`deleted_remotely`). The message shows deleted.
    Conflict {
        /// The thread.
        thread_id: ThreadId,
        /// The message.
        message_id: MessageId,
        /// Why.
        code: &'static str,
    },
    /// Pulled changes this build cannot read were set aside (see
    /// `quarantine()`); the rest of their page was applied.
    Quarantined {
        /// How many were set aside.
        count: usize,
    },
    /// Another tab upgraded the database: this one must reload.
    VersionChange,
    /// This tab became, or stopped being, the one that talks to the server.
    Leader {
        /// Whether it leads now.
        leader: bool,
    },
    /// The client stopped for good after an internal error (in the browser:
    /// the wasm instance trapped); reload to go on.
    Fatal,
}

/// An outbox row as a UI shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OutboxEntry {
    /// Its id: increasing in the order changes were made.
    pub mutation_id: u64,
    /// `create_thread`, `send`, `edit`, `delete` or `join`.
    pub kind: &'static str,
    /// The thread it changes.
    pub thread_id: ThreadId,
    /// The message it changes, if any.
    pub message_id: Option<MessageId>,
    /// `queued`, `sending` or `failed`.
    pub state: &'static str,
    /// How many pushes carried it.
    pub attempts: u32,
    /// Not sent before this time.
    pub next_attempt_at: Millis,
    /// Why it failed (or last failed, while it waits to retry).
    pub error: Option<ErrorInfo>,
    /// When it was made.
    pub created_at: Millis,
}
