//! rtid events as OCSF 1.5.0 events (<https://schema.ocsf.io/1.5.0>), for
//! SIEMs and data lakes that ingest OCSF rather than rtid's own JSON.
//!
//! One rtid event becomes one OCSF event:
//!
//! | rtid event | OCSF class | activity |
//! |---|---|---|
//! | `file` | File System Activity (1001) | Open (14) |
//! | `connect`, `send` | Network Activity (4001) | Open (1), Traffic (6) |
//! | `exec`, `process_start`, `exit` | Process Activity (1007) | Launch (1), Launch (1), Terminate (2) |
//! | `identity_change`, unknown kinds | Process Activity (1007) | Other (99) |
//! | verdict `flag`, outcome `flagged_instead`, flag `quarantine_tripped`, `tamper`, `suppressed` | Detection Finding (2004) | Create (1) |
//!
//! The decision goes where OCSF's security_control profile puts one
//! (`action_id`, `disposition_id`, `policy`, `is_alert`) and in
//! `actor.authorizations`; the container and pod in the container profile's
//! `process.container`. What OCSF has no attribute for (the agent identity,
//! owner, purpose, delegation chain, grant and approval, backend, process
//! key, ...) is in `unmapped`, under the names of rtid's JSON events.
//! `tests/ocsf/validate.py` checks the output against the OCSF 1.5.0 models.

use std::{
    net::IpAddr,
    time::{SystemTime, UNIX_EPOCH},
};

use serde_json::{Map, Value, json};

use super::record::{EventRecord, ProcessDetails};

/// The OCSF schema version events are written in.
pub const OCSF_VERSION: &str = "1.5.0";

struct Class {
    uid: u32,
    name: &'static str,
    category_uid: u32,
    category_name: &'static str,
}

const FILE_SYSTEM_ACTIVITY: Class =
    Class { uid: 1001, name: "File System Activity", category_uid: 1, category_name: "System Activity" };
const PROCESS_ACTIVITY: Class =
    Class { uid: 1007, name: "Process Activity", category_uid: 1, category_name: "System Activity" };
const NETWORK_ACTIVITY: Class =
    Class { uid: 4001, name: "Network Activity", category_uid: 4, category_name: "Network Activity" };
const DETECTION_FINDING: Class =
    Class { uid: 2004, name: "Detection Finding", category_uid: 2, category_name: "Findings" };

/// An OCSF enum value and its caption (the `*_id` attribute and its sibling).
type Enum = (u32, &'static str);

const ACTION_ALLOWED: Enum = (1, "Allowed");
const ACTION_DENIED: Enum = (2, "Denied");
const ACTION_OBSERVED: Enum = (3, "Observed");

const DISPOSITION_ALLOWED: Enum = (1, "Allowed");
const DISPOSITION_BLOCKED: Enum = (2, "Blocked");
const DISPOSITION_NO_ACTION: Enum = (16, "No Action");
const DISPOSITION_LOGGED: Enum = (17, "Logged");
const DISPOSITION_ALERT: Enum = (19, "Alert");
const DISPOSITION_ACCESS_REVOKED: Enum = (24, "Access Revoked");
const DISPOSITION_UNAUTHORIZED: Enum = (26, "Unauthorized");

/// File type_id: what a binary is, and what an opened path may be.
const FILE_REGULAR: u32 = 1;
const FILE_UNKNOWN: u32 = 0;

/// The OCSF form of an rtid event.
pub fn to_ocsf(record: &EventRecord) -> Value {
    let when = When::of(record);
    let event = if is_finding(record) {
        detection_finding(record, &when)
    } else {
        match record.kind.as_str() {
            "file" => file_system_activity(record, &when),
            "connect" | "send" => network_activity(record, &when),
            _ => process_activity(record, &when),
        }
    };
    let mut event = Value::Object(event);
    // OCSF leaves absent attributes out rather than null.
    strip_nulls(&mut event);
    event
}

/// Events that call for attention rather than record an activity.
fn is_finding(record: &EventRecord) -> bool {
    record.verdict == "flag"
        || record.outcome == "flagged_instead"
        || has_flag(record, "quarantine_tripped")
        || matches!(
            record.kind.as_str(),
            "tamper" | "suppressed" | "capability" | "file_change" | "integrity" | "socket"
        )
}

fn has_flag(record: &EventRecord, flag: &str) -> bool {
    record.flags.iter().any(|set| set == flag)
}

/// Policy judged this event (process lifecycle and daemon summaries are not judged).
fn is_judged(record: &EventRecord) -> bool {
    record.decision != "lifecycle"
}

/// The event's wall-clock time in ms since the epoch.
struct When {
    ms: i64,
    /// From the record's own time (not the fallback), so other times can be derived from it.
    known: bool,
}

impl When {
    fn of(record: &EventRecord) -> When {
        match humantime::parse_rfc3339_weak(&record.time) {
            Ok(time) => When { ms: epoch_ms(time), known: true },
            // Unenriched records have no time yet; they are formatted right after they were made.
            Err(_) => When { ms: epoch_ms(SystemTime::now()), known: false },
        }
    }
}

fn epoch_ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as i64)
}

fn file_system_activity(record: &EventRecord, when: &When) -> Map<String, Value> {
    let mut event = base(record, &FILE_SYSTEM_ACTIVITY, (14, "Open"), when);
    event.insert("file".into(), file_object(record.path.as_deref(), FILE_UNKNOWN));
    event.extend(activity_status(record));
    event
}

fn network_activity(record: &EventRecord, when: &When) -> Map<String, Value> {
    let activity = if record.kind == "send" { (6, "Traffic") } else { (1, "Open") };
    let mut event = base(record, &NETWORK_ACTIVITY, activity, when);
    event.insert("dst_endpoint".into(), dst_endpoint(record));
    event.insert("connection_info".into(), connection_info(record));
    event.extend(activity_status(record));
    event
}

