//! Background sync (DESIGN.md §5, docs/protocol.md): one **round** pushes
//! the due outbox in batches, one push in flight, then pulls from the stored
//! cursor until the server has no more, applying each page and its cursor in
//! one store write. The caller decides when rounds run (the browser driver
//! in `web::sync` on a local write, a poke, `online`, visibility, a timer,
//! `syncNow()`); only the sync leader among a user's tabs runs them.
//!
//! Acks turn `pending` messages into `sent` ones with the server's `seq`,
//! same id, same record: a message never appears twice. Pulled changes go
//! through `core::conflict`. A thread seen for the first time (joined by
//! invite) gets a catch-up pull of its own history (`thread=ID`, its own
//! cursor), kept in the store so a reload resumes it.

use crate::core::conflict::{merge_message, merge_thread};
use crate::core::model::{Millis, MutationState, ThreadId};
use crate::core::outbox::{self, classify, BatchLimit, ErrorClass, TransportFailure};
use crate::core::sync::{
    Change, Incoming, InvalidChange, MutationBody, PullPage, PullRequest, PushMutation, PushRequest,
    PROTOCOL_VERSION,
};
use crate::ports::{Clock, KeyWrapper, Store, StoreError, Traffic, Transport, Write};

use super::metrics::{Ratio, RoundStats, SyncStats, SyncStatus};
use super::quarantine::{Quarantine, CHANGE_READER, META_QUARANTINE};
use super::views::ErrorInfo;
use super::{Client, ClientEvent, Error, Result, SyncState};

/// The metadata key of the main pull cursor.
const META_CURSOR: &str = "cursor";
/// The metadata key of the catch-up pulls still to do: thread → [`CatchUp`].
const META_CATCHUP: &str = "catchup";
/// The metadata key of threads joined whose thread change has not been
/// pulled yet: thread → the main cursor when the join was acked.
const META_JOINED: &str = "joined";
/// Changes asked for per pull: the server's largest page.
const PULL_LIMIT: u32 = 1000;

/// A thread's own history still to pull after joining it: the changes at or
/// below `until` (the main feed was already past them when this device
/// became a member; everything after comes by the main feed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct CatchUp {
    cursor: u64,
    until: u64,
}

/// What the engine keeps in memory between rounds.
#[derive(Debug)]
pub(crate) struct SyncMemory {
    /// The server asked not to be called before this time (`Retry-After`).
    pub hold_until: Millis,
    /// A smaller batch after a request was refused as too large.
    pub max_batch: Option<usize>,
    /// Rows left `sending` by an earlier run were put back (once per client).
    pub recovered: bool,
    pub state: SyncState,
    pub error: Option<ErrorInfo>,
    /// Rounds so far (`syncStats()`).
    pub stats: SyncStats,
    /// Where sync stood when the last round ended, for `sync` events.
    pub status: SyncStatus,
    /// Conflicts met by the running round.
    pub conflicts: usize,
}

impl Default for SyncMemory {
    fn default() -> Self {
        SyncMemory {
            hold_until: 0,
            max_batch: None,
            recovered: false,
            state: SyncState::Idle,
            error: None,
            stats: SyncStats::default(),
            status: SyncStatus {
                state: SyncState::Idle,
                last_synced_at: None,
                pending: 0,
                failed: 0,
                quarantined: 0,
                cursor: 0,
            },
            conflicts: 0,
        }
    }
}

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoundReport {
    /// Push requests made.
    pub pushes: usize,
    /// Mutations carried by them.
    pub pushed: usize,
    /// Changes pulled and applied.
    pub pulled: usize,
    /// When the outbox next has something due (run a round then); `None`
    /// when nothing waits but a trigger.
    pub next_wake: Option<Millis>,
    /// Why the round stopped early (network, server, session), if it did.
    pub failure: Option<ErrorInfo>,
    /// Mutations pushed again after an earlier attempt.
    pub retries: usize,
    /// Failed requests and mutations the server refused.
    pub errors: usize,
}

enum Pushed {
    Nothing,
    Batch,
    Stopped(ErrorInfo),
}

fn is_unauthorized(failure: &TransportFailure) -> bool {
    matches!(failure, TransportFailure::Status { status: 401, .. })
}

impl<S: Store, C: Clock, W: KeyWrapper> Client<S, C, W> {
    /// Where sync stands.
    pub fn sync_state(&self) -> SyncState {
        self.sync.borrow().state
    }

