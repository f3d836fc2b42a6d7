//! The policy as rtid understands it, independent of how it was written
//! (YAML documents, CLI grants). The compiler turns it into map entries.

use std::{net::IpAddr, time::Duration};

use rtid_common::{Verdict, access, protocol};

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
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults { file: Verdict::Allow, network: Verdict::Allow, exec: Verdict::Allow }
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
