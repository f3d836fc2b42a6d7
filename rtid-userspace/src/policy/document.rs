//! The policy language: Kubernetes-style `AgentPolicy` YAML documents, read
//! into the policy model with every error reported at once, each naming the
//! file, line, field path and problem. Nothing is applied unless all is valid.

use std::{
    collections::BTreeSet,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use rtid_common::{PATH_KEY_BYTES, Verdict, access, capability, protocol};
use serde::Deserialize;
use serde_saphyr::Spanned;

use super::model::{
    AuditLevel, Defaults, HostControl, IdentitySpec, Mode, NetRuleSpec, NetTarget, PathPattern, PathRuleSpec,
    capability_bit, default_denied_mask,
};

pub const API_VERSION: &str = "rtid.dev/v1alpha1";
pub const KIND: &str = "AgentPolicy";

/// Validated policy: identities, selectors, and the documents they came from.
#[derive(Clone, Debug, Default)]
pub struct PolicySet {
    pub identities: Vec<IdentitySpec>,
    pub selectors: Vec<Selector>,
    /// `file:metadata.name` of every document.
    pub sources: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SelectorMatch {
    /// An untagged process that execs this binary takes the identity.
    Exe(String),
    /// Every process in this cgroup (relative to the cgroup v2 root) and below.
    Cgroup(String),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    pub identity: String,
    pub matches: SelectorMatch,
}

/// One problem, located.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub file: String,
    pub line: usize,
    pub field: String,
    pub problem: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}:{}: {}", self.file, self.line, self.problem)
        } else {
            write!(f, "{}:{}: {}: {}", self.file, self.line, self.field, self.problem)
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDocument {
    api_version: Spanned<String>,
    kind: Spanned<String>,
    metadata: RawMetadata,
    spec: RawSpec,
}

#[derive(Deserialize)]
struct RawMetadata {
    name: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    identities: Vec<Spanned<RawIdentity>>,
    #[serde(default)]
    selectors: Vec<Spanned<RawSelector>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIdentity {
    name: Spanned<String>,
    owner: Option<String>,
    purpose: Option<String>,
    delegated_by: Option<Spanned<String>>,
    mode: Option<Spanned<String>>,
    ttl: Option<Spanned<String>>,
    on_expiry: Option<Spanned<String>>,
    audit: Option<Spanned<String>>,
    file_deny_fallback: Option<Spanned<String>>,
    defaults: Option<RawDefaults>,
    quarantine: Option<Spanned<RawQuarantine>>,
    #[serde(default)]
    files: Vec<Spanned<RawPathRule>>,
    #[serde(default)]
    network: Vec<Spanned<RawNetRule>>,
    #[serde(default)]
    exec: Vec<Spanned<RawPathRule>>,
    capabilities: Option<Spanned<RawCapabilities>>,
    host_control: Option<Spanned<RawHostControl>>,
    sockets: Option<Spanned<RawSockets>>,
}

/// `sockets: { allow: [raw, packet, netlink, vsock, other] }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSockets {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

/// `capabilities: { deny: [...], allow: [...], userNamespaces: allow|deny }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCapabilities {
    #[serde(default)]
    deny: Vec<Spanned<String>>,
    #[serde(default)]
    allow: Vec<Spanned<String>>,
    user_namespaces: Option<Spanned<String>>,
}

/// `hostControl: { allow: [serviceManager, scheduler, containerRuntime, kernelTunables] }`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHostControl {
    #[serde(default)]
    allow: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuarantine {
    after: u32,
    within: String,
    then: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(rename_all = "camelCase")]
struct RawDefaults {
    file: Option<Spanned<String>>,
    network: Option<Spanned<String>>,
    exec: Option<Spanned<String>>,
    unresolved_path: Option<Spanned<String>>,
    anonymous_exec: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPathRule {
    id: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    name: Option<Spanned<String>>,
    suffix: Option<Spanned<String>>,
    access: Option<Spanned<Vec<String>>>,
    action: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNetRule {
    id: Option<Spanned<String>>,
    cidr: Option<Spanned<String>>,
    unix: Option<Spanned<String>>,
    ports: Option<Spanned<Vec<String>>>,
    protocol: Option<Spanned<String>>,
    action: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSelector {
    identity: Spanned<String>,
    exe: Option<Spanned<String>>,
    cgroup: Option<Spanned<String>>,
}

/// Collects errors for one file.
struct Checker<'a> {
    file: &'a str,
    errors: Vec<PolicyError>,
}

fn line_of<T>(spanned: &Spanned<T>) -> usize {
    spanned.referenced.line() as usize
}

impl Checker<'_> {
    fn error(&mut self, line: usize, field: impl Into<String>, problem: impl Into<String>) {
        self.errors.push(PolicyError { file: self.file.into(), line, field: field.into(), problem: problem.into() });
    }

    fn verdict(&mut self, value: &Spanned<String>, field: &str, allowed: &[Verdict]) -> Option<Verdict> {
        let verdict = match value.value.as_str() {
            "allow" => Verdict::Allow,
            "audit" => Verdict::Audit,
            "flag" => Verdict::Flag,
            "step_up" => Verdict::StepUp,
            "deny" => Verdict::Deny,
            "kill" => Verdict::Kill,
            other => {
                self.error(
                    line_of(value),
                    field,
                    format!("{other:?} is not an action (allow, audit, flag, step_up, deny, kill)"),
                );
                return None;
            }
        };
        if !allowed.is_empty() && !allowed.contains(&verdict) {
            let names: Vec<&str> = allowed.iter().map(|v| v.name()).collect();
            self.error(
                line_of(value),
                field,
                format!("{:?} is not allowed here (expected {})", value.value, names.join(" or ")),
            );
            return None;
        }
        Some(verdict)
    }

    fn rule_path(&mut self, value: &Spanned<String>, field: &str, limit_extra: usize) -> Option<String> {
        let path = value.value.clone();
        if !path.starts_with('/') {
            self.error(line_of(value), field, format!("{path:?} must be an absolute path"));
            return None;
        }
        if path.split('/').any(|part| part == "." || part == "..") {
            self.error(
                line_of(value),
                field,
                format!("{path:?} must not contain '.' or '..' (rules match resolved paths)"),
            );
            return None;
        }
        if path.len() + limit_extra > PATH_KEY_BYTES {
            self.error(
                line_of(value),
                field,
                format!(
                    "{path:?} is {} bytes; the kernel matches at most {} bytes of a rule path",
                    path.len(),
                    PATH_KEY_BYTES - limit_extra
                ),
            );
            return None;
        }
        Some(path)
    }
}

const ACTIONS: &[Verdict] = &[];

/// Parses and validates the documents of one file.
pub fn parse_str(file: &str, text: &str) -> Result<PolicySet, Vec<PolicyError>> {
    let documents: Vec<RawDocument> = match serde_saphyr::from_multiple(text) {
        Ok(documents) => documents,
        Err(error) => {
            let line = error.location().map_or(0, |location| location.line() as usize);
            let message = error.to_string();
            let first = message.lines().next().unwrap_or("invalid YAML").to_string();
            return Err(vec![PolicyError { file: file.into(), line, field: String::new(), problem: first }]);
        }
    };
    let mut checker = Checker { file, errors: Vec::new() };
    let mut set = PolicySet::default();
    for document in &documents {
        check_document(&mut checker, document, &mut set);
    }
    if checker.errors.is_empty() { Ok(set) } else { Err(checker.errors) }
}

fn check_document(checker: &mut Checker, document: &RawDocument, set: &mut PolicySet) {
    if document.api_version.value != API_VERSION {
        checker.error(
            line_of(&document.api_version),
            "apiVersion",
            format!("{:?}: expected {API_VERSION}", document.api_version.value),
        );
    }
    if document.kind.value != KIND {
        checker.error(line_of(&document.kind), "kind", format!("{:?}: expected {KIND}", document.kind.value));
    }
    if document.metadata.name.value.is_empty() {
        checker.error(line_of(&document.metadata.name), "metadata.name", "must not be empty");
    }
    set.sources.push(format!("{}:{}", checker.file, document.metadata.name.value));
    for (index, raw) in document.spec.identities.iter().enumerate() {
        if let Some(identity) = check_identity(checker, &raw.value, &format!("spec.identities[{index}]")) {
            set.identities.push(identity);
        }
    }
    for (index, raw) in document.spec.selectors.iter().enumerate() {
        let field = format!("spec.selectors[{index}]");
        let selector = &raw.value;
        let matches = match (&selector.exe, &selector.cgroup) {
            (Some(exe), None) => checker.rule_path(exe, &format!("{field}.exe"), 1).map(SelectorMatch::Exe),
            (None, Some(cgroup)) => Some(SelectorMatch::Cgroup(cgroup.value.clone())),
            _ => {
                checker.error(line_of(raw), &field, "needs exactly one of exe, cgroup");
                None
            }
        };
        if let Some(matches) = matches {
            set.selectors.push(Selector { identity: selector.identity.value.clone(), matches });
        }
    }
}

fn check_identity(checker: &mut Checker, raw: &RawIdentity, field: &str) -> Option<IdentitySpec> {
    let errors_before = checker.errors.len();
    let mut spec = IdentitySpec::new(raw.name.value.clone());
    if raw.name.value.is_empty() {
        checker.error(line_of(&raw.name), format!("{field}.name"), "must not be empty");
    }
    spec.owner = raw.owner.clone();
    spec.purpose = raw.purpose.clone();
    spec.delegated_by = raw.delegated_by.as_ref().map(|d| d.value.clone());
    if let Some(mode) = &raw.mode {
        match mode.value.as_str() {
            "enforce" => spec.mode = Mode::Enforce,
            "audit" => spec.mode = Mode::Audit,
            other => {
                checker.error(line_of(mode), format!("{field}.mode"), format!("{other:?}: expected enforce or audit"))
            }
        }
    }
    if let Some(audit) = &raw.audit {
        match audit.value.as_str() {
            "decisions" => spec.audit = AuditLevel::Decisions,
            "all" => spec.audit = AuditLevel::All,
            other => {
                checker.error(line_of(audit), format!("{field}.audit"), format!("{other:?}: expected decisions or all"))
            }
        }
    }
    if let Some(ttl) = &raw.ttl {
        match humantime::parse_duration(&ttl.value) {
            Ok(duration) if duration > Duration::ZERO => spec.ttl = Some(duration),
            _ => checker.error(
                line_of(ttl),
                format!("{field}.ttl"),
                format!("{:?} is not a duration (e.g. 30m, 8h)", ttl.value),
            ),
        }
    }
    if let Some(value) = &raw.on_expiry
        && let Some(verdict) = checker.verdict(value, &format!("{field}.onExpiry"), &[Verdict::Deny, Verdict::Kill])
    {
        spec.on_expiry = verdict;
    }
    if let Some(value) = &raw.file_deny_fallback
        && let Some(verdict) =
            checker.verdict(value, &format!("{field}.fileDenyFallback"), &[Verdict::Kill, Verdict::Flag])
    {
        spec.file_deny_fallback = verdict;
    }
    if let Some(defaults) = &raw.defaults {
        let mut resolved = Defaults::default();
        for (value, slot, name) in [
            (&defaults.file, &mut resolved.file, "file"),
            (&defaults.network, &mut resolved.network, "network"),
            (&defaults.exec, &mut resolved.exec, "exec"),
        ] {
            if let Some(value) = value
                && let Some(verdict) = checker.verdict(value, &format!("{field}.defaults.{name}"), ACTIONS)
            {
                *slot = verdict;
            }
        }
        if let Some(value) = &defaults.unresolved_path {
            resolved.unresolved_path = checker.verdict(value, &format!("{field}.defaults.unresolvedPath"), ACTIONS);
        }
        if let Some(value) = &defaults.anonymous_exec {
            resolved.anonymous_exec = checker.verdict(value, &format!("{field}.defaults.anonymousExec"), ACTIONS);
        }
        spec.defaults = resolved;
    }
    if let Some(quarantine) = &raw.quarantine {
        let line = line_of(quarantine);
        let within = humantime::parse_duration(&quarantine.value.within).ok().filter(|d| !d.is_zero());
        let kill = match quarantine.value.then.as_str() {
            "revoke" => Some(false),
            "kill" => Some(true),
            other => {
                checker.error(line, format!("{field}.quarantine.then"), format!("{other:?}: expected revoke or kill"));
                None
            }
        };
        if within.is_none() {
            checker.error(
                line,
                format!("{field}.quarantine.within"),
                format!("{:?} is not a duration (e.g. 60s)", quarantine.value.within),
            );
        }
        if quarantine.value.after == 0 {
            checker.error(line, format!("{field}.quarantine.after"), "must be at least 1");
        }
        if let (Some(within), Some(kill)) = (within, kill) {
            spec.quarantine = Some(super::model::Quarantine { after: quarantine.value.after, within, kill });
        }
    }
    if let Some(capabilities) = &raw.capabilities {
        check_capabilities(checker, &capabilities.value, &format!("{field}.capabilities"), &mut spec);
    }
    if let Some(host_control) = &raw.host_control {
        for (index, name) in host_control.value.allow.iter().enumerate() {
            match HostControl::from_name(&name.value) {
                Some(group) => {
                    spec.host_control_allowed.insert(group);
                }
                None => {
                    let known: Vec<&str> = HostControl::ALL.iter().map(|group| group.name()).collect();
                    checker.error(
                        line_of(name),
                        format!("{field}.hostControl.allow[{index}]"),
                        format!("{:?} is not a hostControl guard (expected one of {})", name.value, known.join(", ")),
                    );
                }
            }
        }
    }
    if let Some(sockets) = &raw.sockets {
        for (index, name) in sockets.value.allow.iter().enumerate() {
            match super::model::SocketKind::from_name(&name.value) {
                Some(kind) => {
                    spec.sockets_allowed.insert(kind);
                }
                None => {
                    let known: Vec<&str> = super::model::SocketKind::ALL.iter().map(|kind| kind.name()).collect();
                    checker.error(
                        line_of(name),
                        format!("{field}.sockets.allow[{index}]"),
                        format!("{:?} is not a socket kind (expected one of {})", name.value, known.join(", ")),
                    );
                }
            }
        }
    }
    let mut ids = BTreeSet::new();
    for (index, rule) in raw.files.iter().enumerate() {
        let rule_field = format!("{field}.files[{index}]");
        if let Some(rule) = check_path_rule(checker, rule, &rule_field, false, &mut ids) {
            spec.files.push(rule);
        }
    }
    for (index, rule) in raw.exec.iter().enumerate() {
        let rule_field = format!("{field}.exec[{index}]");
        if let Some(rule) = check_path_rule(checker, rule, &rule_field, true, &mut ids) {
            spec.exec.push(rule);
        }
    }
    for (index, rule) in raw.network.iter().enumerate() {
        let rule_field = format!("{field}.network[{index}]");
        if let Some(rule) = check_net_rule(checker, rule, &rule_field, &mut ids) {
            spec.network.push(rule);
        }
    }
    (checker.errors.len() == errors_before).then_some(spec)
}

/// The capability ceiling: `deny` adds to the default list, `allow` takes a
/// default-denied capability back out of it (and `policy check` warns).
fn check_capabilities(checker: &mut Checker, raw: &RawCapabilities, field: &str, spec: &mut IdentitySpec) {
    let defaults = default_denied_mask();
    let named = |checker: &mut Checker, list: &[Spanned<String>], which: &str| -> u64 {
        let mut mask = 0;
        for (index, name) in list.iter().enumerate() {
            match capability::number(&name.value) {
                Some(number) => mask |= capability_bit(number),
                None => checker.error(
                    line_of(name),
                    format!("{field}.{which}[{index}]"),
                    format!("{:?} is not a Linux capability (e.g. CAP_NET_RAW)", name.value),
                ),
            }
        }
        mask
    };
    let deny = named(checker, &raw.deny, "deny");
    let allow = named(checker, &raw.allow, "allow");
    for (index, name) in raw.allow.iter().enumerate() {
        let Some(number) = capability::number(&name.value) else { continue };
        let bit = capability_bit(number);
        let shown = capability::NAMES[number as usize];
        if deny & bit != 0 {
            checker.error(line_of(name), format!("{field}.allow[{index}]"), format!("{shown} is also in deny"));
        } else if defaults & bit == 0 {
            checker.error(
                line_of(name),
                format!("{field}.allow[{index}]"),
                format!("{shown} is not denied by default: nothing to allow"),
            );
        }
    }
    spec.capabilities.denied = (defaults | deny) & !(allow & !deny);
    spec.capabilities.opted_in = allow & defaults & !deny;
    if let Some(value) = &raw.user_namespaces {
        match value.value.as_str() {
            "allow" => spec.capabilities.user_namespaces = true,
            "deny" => spec.capabilities.user_namespaces = false,
            other => checker.error(
                line_of(value),
                format!("{field}.userNamespaces"),
                format!("{other:?}: expected allow or deny"),
            ),
        }
    }
}

fn rule_id(
    checker: &mut Checker,
    id: &Option<Spanned<String>>,
    line: usize,
    field: &str,
    ids: &mut BTreeSet<String>,
) -> Option<String> {
    let Some(id) = id else {
        checker.error(line, format!("{field}.id"), "every rule needs an id (events report it)");
        return None;
    };
    if !ids.insert(id.value.clone()) {
        checker.error(line_of(id), format!("{field}.id"), format!("{:?} is used twice in this identity", id.value));
        return None;
    }
    Some(id.value.clone())
}

fn check_path_rule(
    checker: &mut Checker,
    raw: &Spanned<RawPathRule>,
    field: &str,
    exec: bool,
    ids: &mut BTreeSet<String>,
) -> Option<PathRuleSpec> {
    let rule = &raw.value;
    let id = rule_id(checker, &rule.id, line_of(raw), field, ids);
    let action = checker.verdict(&rule.action, &format!("{field}.action"), ACTIONS);
    let pattern = match (&rule.path, &rule.name, &rule.suffix) {
        (Some(path), None, None) => {
            let directory = path.value.ends_with('/');
            checker
                .rule_path(path, &format!("{field}.path"), if directory { 0 } else { 1 })
                .map(|p| if directory { PathPattern::Directory(p) } else { PathPattern::Exact(p) })
        }
        (None, Some(name), None) => {
            if name.value.is_empty() || name.value.contains('/') {
                checker.error(
                    line_of(name),
                    format!("{field}.name"),
                    format!("{:?} must be a file name without '/'", name.value),
                );
                None
            } else {
                Some(PathPattern::Name(name.value.clone()))
            }
        }
        (None, None, Some(suffix)) if !suffix.value.is_empty() => Some(PathPattern::Suffix(suffix.value.clone())),
        (None, None, Some(suffix)) => {
            checker.error(line_of(suffix), format!("{field}.suffix"), "must not be empty");
            None
        }
        _ => {
            checker.error(line_of(raw), field, "needs exactly one of path, name, suffix");
            None
        }
    };
    let mut bits = if exec { access::EXEC } else { access::READ | access::WRITE };
    if let Some(list) = &rule.access {
        bits = 0;
        for value in &list.value {
            match (value.as_str(), exec) {
                ("read", false) => bits |= access::READ,
                ("write", false) => bits |= access::WRITE,
                ("exec", _) => bits |= access::EXEC,
                (other, _) => checker.error(
                    line_of(list),
                    format!("{field}.access"),
                    format!("{other:?}: expected read or write"),
                ),
            }
        }
    }
    Some(PathRuleSpec {
        id: id?,
        pattern: pattern?,
        access: bits,
        action: action?,
        expires_at_boot_ns: None,
        grant: false,
        from_delegator: false,
    })
}

fn check_net_rule(
    checker: &mut Checker,
    raw: &Spanned<RawNetRule>,
    field: &str,
    ids: &mut BTreeSet<String>,
) -> Option<NetRuleSpec> {
    let rule = &raw.value;
    let id = rule_id(checker, &rule.id, line_of(raw), field, ids);
    let action = checker.verdict(&rule.action, &format!("{field}.action"), ACTIONS);
    let target = match (&rule.cidr, &rule.unix) {
        (Some(cidr), None) => match parse_cidr(&cidr.value) {
            Some((addr, prefix_len)) => Some(NetTarget::Cidr { addr, prefix_len }),
            None => {
                checker.error(line_of(cidr), format!("{field}.cidr"), format!("{:?} is not a valid CIDR", cidr.value));
                None
            }
        },
        (None, Some(unix)) if unix.value.starts_with('@') => Some(NetTarget::Unix(unix.value.clone())),
        (None, Some(unix)) => checker.rule_path(unix, &format!("{field}.unix"), 1).map(NetTarget::Unix),
        _ => {
            checker.error(line_of(raw), field, "needs exactly one of cidr, unix");
            None
        }
    };
    let mut ports = Vec::new();
    if let Some(list) = &rule.ports {
        for value in &list.value {
            match parse_port_range(value) {
                Some(range) => ports.push(range),
                None => checker.error(
                    line_of(list),
                    format!("{field}.ports"),
                    format!("{value:?} is not a port or a range low-high within 0-65535"),
                ),
            }
        }
    }
    let mut protocols = protocol::ANY;
    if let Some(value) = &rule.protocol {
        match value.value.as_str() {
            "tcp" => protocols = protocol::TCP,
            "udp" => protocols = protocol::UDP,
            "any" => protocols = protocol::ANY,
            other => checker.error(
                line_of(value),
                format!("{field}.protocol"),
                format!("{other:?}: expected tcp, udp or any"),
            ),
        }
    }
    Some(NetRuleSpec {
        id: id?,
        target: target?,
        ports,
        protocols,
        action: action?,
        expires_at_boot_ns: None,
        grant: false,
        from_delegator: false,
    })
}

fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let network: ipnet::IpNet = match text.parse() {
        Ok(network) => network,
        Err(_) => {
            let addr: IpAddr = text.parse().ok()?;
            ipnet::IpNet::new(addr, if addr.is_ipv4() { 32 } else { 128 }).ok()?
        }
    };
    Some((network.addr(), network.prefix_len()))
}

fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    match text.split_once('-') {
        Some((low, high)) => {
            let (low, high) = (low.trim().parse::<u16>().ok()?, high.trim().parse::<u16>().ok()?);
            (low <= high).then_some((low, high))
        }
        None => text.trim().parse::<u16>().ok().map(|port| (port, port)),
    }
}

