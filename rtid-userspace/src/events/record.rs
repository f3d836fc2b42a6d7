//! Events as userspace reports them: the kernel's `Event` with names
//! resolved (identity, rule) and enums spelled out, serialisable as JSON.

use serde::{Deserialize, Serialize};

use rtid_common::{
    AF_INET6, AF_UNIX, Backend, DecisionSource, Event, EventKind, Outcome, Verdict, capability, event_flags,
    file_change, protection,
};

/// Version of the JSON event schema (README: Events).
pub const EVENT_SCHEMA: &str = "rtid.event/v1";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct EventRecord {
    pub schema: String,
    pub kind: String,
    pub time_boot_ns: u64,
    pub pid: u32,
    pub tgid: u32,
    pub parent_tgid: u32,
    pub uid: u32,
    pub comm: String,
    /// `tgid:start_ns`, stable across pid reuse.
    pub process_key: String,
    pub identity_id: u32,
    pub identity: Option<String>,
    /// `owner > delegator > ... > identity`.
    pub delegation_chain: Option<String>,
    pub verdict: String,
    pub outcome: String,
    pub errno: i32,
    pub decision: String,
    pub rule_id: Option<String>,
    pub rule: Option<String>,
    pub backend: String,
    pub access: Vec<String>,
    pub path: Option<String>,
    pub address: Option<String>,
    pub port: Option<u16>,
    pub protocol: Option<String>,
    pub flags: Vec<String>,
    pub generation: u32,
    pub related_tgid: Option<u32>,
    /// `capability` events: the capability's name (`CAP_SYS_ADMIN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capability: Option<String>,
    /// `socket` events: the socket asked for, as `family=F type=T protocol=P`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<String>,
    /// `file_change` events: what was done to the path (`unlink`, `rename_to`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<String>,
    /// `tamper` events aimed at a process (signal, ptrace): its tgid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_tgid: Option<u32>,
    // What the daemon adds (README: Events). Defaults until the daemon enriches.
    /// Per-node sequence number, in the order events left the kernel ring.
    #[serde(default)]
    pub seq: u64,
    /// Wall-clock time of the decision, RFC 3339 UTC.
    #[serde(default)]
    pub time: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub purpose: Option<String>,
    /// The grant whose rule decided, and the approval request it answered.
    #[serde(default)]
    pub grant_id: Option<String>,
    #[serde(default)]
    pub approval_id: Option<String>,
    #[serde(default)]
    pub process: ProcessDetails,
    /// For `suppressed` summaries: how many events the per-identity cap held back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppressed: Option<u64>,
}

/// The acting process as /proc described it when the daemon first saw it.
/// A field /proc could no longer answer (the process is gone) stays empty and
/// is named in `unavailable`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessDetails {
    pub exe: Option<String>,
    pub cmdline: Option<Vec<String>>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
    /// Parents, nearest first, up to and including the first one outside the identity.
    pub ancestry: Vec<Ancestor>,
    pub unavailable: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Ancestor {
    pub pid: u32,
    pub exe: Option<String>,
    pub comm: Option<String>,
    /// The ancestor's identity, None for the first one outside it.
    pub identity: Option<String>,
}

/// Names for the numbers an event carries, supplied by whoever holds the policy.
pub trait Names {
    fn identity(&self, id: u32) -> Option<String>;
    /// (policy rule id, readable form)
    fn rule(&self, id: u32) -> Option<(String, String)>;
    /// The delegation chain of an identity, owner first.
    fn chain(&self, _id: u32) -> Option<String> {
        None
    }
}

impl EventRecord {
    /// An event the daemon itself emits (a `suppressed` summary, ...): no
    /// actor, nothing judged.
    pub fn from_daemon(kind: &str) -> EventRecord {
        EventRecord {
            schema: EVENT_SCHEMA.into(),
            kind: kind.into(),
            time_boot_ns: 0,
            pid: 0,
            tgid: 0,
            parent_tgid: 0,
            uid: 0,
            comm: String::new(),
            process_key: String::new(),
            identity_id: 0,
            identity: None,
            delegation_chain: None,
            verdict: "allow".into(),
            outcome: "allowed".into(),
            errno: 0,
            decision: "lifecycle".into(),
            rule_id: None,
            rule: None,
            backend: "daemon".into(),
            access: Vec::new(),
            path: None,
            address: None,
            port: None,
            protocol: None,
            flags: Vec::new(),
            generation: 0,
            related_tgid: None,
            capability: None,
            socket: None,
            change: None,
            target_tgid: None,
            seq: 0,
            time: String::new(),
            node: String::new(),
            owner: None,
            purpose: None,
            grant_id: None,
            approval_id: None,
            process: Default::default(),
            suppressed: None,
        }
    }

