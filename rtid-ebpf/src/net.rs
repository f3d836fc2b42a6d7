//! Network actions. IPv4 and IPv6 connects and unconnected sends are judged in
//! cgroup socket-address hooks attached at the cgroup v2 root, which refuse the
//! call synchronously. AF_UNIX connects and sends are judged at syscall entry
//! (the cgroup unix hooks are not yet supported by aya); there the call cannot
//! be refused, only killed or flagged, unless BPF LSM handles it.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_probe_read_user, bpf_send_signal,
        generated::{
            bpf_probe_read_kernel as bpf_probe_read_kernel_raw,
            bpf_probe_read_kernel_str as bpf_probe_read_kernel_str_raw, bpf_probe_read_user as bpf_probe_read_user_raw,
            bpf_probe_read_user_str as bpf_probe_read_user_str_raw, bpf_set_retval,
        },
    },
    macros::{cgroup_sock_addr, tracepoint},
    maps::lpm_trie::Key,
    programs::{SockAddrContext, TracePointContext},
};
use rtid_common::{
    AF_INET, AF_INET6, AF_UNIX, Backend, EACCES, EventKind, NetKey, NetObject, Outcome, PATH_KEY_BYTES,
    PROTECTED_RULESET, ProcessIdentity, RULESET_PREFIX_BITS, SIGKILL, counter, protocol,
};

use crate::{
    events::{EventFacts, EventObject, UNIX_PATH_BYTES, emit},
    judge::{
        Enforcement, active_policy, enforce_for, identity_of, judge_address, judge_unix, settle_action, should_report,
        status_override,
    },
    kernel::ReadError,
    maps::{BACKEND_CONFIG, PENDING_KILLS, PROTECTED_PATHS, count},
    path::{PathScratch, opaque, scratch},
    protect::{paths_protected, protected_decision},
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;

/// cgroup/connect4: `connect(2)` on an AF_INET socket (TCP or UDP).
#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    judge_sock_addr(&ctx, EventKind::Connect, AF_INET)
}

/// cgroup/connect6: `connect(2)` on an AF_INET6 socket, v4-mapped addresses included.
#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    judge_sock_addr(&ctx, EventKind::Connect, AF_INET6)
}

/// cgroup/sendmsg4: `sendto`/`sendmsg` with a destination on an unconnected AF_INET socket.
#[cgroup_sock_addr(sendmsg4)]
pub fn sendmsg4(ctx: SockAddrContext) -> i32 {
    judge_sock_addr(&ctx, EventKind::Send, AF_INET)
}

/// cgroup/sendmsg6: the same for AF_INET6.
#[cgroup_sock_addr(sendmsg6)]
pub fn sendmsg6(ctx: SockAddrContext) -> i32 {
    judge_sock_addr(&ctx, EventKind::Send, AF_INET6)
}

#[inline(always)]
fn judge_sock_addr(ctx: &SockAddrContext, kind: EventKind, family: u16) -> i32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(process) = identity_of(tgid) else {
        return ALLOW;
    };
    if BACKEND_CONFIG.get(0).is_some_and(|config| config.lsm_net != 0) {
        return ALLOW;
    }
    let object = read_sock_addr(ctx, family);
    let enforcement = judge_inet(&process, &object, kind, Backend::CgroupSock);
    match enforcement.outcome {
        Outcome::Blocked => {
            if enforcement.errno == EACCES {
                // SAFETY: sets the error this cgroup hook returns (kernel 5.18+);
                // older kernels ignore it and the caller gets EPERM.
                unsafe { bpf_set_retval(-EACCES) };
            }
            REFUSE
        }
        Outcome::Killed => {
            // The call is refused here; `sys_exit_net` delivers the SIGKILL.
            // Should the table be full, the refusal still holds and the miss is counted.
            if PENDING_KILLS.insert(&bpf_get_current_pid_tgid(), &1, 0).is_err() {
                count(counter::HOOK_ERROR);
            }
            REFUSE
        }
        _ => ALLOW,
    }
}

/// syscalls/sys_exit_{connect,sendto,sendmsg,sendmmsg}: `long ret`. Kills a
/// thread whose call a cgroup socket hook refused with a kill verdict, before
/// it returns to user space. Every connect and send on the node pays one
/// lookup in a map that is empty unless such a kill is under way.
#[tracepoint(category = "syscalls", name = "sys_exit_connect")]
pub fn sys_exit_net(_ctx: TracePointContext) -> u32 {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the value is only tested for presence.
    if unsafe { PENDING_KILLS.get(&thread) }.is_some() {
        // SAFETY: signals the current task; no memory is involved.
        unsafe { bpf_send_signal(SIGKILL) };
        let _ = PENDING_KILLS.remove(&thread);
    }
    0
}

