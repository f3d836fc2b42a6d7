//! Probing and attaching the BPF LSM programs. BPF LSM works only where the
//! kernel was built with it, lists `bpf` among its active LSMs, and permits
//! trampolines; each hook is tried on its own and falls back independently.

use aya::{Btf, Ebpf, programs::Lsm};
use rtid_common::{Backend, BackendConfig, lsm_hook_arguments, lsm_integrity};

use super::{
    BackendReport,
    btf_offsets::{
        self, LSM_BPF, LSM_BPRM_CHECK_SECURITY, LSM_CAPABLE, LSM_FILE_OPEN, LSM_PATH_CHMOD, LSM_PATH_CHOWN,
        LSM_PATH_LINK, LSM_PATH_MKDIR, LSM_PATH_MKNOD, LSM_PATH_RENAME, LSM_PATH_RMDIR, LSM_PATH_SYMLINK,
        LSM_PATH_TRUNCATE, LSM_PATH_UNLINK, LSM_PTRACE_ACCESS_CHECK, LSM_SOCKET_CONNECT, LSM_SOCKET_CREATE,
        LSM_SOCKET_SENDMSG, LSM_TASK_KILL, LSM_UNIX_STREAM_CONNECT, LSM_USERNS_CREATE, LsmHookLayout,
    },
    compat::{Compat, Family, ProgramKind, ProgramRef, describe_refusal},
};

/// Each hook's expected layout, and its programs by the argument count they
/// were built for (`rtid_common::lsm_hook_arguments`).
const HOOK_PROGRAMS: [(&LsmHookLayout, &[(u32, &str)]); 21] = [
    (&LSM_FILE_OPEN, &[(lsm_hook_arguments::FILE_OPEN, "file_open")]),
    (&LSM_BPRM_CHECK_SECURITY, &[(lsm_hook_arguments::BPRM_CHECK_SECURITY, "bprm_check_security")]),
    (&LSM_SOCKET_CONNECT, &[(lsm_hook_arguments::SOCKET_CONNECT, "socket_connect")]),
    (&LSM_SOCKET_SENDMSG, &[(lsm_hook_arguments::SOCKET_SENDMSG, "socket_sendmsg")]),
    (&LSM_BPF, &[(lsm_hook_arguments::BPF, "bpf"), (lsm_hook_arguments::BPF_WITH_KERNEL_FLAG, "bpf_with_kernel_flag")]),
    (&LSM_TASK_KILL, &[(lsm_hook_arguments::TASK_KILL, "task_kill")]),
    (&LSM_PTRACE_ACCESS_CHECK, &[(lsm_hook_arguments::PTRACE_ACCESS_CHECK, "ptrace_access_check")]),
    (&LSM_PATH_UNLINK, &[(lsm_hook_arguments::PATH_UNLINK, "path_unlink")]),
    (&LSM_PATH_RMDIR, &[(lsm_hook_arguments::PATH_RMDIR, "path_rmdir")]),
    (&LSM_PATH_MKDIR, &[(lsm_hook_arguments::PATH_MKDIR, "path_mkdir")]),
    (&LSM_PATH_MKNOD, &[(lsm_hook_arguments::PATH_MKNOD, "path_mknod")]),
    (&LSM_PATH_SYMLINK, &[(lsm_hook_arguments::PATH_SYMLINK, "path_symlink")]),
    (&LSM_PATH_RENAME, &[(lsm_hook_arguments::PATH_RENAME, "path_rename")]),
    (&LSM_PATH_LINK, &[(lsm_hook_arguments::PATH_LINK, "path_link")]),
    (&LSM_PATH_TRUNCATE, &[(lsm_hook_arguments::PATH_TRUNCATE, "path_truncate")]),
    (&LSM_PATH_CHMOD, &[(lsm_hook_arguments::PATH_CHMOD, "path_chmod")]),
    (&LSM_PATH_CHOWN, &[(lsm_hook_arguments::PATH_CHOWN, "path_chown")]),
    (&LSM_CAPABLE, &[(lsm_hook_arguments::CAPABLE, "capable")]),
    (&LSM_USERNS_CREATE, &[(lsm_hook_arguments::USERNS_CREATE, "userns_create")]),
    (&LSM_SOCKET_CREATE, &[(lsm_hook_arguments::SOCKET_CREATE, "socket_create")]),
    (&LSM_UNIX_STREAM_CONNECT, &[(lsm_hook_arguments::UNIX_STREAM_CONNECT, "unix_stream_connect")]),
];

