//! What must survive a daemon restart, kept under the state dir: identity
//! ids (the numbers pinned maps hold) and labels. Written crash-safely:
//! a temporary file, fsync, then rename over the old one.

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
}

#[derive(Serialize, Deserialize)]
pub struct SavedLabel {
    pub pid: u32,
    pub identity: String,
    pub owner: Option<String>,
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
                source: info.source.into(),
            })
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
            (label.pid, LabelInfo { identity: label.identity.clone(), owner: label.owner.clone(), purpose: None, source, labeled_at: Instant::now() })
        })
        .collect()
}