fn process_activity(record: &EventRecord, when: &When) -> Map<String, Value> {
    let (activity, process) = match record.kind.as_str() {
        "exec" => ((1, "Launch"), exec_image(record)),
        "process_start" => ((1, "Launch"), forked_child(record, when)),
        "exit" => {
            let mut process = actor_process(record, when);
            process["terminated_time"] = json!(when.ms);
            ((2, "Terminate"), process)
        }
        "identity_change" => ((99, "Identity Change"), actor_process(record, when)),
        _ => ((99, "Other"), actor_process(record, when)),
    };
    let mut event = base(record, &PROCESS_ACTIVITY, activity, when);
    event.insert("process".into(), process);
    event.extend(activity_status(record));
    event
}

fn detection_finding(record: &EventRecord, when: &When) -> Map<String, Value> {
    let mut event = base(record, &DETECTION_FINDING, (1, "Create"), when);
    event.insert("finding_info".into(), finding_info(record, when));
    if let Some(evidence) = evidence(record, when) {
        event.insert("evidences".into(), json!([evidence]));
    }
    // A finding's status is its triage state: every finding starts new.
    event.insert("status_id".into(), json!(1));
    event.insert("status".into(), json!("New"));
    event.insert("is_alert".into(), json!(record.kind != "suppressed"));
    if let Some(count) = record.suppressed {
        event.insert("count".into(), json!(count));
    }
    event
}

/// The attributes every class shares.
fn base(record: &EventRecord, class: &Class, (activity_id, activity_name): Enum, when: &When) -> Map<String, Value> {
    let (severity_id, severity) = severity(record);
    let Value::Object(mut event) = json!({
        "class_uid": class.uid,
        "class_name": class.name,
        "category_uid": class.category_uid,
        "category_name": class.category_name,
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class.uid * 100 + activity_id,
        "type_name": format!("{}: {activity_name}", class.name),
        "severity_id": severity_id,
        "severity": severity,
        "time": when.ms,
        "timezone_offset": 0,
        "message": message(record),
        "metadata": metadata(record),
        "device": { "hostname": non_empty(&record.node), "type_id": 0 },
        "unmapped": unmapped(record),
    }) else {
        unreachable!("json! of an object literal is an object")
    };
    if record.tgid != 0 {
        event.insert("actor".into(), actor(record, when));
    }
    if is_judged(record) {
        event.extend(security_control(record));
    }
    event
}

fn metadata(record: &EventRecord) -> Value {
    let mut profiles = vec!["host"];
    if is_judged(record) {
        profiles.push("security_control");
    }
    if container(&record.process).is_some() {
        profiles.push("container");
    }
    json!({
        "version": OCSF_VERSION,
        "product": { "name": "rtid", "vendor_name": "rtid", "version": env!("CARGO_PKG_VERSION") },
        "uid": format!("{}:{}", record.node, record.seq),
        "sequence": record.seq,
        "original_time": non_empty(&record.time),
        "event_code": record.kind,
        "profiles": profiles,
    })
}

/// The process that acted, its Unix user, and the agent identity it runs as.
fn actor(record: &EventRecord, when: &When) -> Value {
    json!({
        "process": actor_process(record, when),
        "user": user(record),
        "app_name": record.identity,
        "authorizations": is_judged(record).then(|| json!([{ "decision": record.verdict, "policy": policy(record) }])),
    })
}

fn actor_process(record: &EventRecord, when: &When) -> Value {
    let details = &record.process;
    json!({
        "pid": record.tgid,
        "tid": record.pid,
        "uid": non_empty(&record.process_key),
        "name": record.comm,
        "cmd_line": details.cmdline.as_deref().map(shell_join),
        "file": details.exe.as_deref().map(|exe| file_object(Some(exe), FILE_REGULAR)),
        "working_directory": details.cwd,
        "user": user(record),
        "created_time": created_time_ms(record, when),
        "parent_process": parent_process(record),
        "ancestry": (!details.ancestry.is_empty()).then(|| ancestry(details)),
        "container": container(details),
    })
}

fn user(record: &EventRecord) -> Value {
    json!({ "uid": record.uid.to_string(), "name": record.process.user })
}

/// The process's start on the wall clock: the event time less the time
/// between the process start and the event, both on the boot clock.
fn created_time_ms(record: &EventRecord, when: &When) -> Option<i64> {
    let start_ns: u64 = record.process_key.split_once(':')?.1.parse().ok()?;
    if !when.known || start_ns == 0 || start_ns > record.time_boot_ns {
        return None;
    }
    Some(when.ms - ((record.time_boot_ns - start_ns) / 1_000_000) as i64)
}

fn parent_process(record: &EventRecord) -> Option<Value> {
    if record.parent_tgid == 0 {
        return None;
    }
    let known = record.process.ancestry.first().filter(|parent| parent.pid == record.parent_tgid);
    Some(json!({
        "pid": record.parent_tgid,
        "name": known.and_then(|parent| parent.comm.clone()),
        "file": known.and_then(|parent| parent.exe.as_deref()).map(|exe| file_object(Some(exe), FILE_REGULAR)),
    }))
}

/// OCSF's ancestry is nearest first, like rtid's.
fn ancestry(details: &ProcessDetails) -> Value {
    details
        .ancestry
        .iter()
        .map(|ancestor| json!({ "pid": ancestor.pid, "name": ancestor.comm, "path": ancestor.exe }))
        .collect()
}

