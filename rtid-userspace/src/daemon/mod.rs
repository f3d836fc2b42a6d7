//! `rtid daemon`: owns the kernel programs and maps, keeps policy in force,
//! streams events, and serves the control API. The only writer of maps.

pub mod config;
pub mod grants;
mod peer;
mod server;
pub mod state;
pub mod streams;
mod webhook;

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Instant,
};

use anyhow::Context;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::{
    events::{
        EventReader,
        record::{EventRecord, Names},
    },
    loader::{LoadOptions, RtidKernel},
    policy::{IdentitySpec, compile, document},
};

pub struct DaemonOptions {
    pub policy_paths: Vec<PathBuf>,
    pub state_dir: PathBuf,
    /// bpffs directory for pins (None: nothing outlives the daemon).
    pub pin_dir: Option<PathBuf>,
    /// Remove the pins on exit (enforcement stops with the daemon).
    pub unpin_on_exit: bool,
    pub socket: PathBuf,
    /// Group (besides root) allowed to use the API.
    pub admin_group: Option<String>,
    /// Also print every event as a JSON line on stdout (the DaemonSet way).
    pub events_to_stdout: bool,
    /// How long step-up requests wait for an answer.
    pub approval_timeout: std::time::Duration,
    /// Approvers are told of each new request by an HTTP POST here.
    pub webhook: Option<String>,
    /// Longest grant (or approval) TTL accepted.
    pub max_grant_ttl: std::time::Duration,
    /// Sinks, audit trail, HTTP endpoint, event cap (`--config`).
    pub config: config::DaemonConfig,
    /// The `--config` file it was read from (protected from identities).
    pub config_path: Option<PathBuf>,
    /// How often every pinned link is checked (attached, pinned as left).
    pub integrity_interval: std::time::Duration,
    /// Size of the kernel's process table (`--max-processes`).
    pub max_processes: u32,
}

/// What a labeled process was given, for `rtid ps`.
#[derive(Clone, Debug)]
pub struct LabelInfo {
    pub identity: String,
    pub owner: Option<String>,
    pub purpose: Option<String>,
    pub source: &'static str,
    pub labeled_at: Instant,
}

pub struct Daemon {
    pub kernel: RtidKernel,
    /// The validated policy in force (without grants).
    pub policy: LoadedPolicy,
    /// Grants and approval requests.
    pub grants: grants::Ledger,
    /// Identities derived at launch (`rtid run --delegated-by`), kept across reloads.
    pub derived: Vec<IdentitySpec>,
    pub labels: BTreeMap<u32, LabelInfo>,
    pub started: Instant,
    pub events_seen: u64,
    pub options: DaemonOptions,
    pub streams: streams::Streams,
    pub enricher: crate::events::enrich::Enricher,
    /// Binary of each identified process, from its exec event.
    pub exec_images: std::collections::HashMap<String, String>,
    /// Delegation chains by identity id, for the policy install they were
    /// worked out under (events name the chain; working it out per event is
    /// too slow for a flood).
    pub chains: (u64, std::collections::HashMap<u32, Option<String>>),
    /// `--admin-group` resolved at start: its members may use the control API.
    pub admin_gid: Option<u32>,
    /// What the attachment checks found.
    pub integrity: crate::api::IntegrityReport,
}

pub type Shared = Arc<Mutex<Daemon>>;

impl Names for Daemon {
    fn identity(&self, id: u32) -> Option<String> {
        self.kernel.identity_name(id).map(str::to_string)
    }

    fn rule(&self, id: u32) -> Option<(String, String)> {
        self.kernel.rule_info(id).map(|info| (info.id.clone(), info.description.clone()))
    }
}

/// Policy as validated: identities, selectors, where it came from. Grants are
/// added on top of it each time it is compiled and installed.
#[derive(Clone)]
pub struct LoadedPolicy {
    pub identities: Vec<IdentitySpec>,
    pub selectors: Vec<document::Selector>,
    pub sources: Vec<String>,
}

