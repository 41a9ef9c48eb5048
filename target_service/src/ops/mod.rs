//! What operators use beside the running service: the command line
//! ([`cli`]) and its commands, `redrive` ([`redrive`], deciding recorded
//! rejections again through [`decide`]) and `verify` ([`verify`]); and the
//! recorded rejections served over HTTP ([`rejections`]) to whoever holds
//! the admin token ([`admin`]).

pub(crate) mod admin;
pub mod cli;
pub(crate) mod decide;
pub mod redrive;
pub(crate) mod rejections;
pub mod verify;
