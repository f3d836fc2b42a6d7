//! The control API server: one JSON request per line, answered on the same connection.

use std::{
    os::{fd::AsFd, unix::fs::PermissionsExt},
    path::Path,
    time::Instant,
};

use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedReadHalf},
    sync::broadcast,
};
use tracing::{info, warn};

use super::{
    LabelInfo, Shared,
    peer::{Peer, PeerError},
};
use crate::{
    api::{Backends, ExplainAction, ProcessEntry, Request, Response, StatusReport},
    events::{pipeline::SharedRecord, record::EventRecord},
    policy::document,
};

/// Longest request line the daemon reads. `policy apply` carries whole
/// policy documents in one line; 4 MiB is far above any real policy set and
/// keeps one connection from making the daemon buffer without bound.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// How long a refused connection's unread bytes are drained (never parsed), so
/// its client reads the refusal instead of a broken pipe.
const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Binds the control socket: mode 0660, owned by root and `admin_gid` when given.
pub fn bind(socket: &Path, admin_gid: Option<u32>) -> anyhow::Result<UnixListener> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    // Root and the admin group (checked again per connection from the peer's credentials).
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = admin_gid {
        std::os::unix::fs::chown(socket, None, Some(gid))?;
    }
    Ok(listener)
}

pub async fn serve(listener: UnixListener, daemon: Shared) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        // Taken at accept, before any byte is read: the process that
        // connected, as the kernel recorded it, pinned by a pidfd.
        let peer = Peer::of(stream.as_fd(), crate::loader::boot_time_ns());
        let daemon = daemon.clone();
        tokio::spawn(async move {
            if let Err(error) = handle(stream, peer, daemon).await {
                warn!(%error, "control connection");
            }
        });
    }
}

/// A connection refused, and why: answered, reported as a `tamper` event and
/// audited, and never read.
struct Refusal {
    message: String,
    pid: u32,
    uid: u32,
    identity: Option<(u32, String)>,
}

/// What the first line of a connection turned out to be.
enum RequestLine {
    Closed,
    TooLong,
    Line(String),
}

async fn handle(stream: UnixStream, peer: Result<Peer, PeerError>, daemon: Shared) -> anyhow::Result<()> {
    let (read_half, mut write_half) = stream.into_split();
    let peer = match peer {
        Ok(peer) => peer,
        Err(problem) => {
            let (pid, uid) = match problem {
                PeerError::Gone { pid, uid } => (pid, uid),
                PeerError::Credentials(_) => (0, 0),
            };
            let refusal = Refusal { message: format!("refused: {problem}"), pid, uid, identity: None };
            return refuse(&daemon, refusal, read_half, write_half).await;
        }
    };
    tracing::debug!(pid = peer.pid, uid = peer.uid, pidfd = peer.source, "control connection");
    if let Err(refusal) = authorize(&daemon, &peer) {
        return refuse(&daemon, refusal, read_half, write_half).await;
    }
    // Subscribed before the request is read: a follower misses nothing after connect.
    let mut events = daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).streams.subscribe();
    let mut reader = BufReader::new(read_half);
    let line = match read_request_line(&mut reader).await? {
        RequestLine::Closed => return Ok(()),
        RequestLine::TooLong => {
            warn!(caller_pid = peer.pid, limit = MAX_REQUEST_BYTES, "request line too long: refused");
            let message = format!("refused: the request is longer than {MAX_REQUEST_BYTES} bytes; nothing was changed");
            write(&mut write_half, &Response::Error { message }).await?;
            drain(reader.into_inner()).await;
            return Ok(());
        }
        RequestLine::Line(line) => line,
    };
    // Decided again on the same process now that its request is here: it may
    // have been labeled since it connected, or be gone, leaving the
    // connection to another process.
    if let Err(refusal) = authorize(&daemon, &peer) {
        report_refusal(&daemon, &refusal);
        return write(&mut write_half, &Response::Error { message: refusal.message }).await;
    }
    let caller_pid = peer.pid;
    let response = match serde_json::from_str::<Request>(&line) {
        Err(error) => Response::Error { message: format!("malformed request: {error}") },
        Ok(Request::Events { follow, identity, verdicts }) => {
            let dropped = daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).streams.socket_stats.clone();
            return stream_events(&mut write_half, &mut events, &dropped, follow, identity, verdicts).await;
        }
        Ok(request) => {
            let change = change_record(&request, peer.uid, caller_pid);
            let response = dispatch(&daemon, request, caller_pid);
            if let (Some(mut change), Response::Ok { message }) = (change, &response) {
                change["result"] = serde_json::Value::String(message.clone());
                daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).streams.audit_change(change);
            }
            response
        }
    };
    write(&mut write_half, &response).await
}