    /// Moves sync to `state`, telling listeners when it changes.
    pub fn set_sync_state(&self, state: SyncState, error: Option<ErrorInfo>) {
        let status = {
            let mut sync = self.sync.borrow_mut();
            if sync.state == state && sync.error == error {
                return;
            }
            sync.state = state;
            sync.error = error.clone();
            sync.status.clone()
        };
        let SyncStatus { last_synced_at, pending, failed, quarantined, cursor, .. } = status;
        self.emit(&ClientEvent::Sync { state, error, last_synced_at, pending, failed, quarantined, cursor });
    }

    /// Where sync stands, read now: `syncStatus()`.
    pub async fn sync_status(&self) -> Result<SyncStatus> {
        self.check_open()?;
        let mut status = self.read_status().await?;
        let sync = self.sync.borrow();
        status.state = sync.state;
        status.last_synced_at = sync.status.last_synced_at;
        Ok(status)
    }

    /// The outbox, quarantine and cursor parts of [`SyncStatus`].
    async fn read_status(&self) -> Result<SyncStatus> {
        let rows = self.store.outbox().await?;
        let failed = rows.iter().filter(|m| matches!(m.state, MutationState::Failed { .. })).count();
        Ok(SyncStatus {
            state: SyncState::Idle,
            last_synced_at: None,
            pending: rows.len() - failed,
            failed,
            quarantined: self.quarantine().await?.entries.len(),
            cursor: self.cursor().await?,
        })
    }

    /// Totals and the last rounds (`syncStats()`), since the client opened.
    pub fn sync_stats(&self) -> SyncStats {
        self.sync.borrow().stats.clone()
    }

    /// This client just became the one that syncs (the tab won the leader
    /// lock): its next round first puts back rows a previous leader left
    /// `sending` when it died.
    pub fn became_leader(&self) {
        self.sync.borrow_mut().recovered = false;
    }

    /// A trigger that means "the network may be back" (online, the tab
    /// became visible, a poke, `syncNow()`): rows waiting out a backoff are
    /// due at once, though never before a server's `Retry-After`.
    pub async fn wake_outbox(&self) -> Result<()> {
        self.check_open()?;
        let now = self.clock.now();
        let hold_until = self.sync.borrow().hold_until;
        let applied = self
            .step(async |rows| {
                let decisions = outbox::retry_now(&rows, now, hold_until);
                self.apply_decisions(&rows, decisions, Vec::new(), Vec::new()).await
            })
            .await?;
        self.announce(&applied);
        Ok(())
    }

    /// Runs one sync round over `transport`; see the module docs. Rounds of
    /// one client never overlap. Errors are the local store's; the
    /// network's are in the report (and in the sync state).
    pub async fn sync_round<T: Transport>(&self, transport: &T) -> Result<RoundReport> {
        self.check_open()?;
        let _round = self.round_lock.lock().await;
        self.set_sync_state(SyncState::Syncing, None);
        let started_at = self.clock.now();
        let traffic = transport.traffic();
        self.sync.borrow_mut().conflicts = 0;
        let result = self.round(transport).await;
        if let Ok(report) = &result {
            self.record_round(report, started_at, traffic, transport.traffic());
        }
        match &result {
            Ok(report) => match &report.failure {
                None => self.set_sync_state(SyncState::Idle, None),
                Some(e) => self.set_sync_state(e.sync_state(), Some(e.clone())),
            },
            Err(e) => self.set_sync_state(
                SyncState::Error,
                Some(ErrorInfo { code: e.code().into(), message: e.to_string() }),
            ),
        }
        result
    }

    /// Keeps a finished round's figures and tells listeners (`round`).
    fn record_round(&self, report: &RoundReport, started_at: Millis, before: Traffic, after: Traffic) {
        let ended_at = self.clock.now();
        let sealed = self.keys.borrow_mut().take_sealed();
        let round = {
            let mut sync = self.sync.borrow_mut();
            let round = RoundStats {
                started_at,
                duration_ms: ended_at.saturating_sub(started_at),
                pushed: report.pushed,
                pulled: report.pulled,
                bytes_up: after.up - before.up,
                bytes_down: after.down - before.down,
                conflicts: std::mem::take(&mut sync.conflicts),
                retries: report.retries,
                errors: report.errors,
                compression_ratio: Ratio::of(sealed.content, sealed.plaintext),
            };
            sync.stats.record(&round, report.failure.is_some(), sealed.plaintext, sealed.content);
            if report.failure.is_none() {
                sync.status.last_synced_at = Some(ended_at);
            }
            round
        };
        self.emit(&ClientEvent::Round { round });
    }

