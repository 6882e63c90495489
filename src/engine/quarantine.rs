//! Pulled changes this build cannot read, set aside instead of stalling
//! sync (docs/protocol.md §5): a change of an unknown type (from a newer
//! server), a malformed field, a body that is not an envelope, a seq
//! outside its page or a catch-up change of another thread is kept here
//! with its text and the reason, the cursor moves past it, and the rest of
//! the page is applied as usual. Page-level faults that threaten the cursor
//! (it going back or looping, another protocol version) still fail the
//! round: skipping them could skip history.
//!
//! Entries are re-read when a build with a newer [`CHANGE_READER`] opens
//! the database, and dropped once a later valid change of the same thread
//! or message arrives (the feed carries current states, so that one
//! supersedes it). The list is one metadata record, bounded in entries and
//! bytes: beyond the bound the oldest go, and are counted.

use serde::{Deserialize, Serialize};

use crate::core::model::Millis;
use crate::core::sync::InvalidChange;

/// The metadata key of the quarantine.
pub(super) const META_QUARANTINE: &str = "quarantine";
/// Entries kept; the oldest beyond this are dropped and counted.
pub const MAX_QUARANTINED: usize = 200;
/// A change's text is kept up to this many bytes (a change that long is
/// far beyond any the server sends).
const MAX_RAW: usize = 16 * 1024;
/// The version of this build's change reader. Raise it when the engine
/// learns to read changes an older build refused: entries set aside by an
/// older reader are read again when the newer build opens the database.
pub const CHANGE_READER: u32 = 1;

/// A pulled change set aside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct QuarantinedChange {
    /// Its seq, when that much could be read.
    pub seq: Option<u64>,
    /// The thread or message it is about, when that much could be read.
    pub subject: Option<String>,
    /// Why it was set aside.
    pub reason: String,
    /// Its JSON text, as it came (cut at 16 KiB).
    pub raw: String,
    /// When it was set aside.
    pub received_at: Millis,
    /// The [`CHANGE_READER`] that refused it.
    pub reader: u32,
}

/// The changes set aside, oldest first, and how many were dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quarantine {
    /// The changes kept.
    pub entries: Vec<QuarantinedChange>,
    /// Changes dropped to keep the list within [`MAX_QUARANTINED`].
    pub dropped: u64,
}

/// How the quarantine is stored: `[dropped, [[seq, subject, reason, raw,
/// received_at, reader], ...]]`. Tuples, because a derived reader of a
/// struct with named fields costs about 3 KiB of wasm each.
#[derive(Serialize, Deserialize)]
struct Stored(u64, Vec<StoredEntry>);
type StoredEntry = (Option<u64>, Option<String>, String, String, Millis, u32);

impl Quarantine {
    /// Reads the stored form (see [`Stored`]).
    pub(super) fn from_json(text: &str) -> Option<Self> {
        let Stored(dropped, entries) = serde_json::from_str(text).ok()?;
        let entries = entries
            .into_iter()
            .map(|(seq, subject, reason, raw, received_at, reader)| QuarantinedChange {
                seq,
                subject,
                reason,
                raw,
                received_at,
                reader,
            })
            .collect();
        Some(Quarantine { entries, dropped })
    }

    /// The stored form (see [`Stored`]).
    pub(super) fn to_json(&self) -> String {
        let entries = self
            .entries
            .iter()
            .map(|e| (e.seq, e.subject.clone(), e.reason.clone(), e.raw.clone(), e.received_at, e.reader))
            .collect();
        serde_json::to_string(&Stored(self.dropped, entries)).expect("the quarantine serializes")
    }

    /// Sets `change` aside; the same change seen again (a page pulled twice
    /// after a crash) is kept once.
    pub fn add(&mut self, change: InvalidChange, received_at: Millis, reader: u32) {
        let mut raw = change.raw;
        if raw.len() > MAX_RAW {
            let mut end = MAX_RAW;
            while !raw.is_char_boundary(end) {
                end -= 1;
            }
            raw.truncate(end);
        }
        if self.entries.iter().any(|e| e.seq == change.seq && e.raw == raw) {
            return;
        }
        self.entries.push(QuarantinedChange {
            seq: change.seq,
            subject: change.subject,
            reason: change.reason,
            raw,
            received_at,
            reader,
        });
        if self.entries.len() > MAX_QUARANTINED {
            let excess = self.entries.len() - MAX_QUARANTINED;
            self.entries.drain(..excess);
            self.dropped += excess as u64;
        }
    }

    /// Drops the entries about `subject`: a valid change of it came later.
    /// Says whether any went.
    pub fn supersede(&mut self, subject: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| !e.subject.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(subject)));
        self.entries.len() != before
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(seq: u64, subject: &str) -> InvalidChange {
        InvalidChange {
            seq: Some(seq),
            subject: Some(subject.into()),
            raw: format!("{{\"seq\":{seq}}}"),
            reason: "unknown variant".into(),
        }
    }

    #[test]
    fn keeps_a_change_once_and_bounds_the_list() {
        let mut q = Quarantine::default();
        q.add(invalid(1, "a"), 10, 1);
        q.add(invalid(1, "a"), 11, 1);
        assert_eq!(q.entries.len(), 1);
        for seq in 2..=(MAX_QUARANTINED as u64 + 5) {
            q.add(invalid(seq, "b"), 12, 1);
        }
        assert_eq!(q.entries.len(), MAX_QUARANTINED);
        assert_eq!(q.dropped, 5);
        assert_eq!(q.entries[0].seq, Some(6), "the oldest went first");
    }

    #[test]
    fn a_later_change_of_the_same_subject_supersedes() {
        let mut q = Quarantine::default();
        q.add(invalid(1, "ABC"), 10, 1);
        q.add(invalid(2, "def"), 10, 1);
        assert!(q.supersede("abc"));
        assert!(!q.supersede("abc"));
        assert_eq!(q.entries.len(), 1);
    }

    #[test]
    fn the_stored_form_reads_back() {
        let mut q = Quarantine::default();
        q.add(invalid(1, "a"), 10, 1);
        q.add(InvalidChange { seq: None, subject: None, raw: "[".into(), reason: "eof".into() }, 11, 1);
        q.dropped = 3;
        assert_eq!(Quarantine::from_json(&q.to_json()), Some(q));
        assert_eq!(Quarantine::from_json("{\"entries\":[]}"), None);
    }

    #[test]
    fn long_texts_are_cut_on_a_character_boundary() {
        let mut q = Quarantine::default();
        let mut change = invalid(1, "a");
        change.raw = "é".repeat(MAX_RAW);
        q.add(change, 10, 1);
        assert!(q.entries[0].raw.len() <= MAX_RAW);
    }
}
