//! Just-in-time authority: grants (narrow allows with a TTL, enforced in the
//! kernel as rules with an expiry) and step-up approval requests, which an
//! operator turns into a grant for exactly the object the agent asked for.

use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use rtid_common::{Verdict, access, protocol};
use serde::{Deserialize, Serialize};

use crate::{
    events::record::EventRecord,
    policy::{IdentitySpec, NetRuleSpec, NetTarget, PathPattern, PathRuleSpec},
};

/// How long an approval request waits for an answer, unless configured.
pub const DEFAULT_REQUEST_LIFETIME: Duration = Duration::from_secs(15 * 60);
/// Longest grant the daemon hands out, unless configured.
pub const DEFAULT_MAX_GRANT_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a grant allows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantObject {
    Open { path: String, write: bool },
    Exec { path: String },
    Connect { address: String, prefix_len: u8, ports: Vec<(u16, u16)>, udp: bool },
    Unix { path: String },
}

impl GrantObject {
    pub fn describe(&self) -> String {
        match self {
            GrantObject::Open { path, write } => format!("open {path}{}", if *write { " (write)" } else { "" }),
            GrantObject::Exec { path } => format!("exec {path}"),
            GrantObject::Connect { address, prefix_len, ports, udp } => format!(
                "connect {address}/{prefix_len} ports {} {}",
                crate::policy::compile::describe_ports(ports),
                if *udp { "udp" } else { "tcp" }
            ),
            GrantObject::Unix { path } => format!("unix {path}"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub identity: String,
    pub object: GrantObject,
    pub expires_at_boot_ns: u64,
    pub reason: Option<String>,
    /// The approval request it answers, if any.
    pub request: Option<String>,
    /// Single use: gone after the first action it allows.
    #[serde(default)]
    pub once: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestState {
    Pending,
    Approved,
    Denied,
    Expired,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub id: String,
    pub identity: String,
    pub owner: Option<String>,
    pub purpose: Option<String>,
    pub object: GrantObject,
    pub rule: Option<String>,
    pub pid: u32,
    pub attempts: u32,
    pub first_seen_boot_ns: u64,
    pub expires_at_boot_ns: u64,
    pub state: RequestState,
    pub answer: Option<String>,
}

/// Grants and requests as saved under the state dir, so a restarted daemon
/// keeps what operators granted and what agents are waiting for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    pub grants: Vec<Grant>,
    pub requests: Vec<ApprovalRequest>,
    pub next_grant: u64,
    pub next_request: u64,
}

/// Grants and requests, owned by the daemon.
pub struct Ledger {
    request_lifetime: Duration,
    max_grant_ttl: Duration,
    grants: Vec<Grant>,
    requests: BTreeMap<u64, ApprovalRequest>,
    next_grant: u64,
    next_request: u64,
}

impl Ledger {
    pub fn new(request_lifetime: Duration, max_grant_ttl: Duration) -> Ledger {
        Ledger {
            request_lifetime,
            max_grant_ttl,
            grants: Vec::new(),
            requests: BTreeMap::new(),
            next_grant: 0,
            next_request: 0,
        }
    }

    pub fn state(&self) -> LedgerState {
        LedgerState {
            grants: self.grants.clone(),
            requests: self.requests.values().cloned().collect(),
            next_grant: self.next_grant,
            next_request: self.next_request,
        }
    }

    /// Takes back a saved ledger (from this boot: times are boot-clock times).
    pub fn restore(&mut self, state: LedgerState, now: u64) {
        self.grants = state.grants;
        self.requests = state
            .requests
            .into_iter()
            .filter_map(|request| Some((request.id.strip_prefix("req-")?.parse().ok()?, request)))
            .collect();
        self.next_grant = state.next_grant;
        self.next_request = state.next_request;
        self.prune(now);
    }

    pub fn live(&self) -> &[Grant] {
        &self.grants
    }

    /// Drops expired grants and marks expired requests (the kernel stops
    /// applying a grant at its expiry whether or not this runs).
    pub fn prune(&mut self, now: u64) {
        self.grants.retain(|grant| grant.expires_at_boot_ns > now);
        for request in self.requests.values_mut() {
            if request.state == RequestState::Pending && request.expires_at_boot_ns <= now {
                request.state = RequestState::Expired;
            }
        }
    }

    pub fn add(
        &mut self,
        identity: &str,
        object: GrantObject,
        ttl: Duration,
        reason: Option<String>,
        request: Option<String>,
        now: u64,
    ) -> Result<Grant, String> {
        if ttl.is_zero() {
            return Err("a grant needs a TTL".into());
        }
        if ttl > self.max_grant_ttl {
            return Err(format!(
                "TTL {} is longer than the maximum {} (daemon --max-grant-ttl)",
                humantime::format_duration(ttl),
                humantime::format_duration(self.max_grant_ttl)
            ));
        }
        self.next_grant += 1;
        let grant = Grant {
            id: format!("grant-{}", self.next_grant),
            identity: identity.into(),
            object,
            expires_at_boot_ns: now + ttl.as_nanos() as u64,
            reason,
            request,
            once: false,
        };
        self.grants.push(grant.clone());
        Ok(grant)
    }

    pub fn revoke(&mut self, id: &str) -> bool {
        let before = self.grants.len();
        self.grants.retain(|grant| grant.id != id);
        self.grants.len() != before
    }

    /// Opens an approval request for a step-up event, or joins the pending
    /// one for the same identity and object. Returns the id of a new request.
    pub fn request_from(
        &mut self,
        record: &EventRecord,
        owner: Option<String>,
        purpose: Option<String>,
        now: u64,
    ) -> Option<String> {
        let identity = record.identity.clone()?;
        let object = object_of(record)?;
        self.prune(now);
        if let Some(pending) = self
            .requests
            .values_mut()
            .find(|r| r.state == RequestState::Pending && r.identity == identity && r.object == object)
        {
            pending.attempts += 1;
            return None;
        }
        self.next_request += 1;
        let id = format!("req-{}", self.next_request);
        self.requests.insert(
            self.next_request,
            ApprovalRequest {
                id: id.clone(),
                identity,
                owner,
                purpose,
                object,
                rule: record.rule_id.clone(),
                pid: record.tgid,
                attempts: 1,
                first_seen_boot_ns: now,
                expires_at_boot_ns: now + self.request_lifetime.as_nanos() as u64,
                state: RequestState::Pending,
                answer: None,
            },
        );
        Some(id)
    }

    /// A request as JSON, for approvers.
    pub fn request_json(&self, id: &str) -> Option<String> {
        self.requests.values().find(|r| r.id == id).and_then(|r| serde_json::to_string(r).ok())
    }

    pub fn requests(&mut self, now: u64) -> Vec<ApprovalRequest> {
        self.prune(now);
        self.requests.values().cloned().collect()
    }

    fn pending_mut(&mut self, id: &str, now: u64) -> Result<&mut ApprovalRequest, String> {
        self.prune(now);
        let request =
            self.requests.values_mut().find(|r| r.id == id).ok_or_else(|| format!("no approval request {id}"))?;
        match request.state {
            RequestState::Pending => Ok(request),
            state => Err(format!("request {id} is {state:?}, not pending").to_lowercase()),
        }
    }

    /// Turns a pending request into a grant for exactly its identity and object.
    pub fn approve(&mut self, id: &str, ttl: Duration, once: bool, now: u64) -> Result<Grant, String> {
        let request = self.pending_mut(id, now)?;
        let (identity, object) = (request.identity.clone(), request.object.clone());
        let mut grant = self.add(&identity, object, ttl, Some(format!("approved {id}")), Some(id.into()), now)?;
        if once {
            if let Some(stored) = self.grants.iter_mut().find(|g| g.id == grant.id) {
                stored.once = true;
            }
            grant.once = true;
        }
        if let Some(request) = self.requests.values_mut().find(|r| r.id == id) {
            request.state = RequestState::Approved;
        }
        Ok(grant)
    }

    /// The grant named `id`, live or not yet pruned.
    pub fn find(&self, id: &str) -> Option<&Grant> {
        self.grants.iter().find(|grant| grant.id == id)
    }

    /// A single-use grant allowed an action: it is used up. Returns whether one was.
    pub fn used(&mut self, grant_id: &str) -> bool {
        let before = self.grants.len();
        self.grants.retain(|grant| !(grant.once && grant.id == grant_id));
        self.grants.len() != before
    }

    pub fn deny(&mut self, id: &str, reason: Option<String>, now: u64) -> Result<(), String> {
        let request = self.pending_mut(id, now)?;
        request.state = RequestState::Denied;
        request.answer = reason;
        Ok(())
    }
}

/// The object of a step-up event, as a grant would name it.
fn object_of(record: &EventRecord) -> Option<GrantObject> {
    match record.kind.as_str() {
        "file" => {
            Some(GrantObject::Open { path: record.path.clone()?, write: record.access.iter().any(|a| a == "write") })
        }
        "exec" => Some(GrantObject::Exec { path: record.path.clone()? }),
        "connect" | "send" if record.flags.iter().any(|f| f == "unix_socket") => {
            Some(GrantObject::Unix { path: record.path.clone()? })
        }
        "connect" | "send" => {
            let address: IpAddr = record.address.as_ref()?.parse().ok()?;
            let port = record.port?;
            Some(GrantObject::Connect {
                address: address.to_string(),
                prefix_len: if address.is_ipv4() { 32 } else { 128 },
                ports: vec![(port, port)],
                udp: record.protocol.as_deref() == Some("udp"),
            })
        }
        _ => None,
    }
}

/// The identities with each live grant appended as a rule that outranks
/// policy rules on the same object. Grants allow and are recorded (`audit`),
/// so every event they allow names them.
pub fn with_grants(identities: &[IdentitySpec], grants: &[Grant]) -> Vec<IdentitySpec> {
    let mut result = identities.to_vec();
    for grant in grants {
        let Some(identity) = result.iter_mut().find(|identity| identity.name == grant.identity) else { continue };
        let expires = Some(grant.expires_at_boot_ns);
        match &grant.object {
            GrantObject::Open { path, write } => identity.files.push(PathRuleSpec {
                id: grant.id.clone(),
                pattern: PathPattern::Exact(path.clone()),
                access: if *write { access::READ | access::WRITE } else { access::READ },
                action: Verdict::Audit,
                expires_at_boot_ns: expires,
                grant: true,
                from_delegator: false,
            }),
            GrantObject::Exec { path } => identity.exec.push(PathRuleSpec {
                id: grant.id.clone(),
                pattern: PathPattern::Exact(path.clone()),
                access: access::EXEC,
                action: Verdict::Audit,
                expires_at_boot_ns: expires,
                grant: true,
                from_delegator: false,
            }),
            GrantObject::Connect { address, prefix_len, ports, udp } => {
                let Ok(addr) = address.parse() else { continue };
                identity.network.push(NetRuleSpec {
                    id: grant.id.clone(),
                    target: NetTarget::Cidr { addr, prefix_len: *prefix_len },
                    ports: ports.clone(),
                    protocols: if *udp { protocol::UDP } else { protocol::TCP },
                    action: Verdict::Audit,
                    expires_at_boot_ns: expires,
                    grant: true,
                    from_delegator: false,
                });
            }
            GrantObject::Unix { path } => identity.network.push(NetRuleSpec {
                id: grant.id.clone(),
                target: NetTarget::Unix(path.clone()),
                ports: Vec::new(),
                protocols: protocol::ANY,
                action: Verdict::Audit,
                expires_at_boot_ns: expires,
                grant: true,
                from_delegator: false,
            }),
        }
    }
    result
}