/// Compiles policy plus live grants and swaps it in atomically, then installs
/// the selectors (exec selectors in the kernel, cgroup selectors as bindings
/// of the cgroup and its descendants). On error the policy in force stays.
pub fn install(
    kernel: &mut RtidKernel,
    policy: &LoadedPolicy,
    derived: &[IdentitySpec],
    grants: &[grants::Grant],
    endpoints: &[std::net::SocketAddr],
) -> anyhow::Result<()> {
    let mut identities = policy.identities.clone();
    // Launch-time delegations whose identities still exist in this policy.
    for identity in derived {
        let known =
            |name: &Option<String>| name.as_ref().is_some_and(|n| policy.identities.iter().any(|i| &i.name == n));
        let base = identity.name.rsplit('>').next().map(str::to_string);
        if known(&identity.delegated_by) && known(&base) {
            identities.push(identity.clone());
        }
    }
    let identities = grants::with_grants(&identities, grants);
    let mut identities =
        crate::policy::delegation::effective(&identities).map_err(|problem| anyhow::anyhow!(problem))?;
    for identity in &mut identities {
        identity.network.extend(endpoint_rules(endpoints));
    }
    let compiled = compile(&identities)
        .map_err(|errors| anyhow::anyhow!(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")))?;
    kernel.install(compiled).context("installing policy")?;
    // Rule ids are renumbered by each compile: list the single-use grants again.
    let once: Vec<String> = grants.iter().filter(|grant| grant.once).map(|grant| grant.id.clone()).collect();
    kernel.set_once_rules(&once).context("single-use grants")?;
    let mut exec = Vec::new();
    for selector in &policy.selectors {
        match &selector.matches {
            document::SelectorMatch::Exe(path) => exec.push((path.clone(), selector.identity.clone())),
            document::SelectorMatch::Cgroup(path) => {
                let root = crate::loader::cgroup::cgroup2_root().context("cgroup v2 hierarchy")?;
                let cgroup = root.join(path.trim_start_matches('/'));
                match kernel.bind_cgroup(&cgroup, &selector.identity) {
                    Ok(()) => {
                        info!(cgroup = %cgroup.display(), identity = %selector.identity, "cgroup bound")
                    }
                    // A pod's cgroup may not exist yet; the selector applies once it does (next reload).
                    Err(error) => {
                        warn!(cgroup = %cgroup.display(), %error, "cgroup selector not bound")
                    }
                }
            }
        }
    }
    kernel.set_exec_selectors(&exec).context("exec selectors")?;
    Ok(())
}

/// The daemon's own TCP endpoints (`http.listen`: /events, /metrics), denied
/// to every identity in the kernel, above its rules and grants: an agent
/// cannot read the event stream, whatever token it finds. A wildcard listen
/// address protects the port on every address.
fn endpoint_rules(endpoints: &[std::net::SocketAddr]) -> Vec<crate::policy::NetRuleSpec> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let mut rules = Vec::new();
    for endpoint in endpoints {
        let targets: Vec<(IpAddr, u8)> = if endpoint.ip().is_unspecified() {
            vec![(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0), (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0)]
        } else {
            vec![(endpoint.ip(), if endpoint.is_ipv4() { 32 } else { 128 })]
        };
        for (addr, prefix_len) in targets {
            rules.push(crate::policy::NetRuleSpec {
                id: "rtid/daemon-endpoint".into(),
                target: crate::policy::NetTarget::Cidr { addr, prefix_len },
                ports: vec![(endpoint.port(), endpoint.port())],
                protocols: rtid_common::protocol::TCP,
                action: rtid_common::Verdict::Deny,
                expires_at_boot_ns: None,
                grant: false,
                // Ranked as a delegator's restriction: nothing the identity holds outranks it.
                from_delegator: true,
            });
        }
    }
    rules
}

impl DaemonOptions {
    /// rtid's own files, which no identity may change: the pin dir, policy
    /// files and directories, the config file, the state dir, the audit log
    /// and its rotations (and those of event files), the control socket, and
    /// the `rtid` binary itself.
    pub fn protected_paths(&self) -> Vec<crate::loader::ProtectedPath> {
        use crate::loader::ProtectedPath;
        let mut paths = Vec::new();
        if let Some(pins) = &self.pin_dir {
            paths.push(ProtectedPath::directory(pins));
        }
        for policy in &self.policy_paths {
            let absolute = std::path::absolute(policy).unwrap_or_else(|_| policy.clone());
            paths.push(if absolute.is_dir() {
                ProtectedPath::directory(absolute)
            } else {
                ProtectedPath::file(absolute)
            });
        }
        if let Some(config) = &self.config_path {
            paths.push(ProtectedPath::file(std::path::absolute(config).unwrap_or_else(|_| config.clone())));
        }
        paths.push(ProtectedPath::directory(
            std::path::absolute(&self.state_dir).unwrap_or_else(|_| self.state_dir.clone()),
        ));
        let rotated = |path: &PathBuf, keep: u32| {
            let base = std::path::absolute(path).unwrap_or_else(|_| path.clone());
            let mut files = vec![ProtectedPath::file(base.clone())];
            files.extend((1..=keep).map(|n| ProtectedPath::file(format!("{}.{n}", base.display()))));
            files
        };
        if let Some(audit) = &self.config.audit {
            paths.extend(rotated(&audit.path, audit.keep));
        }
        for sink in &self.config.sinks {
            if let config::SinkConfig::File { path, keep, .. } = sink {
                paths.extend(rotated(path, *keep));
            }
        }
        paths.push(ProtectedPath::control_socket(
            std::path::absolute(&self.socket).unwrap_or_else(|_| self.socket.clone()),
        ));
        if let Ok(binary) = std::fs::read_link("/proc/self/exe") {
            paths.push(ProtectedPath::file(binary));
        }
        paths
    }

    /// The endpoints `install` protects.
    pub fn endpoints(&self) -> Vec<std::net::SocketAddr> {
        self.config.http.iter().map(|http| http.listen).collect()
    }
}

/// `base` as delegated from `delegator` (named `delegator>base`).
fn derived_identity(policy: &LoadedPolicy, base: &str, delegator: &str) -> anyhow::Result<IdentitySpec> {
    let spec = policy
        .identities
        .iter()
        .find(|i| i.name == base)
        .ok_or_else(|| anyhow::anyhow!("unknown identity {base:?}"))?;
    if !policy.identities.iter().any(|i| i.name == delegator) {
        anyhow::bail!("unknown delegator {delegator:?}");
    }
    let mut derived = spec.clone();
    derived.name = format!("{delegator}>{base}");
    derived.delegated_by = Some(delegator.into());
    Ok(derived)
}

/// Grants, requests and delegations saved by the previous daemon of this
/// boot, so they are in force from the first install on.
fn restore_saved(saved: &state::SavedState, policy: &LoadedPolicy, ledger: &mut grants::Ledger) -> Vec<IdentitySpec> {
    if !saved.from_this_boot() {
        return Vec::new();
    }
    ledger.restore(saved.ledger.clone(), crate::loader::boot_time_ns());
    let derived: Vec<IdentitySpec> = saved
        .delegations
        .iter()
        .filter_map(|(base, delegator)| match derived_identity(policy, base, delegator) {
            Ok(spec) => Some(spec),
            Err(error) => {
                warn!(%error, "a saved delegation no longer applies");
                None
            }
        })
        .collect();
    info!(grants = ledger.live().len(), delegations = derived.len(), "grants, requests and delegations restored");
    derived
}

/// Reads and validates policy: the given files or directories, or the embedded default.
pub fn read_policy(paths: &[PathBuf]) -> Result<LoadedPolicy, String> {
    let set = if paths.is_empty() {
        document::default_policy()
    } else {
        document::load_paths(paths)
            .map_err(|errors| errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))?
    };
    let sources = if paths.is_empty() { vec!["embedded default policy".to_string()] } else { set.sources.clone() };
    Ok(LoadedPolicy { identities: set.identities, selectors: set.selectors, sources })
}

