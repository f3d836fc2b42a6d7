//! Events the kernel programs send through the `EVENTS` ring buffer.

use crate::identity::IdentityId;

/// Path bytes carried in an event (file, binary or unix socket path).
pub const EVENT_PATH_BYTES: usize = 512;
/// Bump when the layout of `Event` changes.
pub const EVENT_WIRE_VERSION: u16 = 2;

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    FileOpen = 1,
    Connect = 2,
    Send = 3,
    Exec = 4,
    ProcessStart = 5,
    Exit = 6,
    IdentityChange = 7,
    /// A tagged process tried to touch the monitor itself (`rule_id` is the
    /// `protection::*` that held, `detail` the target tgid for signals and
    /// ptrace), or userspace found enforcement detached.
    Tamper = 8,
    /// A capability check of a tagged process (`detail`: the capability number).
    Capability = 9,
    /// A change to a path other than an open: unlink, rename, link, truncate,
    /// chmod, chown (`detail`: `file_change::*`).
    FileChange = 10,
    /// Creation of a socket of a kind the identity may not create
    /// (`detail`: `socket_detail`, family, type and protocol).
    Socket = 11,
}

impl EventKind {
    pub const fn from_u8(value: u8) -> Option<EventKind> {
        Some(match value {
            1 => EventKind::FileOpen,
            2 => EventKind::Connect,
            3 => EventKind::Send,
            4 => EventKind::Exec,
            5 => EventKind::ProcessStart,
            6 => EventKind::Exit,
            7 => EventKind::IdentityChange,
            8 => EventKind::Tamper,
            9 => EventKind::Capability,
            10 => EventKind::FileChange,
            11 => EventKind::Socket,
            _ => return None,
        })
    }

    pub const fn name(self) -> &'static str {
        match self {
            EventKind::FileOpen => "file",
            EventKind::Connect => "connect",
            EventKind::Send => "send",
            EventKind::Exec => "exec",
            EventKind::ProcessStart => "process_start",
            EventKind::Exit => "exit",
            EventKind::IdentityChange => "identity_change",
            EventKind::Tamper => "tamper",
            EventKind::Capability => "capability",
            EventKind::FileChange => "file_change",
            EventKind::Socket => "socket",
        }
    }
}

/// Bits of `Event::flags`.
pub mod event_flags {
    /// The path is longer than the event holds: `path` holds its tail.
    pub const PATH_TRUNCATED: u16 = 1 << 0;
    /// The identity is in audit mode.
    pub const AUDIT_MODE: u16 = 1 << 1;
    /// The object is an AF_UNIX socket path, not an address.
    pub const UNIX_SOCKET: u16 = 1 << 2;
    /// The verdict was downgraded because this backend cannot refuse the call.
    pub const BACKEND_FALLBACK: u16 = 1 << 3;
    /// This refusal tripped the identity's quarantine: the kernel revoked it (or killed the actor).
    pub const QUARANTINE_TRIPPED: u16 = 1 << 4;
    /// The path could not be resolved to the root (too deep or long,
    /// disconnected, or in a detached or bind-rooted tree): judged by the
    /// identity's `unresolvedPath` verdict, never by its resolved tail.
    pub const PATH_UNRESOLVED: u16 = 1 << 5;
}

/// `Event::detail` of a `Socket` event: family, type and protocol of the socket asked for.
pub mod socket_detail {
    pub const fn pack(family: u32, socket_type: u32, protocol: u32) -> u32 {
        (family & 0xff) << 24 | (socket_type & 0xff) << 16 | (protocol & 0xffff)
    }

    /// (family, type, protocol).
    pub const fn unpack(detail: u32) -> (u32, u32, u32) {
        (detail >> 24, (detail >> 16) & 0xff, detail & 0xffff)
    }
}

