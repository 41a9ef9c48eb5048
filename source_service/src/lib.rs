//! source_service: a simulated upstream that hands out user-profile changes
//! over HTTP (see SPEC §2).

pub mod change_log;
pub mod config;
pub mod generator;
