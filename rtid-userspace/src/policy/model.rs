//! The policy as rtid understands it, independent of how it was written
//! (YAML documents, CLI grants). The compiler turns it into map entries.

use std::{net::IpAddr, time::Duration};

use std::collections::BTreeSet;

use rtid_common::{Verdict, access, capability, protocol};

/// Enforce verdicts, or only report what would have happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// Which decisions an identity reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AuditLevel {
    /// Every verdict other than a plain allow.
    #[default]
    Decisions,
    /// Also allowed opens, connects and sends.
    All,
}

/// Verdicts when no rule matches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Defaults {
    pub file: Verdict,
    pub network: Verdict,
    pub exec: Verdict,
    /// For a file or exec whose path cannot be resolved to the root (too
    /// deep or long, disconnected, a detached or bind-rooted tree). `None`:
    /// deny for an identity with any file rule, else the file default.
    pub unresolved_path: Option<Verdict>,
    /// For executing a file with no name in any filesystem (memfd). `None`:
    /// deny for an identity with any exec rule, else the exec default.
    pub anonymous_exec: Option<Verdict>,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            file: Verdict::Allow,
            network: Verdict::Allow,
            exec: Verdict::Allow,
            unresolved_path: None,
            anonymous_exec: None,
        }
    }
}

/// Kinds of socket an identity may create besides TCP, UDP, unix and
/// routing netlink (which every identity may): `sockets: { allow: [...] }`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SocketKind {
    /// SOCK_RAW on AF_INET or AF_INET6.
    Raw,
    /// AF_PACKET.
    Packet,
    /// AF_NETLINK other than NETLINK_ROUTE.
    Netlink,
    /// AF_VSOCK.
    Vsock,
    /// Every other family or protocol (SCTP, ICMP datagram, bluetooth, CAN, XDP, ...).
    Other,
}

impl SocketKind {
    pub const ALL: [SocketKind; 5] =
        [SocketKind::Raw, SocketKind::Packet, SocketKind::Netlink, SocketKind::Vsock, SocketKind::Other];

    pub fn name(self) -> &'static str {
        match self {
            SocketKind::Raw => "raw",
            SocketKind::Packet => "packet",
            SocketKind::Netlink => "netlink",
            SocketKind::Vsock => "vsock",
            SocketKind::Other => "other",
        }
    }

    pub fn from_name(name: &str) -> Option<SocketKind> {
        SocketKind::ALL.into_iter().find(|kind| kind.name() == name)
    }

    /// The `guard::DENY_*_SOCKETS` bit that refuses this kind.
    pub fn guard_bit(self) -> u32 {
        use rtid_common::guard;
        match self {
            SocketKind::Raw => guard::DENY_RAW_SOCKETS,
            SocketKind::Packet => guard::DENY_PACKET_SOCKETS,
            SocketKind::Netlink => guard::DENY_NETLINK_SOCKETS,
            SocketKind::Vsock => guard::DENY_VSOCK_SOCKETS,
            SocketKind::Other => guard::DENY_OTHER_SOCKETS,
        }
    }
}

/// Quarantine: after `after` refused actions within `within`, the kernel
/// revokes the identity (and with `kill`, kills the process that tripped it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quarantine {
    pub after: u32,
    pub within: Duration,
    pub kill: bool,
}

/// One identity and everything that decides its actions.
#[derive(Clone, Debug, PartialEq)]
pub struct IdentitySpec {
    pub name: String,
    pub owner: Option<String>,
    pub purpose: Option<String>,
    pub delegated_by: Option<String>,
    pub mode: Mode,
    pub audit: AuditLevel,
    /// Lifetime from first assignment; `None`: no expiry.
    pub ttl: Option<Duration>,
    /// Verdict for everything once expired or revoked: Deny or Kill.
    pub on_expiry: Verdict,
    /// What a file `deny` (or `step_up`) becomes where opens cannot be refused: Kill or Flag.
    pub file_deny_fallback: Verdict,
    pub defaults: Defaults,
    pub quarantine: Option<Quarantine>,
    pub files: Vec<PathRuleSpec>,
    pub exec: Vec<PathRuleSpec>,
    pub network: Vec<NetRuleSpec>,
    /// The capability ceiling and the user namespace guard.
    pub capabilities: CapabilityCeiling,
    /// Built-in `hostControl` guards this identity opted out of (by name).
    pub host_control_allowed: BTreeSet<HostControl>,
    /// Socket kinds this identity may create (`sockets.allow`); the rest are refused.
    pub sockets_allowed: BTreeSet<SocketKind>,
}

