//! The pages of a round that are in flight, and where the stored cursor may
//! move: to the end of the longest run of pages, from the first, whose
//! every write has committed. A page that writes nothing is committed as
//! soon as the pages before it are.

use std::collections::VecDeque;

use crate::store::SyncState;

#[derive(Debug)]
struct InFlight {
    page_no: u64,
    /// Writes of the page not yet committed.
    remaining: usize,
    /// Where the cursor may move once this page is committed; `None` for a
    /// source without cursors.
    reaches: Option<SyncState>,
}

#[derive(Debug, Default)]
pub struct Ledger {
    pages: VecDeque<InFlight>,
    next_page_no: u64,
}

impl Ledger {
    /// Takes a page of `writes` writes; returns its number, which writers
    /// report back with each commit.
    pub fn push(&mut self, writes: usize, reaches: Option<SyncState>) -> u64 {
        self.next_page_no += 1;
        self.pages.push_back(InFlight {
            page_no: self.next_page_no,
            remaining: writes,
            reaches,
        });
        self.next_page_no
    }

    /// `count` writes of page `page_no` committed.
    pub fn committed(&mut self, page_no: u64, count: usize) {
        if let Some(page) = self.pages.iter_mut().find(|p| p.page_no == page_no) {
            page.remaining = page.remaining.saturating_sub(count);
        }
    }

    /// Drops the committed pages at the front and returns where the last of
    /// them reaches, if any does.
    pub fn advance(&mut self) -> Option<SyncState> {
        let mut reached = None;
        while self.pages.front().is_some_and(|page| page.remaining == 0) {
            if let Some(page) = self.pages.pop_front() {
                reached = page.reaches.or(reached);
            }
        }
        reached
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Forgets every page (their writes are abandoned).
    pub fn clear(&mut self) {
        self.pages.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(cursor: u64) -> Option<SyncState> {
        Some(SyncState {
            epoch: Some("e".to_owned()),
            cursor,
        })
    }

    #[test]
    fn the_cursor_moves_over_the_longest_committed_prefix_only() {
        let mut ledger = Ledger::default();
        let first = ledger.push(2, at(10));
        let second = ledger.push(1, at(20));
        let third = ledger.push(0, at(30));
        ledger.committed(second, 1);
        assert_eq!(ledger.advance(), None, "the first page is not committed");
        ledger.committed(first, 1);
        assert_eq!(ledger.advance(), None);
        ledger.committed(first, 1);
        assert_eq!(
            ledger.advance(),
            at(30),
            "a page without writes follows at once"
        );
        assert!(ledger.is_empty());
        let _ = third;
    }

    #[test]
    fn a_page_without_writes_at_the_front_is_committed_at_once() {
        let mut ledger = Ledger::default();
        ledger.push(0, at(5));
        let next = ledger.push(1, at(7));
        assert_eq!(ledger.advance(), at(5));
        assert_eq!(ledger.len(), 1);
        ledger.committed(next, 1);
        assert_eq!(ledger.advance(), at(7));
    }

    #[test]
    fn a_page_of_a_source_without_cursors_moves_nothing() {
        let mut ledger = Ledger::default();
        let page = ledger.push(1, None);
        ledger.committed(page, 1);
        assert_eq!(ledger.advance(), None);
        assert!(ledger.is_empty());
    }
}
