//! Every map the programs share with userspace. Names are the contract with
//! rtid-userspace's loader; types come from rtid-common.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use rtid_common::{
    BackendConfig, IdentityId, IdentityPolicy, IdentityPolicyKey, IdentityStatus, KernelOffsets, NetKey, NetRuleList,
    PathKey, PathRuleList, ProcessIdentity, QuarantineState, RuntimeState, counter,
};

use crate::path::PathScratch;

use rtid_common::limits::{
    MAX_CGROUP_BINDINGS, MAX_IDENTITIES, MAX_NET_ENTRIES, MAX_PATH_ENTRIES, MAX_PROCESSES, MAX_UNIX_ENTRIES,
};

/// Identity of every tagged process, keyed by tgid. An untagged process's
/// only cost in every hook is one miss here.
#[map]
pub static PROCESS_IDENTITY: HashMap<u32, ProcessIdentity> = HashMap::with_max_entries(MAX_PROCESSES, 0);

/// Identities bound to cgroups (cgroup v2 id), so every process inside has the identity.
#[map]
pub static CGROUP_IDENTITY: HashMap<u64, IdentityId> = HashMap::with_max_entries(MAX_CGROUP_BINDINGS, 0);

/// Per-identity judgement settings, double-buffered by slot.
#[map]
pub static IDENTITY_POLICY: HashMap<IdentityPolicyKey, IdentityPolicy> =
    HashMap::with_max_entries(MAX_IDENTITIES * 2, 0);

/// Per-identity expiry and revocation.
#[map]
pub static IDENTITY_STATUS: HashMap<IdentityId, IdentityStatus> = HashMap::with_max_entries(MAX_IDENTITIES, 0);

/// Single-use rules (grants approved `--once`): rule id to uses left. When a
/// rule listed here decides and has no use left, the action is stepped up again.
#[map]
pub static ONCE_RULES: HashMap<u32, u32> = HashMap::with_max_entries(rtid_common::limits::MAX_ONCE_RULES, 0);

/// Per-identity quarantine thresholds and counters.
#[map]
pub static QUARANTINE: HashMap<IdentityId, QuarantineState> =
    HashMap::with_max_entries(rtid_common::limits::MAX_QUARANTINES, 0);

/// Active policy slot and generation.
#[map]
pub static RUNTIME_STATE: Array<RuntimeState> = Array::with_max_entries(1, 0);

/// Which hook families LSM enforces (the tracepoint fallbacks then only observe).
#[map]
pub static BACKEND_CONFIG: Array<BackendConfig> = Array::with_max_entries(1, 0);

/// File and exec rules keyed by the path, forward.
#[map]
pub static PATH_PREFIX_RULES: LpmTrie<PathKey, PathRuleList> = LpmTrie::with_max_entries(MAX_PATH_ENTRIES, 0);

/// File and exec rules keyed by the path, reversed (suffix and file-name rules).
#[map]
pub static PATH_SUFFIX_RULES: LpmTrie<PathKey, PathRuleList> = LpmTrie::with_max_entries(MAX_PATH_ENTRIES, 0);

/// AF_UNIX socket path rules.
#[map]
pub static UNIX_RULES: LpmTrie<PathKey, PathRuleList> = LpmTrie::with_max_entries(MAX_UNIX_ENTRIES, 0);

/// Exec selectors: a binary's exact path (NUL-terminated, ruleset
/// `SELECTOR_RULESET`) to the identity an untagged process takes when it execs it.
#[map]
pub static EXEC_SELECTORS: LpmTrie<PathKey, IdentityId> = LpmTrie::with_max_entries(1024, 0);

/// IPv4 (v4-mapped) and IPv6 rules.
#[map]
pub static NET_RULES: LpmTrie<NetKey, NetRuleList> = LpmTrie::with_max_entries(MAX_NET_ENTRIES, 0);

/// Threads whose connect or send a cgroup socket hook refused with a kill
/// verdict (key: pid_tgid). Those hooks may not send signals on most kernels
/// (6.1 and 6.12 refuse `bpf_send_signal` there), so the kill is delivered at the
/// syscall's exit, after the refusal and before the thread returns to user space.
#[map]
pub static PENDING_KILLS: HashMap<u64, u8> = HashMap::with_max_entries(1024, 0);

/// rtid's own files (ruleset `PROTECTED_RULESET`, keyed like the path rule
/// tries: directories as `dir/` without NUL, exact paths with their NUL) to
/// the `protection::*` id that guards them. Judged before any policy rule.
#[map]
pub static PROTECTED_PATHS: LpmTrie<PathKey, u32> =
    LpmTrie::with_max_entries(rtid_common::limits::MAX_PROTECTED_PATHS, 0);

/// Children of tagged processes that the full process table could not tag
/// (tgid to the identity they should have had). `sched_process_fork` runs in
/// the parent, where a signal would hit the parent; each is killed in its
/// own context on its way back from fork (`sys_exit_fork`).
#[map]
pub static UNTAGGABLE: HashMap<u32, IdentityId> = HashMap::with_max_entries(rtid_common::limits::MAX_UNTAGGABLE, 0);

/// Syscall number to what using it needs, for the fallback of the
/// capability ceiling (`sys_enter_privileged`): the capability number in the
/// low byte, a `privileged_check::*` in the next. Filled by userspace with
/// this architecture's numbers.
#[map]
pub static PRIVILEGED_SYSCALLS: HashMap<u32, u32> = HashMap::with_max_entries(64, 0);

/// Events to userspace. Size is set by the loader.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// Per-CPU counters (`rtid_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Per-CPU scratch space for path resolution and LPM keys (too big for the 512-byte stack).
#[map]
pub static PATH_SCRATCH: PerCpuArray<PathScratch> = PerCpuArray::with_max_entries(1, 0);

/// Kernel struct offsets, from BTF at load time (see `rtid_common::KernelOffsets`).
#[unsafe(no_mangle)]
pub static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_real_parent: 0,
    task_group_leader: 0,
    task_start_boottime: 0,
    task_files: 0,
    task_signal: 0,
    signal_live: 0,
    files_fdt: 0,
    fdtable_fd: 0,
    fdtable_max_fds: 0,
    file_f_path: 0,
    file_f_mode: 0,
    file_f_flags: 0,
    path_mnt: 0,
    path_dentry: 0,
    dentry_d_parent: 0,
    dentry_d_name: 0,
    qstr_len: 0,
    qstr_name: 0,
    vfsmount_mnt_root: 0,
    mount_mnt: 0,
    mount_mnt_parent: 0,
    mount_mnt_mountpoint: 0,
    mount_mnt_ns: 0,
    binprm_file: 0,
    socket_type: 0,
    msghdr_msg_name: 0,
    msghdr_msg_namelen: 0,
    unix_sock_path: 0,
    valid: 0,
};

/// Reads one kernel offset through a volatile load so the compiler cannot fold
/// the zero initialiser: the real values are patched into `.rodata` at load time.
macro_rules! offset {
    ($field:ident) => {{
        // SAFETY: KERNEL_OFFSETS is a valid, aligned static; the volatile
        // read only prevents constant folding.
        #[allow(unused_unsafe)]
        let value = unsafe { core::ptr::read_volatile(&$crate::maps::KERNEL_OFFSETS.$field) };
        value as usize
    }};
}
pub(crate) use offset;

/// Adds one to a per-CPU counter.
#[inline(always)]
pub fn count(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, and BPF programs are not preempted on one CPU
        // by another instance of a program that could write it concurrently
        // (tracing programs run with migration and preemption disabled).
        unsafe { *slot += 1 };
    }
}