/// What a `FileChange` event did to its path (`Event::detail`).
pub mod file_change {
    pub const UNLINK: u32 = 1;
    pub const RMDIR: u32 = 2;
    /// The old name of a rename.
    pub const RENAME_FROM: u32 = 3;
    /// The new name of a rename (what a rename-over replaces).
    pub const RENAME_TO: u32 = 4;
    /// The new name of a hard link.
    pub const LINK: u32 = 5;
    pub const TRUNCATE: u32 = 6;
    pub const CHMOD: u32 = 7;
    pub const CHOWN: u32 = 8;
    /// A new name (file, directory, device node, symlink) created in a protected directory.
    pub const CREATE: u32 = 9;

    pub const fn name(op: u32) -> &'static str {
        match op {
            UNLINK => "unlink",
            RMDIR => "rmdir",
            RENAME_FROM => "rename_from",
            RENAME_TO => "rename_to",
            LINK => "link",
            TRUNCATE => "truncate",
            CHMOD => "chmod",
            CHOWN => "chown",
            CREATE => "create",
            _ => "change",
        }
    }
}

/// Address families in `NetObject::family`.
pub const AF_UNIX: u16 = 1;
pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;

/// The network object of a connect or send.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetObject {
    /// `AF_INET` or `AF_INET6` as the caller used it (a v4-mapped v6 address
    /// keeps `AF_INET6` here but `addr` is judged as IPv4).
    pub family: u16,
    /// Host byte order.
    pub port: u16,
    /// `protocol::*` bit.
    pub protocol: u8,
    pub _pad: [u8; 3],
    /// IPv6, or IPv4 as v4-mapped IPv6.
    pub addr: [u8; 16],
}

/// One event. Fixed size so the kernel writes it in place in the ring.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Event {
    pub version: u16,
    /// `EventKind as u8`.
    pub kind: u8,
    /// `Verdict as u8`.
    pub verdict: u8,
    /// `Outcome as u8`.
    pub outcome: u8,
    /// `Backend as u8`.
    pub backend: u8,
    /// `DecisionSource as u8`.
    pub decision: u8,
    /// `access::*` bits requested.
    pub access: u8,
    /// `event_flags::*`.
    pub flags: u16,
    pub path_len: u16,
    /// Errno returned to the caller when `outcome` is `Blocked`.
    pub errno: i32,
    /// `bpf_ktime_get_boot_ns` when the event was made.
    pub time_ns: u64,
    /// Thread id and process id (tgid) of the actor.
    pub pid: u32,
    pub tgid: u32,
    /// tgid of the parent process (the new child for `ProcessStart`: see `related_tgid`).
    pub parent_tgid: u32,
    pub uid: u32,
    pub identity: IdentityId,
    /// Rule id when `decision` is `Rule`; 0 otherwise.
    pub rule_id: u32,
    /// With `tgid`, the process key: start time of the process on the boot clock.
    pub process_start_ns: u64,
    pub cgroup_id: u64,
    /// For `ProcessStart`, the child's tgid; for `IdentityChange`, the previous identity.
    pub related_tgid: u32,
    /// Policy generation in force when judged.
    pub generation: u32,
    /// Kind-specific: the capability number (`Capability`), the change
    /// (`FileChange`, `file_change::*`), the target tgid (`Tamper` by signal or ptrace).
    pub detail: u32,
    pub _reserved: u32,
    pub net: NetObject,
    pub comm: [u8; 16],
    pub path: [u8; EVENT_PATH_BYTES],
}

impl Event {
    /// The valid bytes of `path`.
    pub fn path_bytes(&self) -> &[u8] {
        let len = (self.path_len as usize).min(EVENT_PATH_BYTES);
        &self.path[..len]
    }

    /// The command name up to its NUL.
    pub fn comm_bytes(&self) -> &[u8] {
        let end = self.comm.iter().position(|&b| b == 0).unwrap_or(self.comm.len());
        &self.comm[..end]
    }
}

#[cfg(feature = "user")]
crate::impl_pod!(NetObject, Event);
