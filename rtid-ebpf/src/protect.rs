//! Self-protection: an agent must not weaken the monitor. Shared pieces of
//! every built-in protection (the `protection::*` ids): the report, and the
//! lookup of rtid's own paths. The bpf() syscall itself is guarded here: it
//! reaches every program and map (rtid's included), so a process that carries
//! an identity may not use it at all, whatever its privileges: refused with
//! EPERM under BPF LSM, killed before the call returns on the fallback.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal},
    macros::{lsm, tracepoint},
    programs::{LsmContext, TracePointContext},
};
use rtid_common::{
    Backend, DecisionSource, EPERM, EventKind, Outcome, PROTECTED_RULESET, ProcessIdentity, SIGKILL, Verdict, counter,
    lsm_hook_arguments, protection,
};

use crate::{
    events::{EventFacts, EventObject, emit},
    judge::{Decision, Enforcement, active_policy, identity_of},
    maps::{PROTECTED_PATHS, RUNTIME_STATE, count},
    path::{PathScratch, ResolvedPath, build_prefix_key},
};

/// The decision of a built-in protection.
#[inline(always)]
pub fn protected_decision(protection: u32) -> Decision {
    Decision { verdict: Verdict::Deny, source: DecisionSource::Protected, rule_id: protection }
}

/// What a protection does on a backend: refuse where the hook can, else kill
/// the caller. Not subject to audit mode: the monitor's integrity is not policy.
#[inline(always)]
pub fn protected_enforcement(can_refuse: bool) -> Enforcement {
    if can_refuse {
        Enforcement { outcome: Outcome::Blocked, errno: EPERM, kill: false, flags: 0 }
    } else {
        Enforcement {
            outcome: Outcome::Killed,
            errno: 0,
            kill: true,
            flags: rtid_common::event_flags::BACKEND_FALLBACK,
        }
    }
}

/// Reports a protection that held for `process`, and counts it.
#[inline(always)]
pub fn report_protection(
    process: &ProcessIdentity,
    kind: EventKind,
    backend: Backend,
    protection: u32,
    detail: u32,
    object: EventObject,
) {
    count(counter::TAMPER);
    let active = active_policy(process.identity);
    let facts = EventFacts {
        kind,
        backend,
        identity: process.identity,
        generation: active.generation,
        access: 0,
        related_tgid: if kind == EventKind::Tamper { detail } else { 0 },
        detail,
    };
    let enforcement = protected_enforcement(backend == Backend::Lsm);
    emit(&facts, &protected_decision(protection), &enforcement, object);
}

/// Whether any path is protected: an untagged caller never gets here, and a
/// tagged one skips the lookup while nothing is.
#[inline(always)]
pub fn paths_protected() -> bool {
    RUNTIME_STATE.get(0).is_some_and(|state| state.protected_paths != 0)
}

/// The protection guarding `resolved` (a path in `scratch`), if any. Leaves
/// the protected-ruleset key in `scratch.prefix_key`.
#[inline(always)]
pub fn protected_path(scratch: &mut PathScratch, resolved: &ResolvedPath) -> Option<u32> {
    if !paths_protected() {
        return None;
    }
    build_prefix_key(scratch, resolved, PROTECTED_RULESET);
    PROTECTED_PATHS.get(&scratch.prefix_key).copied()
}

/// syscalls/sys_enter_bpf: `(int cmd, union bpf_attr *attr, unsigned int size)`.
/// SIGKILL here is delivered before the call returns; the call itself still
/// runs, which is why LSM (below) is preferred where available.
#[tracepoint(category = "syscalls", name = "sys_enter_bpf")]
pub fn sys_enter_bpf(_ctx: TracePointContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if let Some(process) = identity_of(tgid) {
        // SAFETY: signals the current task; no memory is involved.
        unsafe { bpf_send_signal(SIGKILL) };
        report_protection(
            &process,
            EventKind::Tamper,
            Backend::Tracepoint,
            protection::BPF_SYSCALL,
            0,
            EventObject::None,
        );
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
            report_protection(&process, EventKind::Tamper, Backend::Lsm, protection::BPF_SYSCALL, 0, EventObject::None);
            -EPERM
        }
        None => 0,
    }
}
