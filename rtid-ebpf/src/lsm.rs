//! The BPF LSM backend: synchronous refusal of opens, execs, connects and
//! sends, at the moment of action and before anything is done. Loaded only
//! where the kernel runs BPF LSM; elsewhere the tracepoint and cgroup hooks
//! stand in. Judgement is the same code the fallbacks use.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_send_signal},
    macros::lsm,
    programs::LsmContext,
};
use rtid_common::{
    AF_INET, AF_INET6, AF_UNIX, Backend, EventKind, FMODE_EXEC, NetObject, Outcome, SIGKILL, counter,
    lsm_hook_arguments,
};

use crate::{
    events::EventObject,
    exec::judge_exec,
    file::judge_file,
    judge::{Enforcement, identity_of},
    kernel::{KernelPtr, ReadError, file_flags, file_mode, read_at, read_ptr},
    maps::{count, offset},
    net::{UserOrKernel, judge_inet, judge_unix_path, read_unix_path},
    path::{resolve, scratch},
    protect::{paths_protected, protected_path, report_protection},
};

const SOCK_STREAM: u16 = 1;
const SOCK_DGRAM: u16 = 2;
const AF_UNSPEC: u16 = 0;
/// `sizeof(struct sockaddr_in)`.
const SOCKADDR_IN_BYTES: i32 = 16;

/// What an LSM hook returns for an enforcement: 0 lets the call proceed.
/// Since 6.12 the verifier proves an LSM program returns 0 or an errno in
/// [-4095, -1]; a constant per errno rtid uses gives it that proof.
#[inline(always)]
pub fn lsm_return(enforcement: &Enforcement) -> i32 {
    match enforcement.outcome {
        Outcome::Blocked => match enforcement.errno {
            rtid_common::EACCES => -rtid_common::EACCES,
            _ => -rtid_common::EPERM,
        },
        Outcome::Killed => {
            // SAFETY: signals the current task; no memory is involved.
            unsafe { bpf_send_signal(SIGKILL) };
            -rtid_common::EPERM
        }
        _ => 0,
    }
}

/// Runs `judge` for a tagged caller unless an earlier LSM already refused
/// the call (its verdict is the context slot after the hook's `arguments`).
#[inline(always)]
fn tagged_hook(
    ctx: &LsmContext,
    arguments: u32,
    judge: impl FnOnce(&rtid_common::ProcessIdentity) -> Result<Enforcement, ReadError>,
) -> i32 {
    let previous: i32 = ctx.arg(arguments as usize);
    if previous != 0 {
        return previous;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(process) = identity_of(tgid) else {
        return 0;
    };
    match judge(&process) {
        Ok(enforcement) => lsm_return(&enforcement),
        Err(_) => {
            count(counter::HOOK_ERROR);
            0
        }
    }
}

/// include/linux/lsm_hook_defs.h: `LSM_HOOK(int, 0, file_open, struct file *file)`.
#[lsm(hook = "file_open")]
pub fn file_open(ctx: LsmContext) -> i32 {
    tagged_hook(&ctx, lsm_hook_arguments::FILE_OPEN, |process| {
        let file: KernelPtr = ctx.arg(0);
        if file_mode(file)? & FMODE_EXEC != 0 || file_flags(file)? & FMODE_EXEC != 0 {
            // execve opening the binary: judged as exec by bprm_check_security.
            return Ok(Enforcement { outcome: Outcome::Allowed, errno: 0, kill: false, flags: 0 });
        }
        judge_file(process, file, Backend::Lsm)
    })
}

/// include/linux/lsm_hook_defs.h:
/// `LSM_HOOK(int, 0, bprm_check_security, struct linux_binprm *bprm)`.
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    tagged_hook(&ctx, lsm_hook_arguments::BPRM_CHECK_SECURITY, |process| judge_exec(process, ctx.arg(0), Backend::Lsm))
}

/// include/linux/lsm_hook_defs.h:
/// `LSM_HOOK(int, 0, socket_connect, struct socket *sock, struct sockaddr *address, int addrlen)`.
#[lsm(hook = "socket_connect")]
pub fn socket_connect(ctx: LsmContext) -> i32 {
    tagged_hook(&ctx, lsm_hook_arguments::SOCKET_CONNECT, |process| {
        let address: KernelPtr = ctx.arg(1);
        let length: i32 = ctx.arg(2);
        judge_sockaddr(process, ctx.arg(0), address, length, EventKind::Connect)
    })
}

