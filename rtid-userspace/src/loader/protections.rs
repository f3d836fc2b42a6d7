//! rtid's built-in protections of itself and the host (`rtid_common::protection`):
//! the fallback programs that stand in where BPF LSM does not serve them, the
//! tables those programs read, and what holds on this kernel.
//!
//! What each protection does, by backend (the threat model):
//!
//! | protection | BPF LSM | fallback (tracepoints) |
//! |---|---|---|
//! | `rtid/bpf` | bpf() fails with EPERM | caller killed at syscall entry; the call still runs |
//! | `rtid/protected` | write opens, unlink, rmdir, rename (from/to), link (of/to), truncate, chmod, chown, mkdir/mknod/symlink/O_CREAT under a protected path fail with EPERM | write opens: opener killed on the way out of open, before it can write (O_TRUNC truncates first); other changes: caller killed at syscall entry when its path argument is an absolute string under a protected path (ftruncate/fchmod/fchown: the descriptor's resolved path), the change happens |
//! | `rtid/control-socket` | connect fails with EPERM (`socket_connect` on the name given, `unix_stream_connect` on the socket found) | caller killed at connect entry when the name given is protected; the connection is made, no request is sent |
//! | `rtid/daemon-signal` | any signal but 0 to the daemon fails with EPERM | kill/tkill/tgkill aimed at the daemon's tgid, or kill(-1): caller killed at entry, the signal is delivered |
//! | `rtid/daemon-trace` | ptrace, process_vm_readv/writev, /proc/<pid>/mem and other ptrace-gated /proc files fail with EPERM | /proc/<daemon>/mem opens: opener killed before the open returns; ptrace and process_vm_*: caller killed at entry, the call runs |
//! | `rtid/capability` | the capability check fails (EPERM from the call) | the privileged syscalls in `PRIVILEGED`: caller killed at entry, the call runs |
//! | `rtid/user-namespace` | unshare/clone with CLONE_NEWUSER fails with EPERM | caller killed at entry of unshare/clone/clone3 with CLONE_NEWUSER, the call runs |
//! | `rtid/capacity` | a child of a tagged process that the full table cannot tag is killed before its first instruction | same |

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{TracePoint, links::FdLink},
};
use rtid_common::{PATH_KEY_BYTES, privileged_check, protection};
use serde::{Deserialize, Serialize};

use super::{
    KernelMaps, LoadError, LoadOptions, RtidKernel, compat::Family, lsm::LsmAttachment, pins, program_mut,
    syscall_tracepoint_exists,
};

/// Fallback programs of the integrity families: (program, tracepoints, family
/// whose BPF LSM hooks it stands in for). The first tracepoint of each must
/// exist on every architecture. Mirrored by `compat` (`need`, `syscall_attachments`).
pub const FALLBACK_TRACEPOINTS: [(&str, &[&str], Family); 11] = [
    ("sys_enter_kill", &["sys_enter_kill", "sys_enter_tkill"], Family::Daemon),
    ("sys_enter_tgkill", &["sys_enter_tgkill"], Family::Daemon),
    ("sys_enter_ptrace", &["sys_enter_ptrace"], Family::Daemon),
    ("sys_enter_process_vm", &["sys_enter_process_vm_writev", "sys_enter_process_vm_readv"], Family::Daemon),
    ("sys_enter_privileged", &PRIVILEGED_TRACEPOINTS, Family::Capability),
    (
        "sys_enter_path_arg0",
        &[
            "sys_enter_truncate",
            "sys_enter_unlink",
            "sys_enter_rmdir",
            "sys_enter_mkdir",
            "sys_enter_mknod",
            "sys_enter_chmod",
            "sys_enter_chown",
            "sys_enter_lchown",
            "sys_enter_rename",
            "sys_enter_link",
        ],
        Family::Paths,
    ),
    (
        "sys_enter_path_arg1",
        &[
            "sys_enter_unlinkat",
            "sys_enter_mkdirat",
            "sys_enter_mknodat",
            "sys_enter_fchmodat",
            "sys_enter_fchmodat2",
            "sys_enter_fchownat",
            "sys_enter_renameat",
            "sys_enter_renameat2",
            "sys_enter_linkat",
            "sys_enter_rename",
            "sys_enter_link",
            "sys_enter_symlink",
        ],
        Family::Paths,
    ),
    ("sys_enter_path_arg2", &["sys_enter_symlinkat"], Family::Paths),
    ("sys_enter_path_arg3", &["sys_enter_renameat2", "sys_enter_renameat", "sys_enter_linkat"], Family::Paths),
    ("sys_enter_fd_change", &["sys_enter_ftruncate", "sys_enter_fchmod", "sys_enter_fchown"], Family::Paths),
    ("sys_exit_fork", &["sys_exit_clone", "sys_exit_clone3", "sys_exit_fork", "sys_exit_vfork"], Family::Capacity),
];

