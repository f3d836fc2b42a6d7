//! Launch hardening for `rtid run`: what the launched command can never
//! regain, on either backend, because it is taken away before exec.
//!
//! Between fork and exec the child drops the identity's denied capabilities
//! from its bounding, ambient, inheritable, permitted and effective sets, sets
//! no_new_privs (so no setuid or file-capability binary gives them back), and
//! installs seccomp filters that refuse, with EPERM, the system calls that
//! would step outside the identity: creating user namespaces (a new one starts
//! with a full capability set of its own, so dropping capabilities does not stop
//! `unshare -Urm`), mounting, loading modules, kexec, bpf, tracing, and
//! signalling or tracing the daemon. Seccomp filters are inherited by every
//! descendant and cannot be removed; they hold before the call takes effect
//! whether or not the BPF LSM backend is active.
//!
//! Everything is built before fork (`Hardening::prepare`): after fork in a
//! multithreaded parent the child may only make async-signal-safe calls, so
//! `PreparedHardening::apply_in_child` issues raw prctl, capset and seccomp
//! system calls on prebuilt data and allocates nothing.

use std::{collections::BTreeMap, io};

use rtid_common::{IdentityPolicy, capability, guard};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
    TargetArch, sock_filter,
};

/// What `rtid run` takes away from the command it launches.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Hardening {
    /// Bit mask over capability numbers (`rtid_common::capability::NAMES`).
    pub denied_capabilities: u64,
    /// Refuse creating user namespaces (unshare, clone) and joining namespaces (setns).
    pub deny_user_namespaces: bool,
    /// The daemon's pid: signals, tracing and memory access aimed at it are refused.
    pub daemon_pid: Option<u32>,
}

impl Hardening {
    /// The hardening an identity's compiled policy asks for.
    pub fn from_policy(policy: &IdentityPolicy, daemon_pid: Option<u32>) -> Hardening {
        Hardening {
            denied_capabilities: policy.denied_capabilities,
            deny_user_namespaces: policy.guards & guard::DENY_USER_NAMESPACES != 0,
            daemon_pid,
        }
    }

    fn denies(&self, name: &str) -> bool {
        capability::number(name).is_some_and(|number| self.denied_capabilities & (1u64 << number) != 0)
    }

    /// Builds everything the child needs, before fork.
    pub fn prepare(&self) -> io::Result<PreparedHardening> {
        let current = capget()?;
        let denied_halves = [self.denied_capabilities as u32, (self.denied_capabilities >> 32) as u32];
        let mut sets = current;
        for (set, denied) in sets.iter_mut().zip(denied_halves) {
            set.effective &= !denied;
            set.permitted &= !denied;
            set.inheritable &= !denied;
        }
        // Dropping from the bounding set needs CAP_SETPCAP. Without it the
        // permitted set (cleared below) and no_new_privs still keep the
        // capabilities from coming back at exec.
        let setpcap = capability::number("CAP_SETPCAP").expect("known capability");
        let may_drop_bounding = current[0].effective & (1 << setpcap) != 0;
        let (errno_filter, enosys_filter) = self.filters()?;
        let mut filters = vec![errno_filter, enosys_filter];
        if let Some(x32) = refuse_x32() {
            filters.push(x32);
        }
        Ok(PreparedHardening {
            denied_capabilities: self.denied_capabilities,
            may_drop_bounding,
            capabilities: sets,
            filters,
        })
    }

