//! Policy: the model, and its compilation into kernel map entries.
pub mod compile;
pub mod delegation;
pub mod document;
pub mod model;
pub mod warnings;

pub use compile::{CompileError, CompiledIdentity, CompiledPolicy, RuleInfo, compile};
pub use model::*;
pub use warnings::warnings;