/// The program that serves `hook` on this kernel: the one built for the
/// argument count of the hook's prototype in BTF (the previous LSM's verdict
/// sits after the arguments, and programs can only read fixed positions).
fn program_for(kernel_btf: &btf_rs::Btf, hook: &str) -> Result<&'static str, String> {
    let (layout, programs) = HOOK_PROGRAMS
        .iter()
        .find(|(layout, _)| layout.hook == hook)
        .ok_or_else(|| format!("lsm/{hook}: no program for this hook"))?;
    let count = btf_offsets::lsm_hook_argument_count(kernel_btf, layout)
        .map_err(|error| error.to_string())?
        .ok_or_else(|| format!("lsm/{hook}: the kernel has no bpf_lsm_{hook} (built without BPF LSM)"))?;
    let built: Vec<String> = programs.iter().map(|(arguments, _)| arguments.to_string()).collect();
    programs.iter().find(|(arguments, _)| *arguments == count).map(|(_, program)| *program).ok_or_else(|| {
        format!(
            "lsm/{hook}: this kernel's hook takes {count} argument(s); rtid's programs are built for {}",
            built.join(" or ")
        )
    })
}

const FILE_HOOKS: [&str; 1] = ["file_open"];
const EXEC_HOOKS: [&str; 1] = ["bprm_check_security"];
const NET_HOOKS: [&str; 2] = ["socket_connect", "socket_sendmsg"];
const PROTECT_HOOKS: [&str; 1] = ["bpf"];
const DAEMON_HOOKS: [&str; 2] = ["task_kill", "ptrace_access_check"];
/// Needs CONFIG_SECURITY_PATH (Debian, Ubuntu and Fedora kernels have it).
const PATH_HOOKS: [&str; 10] = [
    "path_unlink",
    "path_rmdir",
    "path_mkdir",
    "path_mknod",
    "path_symlink",
    "path_rename",
    "path_link",
    "path_truncate",
    "path_chmod",
    "path_chown",
];
/// `userns_create` exists from 6.1. `socket_create` holds the socket kinds,
/// whose fallback shares the ceiling's program at `socket(2)` entry.
const CAPABILITY_HOOKS: [&str; 3] = ["capable", "userns_create", "socket_create"];
const UNIX_PATH_HOOKS: [&str; 1] = ["unix_stream_connect"];

/// Which hook families LSM enforces, and why not where it does not.
#[derive(Clone, Debug, Default)]
pub struct LsmAttachment {
    pub file: bool,
    pub exec: bool,
    pub net: bool,
    /// `lsm/bpf` refuses the bpf() syscall to tagged processes.
    pub protect: bool,
    /// `task_kill` and `ptrace_access_check` keep tagged processes off the daemon.
    pub daemon: bool,
    /// The `path_*` hooks refuse changes to rtid's files.
    pub paths: bool,
    /// `capable` and `userns_create`: the capability ceiling.
    pub capability: bool,
    /// `unix_stream_connect`: connects judged on the socket the kernel found.
    pub unix_path: bool,
    pub reason: Option<String>,
}

impl LsmAttachment {
    pub fn all(&self) -> bool {
        self.file
            && self.exec
            && self.net
            && self.protect
            && self.daemon
            && self.paths
            && self.capability
            && self.unix_path
    }

    pub fn config(&self) -> BackendConfig {
        let integrity = [
            (self.daemon, lsm_integrity::DAEMON),
            (self.paths, lsm_integrity::PATHS),
            (self.capability, lsm_integrity::CAPABILITY),
            (self.unix_path, lsm_integrity::UNIX_PATH),
        ]
        .into_iter()
        .filter(|(served, _)| *served)
        .fold(0, |bits, (_, bit)| bits | bit);
        BackendConfig {
            lsm_file: self.file as u32,
            lsm_exec: self.exec as u32,
            lsm_net: self.net as u32,
            lsm_integrity: integrity,
        }
    }

