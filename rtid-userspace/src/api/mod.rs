//! The daemon's control API: JSON lines over a Unix socket. The CLI is a
//! client of this API and shares these types with the daemon.
//!
//! Authorisation: the daemon decides at accept, before reading a byte, from
//! the peer credentials and a pidfd of the process that connected; root or
//! the admin group (supplementary groups count) may call, and any process
//! that carries an identity, or that is gone, is refused whoever it runs as,
//! so an agent cannot relabel itself or change policy. It decides again on
//! the same process once the request line (at most 4 MiB) is in.

use std::{
    io::{BufRead, BufReader},
    os::unix::net::UnixStream,
    path::Path,
};

use serde::{Deserialize, Serialize};

use crate::events::record::EventRecord;

pub const DEFAULT_SOCKET: &str = "/run/rtid/rtid.sock";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "call", rename_all = "snake_case")]
pub enum Request {
    /// Label a running process (and its future children).
    Label {
        pid: u32,
        identity: String,
    },
    /// Label a child the caller forked and holds before exec (`rtid run`);
    /// refused unless the pid is the caller's own child.
    LabelChild {
        pid: u32,
        identity: String,
        /// Shown by `rtid ps` instead of the identity's owner.
        #[serde(default)]
        owner: Option<String>,
        #[serde(default)]
        purpose: Option<String>,
        /// Expire the identity this many seconds from now, if sooner than its current expiry.
        #[serde(default)]
        ttl_seconds: Option<u64>,
        /// Run as `identity` delegated from this identity (authority only narrows).
        #[serde(default)]
        delegated_by: Option<String>,
    },
    Unlabel {
        pid: u32,
    },
    Status,
    Ps,
    /// Validate, compile and swap in policy documents (file name, text).
    PolicyApply {
        documents: Vec<(String, String)>,
    },
    PolicyExplain {
        identity: String,
        action: ExplainAction,
    },
    /// A narrowly scoped allow with a TTL, enforced in the kernel with its expiry.
    Grant {
        identity: String,
        object: crate::daemon::grants::GrantObject,
        ttl_seconds: u64,
        reason: Option<String>,
    },
    Grants,
    GrantRevoke {
        id: String,
    },
    /// Revoke an identity at once (optionally killing its processes).
    Revoke {
        identity: String,
        kill: bool,
    },
    /// Lift a revocation.
    Release {
        identity: String,
    },
    Approvals,
    Approve {
        request: String,
        ttl_seconds: u64,
        /// Single use: the grant goes after the first action it allows.
        #[serde(default)]
        once: bool,
    },
    Deny {
        request: String,
        reason: Option<String>,
    },
    /// What `rtid run` must take away from the command it launches, before
    /// exec: the identity's denied capabilities, whether it may create user
    /// namespaces, and the daemon's pid (never to be signalled or traced).
    LaunchPlan {
        identity: String,
        /// Run as `identity` delegated from this one: both identities' denials.
        #[serde(default)]
        delegated_by: Option<String>,
    },
    /// Stream events; with `follow`, until the client goes away.
    Events {
        follow: bool,
        identity: Option<String>,
        verdicts: Vec<String>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum ExplainAction {
    Open { path: String, write: bool },
    Connect { address: String, port: u16, udp: bool },
    Exec { path: String },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "response", rename_all = "snake_case")]
pub enum Response {
    Ok { message: String },
    Error { message: String },
    Status(Box<StatusReport>),
    Ps { processes: Vec<ProcessEntry> },
    Explain(Explanation),
    Event(Box<EventRecord>),
    Grants { grants: Vec<crate::daemon::grants::Grant> },
    Approvals { requests: Vec<crate::daemon::grants::ApprovalRequest> },
    LaunchPlan(LaunchPlan),
}

/// The answer to [`Request::LaunchPlan`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LaunchPlan {
    pub daemon_pid: u32,
    /// Capability names (`CAP_SYS_ADMIN`, ...) the launched command must not hold.
    pub denied_capabilities: Vec<String>,
    pub deny_user_namespaces: bool,
}