fn container(details: &ProcessDetails) -> Option<Value> {
    if details.container_id.is_none() && details.pod_uid.is_none() {
        return None;
    }
    Some(json!({
        "uid": details.container_id,
        "pod_uuid": details.pod_uid,
        "orchestrator": details.pod_uid.as_ref().map(|_| "Kubernetes"),
    }))
}

/// The program an exec starts (its argv is not known yet).
fn exec_image(record: &EventRecord) -> Value {
    json!({
        "pid": record.tgid,
        "uid": non_empty(&record.process_key),
        "name": record.path.as_deref().map(base_name),
        "file": record.path.as_deref().map(|path| file_object(Some(path), FILE_REGULAR)),
        "user": user(record),
    })
}

/// A fork's child: a copy of the actor, born at the event.
fn forked_child(record: &EventRecord, when: &When) -> Value {
    json!({
        "pid": record.related_tgid,
        "name": record.comm,
        "file": record.process.exe.as_deref().map(|exe| file_object(Some(exe), FILE_REGULAR)),
        "user": user(record),
        "created_time": when.known.then_some(when.ms),
        "parent_process": { "pid": record.tgid, "uid": non_empty(&record.process_key), "name": record.comm },
    })
}

fn file_object(path: Option<&str>, type_id: u32) -> Value {
    json!({ "path": path, "name": path.map_or("", base_name), "type_id": type_id })
}

fn is_unix_socket(record: &EventRecord) -> bool {
    has_flag(record, "unix_socket") || record.protocol.as_deref() == Some("unix")
}

fn dst_endpoint(record: &EventRecord) -> Value {
    if is_unix_socket(record) {
        // OCSF endpoints have no socket path; its name is the closest.
        return json!({ "name": record.path });
    }
    json!({ "ip": record.address, "port": record.port })
}

fn connection_info(record: &EventRecord) -> Value {
    let protocol = if is_unix_socket(record) { Some("unix") } else { record.protocol.as_deref() };
    let iana = match protocol {
        Some("tcp") => Some(6),
        Some("udp") => Some(17),
        _ => None,
    };
    let version = match record.address.as_deref().and_then(|address| address.parse::<IpAddr>().ok()) {
        Some(IpAddr::V4(_)) => Some((4, "IPv4")),
        Some(IpAddr::V6(_)) => Some((6, "IPv6")),
        None => None,
    };
    json!({
        "protocol_name": protocol,
        "protocol_num": iana,
        "protocol_ver_id": version.map(|(id, _)| id),
        "protocol_ver": version.map(|(_, name)| name),
        // rtid judges the calls a process makes: connect and send go out.
        "direction_id": 2,
        "direction": "Outbound",
    })
}

/// status_* of an activity: did it happen.
fn activity_status(record: &EventRecord) -> Map<String, Value> {
    let failed = matches!(record.outcome.as_str(), "blocked" | "killed");
    let (status_id, status) = if failed { (2, "Failure") } else { (1, "Success") };
    let status_code = match record.outcome.as_str() {
        "blocked" => Some(errno_name(record.errno)),
        "killed" => Some("SIGKILL".to_string()),
        _ => None,
    };
    let mut fields = Map::new();
    fields.insert("status_id".into(), json!(status_id));
    fields.insert("status".into(), json!(status));
    fields.insert("status_code".into(), json!(status_code));
    fields.insert("status_detail".into(), json!(outcome_detail(record)));
    fields
}

/// security_control profile: what the control did, under which policy.
fn security_control(record: &EventRecord) -> Map<String, Value> {
    let ((action_id, action), (disposition_id, disposition)) = action_and_disposition(record);
    let mut fields = Map::new();
    fields.insert("action_id".into(), json!(action_id));
    fields.insert("action".into(), json!(action));
    fields.insert("disposition_id".into(), json!(disposition_id));
    fields.insert("disposition".into(), json!(disposition));
    fields.insert("policy".into(), policy(record));
    fields.insert("is_alert".into(), json!(is_finding(record) || record.outcome == "killed"));
    fields
}

fn action_and_disposition(record: &EventRecord) -> (Enum, Enum) {
    if has_flag(record, "quarantine_tripped") {
        return (ACTION_DENIED, DISPOSITION_ACCESS_REVOKED);
    }
    match (record.outcome.as_str(), record.verdict.as_str()) {
        // Step-up refuses until an approver grants: an authorization, not a ban.
        ("blocked" | "killed", "step_up") => (ACTION_DENIED, DISPOSITION_UNAUTHORIZED),
        ("blocked" | "killed", _) => (ACTION_DENIED, DISPOSITION_BLOCKED),
        // Audit mode: policy would have acted and did not.
        ("audit_only", _) => (ACTION_OBSERVED, DISPOSITION_NO_ACTION),
        ("flagged_instead", _) | (_, "flag") => (ACTION_OBSERVED, DISPOSITION_ALERT),
        (_, "audit") => (ACTION_ALLOWED, DISPOSITION_LOGGED),
        _ => (ACTION_ALLOWED, DISPOSITION_ALLOWED),
    }
}

/// The rule that decided, or what decided when no rule did.
fn policy(record: &EventRecord) -> Value {
    let name = record.rule_id.clone().unwrap_or_else(|| record.decision.clone());
    let desc = record.rule.clone().or_else(|| {
        Some(match record.decision.as_str() {
            "default" => "the identity's default verdict".to_string(),
            "identity_expired" => "the identity expired".to_string(),
            "identity_revoked" => "the identity was revoked".to_string(),
            _ => return None,
        })
    });
    json!({
        "uid": record.rule_id,
        "name": name,
        "desc": desc,
        "version": record.generation.to_string(),
        // In audit mode (and where the backend cannot refuse) the policy was not applied.
        "is_applied": !matches!(record.outcome.as_str(), "audit_only" | "flagged_instead"),
    })
}