impl IdentitySpec {
    /// An identity with the given name that allows everything until rules are added.
    pub fn new(name: impl Into<String>) -> IdentitySpec {
        IdentitySpec {
            name: name.into(),
            owner: None,
            purpose: None,
            delegated_by: None,
            mode: Mode::Enforce,
            audit: AuditLevel::Decisions,
            ttl: None,
            on_expiry: Verdict::Deny,
            file_deny_fallback: Verdict::Kill,
            defaults: Defaults::default(),
            quarantine: None,
            files: Vec::new(),
            exec: Vec::new(),
            network: Vec::new(),
            capabilities: CapabilityCeiling::default(),
            host_control_allowed: BTreeSet::new(),
            sockets_allowed: BTreeSet::new(),
        }
    }
}

/// Capabilities every identity is denied unless its policy opts back in by
/// name: each one either administers the kernel (modules, BPF, mounts,
/// namespaces), reaches other processes' memory, or bypasses file permissions
/// or integrity in a way that leads out of the identity.
pub const DEFAULT_DENIED_CAPABILITIES: &[&str] = &[
    "CAP_SYS_ADMIN",
    "CAP_SYS_MODULE",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_DAC_READ_SEARCH",
    "CAP_MKNOD",
    "CAP_SYS_BOOT",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_SYS_TIME",
    "CAP_CHECKPOINT_RESTORE",
];

/// Bit of a capability number in a capability mask.
pub const fn capability_bit(number: u32) -> u64 {
    1u64 << number
}

/// `DEFAULT_DENIED_CAPABILITIES` as a mask.
pub fn default_denied_mask() -> u64 {
    DEFAULT_DENIED_CAPABILITIES
        .iter()
        .map(|name| capability_bit(capability::number(name).expect("a known capability name")))
        .fold(0, |mask, bit| mask | bit)
}

/// Capability names in a mask, in capability number order.
pub fn capability_names(mask: u64) -> Vec<&'static str> {
    capability::NAMES
        .iter()
        .enumerate()
        .filter(|(number, _)| mask & (1u64 << number) != 0)
        .map(|(_, name)| *name)
        .collect()
}

/// What an identity may not do with privileges, whatever its credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapabilityCeiling {
    /// Bit mask over capability numbers (`rtid_common::capability::NAMES`).
    pub denied: u64,
    /// Default-denied capabilities the policy allowed back (`policy check` warns).
    pub opted_in: u64,
    /// Creating user namespaces (each starts with a full capability set of its own).
    pub user_namespaces: bool,
}

impl Default for CapabilityCeiling {
    fn default() -> Self {
        CapabilityCeiling { denied: default_denied_mask(), opted_in: 0, user_namespaces: false }
    }
}

/// The built-in `hostControl` guards: ways to get a command run by something
/// untagged, outside the identity. Every identity has all of them unless its
/// policy opts out by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HostControl {
    /// systemd's private socket and the system bus (starting units).
    ServiceManager,
    /// at and cron spools and crontabs.
    Scheduler,
    /// docker, containerd, CRI-O and podman sockets.
    ContainerRuntime,
    /// Writes under /proc/sys and /sys (core_pattern, binfmt_misc, module parameters).
    KernelTunables,
}

