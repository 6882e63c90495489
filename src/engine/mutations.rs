//! Local changes to messages already written (edit, delete), the user's
//! hands on the outbox (retry, cancel, list), and the one place where outbox
//! [`Decision`]s become a store write.
//!
//! Every step reads the outbox, decides with `core::outbox`, and writes the
//! decisions in one store write that expects the rows it read unchanged
//! (`Write::Expect`). If another tab changed them meanwhile, the write is
//! refused as a whole and the step starts again from a fresh read.

use crate::core::envelope::{Aad, SealKind};
use crate::core::model::{
    display_order, validate_body, MessageId, MessageRecord, MessageStatus, Mutation, MutationState, ThreadId,
};
use crate::core::outbox::{self, Decision, Refusal};
use crate::core::sync::MutationBody;
use crate::ports::{Clock, KeyWrapper, Store, StoreError, Write};

use super::{Client, ClientEvent, Error, Message, OutboxEntry, Result};

/// How many times a step is tried again after another tab changed the rows
/// it read. Each try reads afresh, so this only bounds a pathological race.
const CONFLICT_RETRIES: usize = 16;

/// What a write of decisions changed, for telling the UI.
#[derive(Debug, Default)]
pub(super) struct Applied {
    /// Messages whose record changed, as stored now.
    pub messages: Vec<MessageRecord>,
    /// Messages whose status changed.
    pub status_changed: Vec<MessageId>,
    /// Local edits that lost to a remote delete.
    pub conflicts: Vec<(ThreadId, MessageId)>,
}