/// Reads one request line of at most [`MAX_REQUEST_BYTES`] (newline excluded).
async fn read_request_line(reader: &mut BufReader<OwnedReadHalf>) -> anyhow::Result<RequestLine> {
    let mut bytes = Vec::new();
    let read = (&mut *reader).take(MAX_REQUEST_BYTES as u64 + 1).read_until(b'\n', &mut bytes).await?;
    if read == 0 {
        return Ok(RequestLine::Closed);
    }
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
    } else if bytes.len() > MAX_REQUEST_BYTES {
        return Ok(RequestLine::TooLong);
    }
    if bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    Ok(RequestLine::Line(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Answers a refused connection without reading its request, and reports it.
async fn refuse(
    daemon: &Shared,
    refusal: Refusal,
    read_half: OwnedReadHalf,
    mut write_half: tokio::net::unix::OwnedWriteHalf,
) -> anyhow::Result<()> {
    report_refusal(daemon, &refusal);
    write(&mut write_half, &Response::Error { message: refusal.message }).await?;
    let _ = write_half.shutdown().await;
    drain(read_half).await;
    Ok(())
}

/// Discards (unparsed) what a refused client sent, up to the request bound
/// and for a short while, so it can read the answer before the connection closes.
async fn drain(mut read_half: OwnedReadHalf) {
    let mut buffer = vec![0u8; 64 * 1024];
    let mut left = MAX_REQUEST_BYTES + 1;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while left > 0 {
            match read_half.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(read) => left = left.saturating_sub(read),
            }
        }
    })
    .await;
}

/// A refused connection is a `tamper` event (decision `protected`, rule
/// `rtid/control-socket`), on the event stream and in the audit trail.
fn report_refusal(daemon: &Shared, refusal: &Refusal) {
    warn!(caller_pid = refusal.pid, uid = refusal.uid, message = %refusal.message, "refused control connection");
    let mut guard = daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let daemon = &mut *guard;
    let start_ns = (refusal.pid != 0).then(|| super::peer::start_time_ns(refusal.pid)).flatten().unwrap_or(0);
    let mut record = EventRecord {
        time_boot_ns: crate::loader::boot_time_ns(),
        pid: refusal.pid,
        tgid: refusal.pid,
        parent_tgid: if refusal.pid != 0 { parent_of(refusal.pid).unwrap_or(0) } else { 0 },
        uid: refusal.uid,
        process_key: format!("{}:{start_ns}", refusal.pid),
        identity_id: refusal.identity.as_ref().map_or(0, |(id, _)| *id),
        identity: refusal.identity.as_ref().map(|(_, name)| name.clone()),
        verdict: "deny".into(),
        outcome: "denied".into(),
        errno: libc::EPERM,
        decision: rtid_common::DecisionSource::Protected.name().into(),
        rule_id: Some(rtid_common::protection::name(rtid_common::protection::CONTROL_SOCKET).into()),
        rule: Some(refusal.message.clone()),
        path: Some(daemon.options.socket.display().to_string()),
        ..EventRecord::from_daemon("tamper")
    };
    if let Ok(comm) = std::fs::read_to_string(format!("/proc/{}/comm", refusal.pid)) {
        record.comm = comm.trim_end().to_string();
    }
    daemon.enrich(&mut record, &super::streams::WallClock::now());
    daemon.streams.emit(record);
}

async fn write(writer: &mut tokio::net::unix::OwnedWriteHalf, response: &Response) -> anyhow::Result<()> {
    let mut line = serde_json::to_string(response)?;
    line.push('\n');
    writer.write_all(line.as_bytes()).await?;
    Ok(())
}

