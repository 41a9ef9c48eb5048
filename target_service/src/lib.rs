//! target_service: pulls user-profile changes and keeps PostgreSQL in step.

pub mod profile;
