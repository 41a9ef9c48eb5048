//! The write path: from a page of the source to rows committed in
//! PostgreSQL and the cursor stored after them. A round ([`round`]) fetches
//! a page ([`fetcher`]), parses its elements ([`change`]), decides each
//! ([`plan`], over the [`overlay`] of decisions not yet committed), sends
//! the writes ([`pipeline`]) to the writer ([`routing`]) whose thread
//! commits them ([`writer`]), and stores the cursor over what committed
//! ([`ledger`]). Around it: which replica syncs ([`leader`]), the round's
//! log line ([`round_log`]) and waiting for PostgreSQL at start-up
//! ([`db_wait`]).

pub mod change;
pub mod db_wait;
pub mod fetcher;
pub mod leader;
pub mod ledger;
pub mod overlay;
pub mod pipeline;
pub mod plan;
pub mod round;
pub mod round_log;
pub mod routing;
pub mod writer;

pub use round::Syncer;
