//! The feed: the generator and the change log behind their locks, and the
//! locking discipline that keeps the log consistent under concurrency.
//!
//! Architecture invariant: a batch is generated and appended while holding
//! the generator's `Mutex`, and appended under the log's `RwLock` write lock
//! in one step. So batches enter the log whole, in the order they were
//! generated, and sequence numbers are unique and gapless; readers holding
//! the read lock never see part of a batch. Readers that only replay the log
//! take just the read lock and do not wait for generation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard};

use crate::change_log::{ChangeLog, Gone, Page};
use crate::generator::{Batch, Generator};
use crate::metrics::Metrics;

struct Writer {
    generator: Generator,
    /// Reused between batches to save allocations.
    batch: Batch,
}

/// See the module documentation.
pub struct Feed {
    writer: Mutex<Writer>,
    log: RwLock<ChangeLog>,
}

impl Feed {
    pub fn new(generator: Generator, log: ChangeLog) -> Feed {
        Feed {
            writer: Mutex::new(Writer {
                generator,
                batch: Batch::new(),
            }),
            log: RwLock::new(log),
        }
    }

    /// Generates a fresh batch, logs it, and returns exactly that batch.
    pub fn fresh_batch(&self, metrics: &Metrics) -> Page {
        let mut writer = self.writer();
        let head = self.generate(&mut writer, metrics, usize::MAX);
        let batch = &writer.batch;
        Page {
            body: batch.to_json_array(batch.len()),
            count: batch.len(),
            next_cursor: head,
            head,
        }
    }

    /// The logged changes after `since`, at most `limit`; when there are none
    /// (the reader is caught up), generates a fresh batch first and returns it.
    pub fn since(&self, since: u64, limit: usize, metrics: &Metrics) -> Result<Page, Gone> {
        let page = self.read_log().read_since(since, limit)?;
        if page.count > 0 {
            return Ok(page);
        }
        let mut writer = self.writer();
        // Another request may have generated while we waited for the lock;
        // then there is something to return without generating.
        let page = self.read_log().read_since(since, limit)?;
        if page.count > 0 {
            return Ok(page);
        }
        // `since` is the head and we hold the generator, so the batch gets
        // the numbers `since + 1 ..`.
        let head = self.generate(&mut writer, metrics, usize::MAX);
        let batch = &writer.batch;
        let count = batch.len().min(limit);
        Ok(Page {
            body: batch.to_json_array(count),
            count,
            next_cursor: since + count as u64,
            head,
        })
    }

    /// Generates batches until exactly `changes` more changes are logged,
    /// the last batch cut short where it would go past.
    pub fn preload(&self, changes: u64, metrics: &Metrics) {
        self.preload_unless(changes, metrics, &AtomicBool::new(false));
    }

    /// Like `preload`, but stops early once `stop` is set (checked between
    /// batches). Returns whether the preload is complete.
    pub fn preload_unless(&self, changes: u64, metrics: &Metrics, stop: &AtomicBool) -> bool {
        let mut writer = self.writer();
        let start = self.head();
        let mut head = start;
        while head - start < changes {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            let left = usize::try_from(changes - (head - start)).unwrap_or(usize::MAX);
            head = self.generate(&mut writer, metrics, left);
        }
        true
    }

    /// The newest sequence number.
    pub fn head(&self) -> u64 {
        self.read_log().head()
    }

    /// Bytes held by logged entries.
    pub fn log_bytes(&self) -> usize {
        self.read_log().bytes()
    }

    /// Generates a batch of at most `most` changes into `writer.batch` and
    /// appends it; returns the new head.
    fn generate(&self, writer: &mut Writer, metrics: &Metrics, most: usize) -> u64 {
        let Writer { generator, batch } = writer;
        generator.next_batch_at_most(batch, most);
        let (head, entries) = {
            let mut log = self.log.write().unwrap_or_else(PoisonError::into_inner);
            let head = log.append(batch);
            (head, log.len())
        };
        metrics.changes_generated.inc_by(batch.len() as u64);
        for i in 0..batch.len() {
            if let Some(flaw) = batch.flaw(i) {
                metrics.invalid_generated(flaw);
            }
        }
        metrics
            .log_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        metrics
            .log_head
            .set(i64::try_from(head).unwrap_or(i64::MAX));
        head
    }