impl HostControl {
    pub const ALL: [HostControl; 4] = [
        HostControl::ServiceManager,
        HostControl::Scheduler,
        HostControl::ContainerRuntime,
        HostControl::KernelTunables,
    ];

    /// The name policy uses (`hostControl: { allow: [...] }`).
    pub const fn name(self) -> &'static str {
        match self {
            HostControl::ServiceManager => "serviceManager",
            HostControl::Scheduler => "scheduler",
            HostControl::ContainerRuntime => "containerRuntime",
            HostControl::KernelTunables => "kernelTunables",
        }
    }

    pub fn from_name(name: &str) -> Option<HostControl> {
        HostControl::ALL.into_iter().find(|group| group.name() == name)
    }

    /// The rule id its rules carry in events and `explain`.
    pub fn rule_id(self) -> String {
        format!("rtid/host-control/{}", self.name())
    }

    /// What the guard refuses, for `explain` and messages.
    pub const fn description(self) -> &'static str {
        match self {
            HostControl::ServiceManager => "built-in: systemd's private socket, the system bus, unit directories",
            HostControl::Scheduler => "built-in: writing at and cron jobs",
            HostControl::ContainerRuntime => "built-in: docker, containerd, CRI-O and podman sockets",
            HostControl::KernelTunables => {
                "built-in: writes to /proc/sys, sysrq, module parameters and kernel settings under /sys"
            }
        }
    }

    /// The guard as deny rules (ids: `rule_id()`). Module loading and kexec
    /// are refused by the capability ceiling (CAP_SYS_MODULE, CAP_SYS_BOOT).
    pub fn rules(self) -> (Vec<PathRuleSpec>, Vec<NetRuleSpec>) {
        let id = self.rule_id();
        let write = |pattern: PathPattern| PathRuleSpec {
            access: access::WRITE,
            ..PathRuleSpec::file(&id, pattern, Verdict::Deny)
        };
        let dir = |path: &str| write(PathPattern::Directory(path.into()));
        let file = |path: &str| write(PathPattern::Exact(path.into()));
        let socket = |path: &str| NetRuleSpec::unix(&id, path, Verdict::Deny);
        match self {
            HostControl::ServiceManager => (
                // Unit files written here run as services at the next reload or boot.
                vec![dir("/etc/systemd/system/"), dir("/run/systemd/system/"), dir("/run/systemd/transient/")],
                vec![
                    socket("/run/systemd/private"),
                    socket("/run/dbus/system_bus_socket"),
                    socket("/var/run/dbus/system_bus_socket"),
                ],
            ),
            HostControl::Scheduler => (
                vec![
                    // Debian keeps crontabs and at jobs under /var/spool/cron/{crontabs,atjobs}.
                    dir("/var/spool/cron/"),
                    dir("/var/spool/at/"),
                    dir("/var/spool/atjobs/"),
                    dir("/etc/cron.d/"),
                    dir("/etc/cron.hourly/"),
                    dir("/etc/cron.daily/"),
                    dir("/etc/cron.weekly/"),
                    dir("/etc/cron.monthly/"),
                    dir("/etc/cron.yearly/"),
                    file("/etc/crontab"),
                    file("/etc/anacrontab"),
                ],
                Vec::new(),
            ),
            HostControl::ContainerRuntime => (
                Vec::new(),
                vec![
                    socket("/run/docker.sock"),
                    socket("/var/run/docker.sock"),
                    socket("/run/containerd/containerd.sock"),
                    socket("/var/run/containerd/containerd.sock"),
                    socket("/run/crio/crio.sock"),
                    socket("/var/run/crio/crio.sock"),
                    socket("/run/podman/podman.sock"),
                    socket("/var/run/podman/podman.sock"),
                ],
            ),
            HostControl::KernelTunables => (
                vec![
                    // core_pattern, modprobe and binfmt_misc (fs/binfmt_misc) all live here.
                    dir("/proc/sys/"),
                    file("/proc/sysrq-trigger"),
                    dir("/sys/module/"),
                    // uevent_helper, securityfs (LSM policies), power state.
                    dir("/sys/kernel/"),
                    dir("/sys/power/"),
                    // cgroup v1's helper run by the kernel (cgroup v2 directories stay writable).
                    write(PathPattern::Name("release_agent".into())),
                ],
                Vec::new(),
            ),
        }
    }
}

