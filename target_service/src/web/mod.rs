//! The target's HTTP endpoints: the router ([`http`]), what the service is
//! doing right now for `/readyz` and `/status` ([`status`]), the status page
//! ([`status_page`]) and the OpenAPI document ([`openapi`]). The metrics
//! `/metrics` renders live at the crate root ([`crate::metrics`]): every
//! part of the service counts into them.

pub mod http;
pub mod openapi;
pub mod status;
pub mod status_page;
