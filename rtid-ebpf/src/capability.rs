//! The capability ceiling: a tagged process may not use a capability its
//! identity denies (`IdentityPolicy::denied_capabilities`), whatever its
//! credentials hold, nor create a user namespace where its guards say so
//! (`guard::DENY_USER_NAMESPACES`).
//!
//! Under BPF LSM (`capable`, `userns_create`) the check itself fails, so the
//! call returns EPERM before it has any effect. Probing checks
//! (CAP_OPT_NOAUDIT, e.g. `has_capability_noaudit`) are refused too but
//! raise no event: the kernel makes them often and quietly. Identities in
//! audit mode are reported and let through. Events are `capability` events:
//! `detail` is the capability number; a refused user namespace is reported
//! with rule `rtid/user-namespace` and CAP_SYS_ADMIN, the capability the new
//! namespace would have handed out.
//!
//! The fallback has no capability hook: syscall-entry tracepoints on the
//! calls that need a denied capability (mount and the new mount API,
//! namespaces, modules, kexec, open_by_handle_at, raw and packet sockets,
//! ioperm/iopl, the clock, reboot, hostname, swap) kill a tagged caller, and
//! raise the same event. The call still runs: a mount is made, a module
//! loaded, before the caller dies on its way back to user space. Checks that
//! the kernel makes inside other calls (CAP_DAC_READ_SEARCH on a lookup,
//! CAP_SYS_PTRACE on a /proc read) are not seen there.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_send_signal},
    macros::{lsm, tracepoint},
    programs::{LsmContext, TracePointContext},
};
use rtid_common::{
    Backend, DecisionSource, EPERM, EventKind, Outcome, ProcessIdentity, SIGKILL, Verdict, event_flags, guard,
    lsm_hook_arguments, mode, privileged_check, protection,
};

use crate::{
    events::{EventFacts, EventObject, emit},
    judge::{Decision, Enforcement, active_policy, identity_of, settle_enforcement},
    lsm::lsm_return,
    maps::{PRIVILEGED_SYSCALLS, count},
};

/// include/linux/security.h: the check must not be audited (a probe).
const CAP_OPT_NOAUDIT: u32 = 1 << 1;
const CAP_SYS_ADMIN: u32 = 21;
/// include/uapi/linux/sched.h: the namespace flags of clone and unshare.
const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_NEW_OTHERS: u64 = 0x0002_0000 /* NEWNS */
    | 0x0200_0000 /* NEWCGROUP */
    | 0x0400_0000 /* NEWUTS */
    | 0x0800_0000 /* NEWIPC */
    | 0x2000_0000 /* NEWPID */
    | 0x4000_0000 /* NEWNET */
    | 0x0000_0080 /* NEWTIME */;
const AF_PACKET: i64 = 17;
const SOCK_RAW: i64 = 3;
/// `sys_enter_*` record layout: the syscall number after the 8-byte header, then the arguments.
const SYS_ENTER_NR: usize = 8;
const SYS_ENTER_ARG: [usize; 3] = [16, 24, 32];

/// What the ceiling says about `process` using `capability` (or creating a
/// user namespace, with `protection::USER_NAMESPACE`): `None` when allowed.
#[inline(always)]
fn ceiling(process: &ProcessIdentity, capability: u32, guard_id: u32) -> Option<(Decision, Enforcement, u32)> {
    let active = active_policy(process.identity);
    let denied = if guard_id == protection::USER_NAMESPACE {
        active.policy.guards & guard::DENY_USER_NAMESPACES != 0
    } else {
        capability < 64 && active.policy.denied_capabilities & (1u64 << capability) != 0
    };
    if !denied {
        return None;
    }
    let decision = Decision { verdict: Verdict::Deny, source: DecisionSource::Protected, rule_id: guard_id };
    let enforcement = if active.policy.mode == mode::AUDIT {
        Enforcement { outcome: Outcome::AuditOnly, errno: 0, kill: false, flags: event_flags::AUDIT_MODE }
    } else {
        Enforcement { outcome: Outcome::Blocked, errno: EPERM, kill: false, flags: 0 }
    };
    Some((decision, enforcement, active.generation))
}

#[inline(always)]
fn report(process: &ProcessIdentity, backend: Backend, capability: u32, found: &(Decision, Enforcement, u32)) {
    count(rtid_common::counter::TAMPER);
    let facts = EventFacts {
        kind: EventKind::Capability,
        backend,
        identity: process.identity,
        generation: found.2,
        access: 0,
        related_tgid: 0,
        detail: capability,
    };
    emit(&facts, &found.0, &found.1, EventObject::None);
}

