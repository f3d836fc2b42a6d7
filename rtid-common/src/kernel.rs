//! Load-time constants and counters shared with the kernel programs.

/// Byte offsets of the kernel struct members the programs read, taken from the
/// running kernel's BTF at load time and written into the object's `.rodata`
/// (the verifier then sees them as constants). No offset is compiled in, so one
/// binary runs on every kernel that has BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    pub task_files: u32,
    pub task_signal: u32,
    pub signal_live: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    pub file_f_path: u32,
    pub file_f_mode: u32,
    pub file_f_flags: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub vfsmount_mnt_root: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    /// `struct mount::mnt_ns`: `MNT_NS_INTERNAL` for kernel-internal mounts.
    pub mount_mnt_ns: u32,
    pub binprm_file: u32,
    pub socket_type: u32,
    pub msghdr_msg_name: u32,
    pub msghdr_msg_namelen: u32,
    /// `struct unix_sock::path`: where a bound AF_UNIX socket lives.
    pub unix_sock_path: u32,
    /// Non-zero once userspace filled the struct; programs refuse to walk
    /// kernel memory with an all-zero table.
    pub valid: u32,
}

/// How many arguments each LSM hook rtid attaches to takes: the previous LSM's
/// verdict is the context slot after them. The programs read it at these
/// compiled-in positions (the verifier accepts only constant context offsets);
/// the loader compares them with the hook's prototype in the running kernel's
/// BTF and falls back where they differ. `bpf` gained `bool kernel` in 6.9, so
/// it has a program for each layout.
pub mod lsm_hook_arguments {
    pub const FILE_OPEN: u32 = 1;
    pub const BPRM_CHECK_SECURITY: u32 = 1;
    pub const SOCKET_CONNECT: u32 = 3;
    pub const SOCKET_SENDMSG: u32 = 3;
    /// `bpf(int cmd, union bpf_attr *attr, unsigned int size)` before 6.9.
    pub const BPF: u32 = 3;
    /// `bpf(..., bool kernel)` from 6.9.
    pub const BPF_WITH_KERNEL_FLAG: u32 = 4;
    /// `capable(const struct cred *, struct user_namespace *, int cap, unsigned int opts)`.
    pub const CAPABLE: u32 = 4;
    /// `userns_create(const struct cred *)` (6.1 and later).
    pub const USERNS_CREATE: u32 = 1;
    /// `task_kill(struct task_struct *, struct kernel_siginfo *, int sig, const struct cred *)`.
    pub const TASK_KILL: u32 = 4;
    /// `ptrace_access_check(struct task_struct *child, unsigned int mode)`.
    pub const PTRACE_ACCESS_CHECK: u32 = 2;
    /// `path_unlink(const struct path *dir, struct dentry *dentry)`.
    pub const PATH_UNLINK: u32 = 2;
    /// `path_rmdir(const struct path *dir, struct dentry *dentry)`.
    pub const PATH_RMDIR: u32 = 2;
    /// `path_rename(const struct path *old_dir, struct dentry *old_dentry,
    /// const struct path *new_dir, struct dentry *new_dentry, unsigned int flags)`.
    pub const PATH_RENAME: u32 = 5;
    /// `path_link(struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry)`.
    pub const PATH_LINK: u32 = 3;
    /// `path_truncate(const struct path *path)`.
    pub const PATH_TRUNCATE: u32 = 1;
    /// `path_chmod(const struct path *path, umode_t mode)`.
    pub const PATH_CHMOD: u32 = 2;
    /// `path_chown(const struct path *path, kuid_t uid, kgid_t gid)`.
    pub const PATH_CHOWN: u32 = 3;
    /// `path_mknod(const struct path *dir, struct dentry *dentry, umode_t mode, unsigned int dev)`.
    pub const PATH_MKNOD: u32 = 4;
    /// `path_mkdir(const struct path *dir, struct dentry *dentry, umode_t mode)`.
    pub const PATH_MKDIR: u32 = 3;
    /// `path_symlink(const struct path *dir, struct dentry *dentry, const char *old_name)`.
    pub const PATH_SYMLINK: u32 = 3;
    /// `unix_stream_connect(struct sock *sock, struct sock *other, struct sock *newsk)`.
    pub const UNIX_STREAM_CONNECT: u32 = 3;
    /// `socket_create(int family, int type, int protocol, int kern)`.
    pub const SOCKET_CREATE: u32 = 4;
}