    async fn round<T: Transport>(&self, transport: &T) -> Result<RoundReport> {
        let mut report = RoundReport::default();
        // The server asked for quiet (`Retry-After`): not a request before then.
        let hold_until = self.sync.borrow().hold_until;
        if self.clock.now() < hold_until {
            report.next_wake = Some(hold_until);
            report.failure = Some(ErrorInfo {
                code: "rate_limited".into(),
                message: format!("the server asked to wait until {hold_until} (Retry-After)"),
            });
            return Ok(report);
        }
        if !self.sync.borrow().recovered {
            let now = self.clock.now();
            let applied = self
                .step(async |rows| {
                    let decisions = outbox::recover(&rows, now);
                    self.apply_decisions(&rows, decisions, Vec::new(), Vec::new()).await
                })
                .await?;
            self.announce(&applied);
            self.sync.borrow_mut().recovered = true;
        }
        loop {
            match self.push_once(transport, &mut report).await? {
                Pushed::Nothing => break,
                Pushed::Batch => {}
                Pushed::Stopped(why) => {
                    report.failure = Some(why);
                    break;
                }
            }
        }
        if report.failure.is_none() {
            report.failure = self.pull_all(transport, &mut report).await?;
            report.errors += usize::from(report.failure.is_some());
        }
        let rows = self.store.outbox().await?;
        let mut sync = self.sync.borrow_mut();
        sync.status.failed = rows.iter().filter(|m| matches!(m.state, MutationState::Failed { .. })).count();
        sync.status.pending = rows.len() - sync.status.failed;
        report.next_wake = outbox::next_wake(&rows).map(|at| at.max(sync.hold_until));
        Ok(report)
    }

    /// Pushes the next due batch, if any, and applies the answer.
    async fn push_once<T: Transport>(&self, transport: &T, report: &mut RoundReport) -> Result<Pushed> {
        let now = self.clock.now();
        let (hold_until, max_batch) = {
            let sync = self.sync.borrow();
            (sync.hold_until, sync.max_batch)
        };
        if now < hold_until {
            return Ok(Pushed::Nothing);
        }
        let limit = BatchLimit {
            mutations: max_batch
                .unwrap_or(BatchLimit::DEFAULT.mutations)
                .clamp(1, BatchLimit::DEFAULT.mutations),
            ..BatchLimit::DEFAULT
        };
        let prepared = self
            .step(async |rows| {
                let batch = outbox::next_batch(&rows, now, limit);
                if batch.is_empty() {
                    return Ok(None);
                }
                let rows_sent: Vec<_> =
                    batch.iter().filter_map(|id| rows.iter().find(|m| m.mutation_id == *id)).collect();
                let retries = rows_sent.iter().filter(|m| m.attempts > 0).count();
                let mutations: Vec<PushMutation> = rows_sent
                    .iter()
                    .map(|m| PushMutation { mutation_id: m.mutation_id, body: m.body.clone() })
                    .collect();
                // The rows are `sending` (and counted) before the request
                // leaves: if this tab dies now, the next leader asks again
                // under the same ids.
                let decisions = outbox::on_sent(&rows, &batch);
                let applied = self.apply_decisions(&rows, decisions, Vec::new(), Vec::new()).await?;
                Ok(Some((batch, mutations, applied, retries)))
            })
            .await?;
        let Some((batch, mutations, applied, retries)) = prepared else { return Ok(Pushed::Nothing) };
        report.retries += retries;
        self.announce(&applied);

        let request = PushRequest { protocol: PROTOCOL_VERSION, device_id: self.device_id(), mutations };
        let result = transport.push(&request).await;
        report.pushes += 1;
        report.pushed += batch.len();
        report.errors += result.as_ref().map_or(1, |response| response.rejected.len());

        let now = self.clock.now();
        let jitter = u64::from_le_bytes(self.random_bytes());
        let applied = self
            .step(async |rows| {
                let decisions = match &result {
                    Ok(response) => outbox::on_push_result(&rows, &batch, response, now, jitter),
                    Err(failure) if is_unauthorized(failure) => outbox::on_unauthorized(&rows, &batch, now),
                    Err(failure) => outbox::on_transport_failure(&rows, &batch, failure, now, jitter),
                };
                self.apply_decisions(&rows, decisions, Vec::new(), Vec::new()).await
            })
            .await?;
        self.announce(&applied);
        match result {
            Ok(_) => {
                self.sync.borrow_mut().max_batch = None;
                Ok(Pushed::Batch)
            }
            Err(failure) => match classify(&failure) {
                _ if is_unauthorized(&failure) => Ok(Pushed::Stopped(ErrorInfo::from(&failure))),
                // The rows wait out their backoff; the round ends here.
                ErrorClass::Transient { .. } => Ok(Pushed::Stopped(ErrorInfo::from(&failure))),
                // One mutation failed for good, or the batch is split: go on.
                ErrorClass::Permanent { .. } => Ok(Pushed::Batch),
            },
        }
    }

