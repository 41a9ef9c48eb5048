//! The one `info` line a sync round that fetched changes logs, so that a
//! working service does not look hung: what came in, how it ended, where
//! the cursor stands and how long it took. A round that fetched nothing
//! logs nothing. The counts are the metrics' moves over the round, so the
//! line and `/metrics` always agree.

use std::time::Duration;

use crate::metrics::Metrics;
use crate::profile::{Outcome, Reason};

/// The per-change counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundCounts {
    pub fetched: u64,
    pub synced: u64,
    /// Outcome `skipped`: stale, or a status other than active or pending.
    pub skipped: u64,
    /// Outcome `failed_validation` or `conflict`.
    pub rejected: u64,
}

impl RoundCounts {
    /// The counters as they stand now.
    pub fn read(metrics: &Metrics) -> RoundCounts {
        let (mut skipped, mut rejected) = (0, 0);
        for reason in Reason::ALL {
            let count = metrics.rejected.with_label_values(&[reason.as_str()]).get();
            match reason.outcome() {
                Outcome::Skipped => skipped += count,
                Outcome::FailedValidation | Outcome::Conflict => rejected += count,
            }
        }
        RoundCounts {
            fetched: metrics.fetched.get(),
            synced: metrics.synced.get(),
            skipped,
            rejected,
        }
    }

    fn since(&self, earlier: &RoundCounts) -> RoundCounts {
        RoundCounts {
            fetched: self.fetched.saturating_sub(earlier.fetched),
            synced: self.synced.saturating_sub(earlier.synced),
            skipped: self.skipped.saturating_sub(earlier.skipped),
            rejected: self.rejected.saturating_sub(earlier.rejected),
        }
    }
}

/// The round's line, or `None` for a round that fetched nothing.
pub fn line(round: &RoundCounts, cursor: i64, took: Duration) -> Option<String> {
    (round.fetched > 0).then(|| {
        format!(
            "round: {} changes, {} synced, {} skipped, {} rejected, cursor {cursor}, {:.2} s",
            round.fetched,
            round.synced,
            round.skipped,
            round.rejected,
            took.as_secs_f64()
        )
    })
}

/// Logs the round that began when the counters were `before` and took
/// `took`, unless it fetched nothing.
pub fn log_round(before: &RoundCounts, metrics: &Metrics, took: Duration) {
    let round = RoundCounts::read(metrics).since(before);
    if let Some(line) = line(&round, metrics.cursor.get(), took) {
        log::info!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::Counted;

    #[test]
    fn a_round_that_fetched_changes_has_one_line_and_an_idle_one_none() {
        let metrics = Metrics::new();
        metrics.fetched.inc_by(7);
        metrics.record(Counted::Synced, 1);
        let before = RoundCounts::read(&metrics);
        metrics.fetched.inc_by(1000);
        metrics.record(Counted::Synced, 640);
        metrics.record(Counted::NotSynced(Reason::Stale), 300);
        metrics.record(Counted::NotSynced(Reason::InactiveStatus), 40);
        metrics.record(Counted::NotSynced(Reason::InvalidEmail), 15);
        metrics.record(Counted::NotSynced(Reason::EmailTaken), 5);
        let round = RoundCounts::read(&metrics).since(&before);
        assert_eq!(
            line(&round, 15000, Duration::from_millis(420)).as_deref(),
            Some("round: 1000 changes, 640 synced, 340 skipped, 20 rejected, cursor 15000, 0.42 s")
        );
        let idle = RoundCounts::read(&metrics).since(&RoundCounts::read(&metrics));
        assert_eq!(line(&idle, 15000, Duration::from_millis(3)), None);
    }
}
