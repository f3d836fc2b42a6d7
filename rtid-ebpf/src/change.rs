//! rtid's own files are untouchable from an identity: besides write opens
//! (refused in `file::judge_file`, before any policy rule), no unlink, rmdir,
//! rename (from or to), hard link (of or to), truncate, chmod, chown, or new
//! name (mkdir, mknod, symlink) under a protected path (`PROTECTED_PATHS`).
//!
//! Under BPF LSM the `path_*` hooks (CONFIG_SECURITY_PATH) judge the path the
//! kernel resolved, walked up from the dentry: the call fails with EPERM
//! before the change. Only protected paths are judged here; an untagged
//! caller costs one map lookup, a tagged one a path walk while anything is
//! protected.
//!
//! The fallback cannot refuse. Syscall-entry tracepoints kill a tagged caller
//! whose path argument is an absolute string under a protected path (relative
//! paths, `..` and symlinks are not resolved there), and ftruncate, fchmod
//! and fchown of a descriptor whose file is protected (that one resolved by
//! the kernel). The change itself still happens before the caller dies.
//! Write opens are held before the effect on the fallback too (the opener is
//! killed on the way out of open, before it can write), except that O_TRUNC
//! truncates during the open.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal, generated::bpf_probe_read_user_str},
    macros::{lsm, tracepoint},
    programs::{LsmContext, TracePointContext},
};
use rtid_common::{
    Backend, EPERM, EventKind, PATH_KEY_BYTES, ProcessIdentity, SIGKILL, file_change, lsm_hook_arguments,
};

use crate::{
    events::EventObject,
    judge::identity_of,
    kernel::{KernelPtr, ReadError, current_task, file_of_fd, file_path, offsets_valid, read_ptr},
    maps::offset,
    path::{PathScratch, ResolvedPath, resolve, scratch},
    protect::{paths_protected, protected_path, report_protection},
};

/// A tagged caller while anything is protected (the untagged fast path is the first lookup).
#[inline(always)]
fn tagged_caller() -> Option<ProcessIdentity> {
    let process = identity_of((bpf_get_current_pid_tgid() >> 32) as u32)?;
    if !paths_protected() || !offsets_valid() {
        return None;
    }
    Some(process)
}

/// The protection over the name `dentry` in the directory `dir` (a `struct path *`).
#[inline(always)]
fn protected_name(
    scratch: &mut PathScratch,
    dir: KernelPtr,
    dentry: KernelPtr,
) -> Result<Option<(u32, ResolvedPath)>, ReadError> {
    let mnt = read_ptr(dir, offset!(path_mnt))?;
    let resolved = resolve(scratch, mnt, dentry)?;
    Ok(protected_path(scratch, &resolved).map(|protection| (protection, resolved)))
}

/// The protection over a `struct path *`.
#[inline(always)]
fn protected_whole(scratch: &mut PathScratch, path: KernelPtr) -> Result<Option<(u32, ResolvedPath)>, ReadError> {
    let dentry = read_ptr(path, offset!(path_dentry))?;
    protected_name(scratch, path, dentry)
}

/// Refuses a change for a tagged caller when `find` names a protected path.
#[inline(always)]
fn refuse_change(
    ctx: &LsmContext,
    arguments: u32,
    change: u32,
    find: impl FnOnce(&mut PathScratch) -> Result<Option<(u32, ResolvedPath)>, ReadError>,
) -> i32 {
    let previous: i32 = ctx.arg(arguments as usize);
    if previous != 0 {
        return previous;
    }
    let Some(process) = tagged_caller() else {
        return 0;
    };
    let Some(scratch) = scratch() else {
        return 0;
    };
    match find(scratch) {
        Ok(Some((protection, resolved))) => {
            report_protection(
                &process,
                EventKind::FileChange,
                Backend::Lsm,
                protection,
                change,
                EventObject::Path(scratch, resolved),
            );
            -EPERM
        }
        _ => 0,
    }
}

/// `LSM_HOOK(int, 0, path_unlink, const struct path *dir, struct dentry *dentry)`.
#[lsm(hook = "path_unlink")]
pub fn path_unlink(ctx: LsmContext) -> i32 {
    refuse_change(&ctx, lsm_hook_arguments::PATH_UNLINK, file_change::UNLINK, |scratch| {
        protected_name(scratch, ctx.arg(0), ctx.arg(1))
    })
}

/// `LSM_HOOK(int, 0, path_rmdir, const struct path *dir, struct dentry *dentry)`.
#[lsm(hook = "path_rmdir")]
pub fn path_rmdir(ctx: LsmContext) -> i32 {
    refuse_change(&ctx, lsm_hook_arguments::PATH_RMDIR, file_change::RMDIR, |scratch| {
        protected_name(scratch, ctx.arg(0), ctx.arg(1))
    })
}