/// include/linux/lsm_hook_defs.h: `LSM_HOOK(int, 0, capable, const struct
/// cred *cred, struct user_namespace *ns, int cap, unsigned int opts)`.
/// The hottest hook rtid has: an untagged caller costs one map lookup.
#[lsm(hook = "capable")]
pub fn capable(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(lsm_hook_arguments::CAPABLE as usize);
    if previous != 0 {
        return previous;
    }
    let Some(process) = identity_of((bpf_get_current_pid_tgid() >> 32) as u32) else {
        return 0;
    };
    let capability: i32 = ctx.arg(2);
    let options: u32 = ctx.arg(3);
    let Some(found) = ceiling(&process, capability as u32, protection::CAPABILITY) else {
        return 0;
    };
    if options & CAP_OPT_NOAUDIT == 0 {
        report(&process, Backend::Lsm, capability as u32, &found);
    }
    // Settled and returned as one constant per outcome: computed from a known
    // outcome, the compiler folds the choice into arithmetic (`-x`) whose
    // result 6.12's verifier cannot bound to [-4095, 0].
    lsm_return(&settle_enforcement(found.1))
}

/// include/linux/lsm_hook_defs.h: `LSM_HOOK(int, 0, userns_create, const struct cred *cred)` (6.1 and later).
#[lsm(hook = "userns_create")]
pub fn userns_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(lsm_hook_arguments::USERNS_CREATE as usize);
    if previous != 0 {
        return previous;
    }
    let Some(process) = identity_of((bpf_get_current_pid_tgid() >> 32) as u32) else {
        return 0;
    };
    let Some(found) = ceiling(&process, CAP_SYS_ADMIN, protection::USER_NAMESPACE) else {
        return 0;
    };
    report(&process, Backend::Lsm, CAP_SYS_ADMIN, &found);
    lsm_return(&settle_enforcement(found.1))
}

/// syscalls/sys_enter_* of every call in `PRIVILEGED_SYSCALLS` (the loader
/// attaches this one program to each): kills a tagged caller when the call
/// needs a capability its identity denies. The syscall number (in every
/// record after the common header) selects the entry.
#[tracepoint(category = "syscalls", name = "sys_enter_mount")]
pub fn sys_enter_privileged(ctx: TracePointContext) -> u32 {
    let Some(process) = identity_of((bpf_get_current_pid_tgid() >> 32) as u32) else {
        return 0;
    };
    // SAFETY: fixed fields of the tracepoint record the kernel passed.
    let Ok(number) = (unsafe { ctx.read_at::<i32>(SYS_ENTER_NR) }) else {
        return 0;
    };
    // SAFETY: copied out at once.
    let Some(entry) = (unsafe { PRIVILEGED_SYSCALLS.get(&(number as u32)) }).copied() else {
        return 0;
    };
    let mut capability = entry & 0xff;
    let mut guard_id = protection::CAPABILITY;
    // SAFETY: as above.
    let first: u64 = unsafe { ctx.read_at(SYS_ENTER_ARG[0]) }.unwrap_or(0);
    match (entry >> 8) & 0xff {
        privileged_check::NAMESPACE_FLAGS | privileged_check::CLONE3_FLAGS => {
            let flags = if (entry >> 8) & 0xff == privileged_check::CLONE3_FLAGS {
                // SAFETY: bpf_probe_read_user validates the user address (`clone_args.flags` is first).
                unsafe { bpf_probe_read_user(first as *const u64) }.unwrap_or(0)
            } else {
                first
            };
            if flags & CLONE_NEWUSER != 0 {
                // Inside a new user namespace the other namespaces need no capability of the caller's.
                guard_id = protection::USER_NAMESPACE;
                capability = CAP_SYS_ADMIN;
            } else if flags & CLONE_NEW_OTHERS == 0 {
                return 0;
            }
        }
        privileged_check::RAW_SOCKET => {
            // SAFETY: as above.
            let socket_type: i64 = unsafe { ctx.read_at(SYS_ENTER_ARG[1]) }.unwrap_or(0);
            // SAFETY: as above.
            let protocol: i64 = unsafe { ctx.read_at(SYS_ENTER_ARG[2]) }.unwrap_or(0);
            // The identity's socket kinds first: they hold whatever its capabilities.
            let judged = crate::socket::judge_socket(
                &process,
                first as u32,
                socket_type as u32,
                protocol as u32,
                Backend::Tracepoint,
            );
            if judged.is_some_and(|enforcement| enforcement.kill) {
                // SAFETY: signals the current task; no memory is involved.
                unsafe { bpf_send_signal(SIGKILL) };
                return 0;
            }
            if first as i64 != AF_PACKET && socket_type & 0xf != SOCK_RAW {
                return 0;
            }
        }
        _ => {}
    }
    let Some(mut found) = ceiling(&process, capability, guard_id) else {
        return 0;
    };
    if found.1.outcome == Outcome::Blocked {
        // SAFETY: signals the current task; no memory is involved.
        unsafe { bpf_send_signal(SIGKILL) };
        found.1 = Enforcement { outcome: Outcome::Killed, errno: 0, kill: true, flags: event_flags::BACKEND_FALLBACK };
    }
    report(&process, Backend::Tracepoint, capability, &found);
    0
}