const CAP_NET_RAW: u32 = 13;
const CAP_SYS_MODULE: u32 = 16;
const CAP_SYS_RAWIO: u32 = 17;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_BOOT: u32 = 22;
const CAP_SYS_TIME: u32 = 25;
const CAP_DAC_READ_SEARCH: u32 = 2;

/// The syscalls the capability ceiling's fallback watches: (tracepoint,
/// capability the call needs, `privileged_check`). Where a call needs one
/// of several, the one most identities deny.
pub const PRIVILEGED: [(&str, u32, u32); 29] = [
    ("sys_enter_mount", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_umount", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_move_mount", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_fsopen", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_fsmount", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_fspick", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_open_tree", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_mount_setattr", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_pivot_root", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_setns", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_unshare", CAP_SYS_ADMIN, privileged_check::NAMESPACE_FLAGS),
    ("sys_enter_clone", CAP_SYS_ADMIN, privileged_check::NAMESPACE_FLAGS),
    ("sys_enter_clone3", CAP_SYS_ADMIN, privileged_check::CLONE3_FLAGS),
    ("sys_enter_init_module", CAP_SYS_MODULE, privileged_check::ALWAYS),
    ("sys_enter_finit_module", CAP_SYS_MODULE, privileged_check::ALWAYS),
    ("sys_enter_delete_module", CAP_SYS_MODULE, privileged_check::ALWAYS),
    ("sys_enter_kexec_load", CAP_SYS_BOOT, privileged_check::ALWAYS),
    ("sys_enter_kexec_file_load", CAP_SYS_BOOT, privileged_check::ALWAYS),
    ("sys_enter_reboot", CAP_SYS_BOOT, privileged_check::ALWAYS),
    ("sys_enter_open_by_handle_at", CAP_DAC_READ_SEARCH, privileged_check::ALWAYS),
    ("sys_enter_socket", CAP_NET_RAW, privileged_check::RAW_SOCKET),
    ("sys_enter_ioperm", CAP_SYS_RAWIO, privileged_check::ALWAYS),
    ("sys_enter_iopl", CAP_SYS_RAWIO, privileged_check::ALWAYS),
    ("sys_enter_sethostname", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_setdomainname", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_swapon", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_swapoff", CAP_SYS_ADMIN, privileged_check::ALWAYS),
    ("sys_enter_settimeofday", CAP_SYS_TIME, privileged_check::ALWAYS),
    ("sys_enter_clock_settime", CAP_SYS_TIME, privileged_check::ALWAYS),
];

const fn tracepoint_names<const N: usize>(table: &[(&'static str, u32, u32); N]) -> [&'static str; N] {
    let mut names = [""; N];
    let mut index = 0;
    while index < N {
        names[index] = table[index].0;
        index += 1;
    }
    names
}

const PRIVILEGED_TRACEPOINTS: [&str; PRIVILEGED.len()] = tracepoint_names(&PRIVILEGED);

/// This architecture's number of the syscall a `sys_enter_*` tracepoint reports.
fn syscall_number(tracepoint: &str) -> Option<libc::c_long> {
    let number = match tracepoint.strip_prefix("sys_enter_")? {
        "mount" => libc::SYS_mount,
        "umount" => libc::SYS_umount2,
        "move_mount" => libc::SYS_move_mount,
        "fsopen" => libc::SYS_fsopen,
        "fsmount" => libc::SYS_fsmount,
        "fspick" => libc::SYS_fspick,
        "open_tree" => libc::SYS_open_tree,
        "mount_setattr" => libc::SYS_mount_setattr,
        "pivot_root" => libc::SYS_pivot_root,
        "setns" => libc::SYS_setns,
        "unshare" => libc::SYS_unshare,
        "clone" => libc::SYS_clone,
        "clone3" => libc::SYS_clone3,
        "init_module" => libc::SYS_init_module,
        "finit_module" => libc::SYS_finit_module,
        "delete_module" => libc::SYS_delete_module,
        "kexec_load" => libc::SYS_kexec_load,
        "kexec_file_load" => libc::SYS_kexec_file_load,
        "reboot" => libc::SYS_reboot,
        "open_by_handle_at" => libc::SYS_open_by_handle_at,
        "socket" => libc::SYS_socket,
        #[cfg(target_arch = "x86_64")]
        "ioperm" => libc::SYS_ioperm,
        #[cfg(target_arch = "x86_64")]
        "iopl" => libc::SYS_iopl,
        "sethostname" => libc::SYS_sethostname,
        "setdomainname" => libc::SYS_setdomainname,
        "swapon" => libc::SYS_swapon,
        "swapoff" => libc::SYS_swapoff,
        "settimeofday" => libc::SYS_settimeofday,
        "clock_settime" => libc::SYS_clock_settime,
        _ => return None,
    };
    Some(number)
}

/// The size of the process table a load asks for.
pub fn process_capacity(options: &LoadOptions) -> u32 {
    options.max_processes.unwrap_or(rtid_common::limits::MAX_PROCESSES).max(1)
}

/// Attaches the fallback programs of every integrity family BPF LSM does not
/// serve, and the fork-exit program that kills untaggable children (always).
pub fn attach_fallbacks(ebpf: &mut Ebpf, lsm: &LsmAttachment, pins: &pins::Pinner) -> Result<(), LoadError> {
    for (program, tracepoints, family) in FALLBACK_TRACEPOINTS {
        let served = match family {
            Family::Daemon => lsm.daemon,
            Family::Paths => lsm.paths,
            Family::Capability => lsm.capability,
            _ => false,
        };
        if !served {
            attach_each(ebpf, program, tracepoints, pins)?;
        }
    }
    Ok(())
}

/// Loads `program` once and attaches it to each of `tracepoints` this kernel
/// traces (the first must exist). Pinned as `<tracepoint>.<program>`: several
/// of these programs share a tracepoint (rename's old and new names).
fn attach_each(
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
        let failed = |source| LoadError::Program { program: tracepoint, source };
        let link = loaded.attach("syscalls", tracepoint).map_err(failed)?;
        if pins.enabled() {
            let link = loaded.take_link(link).map_err(failed)?;
            let link = FdLink::try_from(link).map_err(|error| pins::link_error(tracepoint, error))?;
            pins.pin_link(&format!("{tracepoint}.{program}"), link)?;
        }
    }
    Ok(())
}

/// Fills the tables the fallback programs read and notes the table size.
pub fn prepare_maps(maps: &mut KernelMaps, lsm: &LsmAttachment, options: &LoadOptions) -> Result<(), LoadError> {
    maps.set_process_capacity(process_capacity(options));
    if lsm.capability {
        return Ok(());
    }
    let entries: Vec<(u32, u32)> = PRIVILEGED
        .iter()
        .filter_map(|(tracepoint, capability, check)| {
            syscall_number(tracepoint).map(|number| (number as u32, capability | check << 8))
        })
        .collect();
    maps.set_privileged_syscalls(&entries)
}

/// One of rtid's files, guarded against identified processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectedPath {
    pub path: PathBuf,
    /// A directory: everything below it is protected, and the directory itself.
    pub directory: bool,
    /// The `protection::*` id events name (`PROTECTED_FILE`, `CONTROL_SOCKET`).
    pub protection: u32,
}

impl ProtectedPath {
    pub fn file(path: impl Into<PathBuf>) -> ProtectedPath {
        ProtectedPath { path: path.into(), directory: false, protection: protection::PROTECTED_FILE }
    }

    pub fn directory(path: impl Into<PathBuf>) -> ProtectedPath {
        ProtectedPath { path: path.into(), directory: true, protection: protection::PROTECTED_FILE }
    }

    pub fn control_socket(path: impl Into<PathBuf>) -> ProtectedPath {
        ProtectedPath { path: path.into(), directory: false, protection: protection::CONTROL_SOCKET }
    }

    /// The keys of this entry in `PROTECTED_PATHS` (path bytes as the kernel
    /// resolves them: symlinks in the existing part followed).
    fn keys(&self) -> Result<Vec<Vec<u8>>, LoadError> {
        use std::os::unix::ffi::OsStrExt;
        let resolved = resolve_existing(&self.path);
        let mut bytes = resolved.as_os_str().as_bytes().to_vec();
        while bytes.len() > 1 && bytes.ends_with(b"/") {
            bytes.pop();
        }
        if !bytes.starts_with(b"/") || bytes.len() + 2 > PATH_KEY_BYTES {
            return Err(LoadError::Map {
                map: "PROTECTED_PATHS",
                problem: format!(
                    "{}: not an absolute path of at most {} bytes",
                    self.path.display(),
                    PATH_KEY_BYTES - 2
                ),
            });
        }
        let mut exact = bytes.clone();
        exact.push(0);
        if !self.directory {
            return Ok(vec![exact]);
        }
        let mut below = bytes;
        if below != b"/" {
            below.push(b'/');
        }
        Ok(vec![exact, below])
    }
}

/// `path` with symlinks resolved in as much of it as exists.
fn resolve_existing(path: &Path) -> PathBuf {
    if let Ok(resolved) = std::fs::canonicalize(path) {
        return resolved;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => resolve_existing(parent).join(name),
        _ => path.to_path_buf(),
    }
}

/// How a protection holds on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProtectionLevel {
    /// Refused before it takes effect (EPERM).
    Enforced,
    /// The caller is killed at or after the call; the event is raised.
    AfterTheFact,
    /// Not held on this kernel.
    Unavailable,
}