/// `LSM_HOOK(int, 0, path_mkdir, const struct path *dir, struct dentry *dentry, umode_t mode)`.
#[lsm(hook = "path_mkdir")]
pub fn path_mkdir(ctx: LsmContext) -> i32 {
    refuse_change(&ctx, lsm_hook_arguments::PATH_MKDIR, file_change::CREATE, |scratch| {
        protected_name(scratch, ctx.arg(0), ctx.arg(1))
    })
}

/// `LSM_HOOK(int, 0, path_mknod, const struct path *dir, struct dentry *dentry,
/// umode_t mode, unsigned int dev)`: also regular files made by open(O_CREAT).
#[lsm(hook = "path_mknod")]
pub fn path_mknod(ctx: LsmContext) -> i32 {
    refuse_change(&ctx, lsm_hook_arguments::PATH_MKNOD, file_change::CREATE, |scratch| {
        protected_name(scratch, ctx.arg(0), ctx.arg(1))
    })
}

/// `LSM_HOOK(int, 0, path_symlink, const struct path *dir, struct dentry *dentry, const char *old_name)`.
#[lsm(hook = "path_symlink")]
pub fn path_symlink(ctx: LsmContext) -> i32 {
    refuse_change(&ctx, lsm_hook_arguments::PATH_SYMLINK, file_change::CREATE, |scratch| {
        protected_name(scratch, ctx.arg(0), ctx.arg(1))
    })
}

/// `LSM_HOOK(int, 0, path_truncate, const struct path *path)`: truncate(2),
/// ftruncate(2) and open(O_TRUNC).
#[lsm(hook = "path_truncate")]
pub fn path_truncate(ctx: LsmContext) -> i32 {
    refuse_change(&ctx, lsm_hook_arguments::PATH_TRUNCATE, file_change::TRUNCATE, |scratch| {
        protected_whole(scratch, ctx.arg(0))
    })
}

/// `LSM_HOOK(int, 0, path_chmod, const struct path *path, umode_t mode)`.
#[lsm(hook = "path_chmod")]
pub fn path_chmod(ctx: LsmContext) -> i32 {
    refuse_change(&ctx, lsm_hook_arguments::PATH_CHMOD, file_change::CHMOD, |scratch| {
        protected_whole(scratch, ctx.arg(0))
    })
}

/// `LSM_HOOK(int, 0, path_chown, const struct path *path, kuid_t uid, kgid_t gid)`.
#[lsm(hook = "path_chown")]
pub fn path_chown(ctx: LsmContext) -> i32 {
    refuse_change(&ctx, lsm_hook_arguments::PATH_CHOWN, file_change::CHOWN, |scratch| {
        protected_whole(scratch, ctx.arg(0))
    })
}

/// `LSM_HOOK(int, 0, path_link, struct dentry *old_dentry, const struct path
/// *new_dir, struct dentry *new_dentry)`. Both names count: a new name for a
/// protected file would be a way to write it that no protected path names.
/// Hard links stay on one mount, so the old name resolves with the new one's.
#[lsm(hook = "path_link")]
pub fn path_link(ctx: LsmContext) -> i32 {
    refuse_change(&ctx, lsm_hook_arguments::PATH_LINK, file_change::LINK, |scratch| {
        let new_dir: KernelPtr = ctx.arg(1);
        match protected_name(scratch, new_dir, ctx.arg(2))? {
            Some(found) => Ok(Some(found)),
            None => protected_name(scratch, new_dir, ctx.arg(0)),
        }
    })
}

/// `LSM_HOOK(int, 0, path_rename, const struct path *old_dir, struct dentry
/// *old_dentry, const struct path *new_dir, struct dentry *new_dentry,
/// unsigned int flags)`: the old name (moved away) and the new one
/// (replaced, or created) both count. The event says which (`detail`).
#[lsm(hook = "path_rename")]
pub fn path_rename(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(lsm_hook_arguments::PATH_RENAME as usize);
    if previous != 0 {
        return previous;
    }
    let Some(process) = tagged_caller() else {
        return 0;
    };
    let Some(scratch) = scratch() else {
        return 0;
    };
    let (change, found) = match protected_name(scratch, ctx.arg(0), ctx.arg(1)) {
        Ok(Some(found)) => (file_change::RENAME_FROM, Some(found)),
        _ => (file_change::RENAME_TO, protected_name(scratch, ctx.arg(2), ctx.arg(3)).ok().flatten()),
    };
    match found {
        Some((protection, resolved)) => {
            report_protection(
                &process,
                EventKind::FileChange,
                Backend::Lsm,
                protection,
                change,
                EventObject::Path(scratch, resolved),
            );
            -EPERM
        }
        None => 0,
    }
}

