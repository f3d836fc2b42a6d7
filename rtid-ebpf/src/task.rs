//! The daemon is untouchable from an identity: no signal, no trace, no
//! reading or writing of its memory, whatever the caller's uid.
//!
//! Under BPF LSM (`task_kill`, `ptrace_access_check`) the call fails with
//! EPERM before anything reaches the daemon. `ptrace_access_check` is the
//! kernel's one gate for PTRACE_ATTACH/SEIZE, /proc/<pid>/mem (and the other
//! /proc/<pid> files that need ptrace access), process_vm_readv/writev,
//! pidfd_getfd and kcmp. Signals sent through SIGIO/F_SETOWN
//! (`file_send_sigiotask`) are not covered.
//!
//! The fallback (syscall-entry tracepoints) cannot refuse: a tagged caller
//! of kill/tkill/tgkill aimed at the daemon (or kill(-1, ...), which reaches
//! it), of ptrace, or of process_vm_readv/writev aimed at it, is sent SIGKILL
//! at syscall entry and an event is raised, but the call still runs: the
//! signal is delivered, a PTRACE_ATTACH takes hold until the caller's death
//! detaches it (leaving the daemon stopped by the attach's SIGSTOP), and
//! process_vm_writev writes. Only the daemon's main thread id is recognised
//! there (a tid of another of its threads is not), and pidfd_send_signal is
//! not watched. /proc/<daemon>/mem opens are held before the effect on both
//! backends: the loader protects that path (`protection::DAEMON_TRACE`), so
//! the open is refused (LSM) or the opener killed before the open returns.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal},
    macros::{lsm, tracepoint},
    programs::{LsmContext, TracePointContext},
};
use rtid_common::{Backend, EPERM, EventKind, ProcessIdentity, SIGKILL, lsm_hook_arguments, protection};

use crate::{
    events::EventObject,
    judge::identity_of,
    kernel::{KernelPtr, task_tgid},
    maps::RUNTIME_STATE,
    protect::report_protection,
};

/// include/linux/ptrace.h: a probing check whose failure is not audited.
const PTRACE_MODE_NOAUDIT: u32 = 0x04;

/// Offsets of syscall arguments in `syscalls/sys_enter_*` records.
const SYS_ENTER_ARG: [usize; 6] = [16, 24, 32, 40, 48, 56];

/// The calling process's identity, if it has one.
#[inline(always)]
fn caller() -> Option<ProcessIdentity> {
    identity_of((bpf_get_current_pid_tgid() >> 32) as u32)
}

/// The daemon's tgid, when userspace registered one.
#[inline(always)]
fn daemon_tgid() -> Option<u32> {
    RUNTIME_STATE.get(0).map(|state| state.daemon_tgid).filter(|tgid| *tgid != 0)
}

/// The tgid of `task` when it is the daemon's.
#[inline(always)]
fn daemon_task(task: KernelPtr) -> Option<u32> {
    let daemon = daemon_tgid()?;
    match task_tgid(task) {
        Ok(tgid) if tgid == daemon => Some(tgid),
        _ => None,
    }
}

/// include/linux/lsm_hook_defs.h: `LSM_HOOK(int, 0, task_kill, struct
/// task_struct *p, struct kernel_siginfo *info, int sig, const struct cred *cred)`.
/// Called by every user-sent signal (kill, tkill, tgkill, pidfd_send_signal,
/// process groups, kill(-1)) for each target. Signal 0 (an existence check,
/// no effect) passes.
#[lsm(hook = "task_kill")]
pub fn task_kill(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(lsm_hook_arguments::TASK_KILL as usize);
    if previous != 0 {
        return previous;
    }
    let Some(process) = caller() else {
        return 0;
    };
    let signal: i32 = ctx.arg(2);
    if signal == 0 {
        return 0;
    }
    match daemon_task(ctx.arg(0)) {
        Some(tgid) => {
            report_protection(
                &process,
                EventKind::Tamper,
                Backend::Lsm,
                protection::DAEMON_SIGNAL,
                tgid,
                EventObject::None,
            );
            -EPERM
        }
        None => 0,
    }
}

