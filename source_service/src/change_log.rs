//! The in-memory change log: every generated change, numbered 1, 2, 3, …
//! without gaps, kept as pre-serialized JSON so replay is a memory copy.
//!
//! Entries live in chunks of `CHUNK` consecutive sequence numbers. A chunk is
//! one byte buffer holding its entries back to back, each followed by a comma,
//! plus the end offset of each entry; a run of entries is therefore one slice,
//! and a page of 10,000 entries is built with a handful of copies into one
//! allocation. Dropping the oldest entries drops whole chunks, so the log
//! retains between `capacity` and `capacity + CHUNK` entries physically, but
//! serves exactly the newest `capacity`.
//!
//! The log itself is not synchronized; `feed` puts it behind a lock.

use std::collections::VecDeque;

use crate::generator::Batch;

/// Entries per chunk.
pub const CHUNK: u64 = 4096;

/// Changes read from the log, as the body of a `200` response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// A JSON array of the changes, in sequence order.
    pub body: Vec<u8>,
    /// How many changes `body` holds.
    pub count: usize,
    /// Sequence number of the last change in `body`, or the `since` asked for
    /// when there are none.
    pub next_cursor: u64,
    /// Newest sequence number in the log.
    pub head: u64,
}

/// A cursor the log cannot serve: newer than the head, or older than the
/// oldest retained change minus one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone {
    pub since: u64,
    /// The smallest `since` that can be served now.
    pub min_since: u64,
    pub head: u64,
}

#[derive(Debug)]
struct Chunk {
    text: Vec<u8>,
    /// `ends[i]` is the offset just past entry `i`'s trailing comma.
    ends: Vec<u32>,
}