/// Files named by `paths`: files as given, directories as their *.yaml/*.yml, sorted.
pub fn expand_paths(paths: &[PathBuf]) -> Result<Vec<PathBuf>, String> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|error| format!("{}: {error}", path.display()))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|file| file.extension().is_some_and(|ext| ext == "yaml" || ext == "yml"))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

/// Reads, parses and validates files and directories as one policy.
pub fn load_paths(paths: &[PathBuf]) -> Result<PolicySet, Vec<PolicyError>> {
    let files = expand_paths(paths)
        .map_err(|problem| vec![PolicyError { file: String::new(), line: 0, field: String::new(), problem }])?;
    let mut documents = Vec::new();
    for file in &files {
        match std::fs::read_to_string(file) {
            Ok(text) => documents.push((file.display().to_string(), text)),
            Err(error) => {
                return Err(vec![PolicyError {
                    file: file.display().to_string(),
                    line: 0,
                    field: String::new(),
                    problem: error.to_string(),
                }]);
            }
        }
    }
    parse_documents(&documents)
}

/// Parses (file name, text) pairs as one policy, checking names across documents.
pub fn parse_documents(documents: &[(String, String)]) -> Result<PolicySet, Vec<PolicyError>> {
    let mut errors = Vec::new();
    let mut merged = PolicySet::default();
    for (name, text) in documents {
        match parse_str(name, text) {
            Ok(set) => {
                merged.identities.extend(set.identities);
                merged.selectors.extend(set.selectors);
                merged.sources.extend(set.sources);
            }
            Err(mut found) => errors.append(&mut found),
        }
    }
    let mut names = BTreeSet::new();
    for identity in &merged.identities {
        if !names.insert(identity.name.clone()) {
            errors.push(PolicyError {
                file: String::new(),
                line: 0,
                field: "spec.identities".into(),
                problem: format!("identity {:?} is defined twice", identity.name),
            });
        }
    }
    for identity in &merged.identities {
        if let Some(delegator) = &identity.delegated_by
            && !names.contains(delegator)
        {
            errors.push(PolicyError {
                file: String::new(),
                line: 0,
                field: format!("identity {}.delegatedBy", identity.name),
                problem: format!("unknown identity {delegator:?}"),
            });
        }
    }
    for selector in &merged.selectors {
        if !names.contains(&selector.identity) {
            errors.push(PolicyError {
                file: String::new(),
                line: 0,
                field: "spec.selectors".into(),
                problem: format!("unknown identity {:?}", selector.identity),
            });
        }
    }
    if let Err(compile_errors) = super::compile(&merged.identities) {
        errors.extend(compile_errors.into_iter().map(|error| PolicyError {
            file: String::new(),
            line: 0,
            field: String::new(),
            problem: error.to_string(),
        }));
    }
    if errors.is_empty() { Ok(merged) } else { Err(errors) }
}

