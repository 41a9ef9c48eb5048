//! The source's integration tests, one binary: the crate is linked once and
//! the helpers of `common` are shared. Each module is a subject; run one
//! with `cargo test -p source_service --test it <module>::`.

mod api;
mod binary;
mod changes;
mod common;
mod concurrency;
mod slow_clients;
mod token;