impl LaunchPlan {
    /// The denied capabilities as a bit mask of capability numbers; an unknown name is an error.
    pub fn capability_mask(&self) -> Result<u64, String> {
        self.denied_capabilities.iter().try_fold(0u64, |mask, name| {
            rtid_common::capability::number(name)
                .map(|number| mask | (1u64 << number))
                .ok_or_else(|| format!("the daemon named an unknown capability {name:?}"))
        })
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatusReport {
    /// The kernel release, its BTF, and the actions that fall back from BPF LSM, with why.
    #[serde(default)]
    pub kernel: crate::loader::compat::KernelReport,
    pub backends: Backends,
    pub lsm_note: Option<String>,
    pub policy_generation: u32,
    pub policy_sources: Vec<String>,
    pub identities: Vec<String>,
    pub labeled_processes: usize,
    pub ring_full_drops: u64,
    pub hook_errors: u64,
    /// File and exec paths of identities that could not be resolved to the root.
    #[serde(default)]
    pub paths_unresolved: u64,
    pub actions_judged: u64,
    pub events_seen: u64,
    /// Events per second since the daemon started.
    pub events_per_second: f64,
    /// Map name to (entries in use, capacity).
    pub map_fill: Vec<(String, usize, u32)>,
    pub uptime_seconds: u64,
    pub pinned: bool,
    #[serde(default)]
    pub node: String,
    /// Every event sink (and the control socket's stream) with its deliveries and drops.
    #[serde(default)]
    pub sinks: Vec<crate::events::pipeline::SinkReport>,
    #[serde(default)]
    pub events_suppressed: u64,
    /// Children of identified processes killed because the process table was full.
    #[serde(default)]
    pub untaggable_killed: u64,
    /// Attempts on the monitor's integrity the kernel refused or punished.
    #[serde(default)]
    pub protection_refusals: u64,
    /// Whether every program is attached and pinned as the daemon left it.
    #[serde(default)]
    pub integrity: IntegrityReport,
    /// Each protection of the monitor's integrity and how this kernel holds it.
    #[serde(default)]
    pub protections: Vec<crate::loader::ProtectionStatus>,
}

/// What the daemon's attachment checks found (`degraded` until a check finds
/// everything in place again).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct IntegrityReport {
    pub degraded: bool,
    /// What was found missing since the daemon was last whole: `NAME (pin removed)`, ...
    pub missing: Vec<String>,
    /// What could not be put back, with why.
    pub unrepaired: Vec<String>,
    /// Checks run so far.
    pub checks: u64,
    pub interval_seconds: f64,
}

/// Which backend enforces each kind of action (`lsm`, `tracepoint`, `cgroup_sock`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Backends {
    pub file: rtid_common::Backend,
    pub network: rtid_common::Backend,
    pub exec: rtid_common::Backend,
    /// AF_UNIX connects and sends.
    pub unix: rtid_common::Backend,
    /// Self-protection: agents' bpf() calls.
    pub protect: rtid_common::Backend,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProcessEntry {
    /// Labeled ancestors above this process (for the tree view).
    #[serde(default)]
    pub depth: u32,
    pub pid: u32,
    pub parent: u32,
    pub identity: String,
    pub owner: Option<String>,
    pub source: String,
    pub age_seconds: u64,
    pub expires_in_seconds: Option<i64>,
    pub command: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Explanation {
    pub identity: String,
    pub verdict: String,
    pub decided_by: String,
    pub rule_id: Option<String>,
    pub rule: Option<String>,
    /// Every rule that matches the action, the winner first, each with why
    /// it won or lost (path actions).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<RuleCandidate>,
}

/// One rule that matched an explained action.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct RuleCandidate {
    pub rule_id: String,
    pub rule: String,
    pub verdict: String,
    pub won: bool,
    pub why: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the rtid daemon at {socket}: {source} (is `rtid daemon` running?)")]
    Connect { socket: String, source: std::io::Error },
    #[error("talking to the daemon: {0}")]
    Io(#[from] std::io::Error),
    #[error("the daemon sent something unreadable: {0}")]
    Decode(#[from] serde_json::Error),
}

fn send_all(stream: &UnixStream, mut bytes: &[u8]) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    while !bytes.is_empty() {
        // SAFETY: sends from a live slice of the given length on an open socket.
        let sent = unsafe {
            libc::send(stream.as_raw_fd(), bytes.as_ptr() as *const libc::c_void, bytes.len(), libc::MSG_NOSIGNAL)
        };
        if sent < 0 {
            let error = std::io::Error::last_os_error();
            if error.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(error);
        }
        bytes = &bytes[sent as usize..];
    }
    Ok(())
}

/// A connection to the daemon.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    pub fn connect(socket: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(socket)
            .map_err(|source| ClientError::Connect { socket: socket.display().to_string(), source })?;
        Ok(Client { reader: BufReader::new(stream.try_clone()?), writer: stream })
    }

    /// Sends one request line. A daemon that refuses the connection answers
    /// before reading it and may close its end while this still writes: the
    /// answer is then read by [`Client::next_response`], not lost to a
    /// broken pipe (MSG_NOSIGNAL: no SIGPIPE either).
    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        match send_all(&self.writer, line.as_bytes()) {
            Err(error)
                if matches!(error.kind(), std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset) =>
            {
                Ok(())
            }
            other => Ok(other?),
        }
    }

    /// The next response, or None when the daemon closed the stream.
    pub fn next_response(&mut self) -> Result<Option<Response>, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Ok(None);
        }
        Ok(Some(serde_json::from_str(&line)?))
    }

    /// One request, one response.
    pub fn call(socket: &Path, request: &Request) -> Result<Response, ClientError> {
        let mut client = Client::connect(socket)?;
        client.send(request)?;
        client
            .next_response()?
            .ok_or_else(|| ClientError::Io(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no response")))
    }
}