/// include/linux/lsm_hook_defs.h:
/// `LSM_HOOK(int, 0, ptrace_access_check, struct task_struct *child, unsigned int mode)`.
/// Every mode is refused for the daemon; probing checks (`PTRACE_MODE_NOAUDIT`,
/// such as /proc/<pid>/stat deciding whether to show addresses) are refused
/// without an event, as they fail quietly and often.
#[lsm(hook = "ptrace_access_check")]
pub fn ptrace_access_check(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(lsm_hook_arguments::PTRACE_ACCESS_CHECK as usize);
    if previous != 0 {
        return previous;
    }
    let Some(process) = caller() else {
        return 0;
    };
    let mode: u32 = ctx.arg(1);
    match daemon_task(ctx.arg(0)) {
        Some(tgid) => {
            if mode & PTRACE_MODE_NOAUDIT == 0 {
                report_protection(
                    &process,
                    EventKind::Tamper,
                    Backend::Lsm,
                    protection::DAEMON_TRACE,
                    tgid,
                    EventObject::None,
                );
            }
            -EPERM
        }
        None => 0,
    }
}

/// Kills a tagged caller whose syscall argument `target_arg` names the
/// daemon (or, with `any_process`, is -1: every process). The call still runs.
#[inline(always)]
fn kill_if_daemon(
    ctx: &TracePointContext,
    target_arg: usize,
    signal_arg: Option<usize>,
    any_process: bool,
    guard: u32,
) {
    let Some(process) = caller() else {
        return;
    };
    let Some(daemon) = daemon_tgid() else {
        return;
    };
    // SAFETY: fixed fields of the tracepoint record the kernel passed.
    let Ok(target) = (unsafe { ctx.read_at::<i64>(target_arg) }) else {
        return;
    };
    if let Some(signal_arg) = signal_arg {
        // SAFETY: as above.
        if unsafe { ctx.read_at::<i64>(signal_arg) }.unwrap_or(0) as i32 == 0 {
            return;
        }
    }
    let target = target as i32;
    if target == daemon as i32 || (any_process && target == -1) {
        // SAFETY: signals the current task; no memory is involved.
        unsafe { bpf_send_signal(SIGKILL) };
        report_protection(&process, EventKind::Tamper, Backend::Tracepoint, guard, daemon, EventObject::None);
    }
}

/// syscalls/sys_enter_kill: `(pid_t pid, int sig)`; also attached to
/// sys_enter_tkill: `(pid_t pid, int sig)`.
#[tracepoint(category = "syscalls", name = "sys_enter_kill")]
pub fn sys_enter_kill(ctx: TracePointContext) -> u32 {
    kill_if_daemon(&ctx, SYS_ENTER_ARG[0], Some(SYS_ENTER_ARG[1]), true, protection::DAEMON_SIGNAL);
    0
}

/// syscalls/sys_enter_tgkill: `(pid_t tgid, pid_t pid, int sig)`.
#[tracepoint(category = "syscalls", name = "sys_enter_tgkill")]
pub fn sys_enter_tgkill(ctx: TracePointContext) -> u32 {
    kill_if_daemon(&ctx, SYS_ENTER_ARG[0], Some(SYS_ENTER_ARG[2]), false, protection::DAEMON_SIGNAL);
    0
}

/// syscalls/sys_enter_ptrace: `(long request, long pid, unsigned long addr, unsigned long data)`.
#[tracepoint(category = "syscalls", name = "sys_enter_ptrace")]
pub fn sys_enter_ptrace(ctx: TracePointContext) -> u32 {
    kill_if_daemon(&ctx, SYS_ENTER_ARG[1], None, false, protection::DAEMON_TRACE);
    0
}

/// syscalls/sys_enter_process_vm_{readv,writev}: `(pid_t pid, const struct
/// iovec *lvec, unsigned long liovcnt, const struct iovec *rvec, unsigned
/// long riovcnt, unsigned long flags)`. One program on both.
#[tracepoint(category = "syscalls", name = "sys_enter_process_vm_writev")]
pub fn sys_enter_process_vm(ctx: TracePointContext) -> u32 {
    kill_if_daemon(&ctx, SYS_ENTER_ARG[0], None, false, protection::DAEMON_TRACE);
    0
}