impl<S: Store, C: Clock, W: KeyWrapper> Client<S, C, W> {
    /// Writes `decisions`, computed from `snapshot`, plus `extra` writes, in
    /// one store write that holds only if the rows they touch are as read.
    /// Message records named by status decisions are read and updated;
    /// `records` are records the caller already changed (they are updated in
    /// place and written once). Returns [`StoreError::Conflict`] as an error
    /// when the outbox changed meanwhile.
    pub(super) async fn apply_decisions(
        &self,
        snapshot: &[Mutation],
        decisions: Vec<Decision>,
        records: Vec<MessageRecord>,
        extra: Vec<Write>,
    ) -> Result<Applied> {
        let mut writes = Vec::new();
        let mut expected: Vec<u64> = Vec::new();
        let mut expect = |writes: &mut Vec<Write>, id: u64| {
            if !expected.contains(&id) {
                expected.push(id);
                if let Some(row) = snapshot.iter().find(|m| m.mutation_id == id) {
                    writes.push(Write::Expect(row.clone()));
                }
            }
        };
        // Sorted by id, as a map would be; a vector costs far less wasm.
        let mut touched: Vec<MessageRecord> = Vec::with_capacity(records.len());
        for record in records {
            put_record(&mut touched, record);
        }
        // Every record the decisions name, read in one go (a push answers
        // for up to a hundred messages).
        let wanted: Vec<MessageId> = decisions
            .iter()
            .filter_map(|d| match d {
                Decision::MessageStatus { message_id, .. } | Decision::MessageSent { message_id, .. } => {
                    Some(*message_id)
                }
                Decision::Failed { body, .. } => body.message_id(),
                _ => None,
            })
            .filter(|id| touched.binary_search_by_key(id, |r| r.id).is_err())
            .collect();
        if !wanted.is_empty() {
            for record in self.store.messages_by_id(&wanted).await? {
                put_record(&mut touched, record);
            }
        }
        let mut joined = Vec::new();
        let mut applied = Applied::default();
        // Messages whose send the server refused: they are not on the server.
        let mut refused: Vec<MessageId> = snapshot
            .iter()
            .filter(|m| matches!(m.state, MutationState::Failed { .. }))
            .filter_map(|m| match m.body {
                MutationBody::Send { message_id, .. } => Some(message_id),
                _ => None,
            })
            .collect();
        // Refused sends of messages the user deleted meanwhile: withdrawn.
        let mut withdrawn = Vec::new();
        for decision in decisions {
            match decision {
                Decision::Put(row) => {
                    expect(&mut writes, row.mutation_id);
                    writes.push(Write::PutMutation(row));
                }
                Decision::Remove(id) => {
                    expect(&mut writes, id);
                    writes.push(Write::RemoveMutation(id));
                }
                Decision::Enqueue(row) => writes.push(Write::Enqueue(row)),
                Decision::MessageStatus { message_id, status } => {
                    let Some(record) = self.touch(&mut touched, message_id).await? else { continue };
                    // A message the server holds stays `sent`: a retry of a
                    // push whose ack was lost (or that a pull already showed)
                    // does not send it back to "sending".
                    if record.seq.is_none() && record.status != status {
                        record.status = status;
                        applied.status_changed.push(message_id);
                    }
                }
                Decision::MessageSent { message_id, seq, server_ts } => {
                    let Some(record) = self.touch(&mut touched, message_id).await? else { continue };
                    if record.status != MessageStatus::Sent {
                        applied.status_changed.push(message_id);
                    }
                    record.seq = Some(seq);
                    record.server_ts = Some(server_ts);
                    record.status = MessageStatus::Sent;
                    record.order = display_order(Some(seq), record.client_ts);
                }
                Decision::ShrinkBatch { max_mutations } => {
                    self.sync.borrow_mut().max_batch = Some(max_mutations)
                }
                Decision::HoldUntil(until) => {
                    let mut sync = self.sync.borrow_mut();
                    sync.hold_until = sync.hold_until.max(until);
                }
                // A send refused for good, of a message the user deleted
                // while the send was in doubt: nothing of it is on the
                // server, so it ends withdrawn (`cancelled`), not failed.
                Decision::Failed { mutation_id, body: MutationBody::Send { message_id, .. }, .. } => {
                    refused.push(message_id);
                    if let Some(record) = self.touch(&mut touched, message_id).await? {
                        if record.deleted {
                            writes.push(Write::RemoveMutation(mutation_id));
                            record.status = MessageStatus::Cancelled;
                            applied.status_changed.push(message_id);
                            withdrawn.push(message_id);
                        }
                    }
                }
                // An edit or delete of a message whose send was refused finds
                // nothing on the server: the local record already holds the
                // change (a retry sends the edited text), so the row goes.
                Decision::Failed {
                    mutation_id,
                    body: MutationBody::Edit { message_id, .. } | MutationBody::Delete { message_id, .. },
                    code,
                    ..
                } if code == "not_found" && refused.contains(&message_id) => {
                    writes.push(Write::RemoveMutation(mutation_id));
                }
                // Delete wins: an edit refused because the message was
                // deleted meanwhile is dropped, not left to retry, and the
                // message shows deleted at once (the pull confirms it).
                Decision::Failed {
                    mutation_id,
                    body: MutationBody::Edit { thread_id, message_id, .. },
                    code,
                    ..
                } if code == "edit_deleted" => {
                    writes.push(Write::RemoveMutation(mutation_id));
                    if let Some(record) = self.touch(&mut touched, message_id).await? {
                        if !record.deleted {
                            record.deleted = true;
                            record.body = None;
                            applied.conflicts.push((thread_id, message_id));
                        }
                    }
                }
                // Other failures surface through the message status (sends)
                // and the outbox listing (every kind); applied mutations
                // through the pull that follows.
                Decision::Applied { body: MutationBody::Join { thread_id, .. }, .. } => {
                    joined.push(thread_id)
                }
                Decision::Applied { .. } | Decision::Failed { .. } => {}
            }
        }
        // Whatever else waits about a withdrawn message goes too.
        for message_id in withdrawn {
            for row in snapshot.iter().filter(|m| m.body.message_id() == Some(message_id)) {
                if row.state != MutationState::Sending {
                    expect(&mut writes, row.mutation_id);
                    writes.push(Write::RemoveMutation(row.mutation_id));
                }
            }
        }
        if !joined.is_empty() {
            writes.push(self.joined_at_cursor(&joined).await?);
        }
        writes.extend(touched.iter().cloned().map(Write::PutMessage));
        writes.extend(extra);
        if !writes.is_empty() {
            self.store.write(writes).await?;
        }
        applied.messages = touched;
        Ok(applied)
    }

