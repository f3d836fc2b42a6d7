//! Wire types shared by rtid's kernel programs (`rtid-ebpf`) and userspace.
//!
//! Everything that crosses the user/kernel boundary (map keys and values, ring
//! buffer events, load-time constants) is defined here and only here, as
//! `#[repr(C)]` plain data, so both sides agree on one layout.
#![no_std]

pub mod event;
pub mod identity;
pub mod kernel;
pub mod rules;
pub mod verdict;

pub use event::*;
pub use identity::*;
pub use kernel::*;
pub use rules::*;
pub use verdict::*;

/// Marks types as plain old data for aya's userspace map API.
///
/// Every type passed here is `#[repr(C)]`, `Copy`, contains only integers and
/// arrays of integers, and has explicit padding fields, so any bit pattern is a
/// valid value and none of its bytes are uninitialised.
#[cfg(feature = "user")]
macro_rules! impl_pod {
    ($($t:ty),* $(,)?) => { $(unsafe impl aya::Pod for $t {})* };
}
#[cfg(feature = "user")]
pub(crate) use impl_pod;