    /// The EPERM filter (per-call rules below) and the ENOSYS filter (clone3,
    /// so libc falls back to clone, whose flags a filter can read).
    fn filters(&self) -> io::Result<(BpfProgram, BpfProgram)> {
        let arch = TargetArch::try_from(std::env::consts::ARCH)
            .map_err(|_| io::Error::other(format!("no seccomp support for {}", std::env::consts::ARCH)))?;
        let mut rules = RuleSet::default();
        let sys_admin = self.denies("CAP_SYS_ADMIN");
        let mut namespace_flags = 0u64;
        if self.deny_user_namespaces {
            namespace_flags |= libc::CLONE_NEWUSER as u64;
        }
        if sys_admin {
            namespace_flags |= (libc::CLONE_NEWNS
                | libc::CLONE_NEWCGROUP
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWPID
                | libc::CLONE_NEWNET) as u64;
        }
        for flag in (0..64).map(|bit| 1u64 << bit).filter(|flag| namespace_flags & flag != 0) {
            rules.when(libc::SYS_unshare, vec![masked_eq(0, flag)]);
            rules.when(libc::SYS_clone, vec![masked_eq(0, flag)]);
        }
        if sys_admin {
            // CLONE_NEWTIME shares its bit with the exit signal in clone(); only unshare has it.
            rules.when(libc::SYS_unshare, vec![masked_eq(0, CLONE_NEWTIME)]);
        }
        if self.deny_user_namespaces || sys_admin {
            rules.always(libc::SYS_setns);
        }
        if sys_admin {
            for call in [
                libc::SYS_mount,
                libc::SYS_umount2,
                libc::SYS_pivot_root,
                libc::SYS_move_mount,
                libc::SYS_open_tree,
                libc::SYS_fsopen,
                libc::SYS_fsmount,
                libc::SYS_fspick,
                libc::SYS_fsconfig,
                libc::SYS_mount_setattr,
            ] {
                rules.always(call);
            }
        }
        if self.denies("CAP_DAC_READ_SEARCH") {
            rules.always(libc::SYS_open_by_handle_at);
        }
        if self.denies("CAP_SYS_MODULE") {
            rules.always(libc::SYS_init_module);
            rules.always(libc::SYS_finit_module);
            rules.always(libc::SYS_delete_module);
        }
        if self.denies("CAP_SYS_BOOT") {
            rules.always(libc::SYS_kexec_load);
            rules.always(libc::SYS_kexec_file_load);
            rules.always(libc::SYS_reboot);
        }
        if self.denies("CAP_PERFMON") {
            rules.always(libc::SYS_perf_event_open);
        }
        #[cfg(target_arch = "x86_64")]
        if self.denies("CAP_SYS_RAWIO") {
            rules.always(libc::SYS_iopl);
            rules.always(libc::SYS_ioperm);
        }
        let trace_calls = [libc::SYS_ptrace, libc::SYS_process_vm_readv, libc::SYS_process_vm_writev];
        if self.denies("CAP_SYS_PTRACE") {
            for call in trace_calls {
                rules.always(call);
            }
        }
        // The bpf() syscall reaches every program and map: never from an identity.
        rules.always(libc::SYS_bpf);
        // io_uring submissions pass no syscall tracepoint: without BPF LSM an
        // open or connect through one would not be judged. Programs fall back
        // to plain syscalls when setup fails.
        rules.always(libc::SYS_io_uring_setup);
        // kill(-1, sig) signals every process the caller may signal, the daemon among them.
        rules.when(libc::SYS_kill, vec![dword_eq(0, u32::MAX as u64)]);
        if let Some(daemon) = self.daemon_pid {
            let pid = daemon as u64;
            let group = (daemon as i32).wrapping_neg() as u32 as u64;
            rules.when(libc::SYS_kill, vec![dword_eq(0, pid)]);
            rules.when(libc::SYS_kill, vec![dword_eq(0, group)]);
            rules.when(libc::SYS_tgkill, vec![dword_eq(0, pid)]);
            rules.when(libc::SYS_rt_sigqueueinfo, vec![dword_eq(0, pid)]);
            rules.when(libc::SYS_rt_tgsigqueueinfo, vec![dword_eq(0, pid)]);
            rules.when(libc::SYS_pidfd_open, vec![dword_eq(0, pid)]);
            // A pidfd can also be had by opening /proc/<pid>, which a filter
            // cannot tell apart: signalling through pidfds is refused outright.
            rules.always(libc::SYS_pidfd_send_signal);
            // tkill names a thread: the daemon's threads as they are now (the
            // BPF LSM task_kill hook covers threads it starts later).
            for tid in threads_of(daemon) {
                rules.when(libc::SYS_tkill, vec![dword_eq(0, tid as u64)]);
            }
            if !self.denies("CAP_SYS_PTRACE") {
                rules.when(libc::SYS_ptrace, vec![dword_eq(1, pid)]);
                rules.when(libc::SYS_process_vm_readv, vec![dword_eq(0, pid)]);
                rules.when(libc::SYS_process_vm_writev, vec![dword_eq(0, pid)]);
            }
        }
        let eperm =
            SeccompFilter::new(rules.build(), SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch)
                .map_err(filter_error)?;
        let enosys = SeccompFilter::new(
            [(libc::SYS_clone3, Vec::new())].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(libc::ENOSYS as u32),
            arch,
        )
        .map_err(filter_error)?;
        Ok((BpfProgram::try_from(eperm).map_err(filter_error)?, BpfProgram::try_from(enosys).map_err(filter_error)?))
    }
}

const CLONE_NEWTIME: u64 = 0x80;

fn filter_error(error: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("building the seccomp filter: {error}"))
}

fn masked_eq(arg: u8, flag: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(flag), flag).expect("valid condition")
}

/// Pids and signal numbers are C ints: compare the low 32 bits only.
fn dword_eq(arg: u8, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, value).expect("valid condition")
}

/// Per system call: refused always (no rules) or when any rule matches.
#[derive(Default)]
struct RuleSet {
    calls: BTreeMap<i64, Option<Vec<SeccompRule>>>,
}

impl RuleSet {
    fn always(&mut self, call: i64) {
        self.calls.insert(call, None);
    }

    fn when(&mut self, call: i64, conditions: Vec<SeccompCondition>) {
        let rule = SeccompRule::new(conditions).expect("non-empty conditions");
        match self.calls.entry(call).or_insert_with(|| Some(Vec::new())) {
            Some(rules) => rules.push(rule),
            None => {} // already refused whatever its arguments
        }
    }

    fn build(self) -> BTreeMap<i64, Vec<SeccompRule>> {
        self.calls.into_iter().map(|(call, rules)| (call, rules.unwrap_or_default())).collect()
    }
}

