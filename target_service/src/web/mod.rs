//! The target's HTTP endpoints: the router ([`http`]), what the service is
//! doing right now for `/readyz` and `/status` ([`status`]), the status page
//! ([`status_page`]) and the OpenAPI document ([`openapi`]). The metrics
//! `/metrics` renders live at the crate root ([`crate::metrics`]): every
//! part of the service counts into them.

pub(crate) mod http;
pub(crate) mod openapi;
pub(crate) mod status;
pub(crate) mod status_page;
