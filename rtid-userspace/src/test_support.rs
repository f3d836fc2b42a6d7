//! What the unit tests of several modules share: scratch directories and a
//! sample event.

use std::path::PathBuf;

use crate::events::record::EventRecord;

/// A directory under the system temp dir, removed when dropped (also when
/// the test fails).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let unique = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let dir = std::env::temp_dir().join(format!("rtid-{name}-{}-{unique}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A denied, killed read of `path` by `cat` under identity `coder`, numbered `seq`.
pub fn sample_event(seq: u64, kind: &str, path: &str) -> EventRecord {
    serde_json::from_value(serde_json::json!({
        "schema": "rtid.event/v1", "kind": kind, "time_boot_ns": 1, "pid": 1, "tgid": 1,
        "parent_tgid": 0, "uid": 0, "comm": "cat", "process_key": "1:1", "identity_id": 1,
        "identity": "coder", "delegation_chain": null, "verdict": "deny", "outcome": "killed",
        "errno": 0, "decision": "rule", "rule_id": null, "rule": null, "backend": "tracepoint",
        "access": ["read"], "path": path, "address": null, "port": null, "protocol": null,
        "flags": [], "generation": 1, "related_tgid": null, "seq": seq, "node": "node-a"
    }))
    .unwrap()
}
