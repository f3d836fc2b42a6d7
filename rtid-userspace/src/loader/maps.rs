//! Typed handles on the kernel maps, and the double-buffered policy swap.

use std::collections::BTreeMap;

use aya::{
    Ebpf, Pod,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
};
use rtid_common::{
    BackendConfig, IdentityId, IdentityPolicy, IdentityPolicyKey, IdentityStatus, NetKey, NetRuleList, PATH_KEY_BYTES,
    PathKey, PathRuleList, ProcessIdentity, QuarantineState, RULESET_PREFIX_BITS, RuntimeState, counter,
};

use super::LoadError;
use crate::policy::{CompiledPolicy, compile::PathEntry};

/// Kernel counters summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub ring_full_drops: u64,
    pub hook_errors: u64,
    pub paths_unresolved: u64,
    pub process_table_full: u64,
    pub judged: u64,
    /// Children of tagged processes killed because the process table was full.
    pub untaggable_killed: u64,
    /// Attempts of tagged processes on rtid itself or above their capability ceiling.
    pub tamper: u64,
}

/// Keys written for one installed policy, so the next swap can remove them.
#[derive(Default)]
struct InstalledEntries {
    prefix: Vec<Key<PathKey>>,
    suffix: Vec<Key<PathKey>>,
    unix: Vec<Key<PathKey>>,
    net: Vec<Key<NetKey>>,
    policies: Vec<IdentityPolicyKey>,
}

pub struct KernelMaps {
    process_identity: HashMap<MapData, u32, ProcessIdentity>,
    cgroup_identity: HashMap<MapData, u64, IdentityId>,
    identity_policy: HashMap<MapData, IdentityPolicyKey, IdentityPolicy>,
    identity_status: HashMap<MapData, IdentityId, IdentityStatus>,
    runtime_state: Array<MapData, RuntimeState>,
    backend_config: Array<MapData, BackendConfig>,
    path_prefix: LpmTrie<MapData, PathKey, PathRuleList>,
    path_suffix: LpmTrie<MapData, PathKey, PathRuleList>,
    unix_rules: LpmTrie<MapData, PathKey, PathRuleList>,
    net_rules: LpmTrie<MapData, NetKey, NetRuleList>,
    exec_selectors: LpmTrie<MapData, PathKey, IdentityId>,
    quarantine: HashMap<MapData, IdentityId, QuarantineState>,
    once_rules: HashMap<MapData, u32, u32>,
    counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    installed: InstalledEntries,
    /// `None` when adopted pins lack it (an older build pinned fewer maps).
    protected_paths: Option<LpmTrie<MapData, PathKey, u32>>,
    privileged_syscalls: Option<HashMap<MapData, u32, u32>>,
    /// Size of `PROCESS_IDENTITY`.
    process_capacity: u32,
    /// `PROTECTED_PATHS` keys: rtid's files, and the daemon's /proc entries.
    protected_files: Vec<(Vec<u8>, u32)>,
    daemon_entries: Vec<(Vec<u8>, u32)>,
}

fn map_error(map: &'static str) -> impl Fn(MapError) -> LoadError {
    move |error| LoadError::Map { map, problem: error.to_string() }
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, LoadError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map =
        ebpf.take_map(name).ok_or(LoadError::Map { map: name, problem: "missing from the eBPF object".into() })?;
    T::try_from(map).map_err(map_error(name))
}

/// An LPM key for path bytes under a ruleset.
pub fn path_key(ruleset: u32, bytes: &[u8]) -> Key<PathKey> {
    let mut data = PathKey::zeroed();
    data.ruleset = ruleset;
    let len = bytes.len().min(PATH_KEY_BYTES);
    data.path[..len].copy_from_slice(&bytes[..len]);
    Key::new(RULESET_PREFIX_BITS + len as u32 * 8, data)
}

pub fn net_key(ruleset: u32, addr: [u8; 16], prefix_len: u8) -> Key<NetKey> {
    Key::new(RULESET_PREFIX_BITS + prefix_len as u32, NetKey { ruleset, addr })
}