/// Thread ids of a process now (empty if it is gone or unreadable).
fn threads_of(pid: u32) -> Vec<u32> {
    let mut tids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|entries| entries.flatten().filter_map(|entry| entry.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default();
    if !tids.contains(&pid) {
        tids.push(pid);
    }
    tids
}

/// On x86_64 the x32 ABI reaches the same kernel with other system call
/// numbers (bit 30 set) under the same audit arch: refuse it whole, so no
/// refused call has a second number. Nothing rtid launches is an x32 program.
fn refuse_x32() -> Option<BpfProgram> {
    if !cfg!(target_arch = "x86_64") {
        return None;
    }
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    // seccomp_data: nr at offset 0 (the arch was checked by the filters before this one).
    let load_nr = sock_filter { code: 0x20, jt: 0, jf: 0, k: 0 }; // BPF_LD | BPF_W | BPF_ABS
    let jump_if_x32 = sock_filter { code: 0x35, jt: 0, jf: 1, k: X32_SYSCALL_BIT }; // BPF_JMP | BPF_JGE | BPF_K
    let refuse = sock_filter { code: 0x06, jt: 0, jf: 0, k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32 };
    let allow = sock_filter { code: 0x06, jt: 0, jf: 0, k: libc::SECCOMP_RET_ALLOW };
    Some(vec![load_nr, jump_if_x32, refuse, allow])
}

/// One 32-bit half of the capability sets, as capget/capset exchange them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapabilityData {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

#[repr(C)]
struct CapabilityHeader {
    version: u32,
    pid: i32,
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's capability sets (index 0: capabilities 0-31, 1: 32-63).
pub fn capget() -> io::Result<[CapabilityData; 2]> {
    let mut header = CapabilityHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapabilityData::default(); 2];
    // SAFETY: header and data are valid for the kernel to read and write (two
    // elements, as version 3 requires).
    let result = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut CapabilityHeader, data.as_mut_ptr()) };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

/// The hardening, built and ready to apply in a forked child.
pub struct PreparedHardening {
    denied_capabilities: u64,
    may_drop_bounding: bool,
    /// The sets the child keeps: the parent's, less the denied capabilities.
    capabilities: [CapabilityData; 2],
    /// Installed in order; each is inherited across fork and exec.
    filters: Vec<BpfProgram>,
}

/// `struct sock_fprog` (linux/filter.h).
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

impl PreparedHardening {
    /// Applies the hardening to the calling process. Returns the errno of the
    /// first step that failed.
    ///
    /// # Safety
    /// Meant for a freshly forked child of a possibly multithreaded parent:
    /// it only issues raw system calls on data built before fork (no
    /// allocation, no locks), which is async-signal-safe. It changes the
    /// calling process irreversibly.
    pub unsafe fn apply_in_child(&self) -> Result<(), i32> {
        for number in 0..64u32 {
            if self.denied_capabilities & (1u64 << number) == 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments only.
            if self.may_drop_bounding
                && unsafe { libc::prctl(libc::PR_CAPBSET_DROP, number as libc::c_ulong, 0, 0, 0) } != 0
            {
                // EINVAL: a capability this kernel does not know, so nothing can grant it.
                if errno() != libc::EINVAL {
                    return Err(errno());
                }
            }
            // SAFETY: as above. Fails with EINVAL where the kernel has no ambient
            // set (before 4.3) or does not know the capability: nothing to lower.
            unsafe {
                libc::prctl(
                    libc::PR_CAP_AMBIENT,
                    libc::PR_CAP_AMBIENT_LOWER as libc::c_ulong,
                    number as libc::c_ulong,
                    0,
                    0,
                )
            };
        }
        let mut header = CapabilityHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        // SAFETY: header and the two data elements are valid for the kernel to read.
        if unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut CapabilityHeader, self.capabilities.as_ptr()) }
            != 0
        {
            return Err(errno());
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(errno());
        }
        for filter in &self.filters {
            let program = SockFprog { len: filter.len() as libc::c_ushort, filter: filter.as_ptr() };
            // SAFETY: the kernel copies the program from a valid sock_fprog that
            // points at `filter.len()` instructions we own.
            let result = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0 as libc::c_ulong,
                    &program as *const SockFprog,
                )
            };
            if result != 0 {
                return Err(errno());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build_for_the_default_ceiling() {
        let hardening = Hardening {
            denied_capabilities: crate::policy::model::default_denied_mask(),
            deny_user_namespaces: true,
            daemon_pid: Some(std::process::id()),
        };
        let prepared = hardening.prepare().expect("prepared");
        assert!(prepared.filters.len() >= 2);
        assert!(prepared.filters.iter().all(|filter| !filter.is_empty() && filter.len() < 4096));
    }

    #[test]
    fn the_capability_sets_lose_the_denied_ones() {
        let denied = 1u64 << 21 | 1u64 << 39;
        let prepared = Hardening { denied_capabilities: denied, ..Hardening::default() }.prepare().expect("prepared");
        assert_eq!(prepared.capabilities[0].permitted & (1 << 21), 0);
        assert_eq!(prepared.capabilities[1].permitted & (1 << 7), 0);
    }
}
