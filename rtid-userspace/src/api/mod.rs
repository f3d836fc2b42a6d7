//! The daemon's control API: JSON lines over a Unix socket. The CLI is a
//! client of this API and shares these types with the daemon.
//!
//! Authorisation: the daemon reads the caller's peer credentials; root or a
//! configured group may call, and any process that carries an identity is
//! refused whoever it runs as, so an agent cannot relabel itself or change
//! policy.

use std::{
    io::{BufRead, BufReader, Write},
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

    pub fn send(&mut self, request: &Request) -> Result<(), ClientError> {
        let mut line = serde_json::to_string(request)?;
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        Ok(())
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