fn severity(record: &EventRecord) -> Enum {
    if record.kind == "tamper" || record.outcome == "killed" || has_flag(record, "quarantine_tripped") {
        (4, "High")
    } else if matches!(record.outcome.as_str(), "blocked" | "audit_only" | "flagged_instead") {
        (3, "Medium")
    } else if record.verdict == "flag" || record.kind == "suppressed" {
        (2, "Low")
    } else {
        (1, "Informational")
    }
}

fn finding_info(record: &EventRecord, when: &When) -> Value {
    let identity = record.identity.clone().unwrap_or_else(|| format!("#{}", record.identity_id));
    let (kind, title) = if record.kind == "suppressed" {
        let count = record.suppressed.unwrap_or(0);
        ("Event Suppression", format!("{count} events of identity {identity} suppressed"))
    } else if record.kind == "tamper" {
        ("Tamper", format!("Tampering with the monitor: identity {identity} called bpf()"))
    } else if has_flag(record, "quarantine_tripped") {
        ("Quarantine", format!("Identity {identity} quarantined after {}", what(record)))
    } else if record.outcome == "flagged_instead" {
        ("Policy Flag", format!("Flagged instead of {}: {} by identity {identity}", record.verdict, what(record)))
    } else {
        ("Policy Flag", format!("Flagged: {} by identity {identity}", what(record)))
    };
    let desc = if record.kind == "suppressed" { record.rule.clone() } else { Some(message(record)) };
    json!({
        "uid": format!("{}:{}", record.node, record.seq),
        "title": title,
        "desc": desc,
        "types": [kind],
        "created_time": when.ms,
        "analytic": record.rule_id.as_ref().map(|id| json!({ "type_id": 1, "type": "Rule", "uid": id, "name": id, "desc": record.rule })),
        "attacks": (record.kind == "tamper").then(|| json!([{
            "tactic": { "uid": "TA0005", "name": "Defense Evasion" },
            "technique": { "uid": "T1562", "name": "Impair Defenses" },
        }])),
    })
}

/// The object of the activity behind a finding.
fn evidence(record: &EventRecord, when: &When) -> Option<Value> {
    Some(match record.kind.as_str() {
        "file" => json!({ "file": file_object(record.path.as_deref(), FILE_UNKNOWN) }),
        "connect" | "send" => {
            json!({ "dst_endpoint": dst_endpoint(record), "connection_info": connection_info(record) })
        }
        "exec" => json!({ "process": exec_image(record) }),
        "process_start" => json!({ "process": forked_child(record, when) }),
        _ => return None,
    })
}

/// rtid's provenance, which OCSF has no attributes for.
fn unmapped(record: &EventRecord) -> Value {
    let details = &record.process;
    json!({
        "schema": record.schema,
        "kind": record.kind,
        "identity": record.identity,
        "identity_id": record.identity_id,
        "owner": record.owner,
        "purpose": record.purpose,
        "delegation_chain": record.delegation_chain,
        "verdict": record.verdict,
        "outcome": record.outcome,
        "errno": record.errno,
        "decision": record.decision,
        "rule_id": record.rule_id,
        "rule": record.rule,
        "grant_id": record.grant_id,
        "approval_id": record.approval_id,
        "backend": record.backend,
        "access": record.access,
        "flags": record.flags,
        "generation": record.generation,
        "process_key": non_empty(&record.process_key),
        "time_boot_ns": record.time_boot_ns,
        "related_tgid": record.related_tgid,
        "suppressed": record.suppressed,
        "ancestry": (!details.ancestry.is_empty()).then(|| {
            details.ancestry.iter().map(|ancestor| json!({ "pid": ancestor.pid, "identity": ancestor.identity })).collect::<Vec<_>>()
        }),
        "unavailable": (!details.unavailable.is_empty()).then_some(&details.unavailable),
    })
}

/// One line a person can read: verdict, activity, actor, outcome.
fn message(record: &EventRecord) -> String {
    if record.kind == "suppressed" {
        return record.rule.clone().unwrap_or_else(|| "events suppressed".to_string());
    }
    let identity = record.identity.as_deref().map(|name| format!(" ({name})")).unwrap_or_default();
    format!(
        "{} {} by {}[{}]{identity}: {}",
        record.verdict,
        what(record),
        record.comm,
        record.tgid,
        outcome_detail(record)
    )
}

/// The activity in words: "open of /etc/shadow (read)".
fn what(record: &EventRecord) -> String {
    let path = record.path.as_deref().unwrap_or("?");
    match record.kind.as_str() {
        "file" => format!("open of {path} ({})", record.access.join(",")),
        "connect" | "send" => format!("{} to {}", record.kind, destination(record)),
        "exec" => format!("exec of {path}"),
        "process_start" => format!("start of child {}", record.related_tgid.unwrap_or(0)),
        "exit" => "exit".to_string(),
        "tamper" => format!("{} ({})", record.rule_id.as_deref().unwrap_or("rtid"), record.comm),
        "capability" => format!("use of {}", record.capability.as_deref().unwrap_or("a capability")),
        "file_change" => format!("{} of {path}", record.change.as_deref().unwrap_or("change")),
        "integrity" => "enforcement whole again".to_string(),
        "socket" => format!("creation of a socket ({})", record.socket.as_deref().unwrap_or("?")),
        other => other.to_string(),
    }
}

fn destination(record: &EventRecord) -> String {
    if is_unix_socket(record) {
        return format!("unix socket {}", record.path.as_deref().unwrap_or("?"));
    }
    let address = record.address.as_deref().unwrap_or("?");
    let address = if address.contains(':') { format!("[{address}]") } else { address.to_string() };
    let protocol = record.protocol.as_deref().unwrap_or("?");
    format!("{address}:{}/{protocol}", record.port.unwrap_or(0))
}