impl Daemon {
    /// Policy identities and launch-time delegations.
    pub fn all_identities(&self) -> Vec<IdentitySpec> {
        let mut all = self.policy.identities.clone();
        all.extend(self.derived.iter().cloned());
        all
    }

    /// The identity `base` as delegated from `delegator`, created on first use
    /// (named `delegator>base`) and compiled with the delegator's restrictions.
    pub fn derive_delegation(&mut self, base: &str, delegator: &str) -> anyhow::Result<String> {
        let name = format!("{delegator}>{base}");
        if self.kernel.identity_id(&name).is_some() {
            return Ok(name);
        }
        self.derived.push(derived_identity(&self.policy, base, delegator)?);
        if let Err(error) = self.reinstall() {
            self.derived.pop();
            return Err(error);
        }
        state::save(self);
        Ok(name)
    }

    /// Recompiles the policy in force with the live grants and swaps it in.
    pub fn reinstall(&mut self) -> anyhow::Result<()> {
        self.grants.prune(crate::loader::boot_time_ns());
        install(&mut self.kernel, &self.policy, &self.derived, self.grants.live(), &self.options.endpoints())
    }
}

pub async fn run(options: DaemonOptions) -> anyhow::Result<()> {
    let started = Instant::now();
    refuse_tracing()?;
    let admin_gid = match &options.admin_group {
        Some(group) => {
            Some(server::group_id(group).ok_or_else(|| anyhow::anyhow!("--admin-group {group:?}: no such group"))?)
        }
        None => None,
    };
    let policy = read_policy(&options.policy_paths).map_err(|errors| anyhow::anyhow!("policy:\n{errors}"))?;
    let load = LoadOptions {
        pin_dir: options.pin_dir.clone(),
        max_processes: Some(options.max_processes),
        ..LoadOptions::default()
    };
    let mut kernel = RtidKernel::load(&load).context("loading the kernel programs")?;
    let saved = state::load(&options.state_dir);
    if kernel.adopted() {
        // The maps kept the labels and identity ids of the previous daemon: keep their names.
        kernel.restore_identity_ids(saved.identity_ids.clone());
        info!(pins = %options.pin_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_default(), "adopted pinned programs and maps");
    }
    // Identities may not signal, trace or read this process, nor change rtid's files.
    kernel.set_daemon_tgid(std::process::id()).context("registering the daemon with the kernel")?;
    kernel.set_protected_paths(&options.protected_paths()).context("registering rtid's files with the kernel")?;
    let mut ledger = grants::Ledger::new(options.approval_timeout, options.max_grant_ttl);
    let derived = restore_saved(&saved, &policy, &mut ledger);
    install(&mut kernel, &policy, &derived, ledger.live(), &options.endpoints())?;
    let backends = kernel.backends();
    let report = kernel.kernel_report();
    info!(
        kernel = %report.release,
        btf = %report.btf.path.display(),
        file = backends.file.name(),
        network = backends.network.name(),
        exec = backends.exec.name(),
        unix = backends.unix.name(),
        bpf = backends.protect.name(),
        lsm_note = kernel.lsm_note().unwrap_or(""),
        "programs attached"
    );
    for fallback in &report.fallbacks {
        info!(action = fallback.action.describe(), backend = fallback.backend.name(), reason = %fallback.reason, "fallback");
    }
    for skipped in &report.skipped_tracepoints {
        info!(tracepoint = %skipped.tracepoint, reason = %skipped.reason, "tracepoint skipped");
    }
    let reader = kernel.take_events().context("event ring")?;
    std::fs::create_dir_all(&options.state_dir).with_context(|| format!("creating {}", options.state_dir.display()))?;
    let socket = options.socket.clone();
    let labels = if kernel.adopted() { state::live_labels(&saved, &kernel) } else { BTreeMap::new() };
    let (streams, http) = streams::Streams::start(&options.config, options.events_to_stdout).await?;
    streams.audit_change(serde_json::json!({
        "action": "daemon_start",
        "policy_sources": policy.sources,
        "adopted_pins": kernel.adopted(),
    }));
    let daemon = Arc::new(Mutex::new(Daemon {
        kernel,
        policy,
        grants: ledger,
        derived,
        labels,
        started,
        events_seen: 0,
        options,
        streams,
        enricher: crate::events::enrich::Enricher::new(),
        exec_images: std::collections::HashMap::new(),
        chains: (0, std::collections::HashMap::new()),
        admin_gid,
        integrity: crate::api::IntegrityReport::default(),
    }));
    // At start (and so on adoption of pins), then periodically.
    check_integrity(&mut daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    tokio::spawn(watch_integrity(daemon.clone()));
    tokio::spawn(pump_events(reader, daemon.clone()));
    tokio::spawn(tick_throttle(daemon.clone()));
    if let Some(http) = http {
        let metrics_daemon = daemon.clone();
        let metrics = Arc::new(move || crate::metrics::render(&metrics_snapshot(&metrics_daemon)));
        tokio::spawn(async move {
            if let Err(error) = crate::events::sinks::http::serve(http.listener, metrics, http.events).await {
                warn!(%error, "http endpoint stopped");
            }
        });
    }
    let listener = server::bind(&socket, admin_gid)?;
    info!(socket = %socket.display(), ready_in_ms = started.elapsed().as_millis() as u64, "rtid daemon ready");
    let server = tokio::spawn(server::serve(listener, daemon.clone()));
    state::save(&daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    wait_for_signals(daemon.clone()).await?;
    server.abort();
    let _ = std::fs::remove_file(&socket);
    let mut daemon = daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    state::save(&daemon);
    // Pins that outlive this process must not guard whatever process gets its pid next.
    if let Err(error) = daemon.kernel.set_daemon_tgid(0) {
        warn!(%error, "unregistering the daemon");
    }
    daemon.streams.audit_change(serde_json::json!({ "action": "daemon_stop", "unpin": daemon.options.unpin_on_exit }));
    daemon.streams.close();
    if daemon.options.unpin_on_exit {
        daemon.kernel.unpin().context("removing pins")?;
        info!("pins removed: enforcement stops with the daemon");
    } else if daemon.kernel.pin_dir().is_some() {
        info!("pins kept: enforcement continues while the daemon is down");
    }
    Ok(())
}

/// Not dumpable: without CAP_SYS_PTRACE no process can ptrace the daemon or
/// open its /proc/<pid>/mem, on every backend (identities never hold that
/// capability under the default ceiling).
fn refuse_tracing() -> anyhow::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes an integer argument and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_DUMPABLE, 0)");
    }
    Ok(())
}

