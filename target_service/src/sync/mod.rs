//! The write path: from a page of the source to rows committed in
//! PostgreSQL and the cursor stored after them. A round ([`round`]) fetches
//! a page ([`fetcher`]), parses its elements ([`change`]), decides each
//! ([`plan`], over the [`overlay`] of decisions not yet committed), sends
//! the writes ([`pipeline`]) to the writer ([`routing`]) whose thread
//! commits them ([`writer`]), and stores the cursor over what committed
//! ([`ledger`]). Around it: which replica syncs ([`leader`]), the round's
//! log line ([`round_log`]) and waiting for PostgreSQL at start-up
//! ([`db_wait`]).

pub(crate) mod change;
pub(crate) mod db_wait;
pub(crate) mod fetcher;
pub(crate) mod leader;
pub(crate) mod ledger;
pub(crate) mod overlay;
pub(crate) mod pipeline;
pub(crate) mod plan;
pub(crate) mod round;
pub(crate) mod round_log;
pub(crate) mod routing;
pub(crate) mod writer;

pub(crate) use round::Syncer;