impl Chunk {
    fn start(&self, i: usize) -> usize {
        if i == 0 {
            0
        } else {
            self.ends[i - 1] as usize
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct ChangeLog {
    capacity: u64,
    head: u64,
    /// Number (`(seq - 1) / CHUNK`) of the front chunk.
    first_chunk: u64,
    chunks: VecDeque<Chunk>,
}

impl ChangeLog {
    /// A log that serves at most `capacity` (at least 1) newest changes.
    pub fn new(capacity: u64) -> ChangeLog {
        ChangeLog {
            capacity: capacity.max(1),
            head: 0,
            first_chunk: 0,
            chunks: VecDeque::new(),
        }
    }

    /// The newest sequence number, 0 before the first change.
    pub fn head(&self) -> u64 {
        self.head
    }

    /// The oldest sequence number served; `head + 1` when the log is empty.
    pub fn oldest(&self) -> u64 {
        self.head.saturating_sub(self.capacity) + 1
    }

    /// Number of changes served.
    pub fn len(&self) -> u64 {
        self.head - (self.oldest() - 1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the changes of `batch`, numbering them `head + 1 ..`, and drops
    /// what falls out of the capacity. Returns the new head.
    pub fn append(&mut self, batch: &Batch) -> u64 {
        for entry in batch.iter() {
            self.push(entry);
        }
        self.trim();
        self.head
    }

    fn push(&mut self, entry: &[u8]) {
        let seq = self.head + 1;
        if (seq - 1).is_multiple_of(CHUNK) {
            // The previous chunk is complete: give back its spare capacity and
            // size the new one from it, so buffers rarely grow by doubling.
            let expected = match self.chunks.back_mut() {
                Some(full) => {
                    full.text.shrink_to_fit();
                    full.ends.shrink_to_fit();
                    full.text.len() + full.text.len() / 16
                }
                None => 64 * 1024,
            };
            if self.chunks.is_empty() {
                self.first_chunk = (seq - 1) / CHUNK;
            }
            self.chunks.push_back(Chunk {
                text: Vec::with_capacity(expected),
                ends: Vec::with_capacity(CHUNK as usize),
            });
        }
        if let Some(chunk) = self.chunks.back_mut() {
            chunk.text.extend_from_slice(entry);
            chunk.text.push(b',');
            // A chunk holds 4096 entries of a few hundred bytes; u32 is ample.
            chunk.ends.push(chunk.text.len() as u32);
        }
        self.head = seq;
    }

    /// Drops chunks whose entries are all older than `oldest()`.
    fn trim(&mut self) {
        let oldest_chunk = (self.oldest() - 1) / CHUNK;
        while self.first_chunk < oldest_chunk && self.chunks.pop_front().is_some() {
            self.first_chunk += 1;
        }
    }

    /// The changes with sequence numbers greater than `since`, at most `limit`
    /// of them (an empty page when `since` is the head).
    pub fn read_since(&self, since: u64, limit: usize) -> Result<Page, Gone> {
        let min_since = self.oldest() - 1;
        if since > self.head || since < min_since {
            return Err(Gone {
                since,
                min_since,
                head: self.head,
            });
        }
        let last = self.head.min(since.saturating_add(limit as u64));
        let count = (last - since) as usize;

        // Collect the slices first so the body is allocated once, exactly.
        let mut slices: Vec<&[u8]> = Vec::new();
        let mut seq = since + 1;
        while seq <= last {
            let chunk_no = (seq - 1) / CHUNK;
            let Some(chunk) = self.chunks.get((chunk_no - self.first_chunk) as usize) else {
                break;
            };
            let first = ((seq - 1) % CHUNK) as usize;
            let until = last.min((chunk_no + 1) * CHUNK);
            let end_index = ((until - 1) % CHUNK) as usize;
            slices.push(&chunk.text[chunk.start(first)..chunk.ends[end_index] as usize]);
            seq = until + 1;
        }
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let mut body = Vec::with_capacity(total + 2);
        body.push(b'[');
        for slice in slices {
            body.extend_from_slice(slice);
        }
        if count > 0 {
            body.pop(); // the last entry's trailing comma
        }
        body.push(b']');
        Ok(Page {
            body,
            count,
            next_cursor: last,
            head: self.head,
        })
    }

    /// Bytes held by entries, for logging.
    pub fn bytes(&self) -> usize {
        self.chunks
            .iter()
            .map(|c| c.text.capacity() + c.ends.capacity() * 4)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generator::Generator;
    use serde_json::Value;

    /// A log of `n` changes from a fixed seed, and the changes themselves.
    fn filled(capacity: u64, n: usize) -> (ChangeLog, Vec<Value>) {
        let mut log = ChangeLog::new(capacity);
        let mut generator = Generator::new(1, 0.1);
        let mut batch = Batch::new();
        let mut all = Vec::new();
        while all.len() < n {
            generator.next_batch(&mut batch);
            log.append(&batch);
            all.extend(
                batch
                    .iter()
                    .map(|e| serde_json::from_slice::<Value>(e).unwrap()),
            );
        }
        (log, all)
    }

    fn values(page: &Page) -> Vec<Value> {
        serde_json::from_slice(&page.body).unwrap()
    }

    #[test]
    fn empty_log() {
        let log = ChangeLog::new(10);
        assert_eq!(log.head(), 0);
        assert_eq!(log.oldest(), 1);
        assert!(log.is_empty());
        let page = log.read_since(0, 100).unwrap();
        assert_eq!(page.body, b"[]");
        assert_eq!((page.count, page.next_cursor, page.head), (0, 0, 0));
        assert_eq!(
            log.read_since(1, 100),
            Err(Gone {
                since: 1,
                min_since: 0,
                head: 0
            })
        );
    }

    #[test]
    fn sequence_numbers_are_gapless_and_pages_are_exact() {
        let (log, all) = filled(1_000_000, 20_000);
        assert_eq!(log.head(), all.len() as u64);
        assert_eq!(log.oldest(), 1);
        // Pages of every awkward size, across chunk boundaries.
        for limit in [1usize, 7, 4095, 4096, 4097, 10_000] {
            let mut since = 0;
            let mut seen = Vec::new();
            loop {
                let page = log.read_since(since, limit).unwrap();
                assert_eq!(page.head, log.head());
                if page.count == 0 {
                    assert_eq!(page.next_cursor, since);
                    break;
                }
                assert_eq!(page.next_cursor, since + page.count as u64);
                assert!(page.count <= limit);
                seen.extend(values(&page));
                since = page.next_cursor;
            }
            assert_eq!(seen, all, "limit {limit}");
        }
    }

    #[test]
    fn capacity_keeps_only_the_newest() {
        let (log, all) = filled(5_000, 20_000);
        let head = log.head();
        assert_eq!(log.oldest(), head - 4_999);
        assert_eq!(log.len(), 5_000);
        let min_since = head - 5_000;
        let gone = log.read_since(min_since - 1, 10).unwrap_err();
        assert_eq!(gone.min_since, min_since);
        assert_eq!(gone.head, head);
        let page = log.read_since(min_since, 10_000).unwrap();
        assert_eq!(page.count, 5_000);
        assert_eq!(values(&page), all[min_since as usize..head as usize]);
        // Whole chunks are dropped: no more than capacity + one chunk is kept.
        assert!(log.chunks.len() as u64 <= 5_000 / CHUNK + 2);
        assert!(log.read_since(head + 1, 10).is_err());
    }

    #[test]
    fn capacity_of_one() {
        let (log, all) = filled(1, 100);
        let head = log.head();
        assert_eq!(log.len(), 1);
        let page = log.read_since(head - 1, 10).unwrap();
        assert_eq!(values(&page), all[head as usize - 1..]);
        assert!(log.read_since(head - 2, 10).is_err());
    }
}
