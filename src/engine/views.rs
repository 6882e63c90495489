//! What the engine hands to the UI: decrypted, plain data. The JS bindings
//! pass these through as objects with camelCase fields.

use serde::Serialize;

use crate::core::model::{MessageId, MessageStatus, Millis, ThreadId, UserId};

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