/// Judges an IPv4/IPv6 connect or send by a tagged process and reports it.
/// Both backends that handle it (cgroup hooks, LSM) can refuse the call.
#[inline(always)]
pub fn judge_inet(process: &ProcessIdentity, object: &NetObject, kind: EventKind, backend: Backend) -> Enforcement {
    count(counter::JUDGED);
    let active = active_policy(process.identity);
    let decision = settle_action(match status_override(process.identity, &active) {
        Some(decision) => decision,
        None => {
            let key = Key::new(RULESET_PREFIX_BITS + 128, NetKey { ruleset: active.policy.ruleset, addr: object.addr });
            judge_address(&key, object.port, object.protocol, active.policy.default_network, active.now_ns)
        }
    });
    let enforcement = enforce_for(process.identity, &decision, &active, true);
    if should_report(&decision, &active.policy) {
        let mut facts = net_facts(kind, process, active.generation);
        facts.backend = backend;
        emit(&facts, &decision, &enforcement, EventObject::Net(object));
    }
    enforcement
}

#[inline(always)]
fn read_sock_addr(ctx: &SockAddrContext, family: u16) -> NetObject {
    // SAFETY: the context is the kernel's bpf_sock_addr for this call; each
    // field is read with the width the verifier allows for it.
    let (user_port, sock_protocol, addr) = unsafe {
        let sock = &*ctx.sock_addr;
        let mut addr = [0u8; 16];
        if family == AF_INET {
            addr[10] = 0xff;
            addr[11] = 0xff;
            addr[12..16].copy_from_slice(&sock.user_ip4.to_ne_bytes());
        } else {
            addr[0..4].copy_from_slice(&sock.user_ip6[0].to_ne_bytes());
            addr[4..8].copy_from_slice(&sock.user_ip6[1].to_ne_bytes());
            addr[8..12].copy_from_slice(&sock.user_ip6[2].to_ne_bytes());
            addr[12..16].copy_from_slice(&sock.user_ip6[3].to_ne_bytes());
        }
        (sock.user_port, sock.protocol, addr)
    };
    let protocol = match sock_protocol {
        IPPROTO_TCP => protocol::TCP,
        IPPROTO_UDP => protocol::UDP,
        _ => 0,
    };
    NetObject { family, port: u16::from_be(user_port as u16), protocol, _pad: [0; 3], addr }
}

#[inline(always)]
fn net_facts(kind: EventKind, process: &ProcessIdentity, generation: u32) -> EventFacts {
    EventFacts {
        kind,
        backend: Backend::CgroupSock,
        identity: process.identity,
        generation,
        access: 0,
        related_tgid: 0,
        detail: 0,
    }
}

/// Offsets of syscall arguments in `syscalls/sys_enter_*` records: 8-byte
/// common header, the syscall number, then six 8-byte arguments.
const SYS_ENTER_ARG: [usize; 6] = [16, 24, 32, 40, 48, 56];

/// syscalls/sys_enter_connect: `(int fd, struct sockaddr *uservaddr, int addrlen)`.
#[tracepoint(category = "syscalls", name = "sys_enter_connect")]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    if try_unix_call(&ctx, EventKind::Connect, SYS_ENTER_ARG[1], SYS_ENTER_ARG[2]).is_err() {
        count(counter::HOOK_ERROR);
    }
    0
}

/// syscalls/sys_enter_sendto:
/// `(int fd, void *buff, size_t len, unsigned int flags, struct sockaddr *addr, int addr_len)`.
#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn sys_enter_sendto(ctx: TracePointContext) -> u32 {
    if try_unix_call(&ctx, EventKind::Send, SYS_ENTER_ARG[4], SYS_ENTER_ARG[5]).is_err() {
        count(counter::HOOK_ERROR);
    }
    0
}

#[inline(always)]
fn try_unix_call(ctx: &TracePointContext, kind: EventKind, addr_arg: usize, len_arg: usize) -> Result<(), ReadError> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(process) = identity_of(tgid) else {
        return Ok(());
    };
    if BACKEND_CONFIG.get(0).is_some_and(|config| config.lsm_net != 0) {
        return Ok(());
    }
    // SAFETY: fixed fields of the tracepoint record the kernel passed.
    let (user_addr, addr_len): (u64, u64) =
        unsafe { (ctx.read_at(addr_arg).map_err(|_| ReadError)?, ctx.read_at(len_arg).map_err(|_| ReadError)?) };
    if user_addr == 0 || addr_len < 3 {
        return Ok(());
    }
    // SAFETY: bpf_probe_read_user validates the user address.
    let family: u16 = unsafe { bpf_probe_read_user(user_addr as *const u16) }.map_err(|_| ReadError)?;
    if family != AF_UNIX {
        return Ok(());
    }
    let scratch = scratch().ok_or(ReadError)?;
    let path_len = read_unix_path(scratch, user_addr + 2, (addr_len - 2) as usize, UserOrKernel::User)?;

    let enforcement = judge_unix_path(&process, scratch, path_len, kind, Backend::Tracepoint);
    if enforcement.kill {
        // SAFETY: signals the current task; no memory is involved.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    Ok(())
}