/// `fmode_t` bits read from `struct file::f_mode` (include/linux/fs.h; stable ABI of the VFS).
pub const FMODE_READ: u32 = 0x1;
pub const FMODE_WRITE: u32 = 0x2;
/// Set (in `f_mode` on newer kernels, as `__FMODE_EXEC` in `f_flags` on all)
/// on the open of a binary by execve; such opens are judged as exec by `bprm_check_security`.
pub const FMODE_EXEC: u32 = 0x20;

/// Indices into the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events dropped because the ring buffer was full.
    pub const RING_FULL: u32 = 0;
    /// Hook runs that failed to read kernel memory or a map (judged by default).
    pub const HOOK_ERROR: u32 = 1;
    /// Paths of tagged processes that could not be resolved to the root
    /// (judged by the identity's `unresolvedPath` verdict).
    pub const PATH_UNRESOLVED: u32 = 2;
    /// Process table full: a child of a tagged process could not be tagged and was killed.
    pub const PROCESS_TABLE_FULL: u32 = 3;
    /// Actions judged (tagged processes only).
    pub const JUDGED: u32 = 4;
    /// Children of tagged processes killed because the process table was full.
    pub const UNTAGGABLE_KILLED: u32 = 5;
    /// Attempts by tagged processes on rtid itself (bpf, signals, ptrace, its files, its socket).
    pub const TAMPER: u32 = 6;
    pub const COUNT: u32 = 8;
}

/// Ruleset id of `PROTECTED_PATHS` keys: rtid's own files, the same for every identity.
pub const PROTECTED_RULESET: u32 = u32::MAX;

/// Which enforcement each hook family uses, set by userspace after probing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BackendConfig {
    /// Non-zero when the LSM programs are attached: the tracepoint
    /// fallbacks then only observe and leave judgement to LSM.
    pub lsm_file: u32,
    pub lsm_exec: u32,
    pub lsm_net: u32,
    /// `lsm_integrity::*` bits: which integrity hook families BPF LSM serves
    /// (read back when pins are adopted, for `protections`).
    pub lsm_integrity: u32,
}

/// How `sys_enter_privileged` (the capability ceiling's fallback) decides
/// whether a call needs its capability: the second byte of a
/// `PRIVILEGED_SYSCALLS` value, whose low byte is the capability number.
pub mod privileged_check {
    /// Every call does.
    pub const ALWAYS: u32 = 0;
    /// `unshare`, `clone`: when argument 0 has a `CLONE_NEW*` bit
    /// (`CLONE_NEWUSER` alone answers to the user-namespace guard instead).
    pub const NAMESPACE_FLAGS: u32 = 1;
    /// `socket`: a packet socket, or `SOCK_RAW`.
    pub const RAW_SOCKET: u32 = 2;
    /// `clone3`: the flags of the `struct clone_args` argument 0 points to.
    pub const CLONE3_FLAGS: u32 = 3;
}

/// Bits of `BackendConfig::lsm_integrity`.
pub mod lsm_integrity {
    /// `task_kill` and `ptrace_access_check`.
    pub const DAEMON: u32 = 1 << 0;
    /// The `path_*` hooks.
    pub const PATHS: u32 = 1 << 1;
    /// `capable` and `userns_create`.
    pub const CAPABILITY: u32 = 1 << 2;
    /// `unix_stream_connect` (connects judged on the socket the kernel found).
    pub const UNIX_PATH: u32 = 1 << 3;
}

#[cfg(feature = "user")]
crate::impl_pod!(KernelOffsets, BackendConfig);

/// Map capacities: the kernel side sizes its maps with these, the policy
/// compiler refuses anything that would not fit.
pub mod limits {
    /// Default size of the process table (the daemon's `--max-processes`).
    pub const MAX_PROCESSES: u32 = 65536;
    /// Paths in `PROTECTED_PATHS`.
    pub const MAX_PROTECTED_PATHS: u32 = 256;
    /// Children waiting to be killed because the process table had no room for them.
    pub const MAX_UNTAGGABLE: u32 = 1024;
    pub const MAX_IDENTITIES: u32 = 4096;
    pub const MAX_CGROUP_BINDINGS: u32 = 1024;
    pub const MAX_QUARANTINES: u32 = 4096;
    pub const MAX_ONCE_RULES: u32 = 1024;
    pub const MAX_PATH_ENTRIES: u32 = 65536;
    pub const MAX_UNIX_ENTRIES: u32 = 4096;
    pub const MAX_NET_ENTRIES: u32 = 16384;
}