    /// Pulls the main feed, then the catch-up feeds of newly joined threads,
    /// until the server has no more. Returns why it stopped early, if it did.
    async fn pull_all<T: Transport>(
        &self,
        transport: &T,
        report: &mut RoundReport,
    ) -> Result<Option<ErrorInfo>> {
        loop {
            let cursor = self.cursor().await?;
            let request = PullRequest { cursor, limit: PULL_LIMIT, thread: None };
            let response = match transport.pull(&request).await {
                Ok(response) => response,
                Err(failure) => return Ok(Some(self.pull_failed(&failure))),
            };
            if let Err(why) = check_page(&request, &response) {
                return Ok(Some(ErrorInfo { code: "protocol".into(), message: why }));
            }
            report.pulled += response.changes.len();
            self.apply_page(&response, Feed::Main).await?;
            if !response.has_more {
                break;
            }
        }
        let catchup = self.catchup().await?;
        for (thread, CatchUp { mut cursor, until }) in catchup {
            loop {
                let request = PullRequest { cursor, limit: PULL_LIMIT, thread: Some(thread) };
                let response = match transport.pull(&request).await {
                    Ok(response) => response,
                    // Not (or no longer) a member: nothing to catch up on.
                    Err(TransportFailure::Status { status: 404, .. }) => {
                        self.apply_page(&PullPage::empty(cursor), Feed::CatchUp(thread)).await?;
                        break;
                    }
                    Err(failure) => return Ok(Some(self.pull_failed(&failure))),
                };
                if let Err(why) = check_page(&request, &response) {
                    return Ok(Some(ErrorInfo { code: "protocol".into(), message: why }));
                }
                report.pulled += response.changes.len();
                let done = !response.has_more || response.cursor >= until;
                let page = PullPage { has_more: !done, ..response };
                self.apply_page(&page, Feed::CatchUp(thread)).await?;
                if done {
                    break;
                }
                cursor = page.cursor;
            }
        }
        Ok(None)
    }

    /// A failed pull: remembers a `Retry-After` (it holds pushes too: the
    /// limit is the user's) and says why the round stopped.
    fn pull_failed(&self, failure: &TransportFailure) -> ErrorInfo {
        if let TransportFailure::Status { retry_after: Some(wait), .. } = failure {
            let until = self.clock.now().saturating_add(*wait);
            let mut sync = self.sync.borrow_mut();
            sync.hold_until = sync.hold_until.max(until);
        }
        ErrorInfo::from(failure)
    }

    async fn cursor(&self) -> Result<u64> {
        match self.store.meta(META_CURSOR).await? {
            None => Ok(0),
            Some(text) => text.parse().map_err(|_| corrupt("cursor", &text)),
        }
    }

    async fn catchup(&self) -> Result<ThreadMap<CatchUp>> {
        self.meta_map(META_CATCHUP).await
    }

    async fn meta_map<V: serde::de::DeserializeOwned>(&self, key: &str) -> Result<ThreadMap<V>> {
        match self.store.meta(key).await? {
            None => Ok(ThreadMap::default()),
            Some(text) => serde_json::from_str(&text).map_err(|_| corrupt(key, &text)),
        }
    }

    /// The write that notes, for threads whose join was just acked, where
    /// the main feed stood: their catch-up pull stops there.
    pub(super) async fn joined_at_cursor(&self, threads: &[ThreadId]) -> Result<Write> {
        let cursor = self.cursor().await?;
        let mut joined: ThreadMap<u64> = self.meta_map(META_JOINED).await?;
        for &thread in threads {
            joined.or_insert(thread, cursor);
        }
        let value = serde_json::to_string(&joined).expect("joined map serializes");
        Ok(Write::PutMeta { key: META_JOINED.into(), value })
    }