    // A panic while holding a lock cannot leave the log half-written (append
    // only pushes complete entries), so a poisoned lock is still usable.
    fn writer(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_log(&self) -> RwLockReadGuard<'_, ChangeLog> {
        self.log.read().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::sync::Arc;

    fn feed(capacity: u64) -> (Feed, Metrics) {
        (
            Feed::new(Generator::new(1, 0.05), ChangeLog::new(capacity)),
            Metrics::new().unwrap(),
        )
    }

    fn count(page: &Page) -> usize {
        serde_json::from_slice::<Vec<serde_json::Value>>(&page.body)
            .unwrap()
            .len()
    }

    #[test]
    fn fresh_batches_are_logged() {
        let (feed, metrics) = feed(100);
        let first = feed.fresh_batch(&metrics);
        assert_eq!(count(&first), first.count);
        assert_eq!(first.next_cursor, first.count as u64);
        assert_eq!(first.head, first.next_cursor);
        let second = feed.fresh_batch(&metrics);
        assert_eq!(second.next_cursor, (first.count + second.count) as u64);
        assert_eq!(metrics.changes_generated.get(), second.next_cursor);
        let replay = feed.since(0, 1000, &metrics).unwrap();
        assert_eq!(replay.count, first.count + second.count);
    }

    #[test]
    fn caught_up_reader_gets_a_fresh_batch() {
        let (feed, metrics) = feed(100);
        let page = feed.since(0, 1000, &metrics).unwrap();
        assert!(page.count >= 2);
        assert_eq!(page.next_cursor, page.count as u64);
        let limited = feed.since(page.next_cursor, 1, &metrics).unwrap();
        assert_eq!(limited.count, 1);
        assert_eq!(limited.next_cursor, page.next_cursor + 1);
        assert!(limited.head > limited.next_cursor);
    }

    #[test]
    fn preload_logs_exactly_the_changes_asked_for() {
        for changes in [0, 1, 2, 3, 7, 3_000, 5_001] {
            let (feed, metrics) = feed(1_000);
            feed.preload(changes, &metrics);
            assert_eq!(feed.head(), changes);
            assert_eq!(metrics.changes_generated.get(), changes);
            assert_eq!(metrics.log_entries.get(), changes.min(1_000) as i64);
        }
        // A second preload adds exactly as many again, after the first.
        let (feed, metrics) = feed(1_000);
        feed.preload(3, &metrics);
        feed.preload(4, &metrics);
        assert_eq!(feed.head(), 7);
        assert_eq!(count(&feed.since(0, 100, &metrics).unwrap()), 7);
    }

    #[test]
    fn a_preload_stops_between_batches_once_asked() {
        let (feed, metrics) = feed(1_000);
        assert!(!feed.preload_unless(5_000, &metrics, &AtomicBool::new(true)));
        assert_eq!(feed.head(), 0);
        // Set from another thread while it runs: it stops well short.
        let stop = Arc::new(AtomicBool::new(false));
        let setter = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(50));
                stop.store(true, Ordering::Relaxed);
            })
        };
        assert!(!feed.preload_unless(u64::MAX, &metrics, &stop));
        setter.join().unwrap();
        assert!(feed.head() > 0);
        assert_eq!(metrics.changes_generated.get(), feed.head());
        assert!(feed.preload_unless(10, &metrics, &AtomicBool::new(false)));
    }

    #[test]
    fn concurrent_readers_and_writers_see_each_change_once() {
        let (feed, metrics) = feed(1_000_000);
        let shared = Arc::new((feed, metrics));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    let (feed, metrics) = &*shared;
                    let mut cursor = 0;
                    let mut total = 0;
                    for _ in 0..300 {
                        if t % 2 == 0 {
                            feed.fresh_batch(metrics);
                        }
                        let page = feed.since(cursor, 50, metrics).unwrap();
                        assert_eq!(page.next_cursor, cursor + page.count as u64);
                        total += count(&page);
                        cursor = page.next_cursor;
                    }
                    (cursor, total)
                })
            })
            .collect();
        let mut cursors = HashSet::new();
        for thread in threads {
            let (cursor, total) = thread.join().unwrap();
            assert_eq!(cursor as usize, total);
            cursors.insert(cursor);
        }
        let (feed, metrics) = &*shared;
        assert_eq!(metrics.changes_generated.get(), feed.head());
    }
}
