//! Merge rules: how a change pulled from the server meets what this device
//! holds (DESIGN.md §2; docs/protocol.md §5).
//!
//! The server's feed carries each thread's and message's **current** state,
//! in server order, so its state wins, with two exceptions:
//!
//! * **A local change still on its way** (an Edit or Delete of the message
//!   waiting in the outbox) stays on screen: it reaches the server after what
//!   was pulled, so it is what the server will hold next. Concurrent edits
//!   thus resolve by server order, and the UI never flickers back to an older
//!   body while its own edit is in flight.
//! * **Delete wins**: a pulled delete ends the message whatever is pending
//!   locally. A pending local edit is then moot (the server would refuse it
//!   with `edit_deleted`); [`Merge::superseded_local_change`] tells the engine
//!   to drop it and tell the UI.
//!
//! A pulled message that is one of this device's own pending sends (its ack
//! was lost, or another tab sent it) simply becomes `sent`: same id, same
//! place, never a second copy.

use crate::core::model::{display_order, MessageRecord, MessageStatus, ThreadRecord};
use crate::core::sync::{ServerMessage, ServerThread};

/// The result of merging a pulled message into the local record.
#[derive(Debug, Clone, PartialEq)]
pub struct Merge {
    /// The record to store.
    pub record: MessageRecord,
    /// A pending local edit lost to a remote delete: drop it, tell the UI.
    pub superseded_local_change: bool,
    /// Whether the stored record changes at all (skip the write otherwise).
    pub changed: bool,
}

/// Merges a pulled message into `local`. `local_change_pending` says an Edit
/// or Delete of the message waits in the outbox (not yet acked).
pub fn merge_message(
    local: Option<&MessageRecord>,
    remote: &ServerMessage,
    local_change_pending: bool,
) -> Merge {
    let mut record = MessageRecord {
        id: remote.id,
        thread_id: remote.thread_id,
        sender: remote.sender.clone(),
        body: remote.body.clone(),
        seq: Some(remote.seq),
        client_ts: remote.client_ts,
        server_ts: Some(remote.server_ts),
        edited: remote.edited,
        deleted: remote.deleted,
        status: MessageStatus::Sent,
        order: display_order(Some(remote.seq), remote.client_ts),
    };
    let mut superseded_local_change = false;
    if let Some(local) = local.filter(|_| local_change_pending) {
        if remote.deleted {
            superseded_local_change = !local.deleted;
        } else {
            record.body = local.body.clone();
            record.edited = local.edited;
            record.deleted = local.deleted;
        }
    }
    if record.deleted {
        record.body = None;
    }
    let changed = local != Some(&record);
    Merge { record, superseded_local_change, changed }
}

/// Merges a pulled thread: the server's title and member list win.
pub fn merge_thread(remote: &ServerThread) -> ThreadRecord {
    ThreadRecord {
        id: remote.id,
        title: remote.title.clone(),
        members: {
            let mut members = remote.members.clone();
            crate::core::model::sort_by_key(&mut members, |m| m);
            members.dedup();
            members
        },
        created_by: remote.created_by.clone(),
        created_at: remote.created_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::envelope::Envelope;
    use crate::core::model::{MessageId, ThreadId, UserId};

    fn remote(seq: u64, body: Option<u8>, edited: bool, deleted: bool) -> ServerMessage {
        ServerMessage {
            id: MessageId::from_parts(1_000, [1; 10]),
            thread_id: ThreadId::from_parts(1_000, [2; 10]),
            sender: UserId("alice".into()),
            body: body.map(|b| Envelope(vec![b])),
            seq,
            client_ts: 1_000,
            server_ts: 1_100,
            edited,
            deleted,
        }
    }

    fn pending_local(body: u8, edited: bool) -> MessageRecord {
        let r = remote(0, Some(body), edited, false);
        MessageRecord {
            id: r.id,
            thread_id: r.thread_id,
            sender: r.sender,
            body: r.body,
            seq: None,
            client_ts: 1_000,
            server_ts: None,
            edited,
            deleted: false,
            status: MessageStatus::Pending,
            order: display_order(None, 1_000),
        }
    }

    #[test]
    fn own_pending_send_becomes_sent_in_server_order() {
        let local = pending_local(7, false);
        let merge = merge_message(Some(&local), &remote(42, Some(7), false, false), false);
        assert_eq!(merge.record.status, MessageStatus::Sent);
        assert_eq!(merge.record.seq, Some(42));
        assert_eq!(merge.record.order, 42);
        assert_eq!(merge.record.id, local.id);
        assert!(merge.changed && !merge.superseded_local_change);
    }

    #[test]
    fn remote_state_wins_without_local_changes() {
        let mut local = pending_local(7, false);
        local.seq = Some(42);
        let merge = merge_message(Some(&local), &remote(42, Some(9), true, false), false);
        assert_eq!(merge.record.body, Some(Envelope(vec![9])));
        assert!(merge.record.edited);
    }

    #[test]
    fn pending_local_edit_stays_until_it_reaches_the_server() {
        let local = pending_local(8, true);
        let merge = merge_message(Some(&local), &remote(42, Some(9), true, false), true);
        assert_eq!(merge.record.body, Some(Envelope(vec![8])));
        assert_eq!(merge.record.seq, Some(42));
        assert!(!merge.superseded_local_change);
    }

    #[test]
    fn remote_delete_wins_over_a_pending_edit() {
        let local = pending_local(8, true);
        let merge = merge_message(Some(&local), &remote(42, None, true, true), true);
        assert!(merge.record.deleted);
        assert_eq!(merge.record.body, None);
        assert!(merge.superseded_local_change);
    }

    #[test]
    fn pending_local_delete_stays_deleted_and_is_no_conflict() {
        let mut local = pending_local(8, false);
        local.deleted = true;
        local.body = None;
        let merge = merge_message(Some(&local), &remote(42, Some(9), false, false), true);
        assert!(merge.record.deleted && merge.record.body.is_none());
        let merge = merge_message(Some(&local), &remote(42, None, false, true), true);
        assert!(merge.record.deleted && !merge.superseded_local_change);
    }

    #[test]
    fn applying_the_same_change_twice_changes_nothing() {
        let first = merge_message(None, &remote(42, Some(9), false, false), false);
        let again = merge_message(Some(&first.record), &remote(42, Some(9), false, false), false);
        assert!(!again.changed);
        assert_eq!(again.record, first.record);
    }
}