/// Root or the admin group (primary or supplementary) may call; a process
/// carrying an identity may not, whoever it runs as: agents cannot relabel
/// themselves or change policy. Judged on the process that connected (its
/// pidfd), which must still be running.
fn authorize(daemon: &Shared, peer: &Peer) -> Result<(), Refusal> {
    let daemon = daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let refusal =
        |message: String, identity: Option<(u32, String)>| Refusal { message, pid: peer.pid, uid: peer.uid, identity };
    let carried = daemon.kernel.process_identity(peer.pid);
    // The pid named the peer during the lookup only if the peer still runs after it.
    if !peer.alive() {
        return Err(refusal(
            format!("refused: the process that connected ({}) is gone; its connection is not honoured", peer.pid),
            None,
        ));
    }
    match carried {
        Ok(Some(entry)) => {
            let name = daemon.kernel.identity_name(entry.identity).unwrap_or("?").to_string();
            return Err(refusal(
                format!(
                    "refused: the calling process {} carries identity {name}; agents cannot use the control API",
                    peer.pid
                ),
                Some((entry.identity, name)),
            ));
        }
        Ok(None) => {}
        // Unknown is not untagged: fail closed.
        Err(error) => {
            return Err(refusal(format!("refused: cannot read the caller's identity: {error}"), None));
        }
    }
    if peer.uid == 0 {
        return Ok(());
    }
    if let Some(allowed) = daemon.admin_gid {
        let groups = peer.groups().map_err(|problem| refusal(format!("refused: {problem}"), None))?;
        if peer.gid == allowed || groups.contains(&allowed) {
            return Ok(());
        }
    }
    Err(refusal(format!("refused: uid {} is neither root nor in the admin group", peer.uid), None))
}

/// A group's id from /etc/group, or a numeric gid as given.
pub fn group_id(name: &str) -> Option<u32> {
    if let Ok(gid) = name.parse() {
        return Some(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").ok()?;
    groups.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next() == Some(name)).then(|| fields.nth(1).and_then(|gid| gid.parse().ok())).flatten()
    })
}

/// What an accepted change request did, for the audit trail (None for reads).
/// Policy documents are recorded by name and SHA-256, not in full.
fn change_record(request: &Request, uid: u32, pid: u32) -> Option<serde_json::Value> {
    let mut body = match request {
        Request::Status
        | Request::Ps
        | Request::PolicyExplain { .. }
        | Request::Grants
        | Request::Approvals
        | Request::LaunchPlan { .. }
        | Request::Events { .. } => {
            return None;
        }
        Request::PolicyApply { documents } => serde_json::json!({
            "action": "policy_apply",
            "documents": documents.iter().map(|(name, text)| serde_json::json!({
                "name": name,
                "sha256": hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
            })).collect::<Vec<_>>(),
        }),
        other => {
            // Requests serialise with their name in `call`: that is the action.
            let mut fields = serde_json::to_value(other).ok()?;
            let action = fields.as_object_mut().and_then(|object| object.remove("call")).unwrap_or_default();
            serde_json::json!({ "action": action, "request": fields })
        }
    };
    body["caller"] = serde_json::json!({ "uid": uid, "pid": pid });
    Some(body)
}

async fn stream_events(
    writer: &mut tokio::net::unix::OwnedWriteHalf,
    events: &mut broadcast::Receiver<SharedRecord>,
    stats: &crate::events::pipeline::SinkStats,
    follow: bool,
    identity: Option<String>,
    verdicts: Vec<String>,
) -> anyhow::Result<()> {
    if !follow {
        return write(writer, &Response::Ok { message: "no events are kept; use --follow".into() }).await;
    }
    loop {
        let record = match events.recv().await {
            Ok(record) => record,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                stats.dropped(missed);
                write(
                    writer,
                    &Response::Error { message: format!("{missed} events skipped: this client reads too slowly") },
                )
                .await?;
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        };
        if identity.as_ref().is_some_and(|wanted| record.identity.as_ref() != Some(wanted)) {
            continue;
        }
        if !verdicts.is_empty()
            && !verdicts.iter().any(|verdict| *verdict == record.verdict || *verdict == record.outcome)
        {
            continue;
        }
        write(writer, &Response::Event(Box::new(std::sync::Arc::unwrap_or_clone(record)))).await?;
        stats.delivered(1);
    }
}