/// SIGHUP reloads policy from the same paths; SIGTERM and SIGINT stop.
async fn wait_for_signals(daemon: Shared) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            _ = hangup.recv() => reload(&daemon),
            _ = terminate.recv() => { info!("SIGTERM: stopping"); return Ok(()); }
            _ = interrupt.recv() => { info!("SIGINT: stopping"); return Ok(()); }
        }
    }
}

fn reload(daemon: &Shared) {
    let mut guard = daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let daemon = &mut *guard;
    match read_policy(&daemon.options.policy_paths) {
        Ok(policy) => match install(
            &mut daemon.kernel,
            &policy,
            &daemon.derived,
            daemon.grants.live(),
            &daemon.options.endpoints(),
        ) {
            Ok(()) => {
                daemon.streams.audit_change(serde_json::json!({
                    "action": "policy_reload",
                    "trigger": "SIGHUP",
                    "policy_sources": policy.sources,
                    "generation": daemon.kernel.generation().unwrap_or(0),
                }));
                daemon.policy = policy;
                info!("SIGHUP: policy reloaded");
            }
            Err(error) => {
                warn!(%error, "SIGHUP: reload failed, the policy in force stays in force")
            }
        },
        Err(errors) => warn!(%errors, "SIGHUP: policy invalid, the policy in force stays in force"),
    }
}

