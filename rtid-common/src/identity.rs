//! Who a process is: the identity attached to each tagged process, and the
//! per-identity settings the kernel reads when judging its actions.

/// Numeric identity id. 0 is never assigned: it means "no identity".
pub type IdentityId = u32;

/// Value of `PROCESS_IDENTITY`, keyed by tgid. Threads share their process's entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessIdentity {
    pub identity: IdentityId,
    /// How the process came by its identity (`label_source::*`).
    pub source: u32,
    /// `start_boottime` of the process in ns: with the tgid, the process key that
    /// survives pid reuse.
    pub start_boottime_ns: u64,
}

/// How a process came by its identity.
/// Ruleset id under which exec selectors are keyed in `EXEC_SELECTORS`.
pub const SELECTOR_RULESET: u32 = 0;

/// Set in an `UNTAGGABLE` value (above the identity id) when the child is
/// killed for sharing its parent's descriptor table, not for capacity.
pub const UNTAGGABLE_SHARED_FILES: u32 = 1 << 31;

pub mod label_source {
    /// Labeled from userspace (launcher or `label --pid`).
    pub const LABEL: u32 = 1;
    /// Inherited from its parent at fork.
    pub const INHERITED: u32 = 2;
    /// Member of a cgroup bound to the identity.
    pub const CGROUP: u32 = 3;
    /// Matched an exec selector.
    pub const SELECTOR: u32 = 4;
}

/// Key of `IDENTITY_POLICY`. Policy is double-buffered: userspace writes the
/// inactive slot, then flips `RuntimeState::active_slot`, so a reload swaps in
/// atomically for every identity at once.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdentityPolicyKey {
    pub slot: u32,
    pub identity: IdentityId,
}

/// Whether verdicts are enforced or only reported.
pub mod mode {
    pub const ENFORCE: u8 = 0;
    pub const AUDIT: u8 = 1;
}

/// How much an identity reports.
pub mod audit_level {
    /// Every verdict other than a plain allow.
    pub const DECISIONS: u8 = 0;
    /// Also allowed opens, connects and sends.
    pub const ALL: u8 = 1;
}

/// Value of `IDENTITY_POLICY`: how an identity's actions are judged.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// Scope of this identity's rules in the rule maps.
    pub ruleset: u32,
    /// `mode::*`.
    pub mode: u8,
    /// `audit_level::*`.
    pub audit: u8,
    /// Verdicts (as `Verdict as u8`) when no rule matches.
    pub default_file: u8,
    pub default_network: u8,
    pub default_exec: u8,
    /// Verdict for every action once the identity expired or was revoked (Deny or Kill).
    pub on_expiry: u8,
    /// What a file `deny` becomes on a backend that cannot refuse opens (Kill or Flag).
    pub file_deny_fallback: u8,
    /// Verdict for a file or exec whose path cannot be resolved to the root:
    /// deeper or longer than the kernel walk, a disconnected dentry (a file
    /// handle), or a tree whose top is not a filesystem's root (a detached or
    /// bind-rooted tree). Never judged on the part that was resolved.
    pub unresolved_path: u8,
    /// `guard::*` bits: built-in refusals this identity has.
    pub guards: u32,
    /// Bit mask of capability numbers (`capability::NAMES`) the identity may
    /// not use, whatever its credentials hold: its capability ceiling.
    pub denied_capabilities: u64,
    /// Verdict for executing a file that has no name in any filesystem
    /// (a memfd, or another kernel-internal file).
    pub anonymous_exec: u8,
    pub _pad: [u8; 7],
}

/// Bits of `IdentityPolicy::guards`.
pub mod guard {
    /// Creating user namespaces is refused.
    pub const DENY_USER_NAMESPACES: u32 = 1 << 0;
    /// Socket creation refused by kind (`network.sockets`): raw IP sockets,
    pub const DENY_RAW_SOCKETS: u32 = 1 << 1;
    /// packet sockets (AF_PACKET),
    pub const DENY_PACKET_SOCKETS: u32 = 1 << 2;
    /// netlink other than the routing family,
    pub const DENY_NETLINK_SOCKETS: u32 = 1 << 3;
    /// vsock (AF_VSOCK),
    pub const DENY_VSOCK_SOCKETS: u32 = 1 << 4;
    /// and every other family or protocol (not TCP, UDP, unix or the above).
    pub const DENY_OTHER_SOCKETS: u32 = 1 << 5;
    pub const DENY_SOCKETS: u32 =
        DENY_RAW_SOCKETS | DENY_PACKET_SOCKETS | DENY_NETLINK_SOCKETS | DENY_VSOCK_SOCKETS | DENY_OTHER_SOCKETS;
}

/// Value of `IDENTITY_STATUS`, keyed by identity id. Kept apart from the
/// double-buffered policy so expiry and revocation survive reloads and take
/// effect with one map write.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentityStatus {
    /// `bpf_ktime_get_boot_ns` time after which the identity has expired; 0: never.
    pub expires_at_ns: u64,
    /// Non-zero: revoked, every action gets `IdentityPolicy::on_expiry`.
    pub revoked: u32,
    pub _pad: u32,
}

/// Value of `QUARANTINE`, keyed by identity id: after `after` refused actions
/// within `window_ns`, the kernel revokes the identity (and, with
/// `then_kill`, kills the acting process) on the spot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuarantineState {
    pub after: u32,
    pub then_kill: u32,
    pub window_ns: u64,
    /// Refusals counted in the current window.
    pub count: u32,
    /// Non-zero once tripped (cleared by `rtid release`).
    pub tripped: u32,
    pub window_start_ns: u64,
}

/// Value of the single-entry `RUNTIME_STATE` array.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuntimeState {
    /// Which `IdentityPolicyKey::slot` is in force (0 or 1).
    pub active_slot: u32,
    /// Policy generation, reported in events.
    pub generation: u32,
    /// Non-zero when `CGROUP_IDENTITY` has entries: untagged forks and execs
    /// only search the cgroup hierarchy then.
    pub cgroup_bindings: u32,
    /// Non-zero when `EXEC_SELECTORS` has entries: untagged execs only
    /// resolve their binary's path then.
    pub exec_selectors: u32,
    /// tgid of the daemon (0: none): tagged processes may not signal or trace it.
    pub daemon_tgid: u32,
    /// Non-zero when `PROTECTED_PATHS` has entries.
    pub protected_paths: u32,
}

#[cfg(feature = "user")]
crate::impl_pod!(ProcessIdentity, IdentityPolicyKey, IdentityPolicy, IdentityStatus, RuntimeState, QuarantineState);
