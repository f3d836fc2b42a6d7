//! What policy says about an action, and what the kernel actually did.

/// The decision a rule or default makes. Higher values are stricter: at equal
/// match length the stricter verdict wins.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Verdict {
    /// Allowed, not reported unless the identity audits everything.
    Allow = 0,
    /// Allowed and recorded.
    Audit = 1,
    /// Allowed and reported as an alert.
    Flag = 2,
    /// Refused with EACCES (where the backend can refuse) and reported as an approval request.
    StepUp = 3,
    /// Refused with EPERM.
    Deny = 4,
    /// SIGKILL to the acting process.
    Kill = 5,
}

impl Verdict {
    pub const fn from_u8(value: u8) -> Verdict {
        match value {
            1 => Verdict::Audit,
            2 => Verdict::Flag,
            3 => Verdict::StepUp,
            4 => Verdict::Deny,
            5 => Verdict::Kill,
            _ => Verdict::Allow,
        }
    }

    /// Verdicts that stop the action when enforced.
    pub const fn is_blocking(self) -> bool {
        matches!(self, Verdict::StepUp | Verdict::Deny | Verdict::Kill)
    }

    pub const fn name(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Audit => "audit",
            Verdict::Flag => "flag",
            Verdict::StepUp => "step_up",
            Verdict::Deny => "deny",
            Verdict::Kill => "kill",
        }
    }
}

/// What the kernel did about an action.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The action went ahead.
    Allowed = 0,
    /// The call failed with the errno in the event (EPERM, or EACCES for step-up).
    Blocked = 1,
    /// The process was sent SIGKILL before it could use the result.
    Killed = 2,
    /// Identity in audit mode: the verdict would have stopped the action but it went ahead.
    AuditOnly = 3,
    /// The verdict asked for a refusal this backend cannot give synchronously
    /// (file opens without BPF LSM); the policy's fallback was to let it through and flag it.
    FlaggedInstead = 4,
}

impl Outcome {
    pub const fn from_u8(value: u8) -> Outcome {
        match value {
            1 => Outcome::Blocked,
            2 => Outcome::Killed,
            3 => Outcome::AuditOnly,
            4 => Outcome::FlaggedInstead,
            _ => Outcome::Allowed,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Blocked => "blocked",
            Outcome::Killed => "killed",
            Outcome::AuditOnly => "audit_only",
            Outcome::FlaggedInstead => "flagged_instead",
        }
    }
}

/// Which part of policy produced the verdict.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DecisionSource {
    /// A rule matched; its id is in the event.
    Rule = 0,
    /// No rule matched; the identity's default for this kind of action applied.
    Default = 1,
    /// The identity's expiry time has passed.
    IdentityExpired = 2,
    /// The identity was revoked.
    IdentityRevoked = 3,
    /// Not a decision: a lifecycle event (process start, exit, label change).
    Lifecycle = 4,
    /// One of rtid's built-in protections of itself and the host decided;
    /// `rule_id` is the `protection::*` id.
    Protected = 5,
    /// The path could not be resolved to the root; the identity's
    /// `unresolvedPath` verdict applied.
    UnresolvedPath = 6,
    /// An exec of a file with no name in any filesystem (memfd); the
    /// identity's `anonymousExec` verdict applied.
    AnonymousExec = 7,
}

impl DecisionSource {
    pub const fn from_u8(value: u8) -> DecisionSource {
        match value {
            0 => DecisionSource::Rule,
            1 => DecisionSource::Default,
            2 => DecisionSource::IdentityExpired,
            3 => DecisionSource::IdentityRevoked,
            5 => DecisionSource::Protected,
            6 => DecisionSource::UnresolvedPath,
            7 => DecisionSource::AnonymousExec,
            _ => DecisionSource::Lifecycle,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            DecisionSource::Rule => "rule",
            DecisionSource::Default => "default",
            DecisionSource::IdentityExpired => "identity_expired",
            DecisionSource::IdentityRevoked => "identity_revoked",
            DecisionSource::Lifecycle => "lifecycle",
            DecisionSource::Protected => "protected",
            DecisionSource::UnresolvedPath => "unresolved_path",
            DecisionSource::AnonymousExec => "anonymous_exec",
        }
    }
}

/// Built-in protections: the `rule_id` of a decision whose source is
/// `DecisionSource::Protected`. Not policy: every identity has them.
pub mod protection {
    /// The bpf() syscall (reaches every program and map).
    pub const BPF_SYSCALL: u32 = 1;
    /// rtid's own files: pin dir, policy, config, state, audit log, socket, binary.
    pub const PROTECTED_FILE: u32 = 2;
    /// Connecting to the control socket.
    pub const CONTROL_SOCKET: u32 = 3;
    /// Signalling the daemon.
    pub const DAEMON_SIGNAL: u32 = 4;
    /// Tracing the daemon or reaching its memory (ptrace, process_vm_*, /proc/<pid>/mem).
    pub const DAEMON_TRACE: u32 = 5;
    /// A capability above the identity's ceiling.
    pub const CAPABILITY: u32 = 6;
    /// Creating a user namespace.
    pub const USER_NAMESPACE: u32 = 7;
    /// A child of a tagged process that the full process table could not tag: killed.
    pub const CAPACITY: u32 = 8;
    /// Enforcement found detached or unpinned (raised by userspace).
    pub const DETACHED: u32 = 9;
    /// A socket of a kind the identity's `sockets` policy does not allow.
    pub const SOCKET_KIND: u32 = 10;
    /// A new process sharing its parent's descriptor table (CLONE_FILES
    /// without CLONE_THREAD) on a backend that kills opens after the fact:
    /// killed before it runs, so no sibling keeps a descriptor whose opener died.
    pub const SHARED_FILES: u32 = 11;

