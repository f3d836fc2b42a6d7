//! The tamper-evident audit trail.
//!
//! Every decision other than a plain allow, and every change of identity,
//! label, grant, approval and policy, is appended to a log in which each
//! record carries the SHA-256 of the one before it. Changing, removing,
//! inserting or reordering a record therefore breaks the chain at that point,
//! and `rtid audit verify` names it. Records go through a bounded queue to one
//! writer thread, which writes them in batches and fsyncs at least every
//! `flushInterval`; the log rotates by size (`path`, `path.1` newest ...
//! `path.<keep>`) with the chain running on across files, and a restarted
//! daemon continues the chain where it ended. Records that cannot be queued
//! or written are counted, and a gap record in the chain says how many.
//!
//! What a hash chain cannot show on its own: records cut from the end, or
//! forged onto it, leave no break. Keeping the last hash elsewhere (verify
//! prints it) closes that.

mod record;
mod verify;
mod writer;

pub use verify::{Tampering, TamperingKind, VerifyError, VerifySummary, verify_files};
pub use writer::{AuditError, AuditKind, AuditStats, AuditWriter, start};

#[cfg(test)]
mod tests;