impl KernelMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<KernelMaps, LoadError> {
        Ok(KernelMaps {
            process_identity: take(ebpf, "PROCESS_IDENTITY")?,
            cgroup_identity: take(ebpf, "CGROUP_IDENTITY")?,
            identity_policy: take(ebpf, "IDENTITY_POLICY")?,
            identity_status: take(ebpf, "IDENTITY_STATUS")?,
            runtime_state: take(ebpf, "RUNTIME_STATE")?,
            backend_config: take(ebpf, "BACKEND_CONFIG")?,
            path_prefix: take(ebpf, "PATH_PREFIX_RULES")?,
            path_suffix: take(ebpf, "PATH_SUFFIX_RULES")?,
            unix_rules: take(ebpf, "UNIX_RULES")?,
            net_rules: take(ebpf, "NET_RULES")?,
            exec_selectors: take(ebpf, "EXEC_SELECTORS")?,
            quarantine: take(ebpf, "QUARANTINE")?,
            once_rules: take(ebpf, "ONCE_RULES")?,
            counters: take(ebpf, "COUNTERS")?,
            events: Some(take(ebpf, "EVENTS")?),
            installed: InstalledEntries::default(),
            protected_paths: Some(take(ebpf, "PROTECTED_PATHS")?),
            privileged_syscalls: Some(take(ebpf, "PRIVILEGED_SYSCALLS")?),
            process_capacity: rtid_common::limits::MAX_PROCESSES,
            protected_files: Vec::new(),
            daemon_entries: Vec::new(),
        })
    }

    /// Entries in use and capacity of the maps that can fill up.
    pub fn fill(&self) -> Vec<(String, usize, u32)> {
        use rtid_common::limits::*;
        vec![
            ("PROCESS_IDENTITY".into(), self.process_identity.keys().count(), self.process_capacity),
            ("IDENTITY_POLICY".into(), self.identity_policy.keys().count(), MAX_IDENTITIES * 2),
            ("PATH_PREFIX_RULES".into(), self.path_prefix.keys().count(), MAX_PATH_ENTRIES),
            ("PATH_SUFFIX_RULES".into(), self.path_suffix.keys().count(), MAX_PATH_ENTRIES),
            ("UNIX_RULES".into(), self.unix_rules.keys().count(), MAX_UNIX_ENTRIES),
            ("NET_RULES".into(), self.net_rules.keys().count(), MAX_NET_ENTRIES),
            ("CGROUP_IDENTITY".into(), self.cgroup_identity.keys().count(), MAX_CGROUP_BINDINGS),
        ]
    }

    /// Opens maps pinned by an earlier instance.
    pub fn from_pins(dir: &std::path::Path) -> Result<KernelMaps, LoadError> {
        let open = |name: &'static str| -> Result<aya::maps::Map, LoadError> {
            let data = MapData::from_pin(dir.join(name)).map_err(map_error(name))?;
            aya::maps::Map::from_map_data(data).map_err(map_error(name))
        };
        fn typed<T: TryFrom<aya::maps::Map, Error = MapError>>(
            name: &'static str,
            map: aya::maps::Map,
        ) -> Result<T, LoadError> {
            T::try_from(map).map_err(map_error(name))
        }
        Ok(KernelMaps {
            process_identity: typed("PROCESS_IDENTITY", open("PROCESS_IDENTITY")?)?,
            cgroup_identity: typed("CGROUP_IDENTITY", open("CGROUP_IDENTITY")?)?,
            identity_policy: typed("IDENTITY_POLICY", open("IDENTITY_POLICY")?)?,
            identity_status: typed("IDENTITY_STATUS", open("IDENTITY_STATUS")?)?,
            runtime_state: typed("RUNTIME_STATE", open("RUNTIME_STATE")?)?,
            backend_config: typed("BACKEND_CONFIG", open("BACKEND_CONFIG")?)?,
            path_prefix: typed("PATH_PREFIX_RULES", open("PATH_PREFIX_RULES")?)?,
            path_suffix: typed("PATH_SUFFIX_RULES", open("PATH_SUFFIX_RULES")?)?,
            unix_rules: typed("UNIX_RULES", open("UNIX_RULES")?)?,
            net_rules: typed("NET_RULES", open("NET_RULES")?)?,
            exec_selectors: typed("EXEC_SELECTORS", open("EXEC_SELECTORS")?)?,
            quarantine: typed("QUARANTINE", open("QUARANTINE")?)?,
            once_rules: typed("ONCE_RULES", open("ONCE_RULES")?)?,
            counters: typed("COUNTERS", open("COUNTERS")?)?,
            events: Some(typed("EVENTS", open("EVENTS")?)?),
            installed: InstalledEntries::default(),
            protected_paths: open("PROTECTED_PATHS").ok().and_then(|map| typed("PROTECTED_PATHS", map).ok()),
            privileged_syscalls: open("PRIVILEGED_SYSCALLS")
                .ok()
                .and_then(|map| typed("PRIVILEGED_SYSCALLS", map).ok()),
            process_capacity: aya::maps::MapInfo::from_pin(dir.join("PROCESS_IDENTITY"))
                .map(|info| info.max_entries())
                .unwrap_or(rtid_common::limits::MAX_PROCESSES),
            protected_files: Vec::new(),
            daemon_entries: Vec::new(),
        })
    }

    pub fn backend_config(&self) -> Result<BackendConfig, LoadError> {
        self.backend_config.get(&0, 0).map_err(map_error("BACKEND_CONFIG"))
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        self.events.take().ok_or(LoadError::Map { map: "EVENTS", problem: "already taken".into() })
    }

    pub fn counters(&self) -> Result<Counters, LoadError> {
        let sum = |index: u32| -> Result<u64, LoadError> {
            let values = self.counters.get(&index, 0).map_err(map_error("COUNTERS"))?;
            Ok(values.iter().sum())
        };
        Ok(Counters {
            ring_full_drops: sum(counter::RING_FULL)?,
            hook_errors: sum(counter::HOOK_ERROR)?,
            paths_unresolved: sum(counter::PATH_UNRESOLVED)?,
            process_table_full: sum(counter::PROCESS_TABLE_FULL)?,
            judged: sum(counter::JUDGED)?,
            untaggable_killed: sum(counter::UNTAGGABLE_KILLED)?,
            tamper: sum(counter::TAMPER)?,
        })
    }

    pub fn set_process_capacity(&mut self, capacity: u32) {
        self.process_capacity = capacity;
    }

    /// Entries in the process table, and its capacity.
    pub fn process_table_fill(&self) -> (usize, u32) {
        (self.process_identity.keys().count(), self.process_capacity)
    }

    /// Syscall numbers to what using them needs (see `privileged_check`).
    pub fn set_privileged_syscalls(&mut self, entries: &[(u32, u32)]) -> Result<(), LoadError> {
        let map = self
            .privileged_syscalls
            .as_mut()
            .ok_or(LoadError::Map { map: "PRIVILEGED_SYSCALLS", problem: "not pinned by this build".into() })?;
        for (number, value) in entries {
            map.insert(number, value, 0).map_err(map_error("PRIVILEGED_SYSCALLS"))?;
        }
        Ok(())
    }

    /// Sets the daemon's tgid and the /proc entries that come with it.
    pub fn set_daemon(&mut self, tgid: u32, entries: Vec<(Vec<u8>, u32)>) -> Result<(), LoadError> {
        self.daemon_entries = entries;
        self.write_protected()?;
        let mut state = self.runtime_state()?;
        state.daemon_tgid = tgid;
        self.runtime_state.set(0, &state, 0).map_err(map_error("RUNTIME_STATE"))
    }

    /// Replaces rtid's protected files (keys as `path_key` bytes, with protection ids).
    pub fn set_protected_files(&mut self, entries: Vec<(Vec<u8>, u32)>) -> Result<(), LoadError> {
        self.protected_files = entries;
        self.write_protected()
    }

    /// Writes the union of both protected sets: new keys first, then stale
    /// ones removed, so nothing protected is ever briefly unprotected.
    fn write_protected(&mut self) -> Result<(), LoadError> {
        let trie = self
            .protected_paths
            .as_mut()
            .ok_or(LoadError::Map { map: "PROTECTED_PATHS", problem: "not pinned by this build".into() })?;
        let wanted: Vec<(Key<PathKey>, u32)> = self
            .protected_files
            .iter()
            .chain(&self.daemon_entries)
            .map(|(bytes, protection)| (path_key(rtid_common::PROTECTED_RULESET, bytes), *protection))
            .collect();
        if wanted.len() > rtid_common::limits::MAX_PROTECTED_PATHS as usize {
            return Err(LoadError::Map {
                map: "PROTECTED_PATHS",
                problem: format!("{} entries; at most {}", wanted.len(), rtid_common::limits::MAX_PROTECTED_PATHS),
            });
        }
        for (key, protection) in &wanted {
            trie.insert(key, protection, 0).map_err(map_error("PROTECTED_PATHS"))?;
        }
        let stale: Vec<Key<PathKey>> = trie
            .keys()
            .filter_map(Result::ok)
            .filter(|key| {
                !wanted.iter().any(|(wanted, _)| {
                    wanted.prefix_len() == key.prefix_len() && bytemuck_eq(&wanted.data(), &key.data())
                })
            })
            .collect();
        for key in &stale {
            let _ = trie.remove(key);
        }
        let mut state = self.runtime_state()?;
        state.protected_paths = !wanted.is_empty() as u32;
        self.runtime_state.set(0, &state, 0).map_err(map_error("RUNTIME_STATE"))
    }

    pub fn set_backend_config(&mut self, config: &BackendConfig) -> Result<(), LoadError> {
        self.backend_config.set(0, config, 0).map_err(map_error("BACKEND_CONFIG"))
    }

    /// The policy of an identity in the active slot, as the kernel reads it.
    pub fn active_policy(&self, identity: IdentityId) -> Result<Option<IdentityPolicy>, LoadError> {
        let slot = self.runtime_state()?.active_slot;
        match self.identity_policy.get(&IdentityPolicyKey { slot, identity }, 0) {
            Ok(policy) => Ok(Some(policy)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(map_error("IDENTITY_POLICY")(error)),
        }
    }

    /// Longest-prefix lookups in the live tries (the kernel's own LPM search).
    pub fn lookup_prefix(&self, key: &Key<PathKey>) -> Option<PathRuleList> {
        self.path_prefix.get(key, 0).ok()
    }

    pub fn lookup_suffix(&self, key: &Key<PathKey>) -> Option<PathRuleList> {
        self.path_suffix.get(key, 0).ok()
    }

    /// The protection guarding a path (a `protection::*` id), as the programs look it up.
    pub fn lookup_protected(&self, path: &[u8]) -> Option<u32> {
        let key = path_key(rtid_common::PROTECTED_RULESET, path);
        self.protected_paths.as_ref()?.get(&key, 0).ok()
    }

    pub fn lookup_net(&self, key: &Key<NetKey>) -> Option<NetRuleList> {
        self.net_rules.get(key, 0).ok()
    }

    pub fn runtime_state(&self) -> Result<RuntimeState, LoadError> {
        self.runtime_state.get(&0, 0).map_err(map_error("RUNTIME_STATE"))
    }

    pub fn process(&self, pid: u32) -> Result<Option<ProcessIdentity>, LoadError> {
        match self.process_identity.get(&pid, 0) {
            Ok(entry) => Ok(Some(entry)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(error) => Err(map_error("PROCESS_IDENTITY")(error)),
        }
    }

    /// Every tagged process.
    pub fn processes(&self) -> Vec<(u32, ProcessIdentity)> {
        self.process_identity.iter().filter_map(Result::ok).collect()
    }

    pub fn set_process(&mut self, pid: u32, entry: ProcessIdentity) -> Result<(), LoadError> {
        self.process_identity.insert(&pid, &entry, 0).map_err(map_error("PROCESS_IDENTITY"))
    }

    pub fn remove_process(&mut self, pid: u32) -> Result<(), LoadError> {
        if self.process(pid)?.is_none() {
            return Ok(());
        }
        match self.process_identity.remove(&pid) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(error) => Err(map_error("PROCESS_IDENTITY")(error)),
        }
    }

    pub fn status(&self, identity: IdentityId) -> Result<IdentityStatus, LoadError> {
        match self.identity_status.get(&identity, 0) {
            Ok(status) => Ok(status),
            Err(MapError::KeyNotFound) => Ok(IdentityStatus::default()),
            Err(error) => Err(map_error("IDENTITY_STATUS")(error)),
        }
    }

    pub fn set_status(&mut self, identity: IdentityId, status: IdentityStatus) -> Result<(), LoadError> {
        self.identity_status.insert(&identity, &status, 0).map_err(map_error("IDENTITY_STATUS"))
    }

    /// Replaces the single-use rules: each listed rule id may decide once.
    pub fn set_once_rules(&mut self, rule_ids: &[u32]) -> Result<(), LoadError> {
        let old: Vec<u32> = self.once_rules.keys().filter_map(Result::ok).collect();
        for key in old.iter().filter(|key| !rule_ids.contains(key)) {
            let _ = self.once_rules.remove(key);
        }
        for id in rule_ids {
            self.once_rules.insert(id, &1, 0).map_err(map_error("ONCE_RULES"))?;
        }
        Ok(())
    }

    /// Sets (or clears, with `None`) an identity's quarantine, resetting its count.
    pub fn set_quarantine(
        &mut self,
        identity: IdentityId,
        quarantine: Option<QuarantineState>,
    ) -> Result<(), LoadError> {
        match quarantine {
            Some(state) => self.quarantine.insert(&identity, &state, 0).map_err(map_error("QUARANTINE")),
            // Deleting a missing key fails with ENOENT, reported differently by kernel version.
            None if self.quarantine(identity).is_none() => Ok(()),
            None => self.quarantine.remove(&identity).map_err(map_error("QUARANTINE")),
        }
    }

    pub fn quarantine(&self, identity: IdentityId) -> Option<QuarantineState> {
        self.quarantine.get(&identity, 0).ok()
    }

    /// Replaces the exec selectors: exact binary paths to identities.
    pub fn set_exec_selectors(&mut self, selectors: &[(String, IdentityId)]) -> Result<(), LoadError> {
        let old: Vec<Key<PathKey>> = self.exec_selectors.keys().filter_map(Result::ok).collect();
        for key in &old {
            let _ = self.exec_selectors.remove(key);
        }
        for (path, identity) in selectors {
            let mut bytes = path.as_bytes().to_vec();
            bytes.push(0);
            let key = path_key(rtid_common::SELECTOR_RULESET, &bytes);
            self.exec_selectors.insert(&key, identity, 0).map_err(map_error("EXEC_SELECTORS"))?;
        }
        let mut state = self.runtime_state()?;
        state.exec_selectors = !selectors.is_empty() as u32;
        self.runtime_state.set(0, &state, 0).map_err(map_error("RUNTIME_STATE"))
    }

    pub fn bind_cgroup(&mut self, cgroup_id: u64, identity: IdentityId) -> Result<(), LoadError> {
        self.cgroup_identity.insert(&cgroup_id, &identity, 0).map_err(map_error("CGROUP_IDENTITY"))?;
        let mut state = self.runtime_state()?;
        state.cgroup_bindings = 1;
        self.runtime_state.set(0, &state, 0).map_err(map_error("RUNTIME_STATE"))
    }

    /// Writes `policy` under the inactive slot, flips the slot, then removes
    /// the previous policy's entries. If a write fails, what was written is
    /// removed and the policy in force stays in force.
    pub fn install(&mut self, policy: &CompiledPolicy, ids: &BTreeMap<String, IdentityId>) -> Result<(), LoadError> {
        let state = self.runtime_state()?;
        let slot = 1 - state.active_slot.min(1);
        let mut written = InstalledEntries::default();
        if let Err(error) = self.write_slot(policy, ids, slot, &mut written) {
            self.remove_entries(&written);
            return Err(error);
        }
        let next = RuntimeState { active_slot: slot, generation: state.generation + 1, ..state };
        if let Err(error) = self.runtime_state.set(0, &next, 0) {
            self.remove_entries(&written);
            return Err(map_error("RUNTIME_STATE")(error));
        }
        let previous = std::mem::replace(&mut self.installed, written);
        self.remove_entries(&previous);
        // After adopting pins, the previous policy's keys are not in memory:
        // find whatever is left under the old slot and remove it.
        self.remove_slot(state.active_slot.min(1));
        Ok(())
    }

    fn write_slot(
        &mut self,
        policy: &CompiledPolicy,
        ids: &BTreeMap<String, IdentityId>,
        slot: u32,
        written: &mut InstalledEntries,
    ) -> Result<(), LoadError> {
        for (index, identity) in policy.identities.iter().enumerate() {
            // Rulesets are unique per slot, so both policies coexist during the swap.
            let ruleset = (slot << 16) | (index as u32 + 1);
            write_paths(
                &mut self.path_prefix,
                ruleset,
                &identity.prefix_entries,
                &mut written.prefix,
                "PATH_PREFIX_RULES",
            )?;
            write_paths(
                &mut self.path_suffix,
                ruleset,
                &identity.suffix_entries,
                &mut written.suffix,
                "PATH_SUFFIX_RULES",
            )?;
            write_paths(&mut self.unix_rules, ruleset, &identity.unix_entries, &mut written.unix, "UNIX_RULES")?;
            for entry in &identity.net_entries {
                let key = net_key(ruleset, entry.addr, entry.prefix_len);
                self.net_rules.insert(&key, &entry.rules, 0).map_err(map_error("NET_RULES"))?;
                written.net.push(key);
            }
            let id = ids
                .get(&identity.spec.name)
                .copied()
                .ok_or_else(|| LoadError::UnknownIdentity(identity.spec.name.clone()))?;
            let key = IdentityPolicyKey { slot, identity: id };
            self.identity_policy
                .insert(&key, &IdentityPolicy { ruleset, ..identity.policy }, 0)
                .map_err(map_error("IDENTITY_POLICY"))?;
            written.policies.push(key);
        }
        Ok(())
    }

    /// Removes every entry whose ruleset belongs to `slot` (rulesets are `slot << 16 | n`).
    fn remove_slot(&mut self, slot: u32) {
        let in_slot = |ruleset: u32| ruleset >> 16 == slot;
        let stale = InstalledEntries {
            prefix: self.path_prefix.keys().filter_map(Result::ok).filter(|key| in_slot(key.data().ruleset)).collect(),
            suffix: self.path_suffix.keys().filter_map(Result::ok).filter(|key| in_slot(key.data().ruleset)).collect(),
            unix: self.unix_rules.keys().filter_map(Result::ok).filter(|key| in_slot(key.data().ruleset)).collect(),
            net: self.net_rules.keys().filter_map(Result::ok).filter(|key| in_slot(key.data().ruleset)).collect(),
            policies: self.identity_policy.keys().filter_map(Result::ok).filter(|key| key.slot == slot).collect(),
        };
        self.remove_entries(&stale);
    }

    fn remove_entries(&mut self, entries: &InstalledEntries) {
        // Best effort: a key that is already gone is not an error here.
        for key in &entries.prefix {
            let _ = self.path_prefix.remove(key);
        }
        for key in &entries.suffix {
            let _ = self.path_suffix.remove(key);
        }
        for key in &entries.unix {
            let _ = self.unix_rules.remove(key);
        }
        for key in &entries.net {
            let _ = self.net_rules.remove(key);
        }
        for key in &entries.policies {
            let _ = self.identity_policy.remove(key);
        }
    }
}

fn write_paths<V: Pod>(
    trie: &mut LpmTrie<MapData, PathKey, V>,
    ruleset: u32,
    entries: &[PathEntry],
    written: &mut Vec<Key<PathKey>>,
    map: &'static str,
) -> Result<(), LoadError>
where
    PathRuleList: Into<V>,
{
    for entry in entries {
        let key = path_key(ruleset, &entry.bytes);
        trie.insert(&key, &entry.rules.into(), 0).map_err(map_error(map))?;
        written.push(key);
    }
    Ok(())
}

/// Path keys compare by ruleset and bytes.
fn bytemuck_eq(a: &PathKey, b: &PathKey) -> bool {
    a.ruleset == b.ruleset && a.path == b.path
}