/// One protection and how it holds here, for `rtid status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectionStatus {
    /// `rtid_common::protection::name` (`rtid/daemon-signal`).
    pub name: String,
    pub level: ProtectionLevel,
    /// What happens, in a line.
    pub detail: String,
}

impl RtidKernel {
    /// Registers the daemon: tagged processes may not signal it, trace it,
    /// or open its /proc memory files.
    pub fn set_daemon_tgid(&mut self, tgid: u32) -> Result<(), LoadError> {
        let mut entries = Vec::new();
        if tgid != 0 {
            for (path, directory) in [(format!("/proc/{tgid}/mem"), false), (format!("/proc/{tgid}/task"), true)] {
                let entry = ProtectedPath { path: path.into(), directory, protection: protection::DAEMON_TRACE };
                entries.extend(entry.keys()?.into_iter().map(|key| (key, protection::DAEMON_TRACE)));
            }
        }
        self.maps.set_daemon(tgid, entries)
    }

    /// Replaces the set of rtid's protected files (pin dir, policy, config,
    /// state, audit log, control socket, binary).
    pub fn set_protected_paths(&mut self, paths: &[ProtectedPath]) -> Result<(), LoadError> {
        let mut entries = Vec::new();
        for path in paths {
            entries.extend(path.keys()?.into_iter().map(|key| (key, path.protection)));
        }
        self.maps.set_protected_files(entries)
    }

