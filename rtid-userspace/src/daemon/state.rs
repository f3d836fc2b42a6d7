//! What must survive a daemon restart, kept under the state dir: identity
//! ids (the numbers pinned maps hold), labels, grants and approval requests,
//! and launch-time delegations. Written crash-safely: a temporary file,
//! fsync, then rename over the old one. Grants and requests carry boot-clock
//! times, so they are taken back only within the same boot.

use std::{
    collections::BTreeMap,
    io::Write,
    path::{Path, PathBuf},
    time::Instant,
};

use serde::{Deserialize, Serialize};
use tracing::warn;

use super::{Daemon, LabelInfo};
use crate::loader::RtidKernel;

#[derive(Default, Serialize, Deserialize)]
pub struct SavedState {
    pub identity_ids: BTreeMap<String, u32>,
    pub labels: Vec<SavedLabel>,
    /// /proc/sys/kernel/random/boot_id when saved.
    #[serde(default)]
    pub boot_id: String,
    #[serde(default)]
    pub ledger: super::grants::LedgerState,
    /// `rtid run --delegated-by`: (identity, delegator) pairs.
    #[serde(default)]
    pub delegations: Vec<(String, String)>,
}

/// This boot's id: boot-clock times from another boot mean nothing now.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|id| id.trim().to_string()).unwrap_or_default()
}

impl SavedState {
    /// Whether grants and requests saved here are from this boot.
    pub fn from_this_boot(&self) -> bool {
        !self.boot_id.is_empty() && self.boot_id == boot_id()
    }
}

#[derive(Serialize, Deserialize)]
pub struct SavedLabel {
    pub pid: u32,
    pub identity: String,
    pub owner: Option<String>,
    #[serde(default)]
    pub purpose: Option<String>,
    pub source: String,
}

fn state_file(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

pub fn load(dir: &Path) -> SavedState {
    match std::fs::read_to_string(state_file(dir)) {
        Ok(text) => serde_json::from_str(&text).unwrap_or_else(|error| {
            warn!(%error, "state file unreadable; starting from the pinned maps alone");
            SavedState::default()
        }),
        Err(_) => SavedState::default(),
    }
}

pub fn save(daemon: &Daemon) {
    let state = SavedState {
        identity_ids: daemon.kernel.identity_ids().clone(),
        labels: daemon
            .labels
            .iter()
            .map(|(pid, info)| SavedLabel {
                pid: *pid,
                identity: info.identity.clone(),
                owner: info.owner.clone(),
                purpose: info.purpose.clone(),
                source: info.source.into(),
            })
            .collect(),
        boot_id: boot_id(),
        ledger: daemon.grants.state(),
        delegations: daemon
            .derived
            .iter()
            .filter_map(|spec| Some((spec.name.rsplit('>').next()?.to_string(), spec.delegated_by.clone()?)))
            .collect(),
    };
    if let Err(error) = write_atomically(&state_file(&daemon.options.state_dir), &state) {
        warn!(%error, "saving daemon state");
    }
}

fn write_atomically(path: &Path, state: &SavedState) -> std::io::Result<()> {
    let temporary = path.with_extension("json.tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(serde_json::to_string_pretty(state)?.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Saved labels whose process still carries that identity in the kernel.
pub fn live_labels(saved: &SavedState, kernel: &RtidKernel) -> BTreeMap<u32, LabelInfo> {
    saved
        .labels
        .iter()
        .filter(|label| {
            let expected = kernel.identity_id(&label.identity);
            matches!(kernel.process_identity(label.pid), Ok(Some(entry)) if Some(entry.identity) == expected)
        })
        .map(|label| {
            let source = if label.source == "launcher" { "launcher" } else { "label" };
            (
                label.pid,
                LabelInfo {
                    identity: label.identity.clone(),
                    owner: label.owner.clone(),
                    purpose: label.purpose.clone(),
                    source,
                    labeled_at: Instant::now(),
                },
            )
        })
        .collect()
}