fn dispatch(daemon: &Shared, request: Request, caller_pid: u32) -> Response {
    let mut daemon = daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let error = |message: String| Response::Error { message };
    match request {
        Request::Label { pid, identity } | Request::LabelChild { pid, identity, .. }
            if daemon.kernel.identity_id(&identity).is_none() =>
        {
            let _ = pid;
            error(format!(
                "unknown identity {identity:?}; known: {}",
                daemon.kernel.policy().identities.iter().map(|i| i.spec.name.as_str()).collect::<Vec<_>>().join(", ")
            ))
        }
        Request::LabelChild { pid, identity, owner, purpose, ttl_seconds, delegated_by } => {
            if parent_of(pid) != Some(caller_pid) {
                return error(format!("refused: process {pid} is not a child of the caller ({caller_pid})"));
            }
            let identity = match delegated_by {
                Some(delegator) => match daemon.derive_delegation(&identity, &delegator) {
                    Ok(name) => name,
                    Err(failure) => return error(format!("{failure:#}")),
                },
                None => identity,
            };
            if let Some(seconds) = ttl_seconds
                && let Err(failure) = shorten_expiry(&mut daemon, &identity, seconds)
            {
                return error(failure.to_string());
            }
            let response = label(&mut daemon, pid, &identity, "launcher");
            if let Some(info) = daemon.labels.get_mut(&pid) {
                if owner.is_some() {
                    info.owner = owner;
                }
                info.purpose = purpose;
            }
            response
        }
        Request::Label { pid, identity } => label(&mut daemon, pid, &identity, "label"),
        Request::Unlabel { pid } => match daemon.kernel.unlabel_pid(pid) {
            Ok(()) => {
                daemon.labels.remove(&pid);
                info!(pid, "unlabeled");
                Response::Ok { message: format!("process {pid} unlabeled") }
            }
            Err(failure) => error(failure.to_string()),
        },
        Request::Status => status(&daemon),
        Request::LaunchPlan { identity, delegated_by } => launch_plan(&daemon, &identity, delegated_by.as_deref()),
        Request::Ps => ps(&daemon),
        Request::PolicyApply { documents } => apply(&mut daemon, documents),
        Request::PolicyExplain { identity, action } => explain(&daemon, &identity, &action),
        Request::Events { .. } => error("events are streamed, not dispatched".into()),
        Request::Grant { identity, object, ttl_seconds, reason } => {
            if daemon.kernel.identity_id(&identity).is_none() {
                return error(format!("unknown identity {identity:?}"));
            }
            let now = crate::loader::boot_time_ns();
            match daemon.grants.add(&identity, object, std::time::Duration::from_secs(ttl_seconds), reason, None, now) {
                Ok(grant) => install_grants(
                    &mut daemon,
                    &grant.id,
                    format!("{} granted to {identity}: {}", grant.id, grant.object.describe()),
                ),
                Err(problem) => error(problem),
            }
        }
        Request::Grants => {
            daemon.grants.prune(crate::loader::boot_time_ns());
            Response::Grants { grants: daemon.grants.live().to_vec() }
        }
        Request::GrantRevoke { id } => {
            if !daemon.grants.revoke(&id) {
                return error(format!("no live grant {id}"));
            }
            install_grants(&mut daemon, &id, format!("{id} revoked"))
        }
        Request::Revoke { identity, kill } => match daemon.kernel.set_revoked(&identity, true) {
            Ok(()) => {
                // Revoking a delegator revokes every identity delegated from it, at once.
                let delegated = crate::policy::delegation::delegated_from(&daemon.all_identities(), &identity);
                for name in &delegated {
                    if let Err(failure) = daemon.kernel.set_revoked(name, true) {
                        return error(format!("revoking {name} (delegated from {identity}): {failure}"));
                    }
                }
                let mut killed = 0;
                let mut affected = delegated.clone();
                affected.push(identity.clone());
                for name in affected.iter().filter(|_| kill) {
                    for pid in daemon.kernel.processes_of(name) {
                        // SAFETY: sends a signal; no memory is involved.
                        if unsafe { libc::kill(pid as i32, libc::SIGKILL) } == 0 {
                            killed += 1;
                        }
                    }
                }
                info!(identity, kill, killed, delegated = ?delegated, "identity revoked");
                Response::Ok {
                    message: format!(
                        "{identity} revoked (with {} delegated); {killed} processes killed",
                        delegated.len()
                    ),
                }
            }
            Err(failure) => error(failure.to_string()),
        },
        Request::Release { identity } => match daemon.kernel.set_revoked(&identity, false) {
            Ok(()) => {
                info!(identity, "identity released");
                Response::Ok { message: format!("{identity} released") }
            }
            Err(failure) => error(failure.to_string()),
        },
        Request::Approvals => Response::Approvals { requests: daemon.grants.requests(crate::loader::boot_time_ns()) },
        Request::Approve { request, ttl_seconds, once } => {
            let now = crate::loader::boot_time_ns();
            match daemon.grants.approve(&request, std::time::Duration::from_secs(ttl_seconds), once, now) {
                Ok(grant) => install_grants(
                    &mut daemon,
                    &grant.id,
                    format!("{request} approved as {}: {}", grant.id, grant.object.describe()),
                ),
                Err(problem) => error(problem),
            }
        }
        Request::Deny { request, reason } => {
            match daemon.grants.deny(&request, reason, crate::loader::boot_time_ns()) {
                Ok(()) => {
                    info!(request, "approval request denied");
                    super::state::save(&daemon);
                    Response::Ok { message: format!("{request} denied") }
                }
                Err(problem) => error(problem),
            }
        }
    }
}