/// Offsets of syscall arguments in `syscalls/sys_enter_*` records.
const SYS_ENTER_ARG: [usize; 4] = [16, 24, 32, 40];

/// Kills a tagged caller whose path argument (a user string at `arg`) is an
/// absolute path under a protected one. The call still runs.
#[inline(always)]
fn kill_if_protected_string(ctx: &TracePointContext, arg: usize) {
    let Some(process) = tagged_caller() else {
        return;
    };
    // SAFETY: a fixed field of the tracepoint record the kernel passed.
    let Ok(user_path) = (unsafe { ctx.read_at::<u64>(arg) }) else {
        return;
    };
    let Some(scratch) = scratch() else {
        return;
    };
    // SAFETY: the destination is the start of the scratch buffer, far longer
    // than PATH_KEY_BYTES; the helper validates the user address.
    let copied = unsafe {
        bpf_probe_read_user_str(scratch.buf.as_mut_ptr() as *mut _, PATH_KEY_BYTES as u32, user_path as *const _)
    };
    if copied < 2 || scratch.buf[0] != b'/' {
        return;
    }
    let resolved = ResolvedPath { start: 0, len: (copied as usize - 1) & 0xff, unresolved: false, anonymous: false };
    if let Some(protection) = protected_path(scratch, &resolved) {
        // SAFETY: signals the current task; no memory is involved.
        unsafe { bpf_send_signal(SIGKILL) };
        report_protection(
            &process,
            EventKind::FileChange,
            Backend::Tracepoint,
            protection,
            0,
            EventObject::Path(scratch, resolved),
        );
    }
}

/// syscalls/sys_enter_{unlink,rmdir,mkdir,mknod,truncate,chmod,chown,lchown,rename,link}:
/// the (old) path is argument 0.
#[tracepoint(category = "syscalls", name = "sys_enter_unlink")]
pub fn sys_enter_path_arg0(ctx: TracePointContext) -> u32 {
    kill_if_protected_string(&ctx, SYS_ENTER_ARG[0]);
    0
}

/// syscalls/sys_enter_{unlinkat,mkdirat,mknodat,fchmodat,fchmodat2,fchownat,renameat,renameat2,linkat}
/// (argument 1 is the path, or the old path), and the new path of rename, link and symlink.
#[tracepoint(category = "syscalls", name = "sys_enter_unlinkat")]
pub fn sys_enter_path_arg1(ctx: TracePointContext) -> u32 {
    kill_if_protected_string(&ctx, SYS_ENTER_ARG[1]);
    0
}

/// syscalls/sys_enter_symlinkat: `(const char *oldname, int newdfd, const char *newname)`.
#[tracepoint(category = "syscalls", name = "sys_enter_symlinkat")]
pub fn sys_enter_path_arg2(ctx: TracePointContext) -> u32 {
    kill_if_protected_string(&ctx, SYS_ENTER_ARG[2]);
    0
}

/// syscalls/sys_enter_{renameat,renameat2,linkat}: the new path is argument 3.
#[tracepoint(category = "syscalls", name = "sys_enter_renameat2")]
pub fn sys_enter_path_arg3(ctx: TracePointContext) -> u32 {
    kill_if_protected_string(&ctx, SYS_ENTER_ARG[3]);
    0
}

/// syscalls/sys_enter_{ftruncate,fchmod,fchown}: `(unsigned int fd, ...)`.
/// The descriptor's file is the one the kernel opened: resolved, not a string.
#[tracepoint(category = "syscalls", name = "sys_enter_ftruncate")]
pub fn sys_enter_fd_change(ctx: TracePointContext) -> u32 {
    let _ = try_fd_change(&ctx);
    0
}

#[inline(always)]
fn try_fd_change(ctx: &TracePointContext) -> Result<(), ReadError> {
    let Some(process) = tagged_caller() else {
        return Ok(());
    };
    // SAFETY: a fixed field of the tracepoint record the kernel passed.
    let fd: u64 = unsafe { ctx.read_at(SYS_ENTER_ARG[0]) }.map_err(|_| ReadError)?;
    let file = file_of_fd(current_task(), fd as u32)?;
    let (mnt, dentry) = file_path(file)?;
    let scratch = scratch().ok_or(ReadError)?;
    let resolved = resolve(scratch, mnt, dentry)?;
    if let Some(protection) = protected_path(scratch, &resolved) {
        // SAFETY: signals the current task; no memory is involved.
        unsafe { bpf_send_signal(SIGKILL) };
        report_protection(
            &process,
            EventKind::FileChange,
            Backend::Tracepoint,
            protection,
            0,
            EventObject::Path(scratch, resolved),
        );
    }
    Ok(())
}