/// The kernel revoked the identity (and killed the actor if so configured);
/// with `then: kill`, the identity's other processes are killed here too.
fn quarantine_tripped(daemon: &Daemon, record: &EventRecord) {
    let Some(name) = record.identity.as_deref() else {
        return;
    };
    let kill =
        daemon.kernel.policy().identity(name).and_then(|identity| identity.spec.quarantine).is_some_and(|q| q.kill);
    warn!(identity = name, pid = record.tgid, kill, "quarantine tripped: identity revoked by the kernel");
    if kill {
        for pid in daemon.kernel.processes_of(name) {
            // SAFETY: sends a signal; no memory is involved.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

/// Moves events from the kernel ring to the streams, naming identities and
/// rules and acting on what the daemon must follow up (single-use grants,
/// quarantine kills, approval requests).
async fn pump_events(reader: EventReader, daemon: Shared) {
    // SAFETY: the AsyncFd owns the reader, whose ring map descriptor stays
    // open and unchanged for as long as the reader lives.
    let mut ready = match unsafe { AsyncFd::register_with_interest(reader, tokio::io::Interest::READABLE) } {
        Ok(ready) => ready,
        Err(error) => {
            warn!(error = %error, "cannot poll the event ring");
            return;
        }
    };
    loop {
        let Ok(mut guard) = ready.readable_mut().await else {
            return;
        };
        // Readiness first, then drain to empty: an event that lands after
        // the last read makes the ring readable again.
        guard.clear_ready();
        loop {
            let batch = guard.get_inner_mut().drain_up_to(PUMP_BATCH);
            if batch.is_empty() {
                break;
            }
            process_batch(&daemon, &batch);
        }
    }
}

/// Events handled per hold of the daemon's lock: a flood does not keep the
/// control API (a revocation, say) waiting for the whole ring.
const PUMP_BATCH: usize = 1024;

fn process_batch(daemon: &Shared, batch: &[rtid_common::Event]) {
    let mut daemon = daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    daemon.events_seen += batch.len() as u64;
    let clock = streams::WallClock::now();
    for event in batch {
        if event.kind == rtid_common::EventKind::Exec as u8 {
            // A new image: what /proc said before the exec is stale.
            daemon.enricher.forget(&format!("{}:{}", event.tgid, event.process_start_ns));
        }
        let mut record = EventRecord::from_event(event, &*daemon);
        daemon.enrich(&mut record, &clock);
        follow_up(&mut daemon, &record);
        if event.kind == rtid_common::EventKind::Exit as u8 {
            // After its exit event was enriched (the launch's owner included).
            daemon.labels.remove(&event.tgid);
            daemon.enricher.forget(&record.process_key);
        }
        daemon.streams.emit(record);
    }
}

/// What the daemon does about an event besides passing it on.
fn follow_up(daemon: &mut Daemon, record: &EventRecord) {
    if record.verdict == "audit" && record.rule_id.as_deref().is_some_and(|id| daemon.grants.used(id)) {
        // A single-use grant was used: recompile without it (the kernel
        // already refuses a second use meanwhile).
        daemon.streams.audit_change(serde_json::json!({ "action": "grant_used", "grant": record.rule_id }));
        if let Err(error) = daemon.reinstall() {
            warn!(%error, "removing a used single-use grant");
        }
        state::save(daemon);
    }
    if record.flags.iter().any(|flag| flag == "quarantine_tripped") {
        daemon.streams.audit_change(
            serde_json::json!({ "action": "quarantine", "identity": record.identity, "tgid": record.tgid }),
        );
        quarantine_tripped(daemon, record);
    }
    if record.verdict == "step_up" {
        let now = crate::loader::boot_time_ns();
        if let Some(request) = daemon.grants.request_from(record, record.owner.clone(), record.purpose.clone(), now) {
            info!(request = %request, "approval requested");
            state::save(daemon);
            daemon.streams.audit_change(serde_json::json!({
                "action": "approval_requested",
                "request": request,
                "identity": record.identity,
                "object": record.path.clone().or_else(|| record.address.clone()),
            }));
            if let (Some(url), Some(body)) = (daemon.options.webhook.clone(), daemon.grants.request_json(&request)) {
                // Never on the event path: the agent's failure and other requests do not wait for approvers.
                tokio::spawn(webhook::notify(url, body));
            }
        }
    }
}

impl Daemon {
    /// Adds what the kernel does not know: sequence, wall-clock time, node,
    /// the identity's owner and purpose, the grant that decided, and the
    /// process as /proc describes it.
    fn enrich(&mut self, record: &mut EventRecord, clock: &streams::WallClock) {
        record.seq = self.streams.next_seq();
        record.time = clock.format(record.time_boot_ns);
        record.node = self.streams.node.clone();
        if record.tgid != 0 {
            let kernel = &self.kernel;
            let identity_of = |pid: u32| {
                kernel
                    .process_identity(pid)
                    .ok()
                    .flatten()
                    .map(|entry| kernel.identity_name(entry.identity).unwrap_or("?").to_string())
            };
            record.process = self.enricher.details(record.tgid, &record.process_key, record.uid, &identity_of);
            self.fill_exe_from_exec(record);
        }
        if let Some(name) = record.identity.as_deref()
            && let Some(identity) = self.kernel.policy().identity(name)
        {
            record.owner = identity.spec.owner.clone();
            record.purpose = identity.spec.purpose.clone();
        }
        record.delegation_chain = self.chain_of(record.identity_id);
        // `rtid run --owner/--purpose` name the launch more precisely than the
        // policy, for the launched process and everything below it.
        let launch = std::iter::once(record.tgid)
            .chain(record.process.ancestry.iter().map(|ancestor| ancestor.pid))
            .chain(std::iter::once(record.parent_tgid))
            .find_map(|pid| self.labels.get(&pid));
        if let Some(label) = launch {
            record.owner = label.owner.clone().or(record.owner.take());
            record.purpose = label.purpose.clone().or(record.purpose.take());
        }
        if let Some(rule_id) = record.rule_id.as_deref()
            && let Some(grant) = self.grants.find(rule_id)
        {
            record.grant_id = Some(grant.id.clone());
            record.approval_id = grant.request.clone();
        }
    }

    /// `owner > delegator > ... > identity`, worked out once per policy install.
    fn chain_of(&mut self, id: u32) -> Option<String> {
        let installs = self.kernel.installs();
        if self.chains.0 != installs {
            self.chains = (installs, std::collections::HashMap::new());
        }
        if let Some(chain) = self.chains.1.get(&id) {
            return chain.clone();
        }
        let chain = self
            .kernel
            .identity_name(id)
            .and_then(|name| crate::policy::delegation::describe_chain(&self.all_identities(), name));
        self.chains.1.insert(id, chain.clone());
        chain
    }

    /// The kernel named the binary at exec: that answers `exe` for the
    /// process's later events even once /proc no longer can.
    fn fill_exe_from_exec(&mut self, record: &mut EventRecord) {
        if record.kind == "exec"
            && let Some(path) = &record.path
        {
            if self.exec_images.len() >= EXEC_IMAGES_CAPACITY {
                self.exec_images.clear();
            }
            self.exec_images.insert(record.process_key.clone(), path.clone());
        }
        if record.process.exe.is_none()
            && let Some(exe) = self.exec_images.get(&record.process_key)
        {
            record.process.exe = Some(exe.clone());
            record.process.unavailable.retain(|field| field != "exe");
        }
        if record.kind == "exit" {
            self.exec_images.remove(&record.process_key);
        }
    }
}

/// Processes whose exec image the daemon remembers (cleared when full:
/// entries go at exit, so only leaked ones would fill it).
const EXEC_IMAGES_CAPACITY: usize = 65536;

/// Each protection of the monitor's integrity (issue 10) and how it holds on
/// this kernel, for `rtid status`: the kernel's, with what the daemon adds.
pub fn protections(daemon: &Daemon) -> Vec<crate::loader::ProtectionStatus> {
    use rtid_common::protection;

    use crate::loader::{ProtectionLevel, ProtectionStatus};
    let mut list = daemon.kernel.protections();
    for status in &mut list {
        if status.name == protection::name(protection::CONTROL_SOCKET) {
            // Whatever the kernel does at connect, the daemon refuses such a peer before reading a byte.
            status.detail.push_str(
                "; the daemon also judges the peer's credentials and pidfd taken at accept: a peer carrying an \
                 identity, or gone, is refused before its request is read",
            );
        }
        if status.name == protection::name(protection::DAEMON_TRACE) {
            status.detail.push_str(
                "; the daemon is not dumpable: without CAP_SYS_PTRACE (dropped by `rtid run`) ptrace and \
                 /proc/<pid>/mem fail with EPERM",
            );
        }
    }
    let pinned = daemon.kernel.pin_dir().is_some();
    list.push(ProtectionStatus {
        name: protection::name(protection::DETACHED).into(),
        level: if pinned { ProtectionLevel::AfterTheFact } else { ProtectionLevel::Enforced },
        detail: if pinned {
            format!(
                "the daemon holds its own reference to every link, so removing a pin detaches nothing; every {:?} it \
                 pins again what lost its pin, re-attaches detached cgroup links and raises a tamper event",
                daemon.options.integrity_interval
            )
        } else {
            "nothing pinned: the links live and die with the daemon".into()
        },
    });
    list
}

/// Checks the attachments every `--integrity-interval`.
async fn watch_integrity(daemon: Shared) {
    let period = daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).options.integrity_interval;
    let mut interval = tokio::time::interval(period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    loop {
        interval.tick().await;
        check_integrity(&mut daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
    }
}

/// One attachment check: what is missing is put back where it can be, raised
/// as a `tamper` event (rule `rtid/detached`) and audited, and the daemon is
/// `degraded` until a later check finds everything in place.
fn check_integrity(daemon: &mut Daemon) {
    let check = daemon.kernel.check_attachments();
    let integrity = &mut daemon.integrity;
    integrity.checks += 1;
    integrity.interval_seconds = daemon.options.integrity_interval.as_secs_f64();
    let rule_id = rtid_common::protection::name(rtid_common::protection::DETACHED);
    if !check.whole() {
        warn!(missing = ?check.missing, repaired = ?check.repaired, unrepaired = ?check.unrepaired, "enforcement found detached or unpinned");
        integrity.degraded = true;
        for missing in &check.missing {
            if !integrity.missing.contains(missing) {
                integrity.missing.push(missing.clone());
            }
        }
        integrity.unrepaired = check.unrepaired.clone();
        let mut rule = format!("missing: {}", check.missing.join(", "));
        if !check.repaired.is_empty() {
            rule.push_str(&format!("; restored: {}", check.repaired.join(", ")));
        }
        if !check.unrepaired.is_empty() {
            rule.push_str(&format!("; not restored: {}", check.unrepaired.join("; ")));
        }
        let record = EventRecord {
            verdict: "deny".into(),
            outcome: if check.unrepaired.is_empty() { "restored" } else { "degraded" }.into(),
            decision: rtid_common::DecisionSource::Protected.name().into(),
            rule_id: Some(rule_id.into()),
            rule: Some(rule),
            path: daemon.kernel.pin_dir().map(|dir| dir.display().to_string()),
            ..integrity_record("tamper")
        };
        daemon.streams.audit_change(serde_json::json!({
            "action": "integrity_check",
            "missing": check.missing,
            "restored": check.repaired,
            "not_restored": check.unrepaired,
        }));
        emit_daemon_record(daemon, record);
    } else if integrity.degraded {
        info!(was_missing = ?integrity.missing, "enforcement whole again");
        let rule = format!("whole again; was missing: {}", integrity.missing.join(", "));
        integrity.degraded = false;
        integrity.missing.clear();
        integrity.unrepaired.clear();
        let record = EventRecord {
            outcome: "restored".into(),
            decision: rtid_common::DecisionSource::Protected.name().into(),
            rule_id: Some(rule_id.into()),
            rule: Some(rule),
            ..integrity_record("integrity")
        };
        daemon.streams.audit_change(serde_json::json!({ "action": "integrity_whole" }));
        emit_daemon_record(daemon, record);
    }
}

fn integrity_record(kind: &str) -> EventRecord {
    EventRecord { time_boot_ns: crate::loader::boot_time_ns(), ..EventRecord::from_daemon(kind) }
}

/// Sends an event the daemon raised itself, numbered and timed like the kernel's.
fn emit_daemon_record(daemon: &mut Daemon, mut record: EventRecord) {
    record.seq = daemon.streams.next_seq();
    record.time = streams::WallClock::now().format(record.time_boot_ns);
    record.node = daemon.streams.node.clone();
    daemon.streams.emit(record);
}

/// Summaries for identities whose capped second ended quietly.
async fn tick_throttle(daemon: Shared) {
    let mut interval = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        interval.tick().await;
        let mut guard = daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let daemon = &mut *guard;
        let kernel = &daemon.kernel;
        let names = |id: u32| kernel.identity_name(id).map(str::to_string);
        daemon.streams.flush_throttle(crate::loader::boot_time_ns(), &names);
    }
}

/// What /metrics shows, read from the daemon at scrape time.
fn metrics_snapshot(daemon: &Shared) -> crate::metrics::MetricsSnapshot {
    let mut daemon = daemon.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let counters = daemon.kernel.counters().unwrap_or_default();
    let now = crate::loader::boot_time_ns();
    let approvals_pending =
        daemon.grants.requests(now).iter().filter(|request| request.state == grants::RequestState::Pending).count()
            as u64;
    let (audit_records, audit_dropped) = daemon.streams.audit_stats();
    crate::metrics::MetricsSnapshot {
        node: daemon.streams.node.clone(),
        events: daemon.streams.counts(),
        kernel_ring_drops: counters.ring_full_drops,
        hook_errors: counters.hook_errors,
        paths_unresolved: counters.paths_unresolved,
        actions_judged: counters.judged,
        sinks: daemon.streams.reports(),
        map_fill: daemon.kernel.map_fill(),
        policy_generation: daemon.kernel.generation().unwrap_or(0),
        approvals_pending,
        events_suppressed: daemon.streams.suppressed_total(),
        audit_records,
        audit_dropped,
        uptime_seconds: daemon.started.elapsed().as_secs(),
    }
}

#[cfg(test)]
mod tests {
    use super::endpoint_rules;

    #[test]
    fn a_wildcard_listen_address_protects_the_port_on_every_address() {
        let rules = endpoint_rules(&["0.0.0.0:9477".parse().unwrap()]);
        assert_eq!(rules.len(), 2, "IPv4 and IPv6");
        assert!(rules.iter().all(|rule| rule.ports == [(9477, 9477)] && rule.from_delegator));
        let loopback = endpoint_rules(&["127.0.0.1:9477".parse().unwrap()]);
        assert!(matches!(loopback[0].target, crate::policy::NetTarget::Cidr { prefix_len: 32, .. }));
    }
}