    pub fn from_event(event: &Event, names: &dyn Names) -> EventRecord {
        let kind = EventKind::from_u8(event.kind);
        let is_net = matches!(kind, Some(EventKind::Connect | EventKind::Send));
        let unix = event.flags & event_flags::UNIX_SOCKET != 0;
        let path = (!event.path_bytes().is_empty()).then(|| String::from_utf8_lossy(event.path_bytes()).into_owned());
        let (address, port, protocol) = if is_net && !unix { net_fields(event) } else { (None, None, None) };
        let source = DecisionSource::from_u8(event.decision);
        let rule = match source {
            DecisionSource::Rule if event.rule_id != 0 => names.rule(event.rule_id),
            // Built-in protections are named, not numbered, and need no policy to explain them.
            DecisionSource::Protected => Some((
                protection::name(event.rule_id).to_string(),
                "built-in protection of rtid and the host (README: Threat model)".to_string(),
            )),
            _ => None,
        };
        EventRecord {
            schema: EVENT_SCHEMA.into(),
            kind: kind.map_or("unknown", EventKind::name).into(),
            time_boot_ns: event.time_ns,
            pid: event.pid,
            tgid: event.tgid,
            parent_tgid: event.parent_tgid,
            uid: event.uid,
            comm: String::from_utf8_lossy(event.comm_bytes()).into_owned(),
            process_key: format!("{}:{}", event.tgid, event.process_start_ns),
            identity_id: event.identity,
            identity: names.identity(event.identity),
            delegation_chain: names.chain(event.identity),
            verdict: Verdict::from_u8(event.verdict).name().into(),
            outcome: Outcome::from_u8(event.outcome).name().into(),
            errno: event.errno,
            decision: DecisionSource::from_u8(event.decision).name().into(),
            rule_id: rule.as_ref().map(|(id, _)| id.clone()),
            rule: rule.map(|(_, text)| text),
            backend: Backend::from_u8(event.backend).name().into(),
            access: access_names(event.access),
            path,
            address,
            port,
            protocol,
            flags: flag_names(event.flags),
            generation: event.generation,
            related_tgid: (event.related_tgid != 0).then_some(event.related_tgid),
            capability: (kind == Some(EventKind::Capability)).then(|| capability::name(event.detail).to_string()),
            socket: (kind == Some(EventKind::Socket)).then(|| {
                let (family, socket_type, protocol) = rtid_common::socket_detail::unpack(event.detail);
                format!("family={family} type={socket_type} protocol={protocol}")
            }),
            change: (kind == Some(EventKind::FileChange)).then(|| file_change::name(event.detail).to_string()),
            target_tgid: (kind == Some(EventKind::Tamper) && event.detail != 0).then_some(event.detail),
            ..EventRecord::from_daemon("")
        }
    }
}

fn net_fields(event: &Event) -> (Option<String>, Option<u16>, Option<String>) {
    let v6 = std::net::Ipv6Addr::from(event.net.addr);
    let address = match v6.to_ipv4_mapped() {
        Some(v4) if event.net.family != AF_INET6 || event.net.addr[..10] == [0; 10] => v4.to_string(),
        _ => v6.to_string(),
    };
    let protocol = match event.net.protocol {
        rtid_common::protocol::TCP => "tcp",
        rtid_common::protocol::UDP => "udp",
        _ if event.net.family == AF_UNIX => "unix",
        _ => "other",
    };
    (Some(address), Some(event.net.port), Some(protocol.into()))
}

fn access_names(access: u8) -> Vec<String> {
    [(rtid_common::access::READ, "read"), (rtid_common::access::WRITE, "write"), (rtid_common::access::EXEC, "exec")]
        .iter()
        .filter(|(bit, _)| access & bit != 0)
        .map(|(_, name)| name.to_string())
        .collect()
}

fn flag_names(flags: u16) -> Vec<String> {
    [
        (event_flags::PATH_TRUNCATED, "path_truncated"),
        (event_flags::PATH_UNRESOLVED, "path_unresolved"),
        (event_flags::AUDIT_MODE, "audit_mode"),
        (event_flags::UNIX_SOCKET, "unix_socket"),
        (event_flags::BACKEND_FALLBACK, "backend_fallback"),
        (event_flags::QUARANTINE_TRIPPED, "quarantine_tripped"),
    ]
    .iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name.to_string())
    .collect()
}
