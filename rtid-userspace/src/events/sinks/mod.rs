//! Where events go: one module per kind of sink; each runs as its own task
//! reading its own bounded queue (see `pipeline`).

pub mod file;
pub mod http;
pub mod nats;
pub mod stdout;