/// How a path rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathPattern {
    /// Exactly this absolute path.
    Exact(String),
    /// Everything below this directory (given with a trailing `/`), and the directory itself.
    Directory(String),
    /// Any file with exactly this name, in any directory.
    Name(String),
    /// Any path ending in these bytes (`.pem`).
    Suffix(String),
}

impl PathPattern {
    /// The pattern as policy writes it, for messages and `explain`.
    pub fn describe(&self) -> String {
        match self {
            PathPattern::Exact(path) => format!("path {path}"),
            PathPattern::Directory(dir) => format!("path {dir} (and below)"),
            PathPattern::Name(name) => format!("name {name}"),
            PathPattern::Suffix(suffix) => format!("suffix {suffix}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathRuleSpec {
    pub id: String,
    pub pattern: PathPattern,
    /// `access::*` bits; file rules default to read|write, exec rules are exec.
    pub access: u8,
    pub action: Verdict,
    /// Boot-clock ns after which the rule stops applying.
    pub expires_at_boot_ns: Option<u64>,
    /// A just-in-time grant: outranks every policy rule on the same object.
    pub grant: bool,
    /// A restriction inherited from the delegator: outranks the identity's
    /// own rules and its grants (delegation only narrows).
    pub from_delegator: bool,
}

impl PathRuleSpec {
    pub fn file(id: &str, pattern: PathPattern, action: Verdict) -> PathRuleSpec {
        PathRuleSpec {
            id: id.into(),
            pattern,
            access: access::READ | access::WRITE,
            action,
            expires_at_boot_ns: None,
            grant: false,
            from_delegator: false,
        }
    }

    pub fn exec(id: &str, pattern: PathPattern, action: Verdict) -> PathRuleSpec {
        PathRuleSpec {
            id: id.into(),
            pattern,
            access: access::EXEC,
            action,
            expires_at_boot_ns: None,
            grant: false,
            from_delegator: false,
        }
    }
}

/// What a network rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NetTarget {
    /// An address block; IPv4 blocks also match v4-mapped IPv6 addresses.
    Cidr { addr: IpAddr, prefix_len: u8 },
    /// An AF_UNIX socket path (exact, or a directory with a trailing `/`;
    /// abstract sockets as `@name`).
    Unix(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetRuleSpec {
    pub id: String,
    pub target: NetTarget,
    /// Inclusive port ranges; empty means every port.
    pub ports: Vec<(u16, u16)>,
    /// `protocol::*` bits.
    pub protocols: u8,
    pub action: Verdict,
    pub expires_at_boot_ns: Option<u64>,
    /// A just-in-time grant: outranks every policy rule on the same object.
    pub grant: bool,
    /// A restriction inherited from the delegator (see `PathRuleSpec`).
    pub from_delegator: bool,
}

impl NetRuleSpec {
    pub fn cidr(id: &str, addr: IpAddr, prefix_len: u8, ports: Vec<(u16, u16)>, action: Verdict) -> NetRuleSpec {
        NetRuleSpec {
            id: id.into(),
            target: NetTarget::Cidr { addr, prefix_len },
            ports,
            protocols: protocol::ANY,
            action,
            expires_at_boot_ns: None,
            grant: false,
            from_delegator: false,
        }
    }

    pub fn unix(id: &str, path: &str, action: Verdict) -> NetRuleSpec {
        NetRuleSpec {
            id: id.into(),
            target: NetTarget::Unix(path.into()),
            ports: Vec::new(),
            protocols: protocol::ANY,
            action,
            expires_at_boot_ns: None,
            grant: false,
            from_delegator: false,
        }
    }
}