    /// The name events, `policy explain` and `status` use.
    pub const fn name(id: u32) -> &'static str {
        match id {
            BPF_SYSCALL => "rtid/bpf",
            PROTECTED_FILE => "rtid/protected",
            CONTROL_SOCKET => "rtid/control-socket",
            DAEMON_SIGNAL => "rtid/daemon-signal",
            DAEMON_TRACE => "rtid/daemon-trace",
            CAPABILITY => "rtid/capability",
            USER_NAMESPACE => "rtid/user-namespace",
            CAPACITY => "rtid/capacity",
            DETACHED => "rtid/detached",
            SOCKET_KIND => "rtid/socket-kind",
            SHARED_FILES => "rtid/shared-files",
            _ => "rtid/unknown",
        }
    }
}

/// Linux capability numbers (include/uapi/linux/capability.h) by name, for the
/// capability ceiling (`IdentityPolicy::denied_capabilities` is a bit mask of them).
pub mod capability {
    pub const NAMES: [&str; 41] = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_DAC_READ_SEARCH",
        "CAP_FOWNER",
        "CAP_FSETID",
        "CAP_KILL",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETPCAP",
        "CAP_LINUX_IMMUTABLE",
        "CAP_NET_BIND_SERVICE",
        "CAP_NET_BROADCAST",
        "CAP_NET_ADMIN",
        "CAP_NET_RAW",
        "CAP_IPC_LOCK",
        "CAP_IPC_OWNER",
        "CAP_SYS_MODULE",
        "CAP_SYS_RAWIO",
        "CAP_SYS_CHROOT",
        "CAP_SYS_PTRACE",
        "CAP_SYS_PACCT",
        "CAP_SYS_ADMIN",
        "CAP_SYS_BOOT",
        "CAP_SYS_NICE",
        "CAP_SYS_RESOURCE",
        "CAP_SYS_TIME",
        "CAP_SYS_TTY_CONFIG",
        "CAP_MKNOD",
        "CAP_LEASE",
        "CAP_AUDIT_WRITE",
        "CAP_AUDIT_CONTROL",
        "CAP_SETFCAP",
        "CAP_MAC_OVERRIDE",
        "CAP_MAC_ADMIN",
        "CAP_SYSLOG",
        "CAP_WAKE_ALARM",
        "CAP_BLOCK_SUSPEND",
        "CAP_AUDIT_READ",
        "CAP_PERFMON",
        "CAP_BPF",
        "CAP_CHECKPOINT_RESTORE",
    ];

    /// The name of capability `number`, or "CAP_UNKNOWN".
    pub fn name(number: u32) -> &'static str {
        NAMES.get(number as usize).copied().unwrap_or("CAP_UNKNOWN")
    }

    /// The number of a capability named with or without `CAP_`, any case.
    pub fn number(name: &str) -> Option<u32> {
        let bare = name.strip_prefix("CAP_").or_else(|| name.strip_prefix("cap_")).unwrap_or(name);
        NAMES.iter().position(|known| known[4..].eq_ignore_ascii_case(bare)).map(|index| index as u32)
    }
}

/// The enforcement mechanism that judged an action.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case"))]
pub enum Backend {
    /// Not a judged action.
    None = 0,
    /// BPF LSM hooks: synchronous refusal of any action.
    Lsm = 1,
    /// Syscall-exit and sched tracepoints: kill or flag, no refusal.
    Tracepoint = 2,
    /// cgroup socket address hooks: synchronous refusal of connect and send.
    CgroupSock = 3,
}

impl Backend {
    pub const fn from_u8(value: u8) -> Backend {
        match value {
            1 => Backend::Lsm,
            2 => Backend::Tracepoint,
            3 => Backend::CgroupSock,
            _ => Backend::None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Backend::None => "none",
            Backend::Lsm => "lsm",
            Backend::Tracepoint => "tracepoint",
            Backend::CgroupSock => "cgroup_sock",
        }
    }
}

/// Access bits requested by an action; rules name the accesses they cover.
pub mod access {
    pub const READ: u8 = 1 << 0;
    pub const WRITE: u8 = 1 << 1;
    pub const EXEC: u8 = 1 << 2;
    pub const ALL: u8 = READ | WRITE | EXEC;
}

/// Transport bits for network rules.
pub mod protocol {
    pub const TCP: u8 = 1 << 0;
    pub const UDP: u8 = 1 << 1;
    pub const ANY: u8 = TCP | UDP;
}

pub const EPERM: i32 = 1;
pub const EACCES: i32 = 13;
pub const SIGKILL: u32 = 9;
