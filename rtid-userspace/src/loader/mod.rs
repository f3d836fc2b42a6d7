//! Loading rtid's kernel programs, attaching them where this kernel allows,
//! and owning their maps: the only writer of policy, labels and identity status.

pub mod attachments;
pub mod btf_offsets;
pub mod cgroup;
mod clock;
pub mod compat;
mod explain;
mod lsm;
mod maps;
mod pins;
mod procfs_stat;
mod protections;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSockAddr, TracePoint},
};
use rtid_common::{IdentityId, IdentityStatus, KernelOffsets, ProcessIdentity, label_source};

pub use clock::boot_time_ns;
pub use maps::{Counters, KernelMaps};
pub use protections::{ProtectedPath, ProtectionLevel, ProtectionStatus};

use crate::{
    events::EventReader,
    policy::{CompiledPolicy, RuleInfo},
};

/// The eBPF object built by build.rs (aya-build) from rtid-ebpf.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rtid"));

/// Default ring buffer size: about 14,000 events of 600 bytes.
pub const DEFAULT_RING_BYTES: u32 = 8 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("reading kernel struct offsets from BTF: {0}")]
    Offsets(#[from] btf_offsets::OffsetError),
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("program {program}: {source}")]
    Program { program: &'static str, source: aya::programs::ProgramError },
    #[error("map {map}: {problem}")]
    Map { map: &'static str, problem: String },
    #[error("kernel BTF: {0}")]
    Btf(#[from] aya::BtfError),
    #[error("cgroup v2: {0}")]
    Cgroup(std::io::Error),
    #[error("process {pid}: {problem}")]
    Process { pid: u32, problem: String },
    #[error("pinning under {path}: {problem}")]
    Pin { path: String, problem: String },
    #[error("BPF LSM required but unavailable: {0}")]
    LsmUnavailable(String),
    #[error("unknown identity {0:?} (not in the policy in force)")]
    UnknownIdentity(String),
    /// The kernel lacks a feature rtid needs (named, never a verifier log).
    #[error(transparent)]
    Compat(#[from] compat::CompatError),
}

/// How each kind of action is enforced on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackendReport {
    pub file: rtid_common::Backend,
    pub network: rtid_common::Backend,
    pub exec: rtid_common::Backend,
    /// AF_UNIX connects and sends.
    pub unix: rtid_common::Backend,
    /// Self-protection: agents' bpf() calls.
    pub protect: rtid_common::Backend,
}

/// Whether to use BPF LSM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LsmMode {
    /// Use it per hook where the kernel runs it, fall back elsewhere.
    #[default]
    Auto,
    /// Never: tracepoints and cgroup hooks only.
    Off,
    /// Fail to load unless every LSM hook attaches.
    Required,
}

/// Options for loading.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Bytes of the events ring buffer (a power of two, page multiple).
    pub ring_bytes: u32,
    pub lsm: LsmMode,
    /// Pin maps and links here (e.g. /sys/fs/bpf/rtid) so enforcement outlives
    /// the process; if pins are already there, adopt them instead of loading.
    pub pin_dir: Option<PathBuf>,
    /// Size of the process table (`rtid_common::limits::MAX_PROCESSES` when
    /// unset): children of tagged processes past it are killed, not left untagged.
    pub max_processes: Option<u32>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { ring_bytes: DEFAULT_RING_BYTES, lsm: LsmMode::Auto, pin_dir: None, max_processes: None }
    }
}

/// The loaded, attached programs and their maps. Dropping it detaches everything.
pub struct RtidKernel {
    /// Owns the programs and their unpinned links; dropping detaches those.
    /// `None` when adopted from pins.
    _ebpf: Option<Ebpf>,
    /// Where maps and links are pinned, if they are.
    pin_dir: Option<PathBuf>,
    maps: KernelMaps,
    events: Option<EventReader>,
    backends: BackendReport,
    lsm_note: Option<String>,
    /// The kernel, its BTF, and why an action falls back from BPF LSM.
    kernel: compat::KernelReport,
    /// Identity name to the numeric id processes carry; ids are never reused
    /// while loaded, so a reload keeps every labeled process's identity.
    identity_ids: BTreeMap<String, IdentityId>,
    policy: CompiledPolicy,
    /// Policies installed so far: what userspace derives from the policy
    /// in force is valid while this stays the same.
    installs: u64,
    /// The daemon's own references to every pinned link, checked periodically.
    attachments: attachments::Attachments,
}