    /// The record of `id` for updating, read once per write.
    async fn touch<'a>(
        &self,
        touched: &'a mut Vec<MessageRecord>,
        id: MessageId,
    ) -> Result<Option<&'a mut MessageRecord>> {
        let at = match touched.binary_search_by_key(&id, |r| r.id) {
            Ok(at) => at,
            Err(at) => match self.store.message(id).await? {
                Some(record) => {
                    touched.insert(at, record);
                    at
                }
                None => return Ok(None),
            },
        };
        Ok(touched.get_mut(at))
    }

    /// Tells subscribers and listeners what a write changed, here and (by
    /// the change sink) in other tabs.
    pub(super) fn announce(&self, applied: &Applied) {
        if !applied.messages.is_empty() {
            self.changed(super::LocalChanges {
                messages: applied.messages.iter().map(|r| r.id).collect(),
                statuses: applied.status_changed.clone(),
                outbox: true,
                ..Default::default()
            });
        }
        self.announce_here(applied);
    }

    /// Tells this client's subscribers and listeners what a write changed.
    pub(super) fn announce_here(&self, applied: &Applied) {
        // By thread id, as a map would be.
        let mut by_thread: Vec<(ThreadId, Vec<Message>)> = Vec::new();
        for record in &applied.messages {
            // Views are decrypted only for someone who listens.
            let status_changed =
                applied.status_changed.contains(&record.id) && !self.listeners.borrow().is_empty();
            if !status_changed && !self.has_subscribers(record.thread_id) {
                continue;
            }
            let view = self.message_view(record);
            if status_changed {
                self.emit(&ClientEvent::Status { message: view.clone() });
            }
            match by_thread.binary_search_by_key(&record.thread_id, |(id, _)| *id) {
                Ok(at) => by_thread[at].1.push(view),
                Err(at) => by_thread.insert(at, (record.thread_id, vec![view])),
            }
        }
        for (thread_id, messages) in by_thread {
            self.notify(thread_id, messages);
        }
        for &(thread_id, message_id) in &applied.conflicts {
            self.emit(&ClientEvent::Conflict { thread_id, message_id, code: "deleted_remotely" });
        }
    }

    /// Runs a read-decide-write step under the write lock, again from a
    /// fresh read whenever another tab changed the outbox meanwhile.
    pub(super) async fn step<T>(
        &self,
        mut attempt: impl AsyncFnMut(Vec<Mutation>) -> Result<T>,
    ) -> Result<T> {
        let _guard = self.write_lock.lock().await;
        for _ in 0..CONFLICT_RETRIES {
            let outbox = self.store.outbox().await?;
            match attempt(outbox).await {
                Err(Error::Store(StoreError::Conflict)) => continue,
                other => return other,
            }
        }
        Err(StoreError::Conflict.into())
    }

    /// A message of this user that can still be changed.
    async fn own_message(&self, message_id: MessageId) -> Result<MessageRecord> {
        let record = self
            .store
            .message(message_id)
            .await?
            .ok_or_else(|| Error::NotFound { what: "message", id: message_id.to_string() })?;
        if record.sender != self.device.user_id {
            return Err(Error::NotSender);
        }
        if record.deleted || record.status == MessageStatus::Cancelled {
            return Err(Error::Deleted);
        }
        Ok(record)
    }

    /// Replaces the text of one of the user's messages. A message no push
    /// has carried yet is rewritten in its queued send (the server only ever
    /// sees the new text); otherwise an edit is queued after it. Subscribers
    /// see the new text at once.
    pub async fn edit(&self, message_id: MessageId, text: &str) -> Result<Message> {
        self.check_open()?;
        validate_body(text)?;
        let applied = self
            .step(async |outbox| {
                let mut record = self.own_message(message_id).await?;
                let thread_id = record.thread_id;
                let rewrite = outbox::queued_send(&outbox, message_id).is_some_and(outbox::is_withdrawable);
                let kind = if rewrite { SealKind::Send } else { SealKind::Edit };
                let aad = Aad { thread_id, message_id: message_id.0, sender: &self.device.user_id, kind };
                let body = self.seal(&aad, text.as_bytes())?;
                let decisions = match rewrite.then(|| outbox::edit_queued(&outbox, message_id, body.clone()))
                {
                    Some(Some(decisions)) => decisions,
                    _ => outbox::enqueue(
                        &outbox,
                        MutationBody::Edit { thread_id, message_id, body: body.clone() },
                        self.clock.now(),
                    ),
                };
                record.body = Some(body);
                record.edited = !rewrite;
                let extra = self.key_count_update(thread_id).into_iter().collect();
                self.apply_decisions(&outbox, decisions, vec![record], extra).await
            })
            .await?;
        self.announce(&applied);
        // Editing a message refused for good (say, too large) is how a user
        // fixes it: the new text goes, without a separate retry.
        if matches!(applied.messages.iter().find(|r| r.id == message_id), Some(r) if matches!(r.status, MessageStatus::Failed { recoverable: false, .. }))
        {
            // The edit is stored either way; a refused retry (say, an older
            // edit of it is in flight) leaves the message for the user to
            // retry, and is not an error of this edit.
            match self.retry(message_id).await {
                Ok(()) | Err(Error::Refused(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let record = self.store.message(message_id).await?.ok_or(Error::Deleted)?;
        Ok(self.message_view_with_body(&record, Some(text.to_owned())))
    }

    /// Deletes one of the user's messages, leaving a tombstone. A message no
    /// push has carried yet is withdrawn (never sent, status `cancelled`);
    /// otherwise a delete is queued. Delete wins over any edit.
    pub async fn delete(&self, message_id: MessageId) -> Result<Message> {
        self.check_open()?;
        let applied = self
            .step(async |outbox| {
                let mut record = self.own_message(message_id).await?;
                let thread_id = record.thread_id;
                let decisions = match outbox::delete_queued(&outbox, message_id) {
                    Some(decisions) => {
                        record.status = MessageStatus::Cancelled;
                        decisions
                    }
                    None => outbox::enqueue(
                        &outbox,
                        MutationBody::Delete { thread_id, message_id },
                        self.clock.now(),
                    ),
                };
                record.deleted = true;
                record.body = None;
                self.apply_decisions(&outbox, decisions, vec![record], Vec::new()).await
            })
            .await?;
        self.announce(&applied);
        let record = applied.messages.iter().find(|r| r.id == message_id).expect("the deleted record");
        Ok(self.message_view(record))
    }

    /// Sends a failed message (and its failed edits) again, at the tail of
    /// the outbox. Refused with `not_failed` when nothing of it has failed.
    pub async fn retry(&self, message_id: MessageId) -> Result<()> {
        self.check_open()?;
        let applied = self
            .step(async |outbox| {
                let mut decisions = outbox::retry(&outbox, message_id, self.clock.now())?;
                let mut records = Vec::new();
                // A send refused after the user edited the message (while the
                // send was in doubt) goes again with the edited text: nothing
                // of it is on the server, so the edit becomes the send.
                let record = self.store.message(message_id).await?;
                let resends = decisions.iter().any(|d| is_send_of(d, message_id));
                if let Some(mut record) = record.filter(|r| r.edited && r.seq.is_none() && resends) {
                    if let Some(body) = self.reseal_as_send(&record)? {
                        for decision in &mut decisions {
                            if let Decision::Enqueue(row) = decision {
                                if let MutationBody::Send { message_id: id, body: sent, .. } = &mut row.body {
                                    if *id == message_id {
                                        *sent = body.clone();
                                    }
                                }
                            }
                        }
                        decisions.retain(|d| !is_edit_of(d, message_id));
                        record.body = Some(body);
                        record.edited = false;
                        records.push(record);
                    }
                }
                self.apply_decisions(&outbox, decisions, records, Vec::new()).await
            })
            .await?;
        self.announce(&applied);
        Ok(())
    }

    /// The text of an edited, never-sent message sealed as a send.
    fn reseal_as_send(&self, record: &MessageRecord) -> Result<Option<crate::core::envelope::Envelope>> {
        let Some(body) = &record.body else { return Ok(None) };
        let me = &self.device.user_id;
        let edit =
            Aad { thread_id: record.thread_id, message_id: record.id.0, sender: me, kind: SealKind::Edit };
        let Ok(text) = self.keys.borrow().open(&edit, body).map(|t| t.to_vec()) else { return Ok(None) };
        let send = Aad { kind: SealKind::Send, ..edit };
        Ok(Some(self.seal(&send, &text)?))
    }

    /// Withdraws a message that is queued or failed: it is never sent and
    /// shows `cancelled`. Refused with `in_flight` while a push carries it,
    /// and with `maybe_sent` once it may have reached the server (delete it
    /// instead).
    pub async fn cancel(&self, message_id: MessageId) -> Result<()> {
        self.check_open()?;
        let applied = self
            .step(async |outbox| {
                let decisions = outbox::cancel(&outbox, message_id)?;
                self.apply_decisions(&outbox, decisions, Vec::new(), Vec::new()).await
            })
            .await?;
        self.announce(&applied);
        Ok(())
    }

    /// What waits in the outbox, in the order it goes.
    pub async fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        self.check_open()?;
        let rows = self.store.outbox().await?;
        let mut entries = Vec::with_capacity(rows.len());
        for row in rows {
            let message_id = row.body.message_id();
            let error = match &row.state {
                MutationState::Failed { code, message } => {
                    Some(super::views::ErrorInfo { code: code.clone(), message: message.clone() })
                }
                // A send waiting out a backoff shows the transient error on its message.
                _ => match (&row.body, message_id) {
                    (MutationBody::Send { .. }, Some(id)) => match self.store.message(id).await? {
                        Some(MessageRecord {
                            status: MessageStatus::Failed { code, message, .. }, ..
                        }) => Some(super::views::ErrorInfo { code, message }),
                        _ => None,
                    },
                    _ => None,
                },
            };
            entries.push(OutboxEntry {
                mutation_id: row.mutation_id,
                kind: match row.body {
                    MutationBody::CreateThread { .. } => "create_thread",
                    MutationBody::Send { .. } => "send",
                    MutationBody::Edit { .. } => "edit",
                    MutationBody::Delete { .. } => "delete",
                    MutationBody::Join { .. } => "join",
                },
                thread_id: row.body.thread_id(),
                message_id,
                state: match row.state {
                    MutationState::Queued => "queued",
                    MutationState::Sending => "sending",
                    MutationState::Failed { .. } => "failed",
                },
                attempts: row.attempts,
                next_attempt_at: row.next_attempt_at,
                error,
                created_at: row.created_at,
            });
        }
        Ok(entries)
    }
}

impl From<Refusal> for Error {
    fn from(refusal: Refusal) -> Self {
        Error::Refused(refusal)
    }
}

fn is_send_of(decision: &Decision, message_id: MessageId) -> bool {
    matches!(decision, Decision::Enqueue(row)
        if matches!(row.body, MutationBody::Send { message_id: id, .. } if id == message_id))
}

fn is_edit_of(decision: &Decision, message_id: MessageId) -> bool {
    matches!(decision, Decision::Enqueue(row)
        if matches!(row.body, MutationBody::Edit { message_id: id, .. } if id == message_id))
}

/// Adds or replaces `record` in `records`, kept sorted by id.
fn put_record(records: &mut Vec<MessageRecord>, record: MessageRecord) {
    match records.binary_search_by_key(&record.id, |r| r.id) {
        Ok(at) => records[at] = record,
        Err(at) => records.insert(at, record),
    }
}