/// The embedded default policy for coding agents (`rtid policy show --default`).
pub fn default_policy_text() -> &'static str {
    include_str!("default-policy.yaml")
}

/// The default policy with `~/` expanded to every home directory on this machine.
pub fn default_policy() -> PolicySet {
    let text = expand_homes(default_policy_text(), &home_directories(Path::new("/etc/passwd"), Path::new("/home")));
    parse_str("embedded default policy", &text).unwrap_or_default()
}

/// Home directories: from a passwd file (those that exist, not `/`), /root, and every directory under `home_root`.
pub fn home_directories(passwd: &Path, home_root: &Path) -> Vec<String> {
    let mut homes = BTreeSet::new();
    homes.insert("/root".to_string());
    if let Ok(text) = std::fs::read_to_string(passwd) {
        for line in text.lines() {
            if let Some(home) = line.split(':').nth(5)
                && home.starts_with('/')
                && home != "/"
                && Path::new(home).is_dir()
            {
                homes.insert(home.trim_end_matches('/').to_string());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(home_root) {
        for entry in entries.flatten() {
            if entry.path().is_dir() {
                homes.insert(entry.path().display().to_string());
            }
        }
    }
    homes.into_iter().collect()
}

/// Rewrites every rule line whose path starts with `~/` into one line per
/// home, with the rule id suffixed `@user` so ids stay unique.
pub fn expand_homes(text: &str, homes: &[String]) -> String {
    let mut out = String::new();
    for line in text.lines() {
        if !line.contains("path: ~/") {
            out.push_str(line);
            out.push('\n');
            continue;
        }
        for home in homes {
            let user = home.rsplit('/').next().unwrap_or("home");
            let expanded = line.replace("path: ~/", &format!("path: {home}/"));
            let expanded = match expanded.find("id: ") {
                Some(start) => {
                    let rest = &expanded[start + 4..];
                    let end = rest.find([',', ' ', '}']).unwrap_or(rest.len());
                    format!("{}id: {}@{}{}", &expanded[..start], &rest[..end], user, &rest[end..])
                }
                None => expanded,
            };
            out.push_str(&expanded);
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"apiVersion: rtid.dev/v1alpha1
kind: AgentPolicy
metadata:
  name: coding-agents
spec:
  identities:
    - name: coder
      owner: alice@example.com
      purpose: "refactor the payments service"
      mode: enforce
      ttl: 8h
      onExpiry: deny
      audit: decisions
      defaults: { file: allow, network: deny, exec: allow }
      files:
        - { id: no-ssh, path: /root/.ssh/, access: [read, write], action: deny }
        - { id: no-env, name: .env, action: step_up }
        - { id: keys, suffix: .pem, action: flag }
        - { id: shadow, path: /etc/shadow, action: kill }
      network:
        - { id: registry, cidr: 10.20.0.0/16, ports: ["443", "8000-8100"], protocol: tcp, action: allow }
        - { id: dns, cidr: 127.0.0.53/32, ports: ["53"], protocol: udp, action: allow }
        - { id: docker-sock, unix: /run/docker.sock, action: deny }
      exec:
        - { id: no-curl, path: /usr/bin/curl, action: step_up }
  selectors:
    - { identity: coder, exe: /usr/local/bin/agent }
    - { identity: coder, cgroup: /kubepods/burstable/pod1234/ }
"#;

    #[test]
    fn the_example_parses_into_the_model() {
        let set = parse_str("policy.yaml", EXAMPLE).expect("valid");
        let coder = &set.identities[0];
        assert_eq!(coder.owner.as_deref(), Some("alice@example.com"));
        assert_eq!(coder.ttl, Some(Duration::from_secs(8 * 3600)));
        assert_eq!(coder.defaults.network, Verdict::Deny);
        assert_eq!(coder.files[0].pattern, PathPattern::Directory("/root/.ssh/".into()));
        assert_eq!(coder.files[1].action, Verdict::StepUp);
        assert_eq!(coder.files[3].pattern, PathPattern::Exact("/etc/shadow".into()));
        assert_eq!(coder.network[0].ports, vec![(443, 443), (8000, 8100)]);
        assert_eq!(coder.network[1].protocols, protocol::UDP);
        assert_eq!(coder.network[2].target, NetTarget::Unix("/run/docker.sock".into()));
        assert_eq!(coder.exec[0].access, access::EXEC);
        assert_eq!(set.selectors.len(), 2);
        assert_eq!(set.sources, vec!["policy.yaml:coding-agents".to_string()]);
    }

    #[test]
    fn every_error_is_reported_with_its_line_and_field() {
        let text = "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: broken\nspec:\n  identities:\n    - name: coder\n      files:\n        - { id: a, path: relative/path, action: deny }\n        - { id: b, path: /x/, action: maybe }\n      network:\n        - { id: c, cidr: 10.0.0.0/33, action: deny }\n";
        let errors = parse_str("policy.yaml", text).expect_err("invalid");
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "policy.yaml:9: spec.identities[0].files[0].path: \"relative/path\" must be an absolute path",
                "policy.yaml:10: spec.identities[0].files[1].action: \"maybe\" is not an action (allow, audit, flag, step_up, deny, kill)",
                "policy.yaml:12: spec.identities[0].network[0].cidr: \"10.0.0.0/33\" is not a valid CIDR",
            ]
        );
    }

    #[test]
    fn duplicate_identities_across_documents_are_refused() {
        let one = "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata: { name: a }\nspec:\n  identities:\n    - name: coder\n---\napiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata: { name: b }\nspec:\n  identities:\n    - name: coder\n";
        let errors = parse_documents(&[("p.yaml".into(), one.into())]).expect_err("duplicate");
        assert!(errors[0].to_string().contains("defined twice"), "{errors:?}");
    }

    #[test]
    fn the_default_policy_validates_and_compiles() {
        let text = expand_homes(default_policy_text(), &["/root".into(), "/home/alice".into()]);
        let set = parse_str("default", &text).expect("default policy is valid");
        let coder = &set.identities[0];
        assert_eq!(coder.name, "coder");
        assert!(
            coder.files.iter().any(|rule| rule.id == "ssh-keys@alice"
                && rule.pattern == PathPattern::Directory("/home/alice/.ssh/".into()))
        );
        assert!(super::super::compile(&set.identities).is_ok());
        assert_eq!(coder.capabilities.denied, default_denied_mask());
        assert!(!coder.capabilities.user_namespaces && coder.host_control_allowed.is_empty());
        assert!(super::super::warnings(&set.identities).is_empty(), "the default policy weakens nothing");
    }

    const CAPS: &str = "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata: { name: caps }\nspec:\n  identities:\n    - name: coder\n";

    fn mask(names: &[&str]) -> u64 {
        names.iter().map(|name| capability_bit(capability::number(name).unwrap())).fold(0, |all, bit| all | bit)
    }

    #[test]
    fn an_identity_without_capabilities_gets_the_default_ceiling() {
        let set = parse_str("p.yaml", CAPS).expect("valid");
        let coder = &set.identities[0];
        assert_eq!(coder.capabilities.denied, default_denied_mask());
        assert_ne!(coder.capabilities.denied & mask(&["CAP_SYS_ADMIN", "CAP_CHECKPOINT_RESTORE"]), 0);
        assert_eq!(coder.capabilities.denied & mask(&["CAP_CHOWN"]), 0);
        assert!(!coder.capabilities.user_namespaces);
        assert!(coder.host_control_allowed.is_empty());
    }

    #[test]
    fn capabilities_deny_adds_allow_opts_back_in() {
        let text = format!(
            "{CAPS}      capabilities:\n        deny: [CAP_SYS_NICE, sys_resource]\n        allow: [CAP_NET_RAW]\n        userNamespaces: allow\n      hostControl: {{ allow: [containerRuntime, scheduler] }}\n"
        );
        let set = parse_str("p.yaml", &text).expect("valid");
        let coder = &set.identities[0];
        let expected = (default_denied_mask() | mask(&["CAP_SYS_NICE", "CAP_SYS_RESOURCE"])) & !mask(&["CAP_NET_RAW"]);
        assert_eq!(coder.capabilities.denied, expected);
        assert_eq!(coder.capabilities.opted_in, mask(&["CAP_NET_RAW"]));
        assert!(coder.capabilities.user_namespaces);
        assert!(coder.host_control_allowed.contains(&HostControl::ContainerRuntime));
        assert!(coder.host_control_allowed.contains(&HostControl::Scheduler));
        let compiled = super::super::compile(&set.identities).expect("compiles");
        assert_eq!(compiled.identities[0].policy.denied_capabilities, expected);
        assert_eq!(
            compiled.identities[0].policy.guards,
            rtid_common::guard::DENY_SOCKETS,
            "user namespaces allowed, socket kinds not"
        );
        let warned = super::super::warnings(&set.identities);
        assert!(warned.iter().any(|w| w.contains("identity coder") && w.contains("CAP_NET_RAW")), "{warned:?}");
        assert!(warned.iter().any(|w| w.contains("hostControl.allow: scheduler")), "{warned:?}");
    }

    #[test]
    fn unknown_capabilities_and_guards_are_errors_naming_where() {
        let text = format!(
            "{CAPS}      capabilities:\n        deny: [CAP_FLY]\n        allow: [CAP_CHOWN, CAP_BPF]\n        userNamespaces: maybe\n      hostControl:\n        allow: [dockerish]\n"
        );
        let errors = parse_str("p.yaml", &text).expect_err("invalid");
        let shown: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "p.yaml:8: spec.identities[0].capabilities.deny[0]: \"CAP_FLY\" is not a Linux capability (e.g. CAP_NET_RAW)",
                "p.yaml:9: spec.identities[0].capabilities.allow[0]: CAP_CHOWN is not denied by default: nothing to allow",
                "p.yaml:10: spec.identities[0].capabilities.userNamespaces: \"maybe\": expected allow or deny",
                "p.yaml:12: spec.identities[0].hostControl.allow[0]: \"dockerish\" is not a hostControl guard (expected one of serviceManager, scheduler, containerRuntime, kernelTunables)",
            ]
        );
    }

    #[test]
    fn a_capability_both_allowed_and_denied_is_an_error() {
        let text = format!("{CAPS}      capabilities: {{ deny: [CAP_BPF], allow: [CAP_BPF] }}\n");
        let errors = parse_str("p.yaml", &text).expect_err("invalid");
        assert!(errors[0].to_string().contains("capabilities.allow[0]: CAP_BPF is also in deny"), "{errors:?}");
    }
}