fn outcome_detail(record: &EventRecord) -> String {
    match record.outcome.as_str() {
        "blocked" => format!("blocked ({})", errno_name(record.errno)),
        "killed" => "killed (SIGKILL)".to_string(),
        "audit_only" => format!("allowed: audit mode ({} not enforced)", record.verdict),
        "flagged_instead" => {
            format!("allowed: the {} backend cannot refuse, flagged instead of {}", record.backend, record.verdict)
        }
        other => other.to_string(),
    }
}

/// The errnos rtid returns by name, others by number.
fn errno_name(errno: i32) -> String {
    match errno.abs() {
        libc::EPERM => "EPERM".to_string(),
        libc::EACCES => "EACCES".to_string(),
        libc::ENOENT => "ENOENT".to_string(),
        libc::ECONNREFUSED => "ECONNREFUSED".to_string(),
        libc::ENETUNREACH => "ENETUNREACH".to_string(),
        other => format!("errno {other}"),
    }
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').find(|part| !part.is_empty()).unwrap_or(path)
}

fn non_empty(text: &str) -> Option<&str> {
    (!text.is_empty()).then_some(text)
}

/// argv as one shell-quoted line: OCSF's cmd_line is a string, and a reader
/// must still see where each argument starts and ends.
fn shell_join(argv: &[String]) -> String {
    argv.iter().map(|arg| shell_quote(arg)).collect::<Vec<_>>().join(" ")
}

