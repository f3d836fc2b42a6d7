// TEMPORARY STUB (rtid lead): replaced by the policy language module.
use std::path::PathBuf;
use super::model::IdentitySpec;
pub struct PolicySet { pub identities: Vec<IdentitySpec>, pub selectors: Vec<Selector>, pub sources: Vec<String> }
pub enum SelectorMatch { Exe(String), Cgroup(String) }
pub struct Selector { pub identity: String, pub matches: SelectorMatch }
#[derive(Debug)] pub struct PolicyError;
impl std::fmt::Display for PolicyError { fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result { write!(f, "stub") } }
pub fn load_paths(_p: &[PathBuf]) -> Result<PolicySet, Vec<PolicyError>> { Err(vec![PolicyError]) }
pub fn parse_str(_n: &str, _t: &str) -> Result<PolicySet, Vec<PolicyError>> { Err(vec![PolicyError]) }
pub fn default_policy() -> PolicySet { PolicySet { identities: vec![], selectors: vec![], sources: vec![] } }
pub fn default_policy_text() -> &'static str { "" }
pub fn expand_paths(p: &[PathBuf]) -> Result<Vec<PathBuf>, String> { Ok(p.to_vec()) }
