//! The Prometheus series the target exports, in one registry owned here.
//!
//! The first four names are the original service's and must not change. The
//! per-change counters are only ever moved together, through
//! [`Metrics::record`], so that when the service is idle
//! `profiles_fetched_total = profiles_synced_total + profiles_skipped_total`.

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

use crate::profile::Reason;

pub struct Metrics {
    registry: Registry,
    pub fetched: IntCounter,
    pub synced: IntCounter,
    pub skipped: IntCounter,
    pub rejected: IntCounterVec,
    /// `rejected`'s counter of each reason, in the order of [`Reason::ALL`]:
    /// looked up once, not per change.
    rejected_of: Vec<IntCounter>,
    pub batch_duration: Histogram,
    pub fetch_errors: IntCounter,
    pub db_errors: IntCounter,
    pub last_success: Gauge,
    pub cursor: IntGauge,
    pub source_lag: IntGauge,
    pub queue_depth: IntGauge,
}

/// How one change ended, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Synced,
    NotSynced(Reason),
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric names are valid");
            registry
                .register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        };
        let int_gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric names are valid");
            registry
                .register(Box::new(g.clone()))
                .expect("metric names are unique");
            g
        };
        let fetched = counter(
            "profiles_fetched_total",
            "Profile changes received from the source.",
        );
        let synced = counter(
            "profiles_synced_total",
            "Profile changes written to the users table.",
        );
        let skipped = counter(
            "profiles_skipped_total",
            "Profile changes not synced, whatever the reason (see profiles_rejected_total).",
        );
        let fetch_errors = counter(
            "sync_fetch_errors_total",
            "Fetches from the source that failed.",
        );
        let db_errors = counter(
            "sync_db_errors_total",
            "PostgreSQL operations that failed (each attempt).",
        );
        let cursor = int_gauge(
            "sync_cursor",
            "Source sequence number up to which every change is stored.",
        );
        let source_lag = int_gauge(
            "sync_source_lag",
            "Source head cursor minus the stored cursor.",
        );
        let queue_depth = int_gauge(
            "sync_queue_depth",
            "Changes waiting between the fetcher and the writers.",
        );

        let rejected = IntCounterVec::new(
            Opts::new(
                "profiles_rejected_total",
                "Profile changes not synced, by reason code.",
            ),
            &["reason"],
        )
        .expect("metric names are valid");
        registry
            .register(Box::new(rejected.clone()))
            .expect("metric names are unique");
        let rejected_of = Reason::ALL
            .iter()
            .map(|reason| rejected.with_label_values(&[reason.as_str()]))
            .collect();
        let batch_duration = Histogram::with_opts(
            HistogramOpts::new("sync_batch_duration_seconds", "Duration of one sync round.")
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    120.0, 300.0,
                ]),
        )
        .expect("metric names are valid");
        registry
            .register(Box::new(batch_duration.clone()))
            .expect("metric names are unique");
        let last_success = Gauge::new(
            "sync_last_success_timestamp_seconds",
            "Unix time at which the last sync round completed without error.",
        )
        .expect("metric names are valid");
        registry
            .register(Box::new(last_success.clone()))
            .expect("metric names are unique");

        Metrics {
            registry,
            fetched,
            synced,
            skipped,
            rejected,
            rejected_of,
            batch_duration,
            fetch_errors,
            db_errors,
            last_success,
            cursor,
            source_lag,
            queue_depth,
        }
    }

    /// Counts `count` changes that ended the same way.
    pub fn record(&self, how: Counted, count: u64) {
        if count == 0 {
            return;
        }
        match how {
            Counted::Synced => self.synced.inc_by(count),
            Counted::NotSynced(reason) => {
                self.skipped.inc_by(count);
                let of_reason = Reason::ALL.iter().position(|r| *r == reason);
                match of_reason.and_then(|at| self.rejected_of.get(at)) {
                    Some(counter) => counter.inc_by(count),
                    None => self
                        .rejected
                        .with_label_values(&[reason.as_str()])
                        .inc_by(count),
                }
            }
        }
    }

    pub fn rejected_by_reason(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL
            .iter()
            .map(|r| {
                (
                    r.as_str(),
                    self.rejected.with_label_values(&[r.as_str()]).get(),
                )
            })
            .collect()
    }

    /// The Prometheus text exposition of every series.
    pub fn render(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec only fails on invalid metric families, which
        // the constructors above rule out.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut body);
        body
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_is_exported_from_the_start() {
        let text = String::from_utf8(Metrics::new().render()).unwrap();
        for reason in Reason::ALL {
            assert!(
                text.contains(&format!(
                    "profiles_rejected_total{{reason=\"{}\"}} 0",
                    reason.as_str()
                )),
                "{reason:?}"
            );
        }
        for name in [
            "profiles_fetched_total 0",
            "profiles_synced_total 0",
            "profiles_skipped_total 0",
            "sync_batch_duration_seconds_count 0",
            "sync_fetch_errors_total 0",
            "sync_db_errors_total 0",
            "sync_last_success_timestamp_seconds 0",
            "sync_cursor 0",
            "sync_source_lag 0",
            "sync_queue_depth 0",
        ] {
            assert!(text.contains(name), "{name}");
        }
    }

    #[test]
    fn a_rejection_counts_as_skipped_and_by_reason() {
        let m = Metrics::new();
        m.record(Counted::NotSynced(Reason::Stale), 3);
        m.record(Counted::Synced, 2);
        assert_eq!(m.skipped.get(), 3);
        assert_eq!(m.synced.get(), 2);
        assert_eq!(m.rejected.with_label_values(&["stale"]).get(), 3);
    }
}