    /// Applies a page of pulled changes and moves its cursor, in one store
    /// write: a reload never skips or half-applies a page. Changes that do
    /// not decode or break a rule of the page are set aside in the
    /// quarantine (`quarantine.rs`) in the same write. For a catch-up page,
    /// `feed` names the catch-up whose cursor moves (and which ends when the
    /// page is the last); [`Feed::Retry`] applies changes read again from
    /// the quarantine and moves no cursor.
    pub async fn apply_page(&self, page: &PullPage, feed: Feed) -> Result<()> {
        self.check_open()?;
        let me = self.device.user_id.clone();
        let reader = self.reader.get();
        let mut conflicts = Vec::new();
        let mut status_changed = Vec::new();
        let mut threads_changed = false;
        let mut set_aside = 0;
        let mut quarantined = None;
        let mut applied = self
            .step(async |rows| {
                conflicts.clear();
                status_changed.clear();
                threads_changed = false;
                set_aside = 0;
                // Messages with a local change still to go, and own sends
                // still in the outbox (their ack may have been lost).
                let mut changing = Vec::new();
                let mut sending = Vec::new();
                for row in &rows {
                    match (&row.body, &row.state) {
                        (_, MutationState::Failed { .. }) => {}
                        (
                            MutationBody::Edit { message_id, .. } | MutationBody::Delete { message_id, .. },
                            _,
                        ) => {
                            changing.push(*message_id);
                        }
                        (MutationBody::Send { message_id, .. }, _) => {
                            sending.push(*message_id);
                        }
                        _ => {}
                    }
                }
                let mut catchup = self.catchup().await?;
                let mut joined: ThreadMap<u64> = self.meta_map(META_JOINED).await?;
                let joined_before = joined.len();
                let mut quarantine = self.quarantine().await?;
                let quarantine_before = quarantine.clone();
                if feed == Feed::Retry {
                    // Read again below; what still fails goes back in.
                    quarantine.entries.retain(|e| e.reader >= reader);
                }
                // For the main feed, the stored cursor is where this page starts.
                let from = match feed {
                    Feed::Main => self.cursor().await?,
                    Feed::CatchUp(thread) => catchup.get_mut(&thread).map_or(0, |c| c.cursor),
                    Feed::Retry => 0,
                };
                let (changes, aside) = self.sort_out(page, from, feed);
                set_aside = aside.len();
                let now = self.clock.now();
                for change in aside {
                    quarantine.add(change, now, reader);
                }
                let known: Vec<ThreadId> = if changes.iter().any(|c| matches!(c, Change::Thread { .. })) {
                    self.store.threads().await?.into_iter().map(|t| t.id).collect()
                } else {
                    Vec::new()
                };
                let mut writes = Vec::new();
                let mut records = Vec::new();
                let mut decisions = Vec::new();
                for change in &changes {
                    quarantine.supersede(&change.subject());
                    match change {
                        Change::Thread { thread: remote, .. } => {
                            if feed == Feed::Main && !known.contains(&remote.id) {
                                // New to this device: its changes after `until` come
                                // by the main feed (the server filters by membership
                                // at pull time); those before need a pull of its own.
                                let until = joined.remove(&remote.id).unwrap_or(from).min(from);
                                if until > 0 {
                                    catchup.or_insert(remote.id, CatchUp { cursor: 0, until });
                                }
                            }
                            writes.push(Write::PutThread(merge_thread(remote)));
                            threads_changed = true;
                        }
                        Change::Message { message: remote, .. } => {
                            let pending = changing.contains(&remote.id);
                            let local = if pending || sending.contains(&remote.id) {
                                self.store.message(remote.id).await?
                            } else {
                                None
                            };
                            let merge = merge_message(local.as_ref(), remote, pending);
                            if merge.superseded_local_change {
                                conflicts.push((remote.thread_id, remote.id));
                                // Moot edits go (delete wins either way); one in
                                // flight is answered `edit_deleted` and dropped then.
                                decisions.extend(
                                    rows.iter()
                                        .filter(|m| {
                                            m.body.message_id() == Some(remote.id)
                                                && matches!(m.body, MutationBody::Edit { .. })
                                                && m.state != MutationState::Sending
                                        })
                                        .map(|m| outbox::Decision::Remove(m.mutation_id)),
                                );
                            }
                            if local.as_ref().is_some_and(|l| l.status != merge.record.status)
                                && remote.sender == me
                            {
                                status_changed.push(remote.id);
                            }
                            if merge.changed {
                                records.push(merge.record);
                            }
                        }
                    }
                }
                match feed {
                    Feed::Main => writes
                        .push(Write::PutMeta { key: META_CURSOR.into(), value: page.cursor.to_string() }),
                    Feed::CatchUp(thread) if page.has_more => {
                        if let Some(entry) = catchup.get_mut(&thread) {
                            entry.cursor = page.cursor;
                        }
                    }
                    Feed::CatchUp(thread) => {
                        catchup.remove(&thread);
                    }
                    Feed::Retry => {}
                }
                if quarantine != quarantine_before {
                    writes.push(Write::PutMeta { key: META_QUARANTINE.into(), value: quarantine.to_json() });
                }
                quarantined = Some(quarantine.entries.len());
                let value = serde_json::to_string(&catchup).expect("catch-up map serializes");
                writes.push(Write::PutMeta { key: META_CATCHUP.into(), value });
                if joined.len() != joined_before {
                    let value = serde_json::to_string(&joined).expect("joined map serializes");
                    writes.push(Write::PutMeta { key: META_JOINED.into(), value });
                }
                self.apply_decisions(&rows, decisions, records, writes).await
            })
            .await?;
        applied.status_changed.extend(status_changed);
        self.announce(&applied);
        {
            let mut sync = self.sync.borrow_mut();
            sync.conflicts += conflicts.len();
            if let Some(count) = quarantined {
                sync.status.quarantined = count;
            }
            if feed == Feed::Main {
                sync.status.cursor = page.cursor;
            }
        }
        for (thread_id, message_id) in conflicts {
            self.emit(&ClientEvent::Conflict { thread_id, message_id, code: "deleted_remotely" });
        }
        if threads_changed {
            self.changed(super::LocalChanges { threads: true, ..Default::default() });
            self.emit(&ClientEvent::Threads);
        }
        if set_aside > 0 {
            self.emit(&ClientEvent::Quarantined { count: set_aside });
        }
        Ok(())
    }