/// Brings an identity's expiry forward to `seconds` from now (never later).
fn shorten_expiry(daemon: &mut super::Daemon, identity: &str, seconds: u64) -> Result<(), crate::loader::LoadError> {
    let id = daemon
        .kernel
        .identity_id(identity)
        .ok_or_else(|| crate::loader::LoadError::UnknownIdentity(identity.into()))?;
    let current = daemon.kernel.identity_status(id)?.expires_at_ns;
    let wanted = crate::loader::boot_time_ns() + seconds * 1_000_000_000;
    if current == 0 || wanted < current {
        daemon.kernel.set_identity_expiry(identity, Some(std::time::Duration::from_secs(seconds)))?;
        info!(identity, seconds, "identity expiry set by rtid run --ttl");
    }
    Ok(())
}

/// Swaps in policy with the current grants; on failure the grant is taken back.
fn install_grants(daemon: &mut super::Daemon, grant: &str, message: String) -> Response {
    match daemon.reinstall() {
        Ok(()) => {
            info!(grant, %message, "grants changed");
            super::state::save(daemon);
            Response::Ok { message }
        }
        Err(failure) => {
            daemon.grants.revoke(grant);
            Response::Error { message: format!("grant not applied: {failure:#}") }
        }
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = procfs::process::Process::new(pid as i32).ok()?.stat().ok()?;
    Some(stat.ppid as u32)
}

fn label(daemon: &mut super::Daemon, pid: u32, identity: &str, source: &'static str) -> Response {
    match daemon.kernel.label_pid(pid, identity) {
        Ok(()) => {
            let owner = daemon.kernel.policy().identity(identity).and_then(|i| i.spec.owner.clone());
            daemon.labels.insert(
                pid,
                LabelInfo { identity: identity.into(), owner, purpose: None, source, labeled_at: Instant::now() },
            );
            info!(pid, identity, source, "labeled");
            super::state::save(daemon);
            Response::Ok { message: format!("process {pid} labeled {identity}") }
        }
        Err(failure) => Response::Error { message: failure.to_string() },
    }
}

fn status(daemon: &super::Daemon) -> Response {
    let counters = daemon.kernel.counters().unwrap_or_default();
    let backends = daemon.kernel.backends();
    Response::Status(Box::new(StatusReport {
        kernel: daemon.kernel.kernel_report().clone(),
        backends: Backends {
            file: backends.file,
            network: backends.network,
            exec: backends.exec,
            unix: backends.unix,
            protect: backends.protect,
        },
        lsm_note: daemon.kernel.lsm_note().map(str::to_string),
        policy_generation: daemon.kernel.generation().unwrap_or(0),
        policy_sources: daemon.policy.sources.clone(),
        identities: daemon.kernel.policy().identities.iter().map(|i| i.spec.name.clone()).collect(),
        labeled_processes: daemon.labels.len(),
        ring_full_drops: counters.ring_full_drops,
        hook_errors: counters.hook_errors,
        paths_unresolved: counters.paths_unresolved,
        actions_judged: counters.judged,
        events_seen: daemon.events_seen,
        events_per_second: daemon.events_seen as f64 / daemon.started.elapsed().as_secs_f64().max(1.0),
        map_fill: daemon.kernel.map_fill(),
        uptime_seconds: daemon.started.elapsed().as_secs(),
        pinned: daemon.kernel.pin_dir().is_some(),
        node: daemon.streams.node.clone(),
        sinks: daemon.streams.reports(),
        events_suppressed: daemon.streams.suppressed_total(),
        untaggable_killed: counters.untaggable_killed,
        protection_refusals: counters.tamper,
        integrity: daemon.integrity.clone(),
        protections: super::protections(daemon),
    }))
}

/// The hardening for a launch under `identity` (delegated: both identities'
/// denials, since authority only narrows).
fn launch_plan(daemon: &super::Daemon, identity: &str, delegated_by: Option<&str>) -> Response {
    let policy = daemon.kernel.policy();
    let mut denied = 0u64;
    let mut guards = 0u32;
    for name in std::iter::once(identity).chain(delegated_by) {
        let Some(compiled) = policy.identity(name) else {
            return Response::Error { message: format!("unknown identity {name:?}") };
        };
        denied |= compiled.policy.denied_capabilities;
        guards |= compiled.policy.guards;
    }
    let denied_capabilities = (0..64u32)
        .filter(|number| denied & (1u64 << number) != 0)
        .map(|number| rtid_common::capability::name(number).to_string())
        .collect();
    Response::LaunchPlan(crate::api::LaunchPlan {
        daemon_pid: std::process::id(),
        denied_capabilities,
        deny_user_namespaces: guards & rtid_common::guard::DENY_USER_NAMESPACES != 0,
    })
}

fn ps(daemon: &super::Daemon) -> Response {
    let now = rtid_common_boot_time();
    let mut processes = Vec::new();
    for (pid, info) in &daemon.labels {
        let command = procfs::process::Process::new(*pid as i32)
            .and_then(|process| process.cmdline())
            .map(|args| args.join(" "))
            .unwrap_or_default();
        let expires_in_seconds = daemon
            .kernel
            .identity_id(&info.identity)
            .and_then(|id| daemon.kernel.identity_status(id).ok())
            .filter(|status| status.expires_at_ns != 0)
            .map(|status| (status.expires_at_ns as i64 - now as i64) / 1_000_000_000);
        processes.push(ProcessEntry {
            depth: 0,
            pid: *pid,
            parent: parent_of(*pid).unwrap_or(0),
            identity: info.identity.clone(),
            owner: info.owner.clone(),
            source: info.source.into(),
            age_seconds: info.labeled_at.elapsed().as_secs(),
            expires_in_seconds,
            command,
        });
    }
    Response::Ps { processes: as_tree(processes) }
}

/// Orders processes so each follows its parent, for display as a tree
/// (`depth` counts labeled ancestors).
fn as_tree(processes: Vec<ProcessEntry>) -> Vec<ProcessEntry> {
    let pids: std::collections::BTreeSet<u32> = processes.iter().map(|p| p.pid).collect();
    let mut ordered = Vec::new();
    let mut stack: Vec<(ProcessEntry, u32)> =
        processes.iter().filter(|p| !pids.contains(&p.parent)).cloned().map(|p| (p, 0)).collect();
    stack.reverse();
    while let Some((mut entry, depth)) = stack.pop() {
        entry.depth = depth;
        let mut children: Vec<ProcessEntry> = processes.iter().filter(|p| p.parent == entry.pid).cloned().collect();
        children.reverse();
        let pid = entry.pid;
        ordered.push(entry);
        stack.extend(children.into_iter().filter(|c| c.pid != pid).map(|c| (c, depth + 1)));
    }
    ordered
}

fn rtid_common_boot_time() -> u64 {
    crate::loader::boot_time_ns()
}

/// Validates every document, compiles, then swaps in atomically; on any error
/// nothing changes and every error is reported.
fn apply(daemon: &mut super::Daemon, documents: Vec<(String, String)>) -> Response {
    let parsed = document::parse_documents(&documents);
    let rejected = |lines: Vec<String>| Response::Error {
        message: format!("policy rejected, nothing applied:\n{}", lines.join("\n")),
    };
    let set = match parsed {
        Ok(set) => set,
        Err(errors) => return rejected(errors.iter().map(ToString::to_string).collect()),
    };
    let policy = super::LoadedPolicy { identities: set.identities, selectors: set.selectors, sources: set.sources };
    let endpoints = daemon.options.endpoints();
    match super::install(&mut daemon.kernel, &policy, &daemon.derived, daemon.grants.live(), &endpoints) {
        Ok(()) => {
            daemon.policy = policy;
            super::state::save(daemon);
            let generation = daemon.kernel.generation().unwrap_or(0);
            info!(generation, "policy applied");
            Response::Ok { message: format!("policy applied (generation {generation})") }
        }
        Err(failure) => rejected(vec![format!("{failure:#}")]),
    }
}

fn explain(daemon: &super::Daemon, identity: &str, action: &ExplainAction) -> Response {
    match daemon.kernel.explain(identity, action) {
        Ok(explanation) => Response::Explain(explanation),
        Err(failure) => Response::Error { message: failure.to_string() },
    }
}
