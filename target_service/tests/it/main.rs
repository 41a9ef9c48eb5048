//! The target's integration tests, one binary: the crate is linked once and
//! the helpers of `common` are shared. Each module is a subject; run one
//! with `cargo test -p target_service --test it <module>::`.

mod common;
mod faults;
mod model;
mod operate;
mod properties;
mod secrets;
mod sync_bad_source;
mod sync_conflicts;
mod sync_cursor;
mod sync_ordering;
mod sync_replay;
mod sync_validation;
mod tls;