    /// Entries in the process table, and its capacity.
    pub fn process_table_fill(&self) -> (usize, u32) {
        self.maps.process_table_fill()
    }

    /// Each built-in protection and how it holds on this kernel, given which
    /// programs are attached.
    pub fn protections(&self) -> Vec<ProtectionStatus> {
        let lsm = self.maps.backend_config().map(|config| LsmAttachment::from_config(&config)).unwrap_or_default();
        let backends = self.backends;
        let level = |enforced: bool| if enforced { ProtectionLevel::Enforced } else { ProtectionLevel::AfterTheFact };
        let status = |id: u32, enforced: bool, lsm_detail: &str, fallback_detail: &str| ProtectionStatus {
            name: protection::name(id).into(),
            level: level(enforced),
            detail: if enforced { lsm_detail } else { fallback_detail }.into(),
        };
        let bpf = backends.protect == rtid_common::Backend::Lsm || lsm.protect;
        vec![
            status(protection::BPF_SYSCALL, bpf, "bpf() fails with EPERM", "killed at bpf() entry; the call runs"),
            status(
                protection::PROTECTED_FILE,
                lsm.paths && lsm.file,
                "writes, truncation, unlink, rename, link, chmod, chown and new names fail with EPERM",
                "write opens killed before the first write (O_TRUNC truncates first); other changes by absolute \
                 path or descriptor killed at syscall entry, the change happens",
            ),
            status(
                protection::CONTROL_SOCKET,
                lsm.net || lsm.unix_path,
                "connect fails with EPERM",
                "killed at connect entry when the name given is protected; no request is sent",
            ),
            status(
                protection::DAEMON_SIGNAL,
                lsm.daemon,
                "signals to the daemon fail with EPERM",
                "killed at kill/tkill/tgkill entry; the signal is delivered",
            ),
            status(
                protection::DAEMON_TRACE,
                lsm.daemon,
                "ptrace, process_vm_readv/writev and /proc/<pid>/mem fail with EPERM",
                "/proc/<pid>/mem opens killed before they return; ptrace and process_vm_* killed at entry, the call runs",
            ),
            status(
                protection::CAPABILITY,
                lsm.capability,
                "capability checks above the ceiling fail (EPERM)",
                "privileged syscalls killed at entry; the call runs",
            ),
            status(
                protection::USER_NAMESPACE,
                lsm.capability,
                "user namespace creation fails with EPERM",
                "unshare/clone with CLONE_NEWUSER killed at entry; the call runs",
            ),
            status(
                protection::SOCKET_KIND,
                lsm.capability,
                "sockets of kinds the identity may not create fail with EPERM",
                "killed at socket() entry; the socket is made, the caller dies before it returns",
            ),
            status(
                protection::SHARED_FILES,
                true,
                if lsm.file {
                    "not needed: opens are refused before a descriptor exists"
                } else {
                    "a process sharing its parent's descriptor table without being its thread is killed before its \
                     first instruction, so no sibling keeps the descriptor of an opener killed at open exit"
                },
                "",
            ),
            status(
                protection::CAPACITY,
                true,
                "children the full process table cannot tag are killed before their first instruction",
                "",
            ),
        ]
    }
}
