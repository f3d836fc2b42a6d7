//! Socket creation by kind: besides TCP, UDP, unix and routing netlink, an
//! identity creates only the kinds its policy allows (`sockets.allow`, kept
//! as `guard::DENY_*_SOCKETS` bits). Raw, packet and other non-TCP/UDP
//! sockets reach the network past every address rule, so they are refused
//! where they are born.
//!
//! Under BPF LSM (`socket_create`) the call fails with EPERM. The fallback
//! judges the same at `socket(2)` entry (`capability::sys_enter_privileged`,
//! already attached there) and kills the caller: the socket is made, the
//! caller dies before it returns to user space with it.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::lsm, programs::LsmContext};
use rtid_common::{
    Backend, DecisionSource, EPERM, EventKind, Outcome, ProcessIdentity, Verdict, event_flags, guard,
    lsm_hook_arguments, mode, protection, socket_detail,
};

use crate::{
    events::{EventFacts, EventObject, emit},
    judge::{Decision, Enforcement, active_policy, identity_of, settle_enforcement},
    lsm::lsm_return,
};

const AF_UNIX: u32 = 1;
const AF_INET: u32 = 2;
const AF_INET6: u32 = 10;
const AF_NETLINK: u32 = 16;
const AF_PACKET: u32 = 17;
const AF_VSOCK: u32 = 40;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
/// The type argument carries SOCK_NONBLOCK and SOCK_CLOEXEC above these bits.
const SOCK_TYPE_MASK: u32 = 0xf;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_MPTCP: u32 = 262;
const NETLINK_ROUTE: u32 = 0;

/// The `guard::DENY_*_SOCKETS` bit that covers a socket of this kind; 0 for
/// the kinds every identity may create (their traffic is judged by address).
#[inline(always)]
fn guard_for(family: u32, socket_type: u32, protocol: u32) -> u32 {
    match family {
        AF_UNIX => 0,
        AF_INET | AF_INET6 => match socket_type & SOCK_TYPE_MASK {
            SOCK_RAW => guard::DENY_RAW_SOCKETS,
            SOCK_STREAM if matches!(protocol, 0 | IPPROTO_TCP | IPPROTO_MPTCP) => 0,
            SOCK_DGRAM if matches!(protocol, 0 | IPPROTO_UDP) => 0,
            _ => guard::DENY_OTHER_SOCKETS,
        },
        AF_NETLINK if protocol == NETLINK_ROUTE => 0,
        AF_NETLINK => guard::DENY_NETLINK_SOCKETS,
        AF_PACKET => guard::DENY_PACKET_SOCKETS,
        AF_VSOCK => guard::DENY_VSOCK_SOCKETS,
        _ => guard::DENY_OTHER_SOCKETS,
    }
}

/// Judges a socket creation and reports a refusal. `None` when allowed.
/// `can_refuse`: the hook can fail the call (LSM); otherwise the caller is killed.
#[inline(always)]
pub fn judge_socket(
    process: &ProcessIdentity,
    family: u32,
    socket_type: u32,
    protocol: u32,
    backend: Backend,
) -> Option<Enforcement> {
    let denied = guard_for(family, socket_type, protocol);
    if denied == 0 {
        return None;
    }
    let active = active_policy(process.identity);
    if active.policy.guards & denied == 0 {
        return None;
    }
    let decision =
        Decision { verdict: Verdict::Deny, source: DecisionSource::Protected, rule_id: protection::SOCKET_KIND };
    let enforcement = if active.policy.mode == mode::AUDIT {
        Enforcement { outcome: Outcome::AuditOnly, errno: 0, kill: false, flags: event_flags::AUDIT_MODE }
    } else if backend == Backend::Lsm {
        Enforcement { outcome: Outcome::Blocked, errno: EPERM, kill: false, flags: 0 }
    } else {
        Enforcement { outcome: Outcome::Killed, errno: 0, kill: true, flags: event_flags::BACKEND_FALLBACK }
    };
    let facts = EventFacts {
        kind: EventKind::Socket,
        backend,
        identity: process.identity,
        generation: active.generation,
        access: 0,
        related_tgid: 0,
        detail: socket_detail::pack(family, socket_type & SOCK_TYPE_MASK, protocol),
    };
    emit(&facts, &decision, &enforcement, EventObject::None);
    Some(settle_enforcement(enforcement))
}

/// include/linux/lsm_hook_defs.h:
/// `LSM_HOOK(int, 0, socket_create, int family, int type, int protocol, int kern)`.
/// Sockets the kernel makes for itself (`kern`) are not the caller's.
#[lsm(hook = "socket_create")]
pub fn socket_create(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(lsm_hook_arguments::SOCKET_CREATE as usize);
    if previous != 0 {
        return previous;
    }
    let Some(process) = identity_of((bpf_get_current_pid_tgid() >> 32) as u32) else {
        return 0;
    };
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        return 0;
    }
    let (family, socket_type, protocol): (i32, i32, i32) = (ctx.arg(0), ctx.arg(1), ctx.arg(2));
    match judge_socket(&process, family as u32, socket_type as u32, protocol as u32, Backend::Lsm) {
        Some(enforcement) => lsm_return(&enforcement),
        None => 0,
    }
}