/// include/linux/lsm_hook_defs.h:
/// `LSM_HOOK(int, 0, socket_sendmsg, struct socket *sock, struct msghdr *msg, int size)`.
/// Only sends that name a destination are judged; connected sockets were judged at connect.
#[lsm(hook = "socket_sendmsg")]
pub fn socket_sendmsg(ctx: LsmContext) -> i32 {
    tagged_hook(&ctx, lsm_hook_arguments::SOCKET_SENDMSG, |process| {
        let message: KernelPtr = ctx.arg(1);
        let name: u64 = read_at(message, offset!(msghdr_msg_name))?;
        let length: i32 = read_at(message, offset!(msghdr_msg_namelen))?;
        if name == 0 || length <= 2 {
            return Ok(Enforcement { outcome: Outcome::Allowed, errno: 0, kill: false, flags: 0 });
        }
        judge_sockaddr(process, ctx.arg(0), name as KernelPtr, length, EventKind::Send)
    })
}

/// Judges a kernel copy of a socket address (`struct sockaddr_*`, uapi layout).
#[inline(always)]
fn judge_sockaddr(
    process: &rtid_common::ProcessIdentity,
    socket: KernelPtr,
    address: KernelPtr,
    length: i32,
    kind: EventKind,
) -> Result<Enforcement, ReadError> {
    let family: u16 = read_at(address, 0)?;
    let allowed = Enforcement { outcome: Outcome::Allowed, errno: 0, kill: false, flags: 0 };
    // udp_sendmsg sends to an AF_UNSPEC address as IPv4 (and an IPv6
    // socket ignores it): judged as the IPv4 address it is used as.
    let family =
        if family == AF_UNSPEC && kind == EventKind::Send && length >= SOCKADDR_IN_BYTES { AF_INET } else { family };
    match family {
        AF_INET | AF_INET6 => {
            let socket_type: u16 = read_at(socket, offset!(socket_type))?;
            let protocol = match socket_type {
                SOCK_STREAM => rtid_common::protocol::TCP,
                SOCK_DGRAM => rtid_common::protocol::UDP,
                _ => 0,
            };
            let port = u16::from_be(read_at::<u16>(address, 2)?);
            let mut addr = [0u8; 16];
            if family == AF_INET {
                let v4: [u8; 4] = read_at(address, 4)?;
                addr[10] = 0xff;
                addr[11] = 0xff;
                addr[12..16].copy_from_slice(&v4);
            } else {
                addr = read_at(address, 8)?;
            }
            let object = NetObject { family, port, protocol, _pad: [0; 3], addr };
            Ok(judge_inet(process, &object, kind, Backend::Lsm))
        }
        AF_UNIX => {
            let scratch = scratch().ok_or(ReadError)?;
            let path_len = read_unix_path(scratch, address as u64 + 2, (length - 2) as usize, UserOrKernel::Kernel)?;
            Ok(judge_unix_path(process, scratch, path_len, kind, Backend::Lsm))
        }
        _ => Ok(allowed),
    }
}

/// include/linux/lsm_hook_defs.h: `LSM_HOOK(int, 0, unix_stream_connect,
/// struct sock *sock, struct sock *other, struct sock *newsk)`. `other` is the
/// listening socket the kernel found: its bound path (`unix_sock::path`) is
/// judged against rtid's protected paths, so a relative name, a symlink or a
/// /proc/<pid>/root detour reaches the same answer as the socket's own path.
#[lsm(hook = "unix_stream_connect")]
pub fn unix_stream_connect(ctx: LsmContext) -> i32 {
    let previous: i32 = ctx.arg(lsm_hook_arguments::UNIX_STREAM_CONNECT as usize);
    if previous != 0 {
        return previous;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(process) = identity_of(tgid) else {
        return 0;
    };
    if !paths_protected() {
        return 0;
    }
    let other: KernelPtr = ctx.arg(1);
    let path = other.wrapping_add(offset!(unix_sock_path));
    // An abstract or unbound socket has no path: nothing of rtid's.
    let (Ok(mnt), Ok(dentry)) = (read_ptr(path, offset!(path_mnt)), read_ptr(path, offset!(path_dentry))) else {
        return 0;
    };
    let Some(scratch) = scratch() else {
        return 0;
    };
    let Ok(resolved) = resolve(scratch, mnt, dentry) else {
        return 0;
    };
    match protected_path(scratch, &resolved) {
        Some(protection) => {
            report_protection(
                &process,
                EventKind::Connect,
                Backend::Lsm,
                protection,
                0,
                EventObject::Path(scratch, resolved),
            );
            -rtid_common::EPERM
        }
        None => 0,
    }
}
