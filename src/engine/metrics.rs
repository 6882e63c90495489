//! Sync metrics (issue 16): what each round did, and totals, kept in memory
//! only (a reload starts them again). `Client::sync_round` fills them; the
//! UI reads them as the `round` event, `syncStats()` and `syncStatus()`.

use serde::{Serialize, Serializer};

use crate::core::model::Millis;

use super::views::SyncState;

/// Rounds kept for `syncStats()`.
pub const ROUNDS_KEPT: usize = 100;

/// What one sync round did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoundStats {
    /// When it started.
    pub started_at: Millis,
    /// How long it ran, by the client's clock.
    pub duration_ms: u64,
    /// Mutations pushed (a batch sent twice counts twice).
    pub pushed: usize,
    /// Changes pulled (quarantined ones included).
    pub pulled: usize,
    /// Request body bytes sent.
    pub bytes_up: u64,
    /// Response body bytes received.
    pub bytes_down: u64,
    /// Pulled changes that won over a local one (`conflict` events).
    pub conflicts: usize,
    /// Mutations pushed again after an earlier attempt.
    pub retries: usize,
    /// Requests that failed and mutations the server refused.
    pub errors: usize,
    /// Content bytes over plaintext bytes of the bodies and titles this
    /// client sealed since its previous round (below 1 when compression
    /// helped); `None` when it sealed nothing.
    pub compression_ratio: Option<Ratio>,
}

/// A ratio in thousandths (so the stats stay `Eq`), written as a JSON
/// number (`0.062`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio(pub u64);

impl Ratio {
    /// `part / whole`, rounded to thousandths; `None` for `whole = 0`.
    pub fn of(part: u64, whole: u64) -> Option<Ratio> {
        (whole > 0).then(|| Ratio((part.saturating_mul(1000) + whole / 2) / whole))
    }
}

impl Serialize for Ratio {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Shortest form: 62 / 1000 is written 0.062.
        s.serialize_f64(self.0 as f64 / 1000.0)
    }
}

/// `syncStats()`: totals and the last [`ROUNDS_KEPT`] rounds, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStats {
    /// Rounds run since the client opened.
    pub round_count: u64,
    /// Of them, rounds that ended with a failure.
    pub failed_rounds: u64,
    /// Every round summed, in the shape of one: `startedAt` is the first
    /// round's start, `durationMs` and the counts are sums, and
    /// `compressionRatio` is over everything sealed.
    pub totals: RoundStats,
    /// The latest rounds.
    pub rounds: Vec<RoundStats>,
    /// Sealed bytes behind `totals.compressionRatio`.
    #[serde(skip)]
    sealed: (u64, u64),
}

impl SyncStats {
    /// Adds a finished round that sealed `content` bytes of `plaintext`.
    pub fn record(&mut self, round: &RoundStats, failed: bool, plaintext: u64, content: u64) {
        if self.round_count == 0 {
            self.totals.started_at = round.started_at;
        }
        self.round_count += 1;
        self.failed_rounds += u64::from(failed);
        self.sealed = (self.sealed.0 + plaintext, self.sealed.1 + content);
        let t = &mut self.totals;
        t.duration_ms += round.duration_ms;
        t.pushed += round.pushed;
        t.pulled += round.pulled;
        t.bytes_up += round.bytes_up;
        t.bytes_down += round.bytes_down;
        t.conflicts += round.conflicts;
        t.retries += round.retries;
        t.errors += round.errors;
        t.compression_ratio = Ratio::of(self.sealed.1, self.sealed.0);
        if self.rounds.len() == ROUNDS_KEPT {
            self.rounds.remove(0);
        }
        self.rounds.push(round.clone());
    }
}

/// `syncStatus()`: where sync stands, in one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatus {
    /// As `syncState`.
    pub state: SyncState,
    /// When a round last finished without failure (since the client opened).
    pub last_synced_at: Option<Millis>,
    /// Outbox rows on their way (queued or sending).
    pub pending: usize,
    /// Outbox rows refused for good, waiting for retry or cancel.
    pub failed: usize,
    /// Pulled changes set aside (`quarantine()`).
    pub quarantined: usize,
    /// The main pull cursor: the server seq this device has pulled up to.
    pub cursor: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_are_json_numbers_in_thousandths() {
        let json = |r: Option<Ratio>| serde_json::to_string(&r).unwrap();
        assert_eq!(json(Ratio::of(62, 1000)), "0.062");
        assert_eq!(json(Ratio::of(1, 3)), "0.333");
        assert_eq!(json(Ratio::of(2, 3)), "0.667");
        assert_eq!(json(Ratio::of(5, 5)), "1.0");
        assert_eq!(json(Ratio::of(7, 2)), "3.5");
        assert_eq!(json(Ratio::of(1, 0)), "null");
        let value: f64 = serde_json::from_str(&json(Ratio::of(3749, 61440))).unwrap();
        assert_eq!(value, 0.061);
    }

    #[test]
    fn stats_keep_the_last_hundred_rounds_and_sum_them_all() {
        let mut stats = SyncStats::default();
        for n in 0..150 {
            let round = RoundStats {
                started_at: n,
                pushed: 2,
                errors: usize::from(n % 10 == 0),
                ..Default::default()
            };
            stats.record(&round, n % 10 == 0, 100, if n < 75 { 100 } else { 0 });
        }
        assert_eq!(stats.rounds.len(), ROUNDS_KEPT);
        assert_eq!(stats.rounds.first().unwrap().started_at, 50);
        assert_eq!(stats.rounds.last().unwrap().started_at, 149);
        assert_eq!((stats.round_count, stats.failed_rounds), (150, 15));
        assert_eq!((stats.totals.started_at, stats.totals.pushed, stats.totals.errors), (0, 300, 15));
        assert_eq!(stats.totals.compression_ratio, Some(Ratio(500)), "half the bytes sealed to nothing");
    }
}
