//! source_service: a simulated upstream that hands out user-profile changes
//! over HTTP (see SPEC §2).

pub mod config;
pub mod generator;