/// Judges a unix socket path already in `scratch.prefix_key` and reports it.
#[inline(always)]
pub fn judge_unix_path(
    process: &ProcessIdentity,
    scratch: &mut PathScratch,
    path_len: usize,
    kind: EventKind,
    backend: Backend,
) -> Enforcement {
    count(counter::JUDGED);
    let active = active_policy(process.identity);
    let key_bytes = if path_len < PATH_KEY_BYTES { path_len + 1 } else { PATH_KEY_BYTES };
    // rtid's control socket (and any protected path) first, as the caller named it.
    let protection = if paths_protected() {
        scratch.prefix_key.data.ruleset = PROTECTED_RULESET;
        scratch.prefix_key.prefix_len = RULESET_PREFIX_BITS + (key_bytes as u32) * 8;
        PROTECTED_PATHS.get(&scratch.prefix_key).copied()
    } else {
        None
    };
    let decision = settle_action(match (protection, status_override(process.identity, &active)) {
        (Some(protection), _) => protected_decision(protection),
        (None, Some(decision)) => decision,
        (None, None) => {
            scratch.prefix_key.data.ruleset = active.policy.ruleset;
            scratch.prefix_key.prefix_len = RULESET_PREFIX_BITS + (key_bytes as u32) * 8;
            judge_unix(&scratch.prefix_key, active.policy.default_network, active.now_ns)
        }
    });
    let enforcement = enforce_for(process.identity, &decision, &active, backend == Backend::Lsm);
    if should_report(&decision, &active.policy) {
        let mut facts = net_facts(kind, process, active.generation);
        facts.backend = backend;
        emit(&facts, &decision, &enforcement, EventObject::UnixPath(scratch, path_len));
    }
    enforcement
}

/// Where a socket address lives: syscall arguments are user memory, LSM hook arguments kernel copies.
#[derive(Clone, Copy)]
pub enum UserOrKernel {
    User,
    Kernel,
}

/// Copies `sun_path` into the scratch key: a pathname socket up to its NUL, an
/// abstract socket (leading NUL) as `@name`. Returns the length without NUL.
/// The string helpers measure the path, so there is no scanning loop whose
/// many exits the verifier would have to follow separately.
#[inline(always)]
pub fn read_unix_path(
    scratch: &mut PathScratch,
    sun_path: u64,
    max_len: usize,
    from: UserOrKernel,
) -> Result<usize, ReadError> {
    let max_len = if max_len > UNIX_PATH_BYTES { UNIX_PATH_BYTES } else { max_len };
    let destination = scratch.prefix_key.data.path.as_mut_ptr() as *mut _;
    let source = sun_path as *const _;
    // SAFETY: the destination holds PATH_KEY_BYTES > UNIX_PATH_BYTES bytes and
    // every size below is masked to at most 127; the helpers validate the source.
    let copied = unsafe {
        match from {
            UserOrKernel::User => bpf_probe_read_user_str_raw(destination, (max_len & 0x7f) as u32, source),
            UserOrKernel::Kernel => bpf_probe_read_kernel_str_raw(destination, (max_len & 0x7f) as u32, source),
        }
    };
    if copied < 0 {
        return Err(ReadError);
    }
    if copied > 1 {
        // A pathname socket: `copied` counts the NUL.
        let len = opaque(scratch, copied as usize - 1) & 0x7f;
        return Ok(len);
    }
    // An abstract socket: a NUL, then a name whose length is the address length.
    // SAFETY: as above.
    let status = unsafe {
        match from {
            UserOrKernel::User => bpf_probe_read_user_raw(destination, (max_len & 0x7f) as u32, source),
            UserOrKernel::Kernel => bpf_probe_read_kernel_raw(destination, (max_len & 0x7f) as u32, source),
        }
    };
    if status != 0 {
        return Err(ReadError);
    }
    let path = &mut scratch.prefix_key.data.path;
    path[0] = b'@';
    let len = max_len & 0x7f;
    path[len] = 0;
    Ok(len)
}