    /// What an earlier load chose, from its `BACKEND_CONFIG` (pins adopted).
    pub fn from_config(config: &BackendConfig) -> LsmAttachment {
        let integrity = |bit: u32| config.lsm_integrity & bit != 0;
        LsmAttachment {
            file: config.lsm_file != 0,
            exec: config.lsm_exec != 0,
            net: config.lsm_net != 0,
            protect: false,
            daemon: integrity(lsm_integrity::DAEMON),
            paths: integrity(lsm_integrity::PATHS),
            capability: integrity(lsm_integrity::CAPABILITY),
            unix_path: integrity(lsm_integrity::UNIX_PATH),
            reason: None,
        }
    }

    pub fn report(&self) -> BackendReport {
        BackendReport {
            file: if self.file { Backend::Lsm } else { Backend::Tracepoint },
            exec: if self.exec { Backend::Lsm } else { Backend::Tracepoint },
            network: if self.net { Backend::Lsm } else { Backend::CgroupSock },
            unix: if self.net { Backend::Lsm } else { Backend::Tracepoint },
            protect: if self.protect { Backend::Lsm } else { Backend::Tracepoint },
        }
    }
}

/// Whether `bpf` is in the kernel's active LSM list, and the list itself.
fn bpf_lsm_active() -> Result<(), String> {
    let path = "/sys/kernel/security/lsm";
    match std::fs::read_to_string(path) {
        Ok(list) if list.trim().split(',').any(|name| name == "bpf") => Ok(()),
        Ok(list) => Err(format!(
            "BPF LSM is not among the active LSMs ({}); add `lsm={},bpf` to the kernel command line",
            list.trim(),
            list.trim()
        )),
        Err(error) => Err(format!("cannot read {path} ({error}); is securityfs mounted?")),
    }
}

/// Attaches each hook family where this kernel runs it; `compat` says which
/// hooks cannot run here (a helper they call is missing) and keeps why each
/// family falls back, for `rtid status`.
pub fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    kernel_btf: &btf_rs::Btf,
    pins: &super::pins::Pinner,
    compat: &mut Compat,
) -> LsmAttachment {
    if let Err(reason) = bpf_lsm_active() {
        for family in Family::ALL {
            compat.lsm_fell_back(family, &reason);
        }
        return LsmAttachment { reason: Some(reason), ..LsmAttachment::default() };
    }
    let mut reasons = Vec::new();
    let mut family = |family: Family, hooks: &[&str]| -> bool {
        hooks.iter().all(|hook| match attach_one(ebpf, btf, kernel_btf, hook, pins, compat) {
            Ok(()) => true,
            Err(reason) => {
                compat.lsm_fell_back(family, &reason);
                reasons.push(reason);
                false
            }
        })
    };
    let file = family(Family::File, &FILE_HOOKS);
    let exec = family(Family::Exec, &EXEC_HOOKS);
    let net = family(Family::Net, &NET_HOOKS);
    let protect = family(Family::Protect, &PROTECT_HOOKS);
    let daemon = family(Family::Daemon, &DAEMON_HOOKS);
    let paths = family(Family::Paths, &PATH_HOOKS);
    let capability = family(Family::Capability, &CAPABILITY_HOOKS);
    let unix_path = family(Family::UnixPath, &UNIX_PATH_HOOKS);
    let reason = if reasons.is_empty() { None } else { Some(reasons.join("; ")) };
    LsmAttachment { file, exec, net, protect, daemon, paths, capability, unix_path, reason }
}

fn attach_one(
    ebpf: &mut Ebpf,
    btf: &Btf,
    kernel_btf: &btf_rs::Btf,
    hook: &str,
    pins: &super::pins::Pinner,
    compat: &Compat,
) -> Result<(), String> {
    let name = program_for(kernel_btf, hook)?;
    if let Some(missing) = compat.lsm_hook_refused(name) {
        return Err(missing.to_string());
    }
    let program: &mut Lsm = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("lsm/{hook} ({name}) missing from the eBPF object"))?
        .try_into()
        .map_err(|error| format!("lsm/{hook}: {error}"))?;
    let reference = || ProgramRef { kind: ProgramKind::Lsm, name: hook.into() };
    program.load(hook, btf).map_err(|error| describe_refusal(compat.release(), reference(), &error))?;
    let link = program.attach().map_err(|error| format!("lsm/{hook} does not attach: {error}"))?;
    if pins.enabled() {
        let link = program.take_link(link).map_err(|error| format!("lsm/{hook}: {error}"))?;
        pins.pin_link(hook, link.into()).map_err(|error| error.to_string())?;
    }
    Ok(())
}