    /// Splits a page into the changes to apply and those to set aside: the
    /// ones that did not decode, and the ones that break a rule of their
    /// page (a seq not after the one before it or past the page's cursor, a
    /// catch-up change of another thread, an envelope too short to be one).
    fn sort_out(&self, page: &PullPage, from: u64, feed: Feed) -> (Vec<Change>, Vec<InvalidChange>) {
        let refused_kind = self.refused_change_kind.get();
        let mut valid = Vec::new();
        let mut aside = Vec::new();
        let mut last = from;
        for incoming in &page.changes {
            let (change, raw) = match incoming {
                Incoming::Valid(change, raw) => (change, raw),
                Incoming::Invalid(invalid) => {
                    aside.push(invalid.clone());
                    continue;
                }
            };
            let seq = change.seq();
            let envelope = match change {
                Change::Thread { thread, .. } => Some(&thread.title),
                Change::Message { message, .. } => message.body.as_ref(),
            };
            let reason = if refused_kind == Some(change.kind()) {
                Some(format!("unknown variant `{}` (refused by this build for a test)", change.kind()))
            } else if feed != Feed::Retry && (seq <= last || seq > page.cursor) {
                Some(format!("seq {seq} out of order (after {last}, page up to {})", page.cursor))
            } else if matches!(feed, Feed::CatchUp(t) if change.thread_id() != t) {
                Some("another thread's change in a thread pull".into())
            } else if let Some(Err(e)) = envelope.map(|e| e.check_framing()) {
                Some(format!("not an envelope: {e}"))
            } else {
                None
            };
            match reason {
                Some(reason) => aside.push(InvalidChange::refused(change, raw, reason)),
                None => {
                    last = seq;
                    valid.push(change.clone());
                }
            }
        }
        (valid, aside)
    }

    /// The pulled changes set aside, oldest first.
    pub async fn quarantine(&self) -> Result<Quarantine> {
        match self.store.meta(META_QUARANTINE).await? {
            None => Ok(Quarantine::default()),
            Some(text) => Quarantine::from_json(&text).ok_or_else(|| corrupt(META_QUARANTINE, &text)),
        }
    }

