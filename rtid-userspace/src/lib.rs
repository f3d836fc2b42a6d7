//! rtid userspace: loading the kernel programs, compiling policy into their
//! maps, and decoding what they report. The `rtid` binary (daemon and CLI) is
//! built on this library; the integration tests drive it directly.

pub mod api;
pub mod audit;
pub mod cli;
pub mod daemon;
pub mod events;
pub mod harden;
pub mod launch;
pub mod loader;
pub mod metrics;
pub mod policy;
pub mod rotation;
#[cfg(test)]
mod test_support;