/// Syscall-exit tracepoints judging opens where LSM `file_open` is unavailable:
/// one program (`sys_exit_open`) attached to each.
const FILE_TRACEPOINTS: [&str; 5] =
    ["sys_exit_openat", "sys_exit_open", "sys_exit_openat2", "sys_exit_creat", "sys_exit_open_by_handle_at"];
/// Syscall-entry tracepoints judging AF_UNIX connects and sends where LSM socket hooks are unavailable.
const UNIX_TRACEPOINTS: [&str; 2] = ["sys_enter_connect", "sys_enter_sendto"];
/// Syscall-exit tracepoints where a kill verdict of a cgroup socket hook is
/// delivered (those hooks may not signal): one program (`sys_exit_net`) on each.
const NET_EXIT_TRACEPOINTS: [&str; 4] =
    ["sys_exit_connect", "sys_exit_sendto", "sys_exit_sendmsg", "sys_exit_sendmmsg"];
const SCHED_TRACEPOINTS: [&str; 3] = ["sched_process_fork", "sched_process_exec", "sched_process_exit"];
const CGROUP_SOCK_PROGRAMS: [&str; 4] = ["connect4", "connect6", "sendmsg4", "sendmsg6"];

impl RtidKernel {
    /// Loads and attaches every program, with kernel offsets from the running
    /// kernel's BTF. A feature this kernel lacks is refused by name, before
    /// anything is loaded or pinned where it can be (see [`compat`]).
    pub fn load(options: &LoadOptions) -> Result<RtidKernel, LoadError> {
        RtidKernel::load_checked(options).map_err(compat::name_refusal)
    }

    fn load_checked(options: &LoadOptions) -> Result<RtidKernel, LoadError> {
        if let Some(dir) = &options.pin_dir
            && pins::present(dir)
        {
            return RtidKernel::adopt(dir);
        }
        let mut compat = compat::check(EBPF_OBJECT)?;
        let pins = pins::Pinner::new(options.pin_dir.as_deref())?;
        // Opened once: on kernels whose BTF cannot be mapped, each parse costs
        // a third of a second natively and far more under emulation.
        let kernel_btf = btf_offsets::running_kernel_btf()?;
        let offsets: KernelOffsets = btf_offsets::offsets(&kernel_btf)?;
        let mut ebpf = EbpfLoader::new()
            .override_global("KERNEL_OFFSETS", &offsets, true)
            .map_max_entries("EVENTS", options.ring_bytes)
            .map_max_entries("PROCESS_IDENTITY", protections::process_capacity(options))
            .load(EBPF_OBJECT)?;
        let btf = Btf::from_sys_fs()?;
        let lsm = match options.lsm {
            LsmMode::Off => lsm::LsmAttachment::default(),
            LsmMode::Auto | LsmMode::Required => lsm::attach(&mut ebpf, &btf, &kernel_btf, &pins, &mut compat),
        };
        if options.lsm == LsmMode::Required && !lsm.all() {
            return Err(LoadError::LsmUnavailable(lsm.reason.clone().unwrap_or_default()));
        }
        compat.require(&lsm)?;
        attach_sched(&mut ebpf, &btf, &pins)?;
        if !lsm.file {
            attach_tracepoint(&mut ebpf, "sys_exit_open", &FILE_TRACEPOINTS, &pins)?;
        }
        if !lsm.net {
            for name in UNIX_TRACEPOINTS {
                attach_tracepoint(&mut ebpf, name, &[name], &pins)?;
            }
            attach_cgroup_sock(&mut ebpf, &pins)?;
            attach_tracepoint(&mut ebpf, "sys_exit_net", &NET_EXIT_TRACEPOINTS, &pins)?;
        }
        if !lsm.protect {
            attach_tracepoint(&mut ebpf, "sys_enter_bpf", &["sys_enter_bpf"], &pins)?;
        }
        protections::attach_fallbacks(&mut ebpf, &lsm, &pins)?;
        pins.pin_maps(&ebpf)?;
        let mut maps = KernelMaps::take(&mut ebpf)?;
        maps.set_backend_config(&lsm.config())?;
        protections::prepare_maps(&mut maps, &lsm, options)?;
        let backends = lsm.report();
        let events = Some(EventReader::new(maps.take_events()?));
        let attachments = pins.keep()?;
        Ok(RtidKernel {
            _ebpf: Some(ebpf),
            pin_dir: options.pin_dir.clone(),
            maps,
            events,
            kernel: compat.report(&backends),
            backends,
            lsm_note: lsm.reason,
            identity_ids: BTreeMap::new(),
            policy: CompiledPolicy::default(),
            installs: 0,
            attachments,
        })
    }

