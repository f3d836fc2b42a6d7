//! Self-protection: an agent must not weaken the monitor. The bpf() syscall
//! reaches every program and map (rtid's included), so a process that carries
//! an identity may not use it at all, whatever its privileges: refused with
//! EPERM under BPF LSM, killed before the call returns on the fallback.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal},
    macros::{lsm, tracepoint},
    programs::{LsmContext, TracePointContext},
};
use rtid_common::{
    Backend, DecisionSource, EPERM, EventKind, Outcome, ProcessIdentity, SIGKILL, Verdict, lsm_hook_arguments,
};

use crate::{
    events::{EventFacts, EventObject, emit},
    judge::{Decision, Enforcement, active_policy, identity_of},
};

#[inline(always)]
fn report(process: &ProcessIdentity, backend: Backend, outcome: Outcome) {
    let active = active_policy(process.identity);
    let facts = EventFacts {
        kind: EventKind::Tamper,
        backend,
        identity: process.identity,
        generation: active.generation,
        access: 0,
        related_tgid: 0,
        detail: 0,
    };
    let decision = Decision { verdict: Verdict::Deny, source: DecisionSource::Default, rule_id: 0 };
    let errno = if outcome == Outcome::Blocked { EPERM } else { 0 };
    let enforcement = Enforcement { outcome, errno, kill: outcome == Outcome::Killed, flags: 0 };
    emit(&facts, &decision, &enforcement, EventObject::None);
}

/// syscalls/sys_enter_bpf: `(int cmd, union bpf_attr *uattr, unsigned int size)`.
/// SIGKILL here is delivered before the call returns; the call itself still
/// runs, which is why LSM (below) is preferred where available.
#[tracepoint(category = "syscalls", name = "sys_enter_bpf")]
pub fn sys_enter_bpf(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(process) = identity_of(tgid) {
        // SAFETY: signals the current task; no memory is involved.
        unsafe { bpf_send_signal(SIGKILL) };
        report(&process, Backend::Tracepoint, Outcome::Killed);
    }
    0
}

/// include/linux/lsm_hook_defs.h before 6.9:
/// `LSM_HOOK(int, 0, bpf, int cmd, union bpf_attr *attr, unsigned int size)`.
#[lsm(hook = "bpf")]
pub fn bpf(ctx: LsmContext) -> i32 {
    refuse_bpf(ctx.arg(lsm_hook_arguments::BPF as usize))
}

/// include/linux/lsm_hook_defs.h from 6.9: `LSM_HOOK(int, 0, bpf, int cmd,
/// union bpf_attr *attr, unsigned int size, bool kernel)`. The loader picks
/// this program or `bpf` from the hook's prototype in BTF.
#[lsm(hook = "bpf")]
pub fn bpf_with_kernel_flag(ctx: LsmContext) -> i32 {
    refuse_bpf(ctx.arg(lsm_hook_arguments::BPF_WITH_KERNEL_FLAG as usize))
}

/// Refuses bpf() to tagged callers, unless an earlier LSM refused it already.
#[inline(always)]
fn refuse_bpf(previous: i32) -> i32 {
    if previous != 0 {
        return previous;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    match identity_of(tgid) {
        Some(process) => {
            report(&process, Backend::Lsm, Outcome::Blocked);
            -EPERM
        }
        None => 0,
    }
}