    /// Reads again the changes an older build set aside (run at open): those
    /// this build reads are applied, the rest stay.
    pub(super) async fn retry_quarantine(&self) -> Result<()> {
        let reader = self.reader.get();
        let quarantine = self.quarantine().await?;
        let changes: Vec<Incoming> = quarantine
            .entries
            .iter()
            .filter(|e| e.reader < reader)
            .filter_map(|e| serde_json::value::RawValue::from_string(e.raw.clone()).ok())
            .map(InvalidChange::read)
            .collect();
        if changes.is_empty() {
            return Ok(());
        }
        let page = PullPage { changes, ..PullPage::empty(0) };
        self.apply_page(&page, Feed::Retry).await
    }

    /// Makes this client refuse changes of `kind` as if it were an older
    /// build that did not know them (its quarantine entries are marked with
    /// the reader before this build's): for the test that a later build
    /// applies them.
    #[doc(hidden)]
    pub fn act_as_older_reader(&self, kind: &'static str) {
        self.refused_change_kind.set(Some(kind));
        self.reader.set(CHANGE_READER - 1);
    }
}

/// Which feed a page of changes comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The main feed: the page moves the main cursor.
    Main,
    /// The catch-up feed of a thread joined: the page moves its cursor.
    CatchUp(ThreadId),
    /// Changes read again from the quarantine: no cursor moves.
    Retry,
}

/// Refuses a page that would make the cursor go back or loop: a broken or
/// hostile server must not make the client skip or re-apply history
/// forever. Its changes are checked one by one when applied
/// ([`Client::sort_out`]).
fn check_page(request: &PullRequest, page: &PullPage) -> std::result::Result<(), String> {
    if page.protocol != PROTOCOL_VERSION {
        return Err(format!("protocol version {} instead of {PROTOCOL_VERSION}", page.protocol));
    }
    if page.cursor < request.cursor || (page.has_more && page.cursor == request.cursor) {
        return Err(format!("the pull cursor went from {} to {}", request.cursor, page.cursor));
    }
    Ok(())
}

fn corrupt(what: &str, text: &str) -> Error {
    Error::Store(StoreError::Corrupt { store: "meta", reason: format!("{what}: \"{text}\"") })
}

impl PullPage {
    /// A page with nothing in it, at `cursor`.
    fn empty(cursor: u64) -> Self {
        PullPage { protocol: PROTOCOL_VERSION, changes: Vec::new(), cursor, has_more: false }
    }
}

/// A small map from thread to value, sorted by thread, stored as a JSON
/// object (as a `BTreeMap` would be); a vector costs far less wasm than a
/// B-tree per value type.
#[derive(Debug)]
struct ThreadMap<V>(Vec<(ThreadId, V)>);

impl<V> Default for ThreadMap<V> {
    fn default() -> Self {
        ThreadMap(Vec::new())
    }
}

impl<V> ThreadMap<V> {
    fn find(&self, thread: &ThreadId) -> std::result::Result<usize, usize> {
        self.0.binary_search_by_key(thread, |(t, _)| *t)
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn get_mut(&mut self, thread: &ThreadId) -> Option<&mut V> {
        self.find(thread).ok().map(|at| &mut self.0[at].1)
    }

    fn remove(&mut self, thread: &ThreadId) -> Option<V> {
        self.find(thread).ok().map(|at| self.0.remove(at).1)
    }

    fn or_insert(&mut self, thread: ThreadId, value: V) {
        if let Err(at) = self.find(&thread) {
            self.0.insert(at, (thread, value));
        }
    }
}

impl<V> IntoIterator for ThreadMap<V> {
    type Item = (ThreadId, V);
    type IntoIter = std::vec::IntoIter<(ThreadId, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<V: serde::Serialize> serde::Serialize for ThreadMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(t, v)| (t, v)))
    }
}

impl<'de, V: serde::Deserialize<'de>> serde::Deserialize<'de> for ThreadMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Entries<V>(std::marker::PhantomData<V>);
        impl<'de, V: serde::Deserialize<'de>> serde::de::Visitor<'de> for Entries<V> {
            type Value = ThreadMap<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of thread ids")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Self::Value, A::Error> {
                let mut out = ThreadMap::default();
                while let Some((thread, value)) = map.next_entry::<ThreadId, V>()? {
                    // The last of duplicate keys wins, as in a BTreeMap.
                    match out.find(&thread) {
                        Ok(at) => out.0[at].1 = value,
                        Err(at) => out.0.insert(at, (thread, value)),
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(Entries(std::marker::PhantomData))
    }
}