    /// Opens the maps pinned by an earlier load; the programs are still
    /// attached through their pinned links and keep enforcing meanwhile.
    fn adopt(dir: &Path) -> Result<RtidKernel, LoadError> {
        // Refuses pins from an incompatible build before touching a map.
        let layout = attachments::check_layout(dir)?;
        let attachments = attachments::Attachments::adopted(dir, &layout.links);
        let mut maps = KernelMaps::from_pins(&dir.join("maps"))?;
        let config = maps.backend_config()?;
        let lsm = lsm::LsmAttachment::from_config(&config);
        let events = Some(EventReader::new(maps.take_events()?));
        Ok(RtidKernel {
            _ebpf: None,
            pin_dir: Some(dir.to_path_buf()),
            maps,
            events,
            kernel: compat::KernelReport::adopted(&lsm.report()),
            backends: lsm.report(),
            lsm_note: Some("adopted from pins".into()),
            identity_ids: BTreeMap::new(),
            policy: CompiledPolicy::default(),
            installs: 0,
            attachments,
        })
    }

    /// Checks that every pinned link is still attached and pinned as this
    /// instance left it; pins again or re-attaches what it can (see [`attachments`]).
    pub fn check_attachments(&mut self) -> attachments::Check {
        self.attachments.check()
    }

    /// Whether this instance adopted pins left by an earlier one.
    pub fn adopted(&self) -> bool {
        self._ebpf.is_none()
    }

    pub fn pin_dir(&self) -> Option<&Path> {
        self.pin_dir.as_deref()
    }

    /// Identity ids from saved state, so adopted maps keep their meaning.
    pub fn restore_identity_ids(&mut self, ids: BTreeMap<String, IdentityId>) {
        self.identity_ids = ids;
    }

    pub fn identity_ids(&self) -> &BTreeMap<String, IdentityId> {
        &self.identity_ids
    }

    /// Removes the pins (links detach, maps go when the last user closes them).
    pub fn unpin(&mut self) -> std::io::Result<()> {
        match self.pin_dir.take() {
            Some(dir) => pins::remove(&dir),
            None => Ok(()),
        }
    }

    pub fn backends(&self) -> BackendReport {
        self.backends
    }

    /// Why BPF LSM is not in use, where it is not.
    pub fn lsm_note(&self) -> Option<&str> {
        self.lsm_note.as_deref()
    }

    /// The kernel release, its BTF, and which actions fall back from BPF LSM and why.
    pub fn kernel_report(&self) -> &compat::KernelReport {
        &self.kernel
    }

    /// The event stream; can be taken once.
    pub fn take_events(&mut self) -> Option<EventReader> {
        self.events.take()
    }

    pub fn counters(&self) -> Result<Counters, LoadError> {
        self.maps.counters()
    }

    /// The compiled policy in force.
    pub fn policy(&self) -> &CompiledPolicy {
        &self.policy
    }

    pub fn rule_info(&self, rule_id: u32) -> Option<&RuleInfo> {
        self.policy.rules.get(&rule_id)
    }

    pub fn identity_id(&self, name: &str) -> Option<IdentityId> {
        self.identity_ids.get(name).copied()
    }

    pub fn identity_name(&self, id: IdentityId) -> Option<&str> {
        self.identity_ids.iter().find(|(_, value)| **value == id).map(|(name, _)| name.as_str())
    }

    /// Swaps in a compiled policy atomically: the new entries are written under
    /// the inactive slot, then one write flips the slot. On error nothing changes.
    pub fn install(&mut self, policy: CompiledPolicy) -> Result<(), LoadError> {
        for identity in &policy.identities {
            if !self.identity_ids.contains_key(&identity.spec.name) {
                let next = self.identity_ids.values().max().copied().unwrap_or(0) + 1;
                self.identity_ids.insert(identity.spec.name.clone(), next);
            }
        }
        self.maps.install(&policy, &self.identity_ids)?;
        // Quarantine thresholds: a tripped quarantine stays tripped across
        // reloads (only `release` lifts it); counts restart otherwise.
        for identity in &policy.identities {
            let id = self.identity_ids[&identity.spec.name];
            let state = identity.spec.quarantine.map(|quarantine| rtid_common::QuarantineState {
                after: quarantine.after,
                then_kill: quarantine.kill as u32,
                window_ns: quarantine.within.as_nanos() as u64,
                tripped: self.maps.quarantine(id).map_or(0, |current| current.tripped),
                ..Default::default()
            });
            self.maps.set_quarantine(id, state)?;
        }
        self.policy = policy;
        self.installs += 1;
        Ok(())
    }

