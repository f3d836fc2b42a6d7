//! File opens on kernels without BPF LSM: judged at syscall exit on the file
//! the kernel actually opened (from the new descriptor's `struct file`), before
//! the process returns to user space. The call cannot be refused here; kill
//! (SIGKILL is delivered on the way out, so not one byte is read) and flag can.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal},
    macros::tracepoint,
    programs::TracePointContext,
};
use rtid_common::{Backend, EventKind, FMODE_READ, FMODE_WRITE, ProcessIdentity, SIGKILL, access, counter};

use crate::{
    events::{EventFacts, EventObject, emit},
    judge::{Enforcement, active_policy, decide_path_action, enforce_for, identity_of, settle_decision, should_report},
    kernel::{KernelPtr, ReadError, current_task, file_mode, file_of_fd, file_path, offsets_valid},
    maps::{BACKEND_CONFIG, count},
    path::{resolve, scratch},
    protect::{protected_decision, protected_path},
};

/// Offset of `ret` in every `syscalls/sys_exit_*` tracepoint record (after the
/// 8-byte common header and the syscall number): the ABI of syscall exit events.
const SYS_EXIT_RET: usize = 16;

/// syscalls/sys_exit_{open,openat,openat2,creat,open_by_handle_at}: `long ret`,
/// the new descriptor. One program, attached by the loader to all five.
#[tracepoint(category = "syscalls", name = "sys_exit_openat")]
pub fn sys_exit_open(ctx: TracePointContext) -> u32 {
    on_open_exit(&ctx)
}

#[inline(always)]
fn on_open_exit(ctx: &TracePointContext) -> u32 {
    if try_open_exit(ctx).is_err() {
        count(counter::HOOK_ERROR);
    }
    0
}

#[inline(always)]
fn try_open_exit(ctx: &TracePointContext) -> Result<(), ReadError> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(process) = identity_of(tgid) else {
        return Ok(());
    };
    // SAFETY: reading a fixed field of the tracepoint record the kernel passed.
    let fd: i64 = unsafe { ctx.read_at(SYS_EXIT_RET) }.map_err(|_| ReadError)?;
    if fd < 0 || !offsets_valid() {
        return Ok(());
    }
    if BACKEND_CONFIG.get(0).is_some_and(|config| config.lsm_file != 0) {
        // BPF LSM judged this open already, synchronously.
        return Ok(());
    }
    let file = file_of_fd(current_task(), fd as u32)?;
    let enforcement = judge_file(&process, file, Backend::Tracepoint)?;
    if enforcement.kill {
        // SAFETY: the helper signals the current task; no memory is involved.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    Ok(())
}

/// Judges an open of `file` by a tagged process and reports it. Shared by the
/// syscall-exit fallback and the LSM `file_open` hook (`backend` says which,
/// and whether the open can still be refused).
#[inline(always)]
pub fn judge_file(process: &ProcessIdentity, file: KernelPtr, backend: Backend) -> Result<Enforcement, ReadError> {
    count(counter::JUDGED);
    let mode = file_mode(file)?;
    let mut requested = 0;
    if mode & FMODE_READ != 0 {
        requested |= access::READ;
    }
    if mode & FMODE_WRITE != 0 {
        requested |= access::WRITE;
    }
    let (mnt, dentry) = file_path(file)?;
    let scratch = scratch().ok_or(ReadError)?;
    let resolved = resolve(scratch, mnt, dentry)?;

    let active = active_policy(process.identity);
    // rtid's own files first, so no rule can allow what they refuse: writes,
    // and any open of the daemon's memory.
    let protection = protected_path(scratch, &resolved)
        .filter(|protection| requested & access::WRITE != 0 || *protection == rtid_common::protection::DAEMON_TRACE);
    let decision = match protection {
        Some(protection) => settle_decision(protected_decision(protection)),
        None => decide_path_action(process, &active, scratch, &resolved, requested, active.policy.default_file),
    };
    let enforcement = enforce_for(process.identity, &decision, &active, backend == Backend::Lsm);
    if should_report(&decision, &active.policy) {
        let facts = EventFacts {
            kind: EventKind::FileOpen,
            backend,
            identity: process.identity,
            generation: active.generation,
            access: requested,
            related_tgid: 0,
            detail: 0,
        };
        emit(&facts, &decision, &enforcement, EventObject::Path(scratch, resolved));
    }
    Ok(enforcement)
}