fn shell_quote(arg: &str) -> String {
    let plain =
        !arg.is_empty() && arg.bytes().all(|byte| byte.is_ascii_alphanumeric() || b"_@%+=:,./-".contains(&byte));
    if plain { arg.to_string() } else { format!("'{}'", arg.replace('\'', r"'\''")) }
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, member| !member.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::record::{Ancestor, EVENT_SCHEMA};

    const TIME: &str = "2025-03-01T12:00:00.250000000Z";
    const TIME_MS: i64 = 1_740_830_400_250;

    /// A tagged process's event, enriched as the daemon would.
    fn record(kind: &str) -> EventRecord {
        EventRecord {
            schema: EVENT_SCHEMA.into(),
            kind: kind.into(),
            time_boot_ns: 50_000_000_000,
            pid: 4321,
            tgid: 4321,
            parent_tgid: 4000,
            uid: 1000,
            comm: "python3".into(),
            process_key: "4321:20000000000".into(),
            identity_id: 7,
            identity: Some("coder".into()),
            delegation_chain: Some("alice > planner > coder".into()),
            verdict: "allow".into(),
            outcome: "allowed".into(),
            errno: 0,
            decision: "rule".into(),
            rule_id: Some("coder-files-1".into()),
            rule: Some("deny read /etc/shadow".into()),
            backend: "lsm".into(),
            access: vec![],
            path: None,
            address: None,
            port: None,
            protocol: None,
            flags: vec![],
            generation: 3,
            related_tgid: None,
            capability: None,
            socket: None,
            change: None,
            target_tgid: None,
            seq: 42,
            time: TIME.into(),
            node: "node-a".into(),
            owner: Some("alice".into()),
            purpose: Some("fix bug 12".into()),
            grant_id: Some("grant-9".into()),
            approval_id: Some("req-5".into()),
            process: ProcessDetails {
                exe: Some("/usr/bin/python3.12".into()),
                cmdline: Some(vec!["python3".into(), "agent.py".into(), "--task".into(), "fix it".into()]),
                cwd: Some("/work".into()),
                user: Some("alice".into()),
                container_id: Some("ab".repeat(32)),
                pod_uid: Some("1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901".into()),
                ancestry: vec![
                    Ancestor {
                        pid: 4000,
                        exe: Some("/usr/bin/bash".into()),
                        comm: Some("bash".into()),
                        identity: Some("coder".into()),
                    },
                    Ancestor { pid: 1, exe: Some("/sbin/init".into()), comm: Some("systemd".into()), identity: None },
                ],
                unavailable: vec![],
            },
            suppressed: None,
        }
    }

    fn file_deny_killed() -> EventRecord {
        EventRecord {
            verdict: "kill".into(),
            outcome: "killed".into(),
            access: vec!["read".into()],
            path: Some("/etc/shadow".into()),
            ..record("file")
        }
    }

    fn connect_blocked() -> EventRecord {
        EventRecord {
            verdict: "deny".into(),
            outcome: "blocked".into(),
            errno: 1,
            address: Some("203.0.113.9".into()),
            port: Some(443),
            protocol: Some("tcp".into()),
            ..record("connect")
        }
    }

    fn send_allowed() -> EventRecord {
        EventRecord {
            verdict: "audit".into(),
            address: Some("2001:db8::53".into()),
            port: Some(53),
            protocol: Some("udp".into()),
            ..record("send")
        }
    }

    fn exec_allowed() -> EventRecord {
        EventRecord { path: Some("/usr/bin/git".into()), access: vec!["exec".into()], ..record("exec") }
    }

    fn process_start() -> EventRecord {
        EventRecord {
            decision: "lifecycle".into(),
            rule_id: None,
            rule: None,
            backend: "none".into(),
            related_tgid: Some(4400),
            ..record("process_start")
        }
    }

    fn exit() -> EventRecord {
        EventRecord {
            decision: "lifecycle".into(),
            rule_id: None,
            rule: None,
            backend: "none".into(),
            ..record("exit")
        }
    }

    fn flagged_file() -> EventRecord {
        EventRecord {
            verdict: "flag".into(),
            access: vec!["write".into()],
            path: Some("/work/.env".into()),
            ..record("file")
        }
    }

    fn quarantine_trip() -> EventRecord {
        EventRecord { flags: vec!["quarantine_tripped".into()], ..connect_blocked() }
    }

    fn tamper() -> EventRecord {
        EventRecord {
            verdict: "deny".into(),
            outcome: "killed".into(),
            decision: "default".into(),
            rule_id: None,
            rule: None,
            backend: "tracepoint".into(),
            ..record("tamper")
        }
    }

    /// As the daemon's throttle makes them: no process, decision lifecycle.
    fn suppressed() -> EventRecord {
        EventRecord {
            pid: 0,
            tgid: 0,
            parent_tgid: 0,
            comm: String::new(),
            process_key: String::new(),
            decision: "lifecycle".into(),
            rule_id: None,
            rule: Some("1200 events suppressed for identity coder in the last second".into()),
            backend: "daemon".into(),
            grant_id: None,
            approval_id: None,
            process: ProcessDetails::default(),
            suppressed: Some(1200),
            ..record("suppressed")
        }
    }

    fn every_kind() -> Vec<EventRecord> {
        let unavailable = EventRecord {
            process: ProcessDetails {
                unavailable: vec!["exe".into(), "cmdline".into()],
                user: Some("alice".into()),
                ..Default::default()
            },
            ..connect_blocked()
        };
        let audit_mode = EventRecord { verdict: "deny".into(), outcome: "audit_only".into(), ..file_deny_killed() };
        let flagged_instead = EventRecord {
            verdict: "deny".into(),
            outcome: "flagged_instead".into(),
            backend: "tracepoint".into(),
            ..exec_allowed()
        };
        let step_up =
            EventRecord { verdict: "step_up".into(), outcome: "blocked".into(), errno: 13, ..file_deny_killed() };
        let unix = EventRecord {
            verdict: "deny".into(),
            outcome: "blocked".into(),
            errno: 1,
            path: Some("/run/docker.sock".into()),
            flags: vec!["unix_socket".into()],
            ..record("connect")
        };
        let unenriched = EventRecord {
            time: String::new(),
            node: String::new(),
            seq: 0,
            process: ProcessDetails::default(),
            ..exec_allowed()
        };
        vec![
            file_deny_killed(),
            connect_blocked(),
            send_allowed(),
            exec_allowed(),
            process_start(),
            exit(),
            flagged_file(),
            quarantine_trip(),
            tamper(),
            suppressed(),
            record("identity_change"),
            unavailable,
            audit_mode,
            flagged_instead,
            step_up,
            unix,
            unenriched,
        ]
    }

    #[test]
    fn common_attributes() {
        let event = to_ocsf(&file_deny_killed());
        assert_eq!(event["time"], TIME_MS);
        assert_eq!(event["metadata"]["version"], "1.5.0");
        assert_eq!(event["metadata"]["product"]["name"], "rtid");
        assert_eq!(event["metadata"]["product"]["vendor_name"], "rtid");
        assert_eq!(event["metadata"]["uid"], "node-a:42");
        assert_eq!(event["metadata"]["original_time"], TIME);
        assert_eq!(event["metadata"]["profiles"], json!(["host", "security_control", "container"]));
        assert_eq!(event["device"]["hostname"], "node-a");
        let process = &event["actor"]["process"];
        assert_eq!(process["pid"], 4321);
        assert_eq!(process["uid"], "4321:20000000000");
        assert_eq!(process["name"], "python3");
        assert_eq!(process["cmd_line"], "python3 agent.py --task 'fix it'");
        assert_eq!(process["file"]["path"], "/usr/bin/python3.12");
        assert_eq!(process["file"]["name"], "python3.12");
        assert_eq!(process["working_directory"], "/work");
        assert_eq!(process["user"], json!({ "uid": "1000", "name": "alice" }));
        // Started 30 s (boot clock) before the event.
        assert_eq!(process["created_time"], TIME_MS - 30_000);
        assert_eq!(
            process["parent_process"],
            json!({ "pid": 4000, "name": "bash", "file": { "path": "/usr/bin/bash", "name": "bash", "type_id": 1 } })
        );
        assert_eq!(process["ancestry"][1], json!({ "pid": 1, "name": "systemd", "path": "/sbin/init" }));
        assert_eq!(process["container"]["uid"], "ab".repeat(32));
        assert_eq!(process["container"]["pod_uuid"], "1b2c3d4e-5f60-7182-93a4-b5c6d7e8f901");
        assert_eq!(event["actor"]["user"]["name"], "alice");
        assert_eq!(event["actor"]["app_name"], "coder");
        assert_eq!(event["actor"]["authorizations"][0]["decision"], "kill");
        assert_eq!(
            event["policy"],
            json!({ "uid": "coder-files-1", "name": "coder-files-1", "desc": "deny read /etc/shadow", "version": "3", "is_applied": true })
        );
        let unmapped = &event["unmapped"];
        for (key, value) in [
            ("identity", json!("coder")),
            ("owner", json!("alice")),
            ("purpose", json!("fix bug 12")),
            ("delegation_chain", json!("alice > planner > coder")),
            ("rule_id", json!("coder-files-1")),
            ("rule", json!("deny read /etc/shadow")),
            ("grant_id", json!("grant-9")),
            ("approval_id", json!("req-5")),
            ("backend", json!("lsm")),
            ("decision", json!("rule")),
            ("process_key", json!("4321:20000000000")),
        ] {
            assert_eq!(unmapped[key], value, "unmapped.{key}");
        }
        assert_eq!(unmapped["ancestry"], json!([{ "pid": 4000, "identity": "coder" }, { "pid": 1 }]));
        assert!(!event.to_string().contains("null"), "absent attributes are left out: {event}");
    }

    #[test]
    fn file_deny_killed_is_a_blocked_file_open() {
        let event = to_ocsf(&file_deny_killed());
        assert_eq!((event["class_uid"].clone(), event["category_uid"].clone()), (json!(1001), json!(1)));
        assert_eq!((event["activity_id"].clone(), event["type_uid"].clone()), (json!(14), json!(100114)));
        assert_eq!(event["file"], json!({ "path": "/etc/shadow", "name": "shadow", "type_id": 0 }));
        assert_eq!((event["status_id"].clone(), event["status"].clone()), (json!(2), json!("Failure")));
        assert_eq!(event["status_code"], "SIGKILL");
        assert_eq!((event["action_id"].clone(), event["disposition_id"].clone()), (json!(2), json!(2)));
        assert_eq!(event["severity_id"], 4);
        assert_eq!(event["is_alert"], true);
        assert_eq!(event["message"], "kill open of /etc/shadow (read) by python3[4321] (coder): killed (SIGKILL)");
    }

    #[test]
    fn connect_blocked_with_eperm() {
        let event = to_ocsf(&connect_blocked());
        assert_eq!((event["class_uid"].clone(), event["category_uid"].clone()), (json!(4001), json!(4)));
        assert_eq!((event["activity_id"].clone(), event["type_uid"].clone()), (json!(1), json!(400101)));
        assert_eq!(event["dst_endpoint"], json!({ "ip": "203.0.113.9", "port": 443 }));
        assert_eq!(
            event["connection_info"],
            json!({ "protocol_name": "tcp", "protocol_num": 6, "protocol_ver_id": 4, "protocol_ver": "IPv4", "direction_id": 2, "direction": "Outbound" })
        );
        assert_eq!((event["status_id"].clone(), event["status_code"].clone()), (json!(2), json!("EPERM")));
        assert_eq!((event["action"].clone(), event["disposition"].clone()), (json!("Denied"), json!("Blocked")));
        assert_eq!(event["severity_id"], 3);
        // Network Activity has actor and device through the host profile.
        assert_eq!(event["actor"]["process"]["pid"], 4321);
    }

    #[test]
    fn send_is_traffic() {
        let event = to_ocsf(&send_allowed());
        assert_eq!(
            (event["class_uid"].clone(), event["activity_id"].clone(), event["type_uid"].clone()),
            (json!(4001), json!(6), json!(400106))
        );
        assert_eq!(event["dst_endpoint"], json!({ "ip": "2001:db8::53", "port": 53 }));
        assert_eq!(event["connection_info"]["protocol_num"], 17);
        assert_eq!(event["connection_info"]["protocol_ver_id"], 6);
        assert_eq!((event["status_id"].clone(), event["severity_id"].clone()), (json!(1), json!(1)));
        assert_eq!((event["action"].clone(), event["disposition"].clone()), (json!("Allowed"), json!("Logged")));
    }

    #[test]
    fn exec_launches_the_binary() {
        let event = to_ocsf(&exec_allowed());
        assert_eq!(
            (event["class_uid"].clone(), event["activity_id"].clone(), event["type_uid"].clone()),
            (json!(1007), json!(1), json!(100701))
        );
        assert_eq!(event["process"]["file"]["path"], "/usr/bin/git");
        assert_eq!(event["process"]["name"], "git");
        assert_eq!(event["actor"]["process"]["name"], "python3");
        assert_eq!((event["disposition_id"].clone(), event["status_id"].clone()), (json!(1), json!(1)));
    }

    #[test]
    fn process_start_launches_the_child() {
        let event = to_ocsf(&process_start());
        assert_eq!((event["class_uid"].clone(), event["activity_id"].clone()), (json!(1007), json!(1)));
        assert_eq!(event["process"]["pid"], 4400);
        assert_eq!(event["process"]["parent_process"]["pid"], 4321);
        assert_eq!(event["process"]["created_time"], TIME_MS);
        // Nothing was judged: no security_control attributes.
        assert!(event.get("disposition_id").is_none() && event.get("policy").is_none());
        assert!(event["actor"].get("authorizations").is_none());
        assert_eq!(event["metadata"]["profiles"], json!(["host", "container"]));
    }

    #[test]
    fn exit_terminates() {
        let event = to_ocsf(&exit());
        assert_eq!(
            (event["class_uid"].clone(), event["activity_id"].clone(), event["type_uid"].clone()),
            (json!(1007), json!(2), json!(100702))
        );
        assert_eq!(event["process"]["pid"], 4321);
        assert_eq!(event["process"]["terminated_time"], TIME_MS);
        assert_eq!(event["process"]["cmd_line"], "python3 agent.py --task 'fix it'");
    }

    #[test]
    fn a_flag_is_a_detection_finding() {
        let event = to_ocsf(&flagged_file());
        assert_eq!((event["class_uid"].clone(), event["category_uid"].clone()), (json!(2004), json!(2)));
        assert_eq!((event["activity_id"].clone(), event["type_uid"].clone()), (json!(1), json!(200401)));
        assert_eq!((event["status_id"].clone(), event["is_alert"].clone()), (json!(1), json!(true)));
        assert_eq!(event["finding_info"]["uid"], "node-a:42");
        assert_eq!(event["finding_info"]["title"], "Flagged: open of /work/.env (write) by identity coder");
        assert_eq!(event["finding_info"]["analytic"]["uid"], "coder-files-1");
        assert_eq!(event["evidences"][0]["file"]["path"], "/work/.env");
        assert_eq!((event["action_id"].clone(), event["disposition"].clone()), (json!(3), json!("Alert")));
        assert_eq!(event["severity_id"], 2);
    }

    #[test]
    fn a_quarantine_trip_revokes_access() {
        let event = to_ocsf(&quarantine_trip());
        assert_eq!(event["class_uid"], 2004);
        assert_eq!(event["finding_info"]["types"], json!(["Quarantine"]));
        assert_eq!((event["action_id"].clone(), event["disposition_id"].clone()), (json!(2), json!(24)));
        assert_eq!(event["evidences"][0]["dst_endpoint"]["ip"], "203.0.113.9");
        assert_eq!(event["severity_id"], 4);
    }

    #[test]
    fn tamper_is_a_finding_with_its_technique() {
        let event = to_ocsf(&tamper());
        assert_eq!(event["class_uid"], 2004);
        assert_eq!(event["finding_info"]["title"], "Tampering with the monitor: identity coder called bpf()");
        assert_eq!(event["finding_info"]["attacks"][0]["technique"]["uid"], "T1562");
        assert_eq!(event["policy"]["name"], "default");
        assert_eq!(event["policy"]["desc"], "the identity's default verdict");
        assert_eq!(event["severity_id"], 4);
        assert!(event.get("evidences").is_none());
    }

    #[test]
    fn a_suppressed_summary_counts_what_was_held_back() {
        let event = to_ocsf(&suppressed());
        assert_eq!(event["class_uid"], 2004);
        assert_eq!(event["count"], 1200);
        assert_eq!(event["is_alert"], false);
        assert_eq!(event["finding_info"]["desc"], "1200 events suppressed for identity coder in the last second");
        assert_eq!(event["unmapped"]["suppressed"], 1200);
        // No process behind it.
        assert!(event.get("actor").is_none());
        assert_eq!(event["metadata"]["profiles"], json!(["host"]));
    }

    #[test]
    fn outcomes_become_dispositions() {
        let cases = [
            (EventRecord { verdict: "deny".into(), outcome: "audit_only".into(), ..file_deny_killed() }, (3, 16, 1)),
            (
                EventRecord { verdict: "step_up".into(), outcome: "blocked".into(), errno: 13, ..file_deny_killed() },
                (2, 26, 2),
            ),
            (EventRecord { verdict: "deny".into(), outcome: "flagged_instead".into(), ..exec_allowed() }, (3, 19, 1)),
            (exec_allowed(), (1, 1, 1)),
        ];
        for (record, (action_id, disposition_id, status_id)) in cases {
            let event = to_ocsf(&record);
            assert_eq!(event["action_id"], action_id, "{}", record.outcome);
            assert_eq!(event["disposition_id"], disposition_id, "{}", record.outcome);
            if event["class_uid"] != 2004 {
                assert_eq!(event["status_id"], status_id, "{}", record.outcome);
            }
        }
        let step_up = to_ocsf(&EventRecord {
            verdict: "step_up".into(),
            outcome: "blocked".into(),
            errno: 13,
            ..file_deny_killed()
        });
        assert_eq!(step_up["status_code"], "EACCES");
        let audit_mode =
            to_ocsf(&EventRecord { verdict: "deny".into(), outcome: "audit_only".into(), ..file_deny_killed() });
        assert_eq!(audit_mode["policy"]["is_applied"], false);
    }

    #[test]
    fn unix_sockets_and_unavailable_details() {
        let unix = every_kind().into_iter().find(|record| has_flag(record, "unix_socket")).unwrap();
        let event = to_ocsf(&unix);
        assert_eq!(event["dst_endpoint"], json!({ "name": "/run/docker.sock" }));
        assert_eq!(event["connection_info"]["protocol_name"], "unix");
        let gone = EventRecord {
            process: ProcessDetails { unavailable: vec!["exe".into()], ..Default::default() },
            ..connect_blocked()
        };
        let event = to_ocsf(&gone);
        assert_eq!(event["unmapped"]["unavailable"], json!(["exe"]));
        assert!(event["actor"]["process"].get("file").is_none());
        assert!(event["actor"]["process"].get("container").is_none());
    }

    #[test]
    fn an_unenriched_record_still_has_a_time() {
        let event = to_ocsf(&EventRecord { time: String::new(), ..exec_allowed() });
        let now = epoch_ms(SystemTime::now());
        assert!((now - event["time"].as_i64().unwrap()).abs() < 60_000);
        assert!(event["actor"]["process"].get("created_time").is_none());
        assert!(event["metadata"].get("original_time").is_none());
    }

    #[test]
    fn arguments_are_quoted_for_a_shell() {
        let argv = ["sh", "-c", "echo 'hi'", "", "a=b"].map(String::from);
        assert_eq!(shell_join(&argv), r#"sh -c 'echo '\''hi'\''' '' a=b"#);
    }

    /// Runs tests/ocsf/validate.py (ocsf-emitter's OCSF 1.5.0 models, plus
    /// the strictness it adds) over every kind of event.
    #[test]
    fn every_event_passes_the_ocsf_validator() {
        let validator = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/ocsf/validate.py");
        let path = std::env::temp_dir().join(format!("rtid-ocsf-{}.jsonl", std::process::id()));
        let lines: Vec<String> = every_kind().iter().map(|record| to_ocsf(record).to_string()).collect();
        std::fs::write(&path, lines.join("\n") + "\n").unwrap();
        let output = std::process::Command::new("python3").arg(validator).arg(&path).output();
        std::fs::remove_file(&path).ok();
        let output = output.expect("running python3 (the OCSF validator needs it, and: pip install ocsf-emitter)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_ne!(
            output.status.code(),
            Some(3),
            "the OCSF validator needs ocsf-emitter: pip install ocsf-emitter\n{stderr}"
        );
        assert!(output.status.success(), "OCSF validation failed:\n{stdout}{stderr}");
        assert!(stdout.contains(&format!("{} valid", lines.len())), "{stdout}");
    }
}