    /// Labels a running process (and, through fork inheritance, its future children).
    pub fn label_pid(&mut self, pid: u32, identity: &str) -> Result<(), LoadError> {
        let id = self.identity_id(identity).ok_or_else(|| LoadError::UnknownIdentity(identity.into()))?;
        let before = procfs_stat::start_time_ns(pid).map_err(|problem| LoadError::Process { pid, problem })?;
        let entry = ProcessIdentity { identity: id, source: label_source::LABEL, start_boottime_ns: before };
        self.maps.set_process(pid, entry)?;
        // If the pid died and was reused between the read and the write, the
        // start time differs: take the label back rather than tag a stranger.
        match procfs_stat::start_time_ns(pid) {
            Ok(after) if after == before => {}
            _ => {
                self.maps.remove_process(pid)?;
                return Err(LoadError::Process { pid, problem: "exited while being labeled".into() });
            }
        }
        self.start_identity_clock(identity)?;
        Ok(())
    }

    pub fn unlabel_pid(&mut self, pid: u32) -> Result<(), LoadError> {
        self.maps.remove_process(pid)
    }

    /// The identity a process carries in the kernel, if any.
    pub fn process_identity(&self, pid: u32) -> Result<Option<ProcessIdentity>, LoadError> {
        self.maps.process(pid)
    }

    /// Processes that carry `identity` in the kernel.
    pub fn processes_of(&self, identity: &str) -> Vec<u32> {
        match self.identity_id(identity) {
            Some(id) => self
                .maps
                .processes()
                .into_iter()
                .filter(|(_, entry)| entry.identity == id)
                .map(|(pid, _)| pid)
                .collect(),
            None => Vec::new(),
        }
    }

    /// Binds a cgroup (and its descendants) to an identity.
    pub fn bind_cgroup(&mut self, cgroup: &Path, identity: &str) -> Result<(), LoadError> {
        let id = self.identity_id(identity).ok_or_else(|| LoadError::UnknownIdentity(identity.into()))?;
        let cgroup_id = cgroup::cgroup_id(cgroup).map_err(LoadError::Cgroup)?;
        self.maps.bind_cgroup(cgroup_id, id)
    }

    /// Single-use rules, named by their policy ids (grants approved `--once`).
    pub fn set_once_rules(&mut self, names: &[String]) -> Result<(), LoadError> {
        let ids: Vec<u32> =
            self.policy.rules.iter().filter(|(_, info)| names.contains(&info.id)).map(|(id, _)| *id).collect();
        self.maps.set_once_rules(&ids)
    }

    /// Exec selectors: an untagged process that execs one of these binaries
    /// takes the identity, in the kernel, before the binary runs.
    pub fn set_exec_selectors(&mut self, selectors: &[(String, String)]) -> Result<(), LoadError> {
        let mut resolved = Vec::new();
        for (path, identity) in selectors {
            let id = self.identity_id(identity).ok_or_else(|| LoadError::UnknownIdentity(identity.clone()))?;
            resolved.push((path.clone(), id));
        }
        self.maps.set_exec_selectors(&resolved)
    }

    /// Starts an identity's TTL at its first assignment.
    fn start_identity_clock(&mut self, identity: &str) -> Result<(), LoadError> {
        let Some(ttl) = self.policy.identity(identity).and_then(|compiled| compiled.spec.ttl) else {
            return Ok(());
        };
        let id = self.identity_id(identity).ok_or_else(|| LoadError::UnknownIdentity(identity.into()))?;
        let mut status = self.maps.status(id)?;
        if status.expires_at_ns == 0 {
            status.expires_at_ns = boot_time_ns() + ttl.as_nanos() as u64;
            self.maps.set_status(id, status)?;
        }
        Ok(())
    }

    /// Sets or clears an identity's expiry, counted from now.
    pub fn set_identity_expiry(&mut self, identity: &str, expires_in: Option<Duration>) -> Result<(), LoadError> {
        let id = self.identity_id(identity).ok_or_else(|| LoadError::UnknownIdentity(identity.into()))?;
        let mut status = self.maps.status(id)?;
        status.expires_at_ns = expires_in.map_or(0, |ttl| boot_time_ns() + ttl.as_nanos() as u64);
        self.maps.set_status(id, status)
    }

    /// Entries in use and capacity of the kernel maps.
    pub fn map_fill(&self) -> Vec<(String, usize, u32)> {
        self.maps.fill()
    }

    /// The policy generation in force.
    /// How many policies this instance installed (changes with every install).
    pub fn installs(&self) -> u64 {
        self.installs
    }

    pub fn generation(&self) -> Result<u32, LoadError> {
        Ok(self.maps.runtime_state()?.generation)
    }

    pub fn identity_status(&self, id: IdentityId) -> Result<IdentityStatus, LoadError> {
        self.maps.status(id)
    }

    /// What the kernel would decide for `identity` doing `action` now: the
    /// same live maps and the same decision functions the programs use.
    pub fn explain(
        &self,
        identity: &str,
        action: &crate::api::ExplainAction,
    ) -> Result<crate::api::Explanation, LoadError> {
        explain::explain(self, identity, action)
    }

    /// Revokes (or restores) an identity: one map write, effective on the next
    /// call. Restoring also lifts a tripped quarantine.
    pub fn set_revoked(&mut self, identity: &str, revoked: bool) -> Result<(), LoadError> {
        let id = self.identity_id(identity).ok_or_else(|| LoadError::UnknownIdentity(identity.into()))?;
        if !revoked {
            if let Some(mut quarantine) = self.maps.quarantine(id) {
                quarantine.tripped = 0;
                quarantine.count = 0;
                self.maps.set_quarantine(id, Some(quarantine))?;
            }
        }
        let status = IdentityStatus { revoked: revoked as u32, ..self.maps.status(id)? };
        self.maps.set_status(id, status)
    }
}

fn attach_sched(ebpf: &mut Ebpf, btf: &Btf, pins: &pins::Pinner) -> Result<(), LoadError> {
    for name in SCHED_TRACEPOINTS {
        let program: &mut BtfTracePoint = program_mut(ebpf, name)?;
        program.load(name, btf).map_err(|source| LoadError::Program { program: name, source })?;
        let link = program.attach().map_err(|source| LoadError::Program { program: name, source })?;
        if pins.enabled() {
            let link = program.take_link(link).map_err(|source| LoadError::Program { program: name, source })?;
            pins.pin_link(name, link.into())?;
        }
    }
    Ok(())
}

/// Whether tracefs lists `syscalls/<name>`. Syscalls differ between
/// architectures (arm64 has no open, creat or other legacy calls): a syscall
/// the kernel does not have cannot be used to get around rtid.
fn syscall_tracepoint_exists(name: &str) -> bool {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .any(|root| Path::new(root).join("events/syscalls").join(name).is_dir())
}

/// Loads the syscall tracepoint program `program` once and attaches it to each
/// of `tracepoints` this kernel has; the first must exist.
fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program: &'static str,
    tracepoints: &[&'static str],
    pins: &pins::Pinner,
) -> Result<(), LoadError> {
    let loaded: &mut TracePoint = program_mut(ebpf, program)?;
    loaded.load().map_err(|source| LoadError::Program { program, source })?;
    for (index, &tracepoint) in tracepoints.iter().enumerate() {
        if index > 0 && !syscall_tracepoint_exists(tracepoint) {
            continue;
        }
        let link = loaded
            .attach("syscalls", tracepoint)
            .map_err(|source| LoadError::Program { program: tracepoint, source })?;
        if pins.enabled() {
            let link = loaded.take_link(link).map_err(|source| LoadError::Program { program: tracepoint, source })?;
            let link =
                aya::programs::links::FdLink::try_from(link).map_err(|error| pins::link_error(tracepoint, error))?;
            pins.pin_link(tracepoint, link)?;
        }
    }
    Ok(())
}

fn attach_cgroup_sock(ebpf: &mut Ebpf, pins: &pins::Pinner) -> Result<(), LoadError> {
    let root = cgroup::cgroup2_root().map_err(LoadError::Cgroup)?;
    let root = std::fs::File::open(&root).map_err(LoadError::Cgroup)?;
    for name in CGROUP_SOCK_PROGRAMS {
        let program: &mut CgroupSockAddr = program_mut(ebpf, name)?;
        program.load().map_err(|source| LoadError::Program { program: name, source })?;
        // Coexist with other cgroup programs where the kernel allows it.
        let link = match program.attach(&root, CgroupAttachMode::AllowMultiple) {
            Ok(link) => link,
            Err(_) => program
                .attach(&root, CgroupAttachMode::Single)
                .map_err(|source| LoadError::Program { program: name, source })?,
        };
        if pins.enabled() {
            let link = program.take_link(link).map_err(|source| LoadError::Program { program: name, source })?;
            let link = aya::programs::links::FdLink::try_from(link).map_err(|error| pins::link_error(name, error))?;
            pins.pin_link(name, link)?;
        }
    }
    Ok(())
}

fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, LoadError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(LoadError::Map { map: name, problem: "program missing from the eBPF object".into() })?;
    program.try_into().map_err(|source| LoadError::Program { program: name, source })
}
