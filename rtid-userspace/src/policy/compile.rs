//! Compiling identities into the entries the kernel reads.
//!
//! Path and address rules go into LPM tries. Because a trie lookup yields only
//! the longest matching entry, each entry is given the rules of every shorter
//! entry that covers it, sorted most specific first (see `rtid_common::rules`).

use std::{collections::BTreeMap, net::IpAddr};

use rtid_common::{
    DECISIVE_RANK, IdentityPolicy, NetRule, NetRuleList, PATH_KEY_BYTES, PathRule, PathRuleList, RULES_PER_ENTRY,
    Verdict, audit_level, guard, limits, mode,
};

use super::model::{AuditLevel, HostControl, IdentitySpec, Mode, NetRuleSpec, NetTarget, PathPattern, PathRuleSpec};

/// Added to a grant's match length so it outranks every policy rule (paths
/// are at most PATH_KEY_BYTES + 1 long; v6 prefixes at most 128 bits).
const GRANT_PATH_RANK: u16 = 0x4000;
const GRANT_NET_RANK: u8 = 200;
/// Restrictions inherited from a delegator outrank grants and own rules.
const DELEGATOR_PATH_RANK: u16 = 0x6000;
const DELEGATOR_NET_RANK: u8 = 230;
/// Built-in guards (`hostControl`) outrank everything an identity's policy,
/// its delegators or a grant can say about the same object: only opting out
/// of the guard by name reopens it.
const GUARD_PATH_RANK: u16 = 0x7000;

/// A rule that cannot be compiled, naming the identity and rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("identity {identity}: rule {rule}: {problem}")]
    Rule { identity: String, rule: String, problem: String },
    #[error("identity {identity}: {problem}")]
    Identity { identity: String, problem: String },
    #[error("policy: {0}")]
    Policy(String),
}

/// Where a compiled rule came from, for events and `explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub identity: String,
    pub id: String,
    pub description: String,
}

/// One LPM entry: key bytes after the ruleset, their length in bits, and the candidates.
#[derive(Clone, Debug, PartialEq)]
pub struct PathEntry {
    pub bytes: Vec<u8>,
    pub rules: PathRuleList,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetEntry {
    /// IPv6 address (IPv4 as v4-mapped), masked to `prefix_len`.
    pub addr: [u8; 16],
    pub prefix_len: u8,
    pub rules: NetRuleList,
}

/// One identity, ready to install under any ruleset id.
#[derive(Clone, Debug, PartialEq)]
pub struct CompiledIdentity {
    pub spec: IdentitySpec,
    /// `ruleset` is filled in when installed.
    pub policy: IdentityPolicy,
    pub prefix_entries: Vec<PathEntry>,
    pub suffix_entries: Vec<PathEntry>,
    pub unix_entries: Vec<PathEntry>,
    pub net_entries: Vec<NetEntry>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CompiledPolicy {
    pub identities: Vec<CompiledIdentity>,
    /// Numeric rule id (as the kernel reports it) to its origin.
    pub rules: BTreeMap<u32, RuleInfo>,
}

impl CompiledPolicy {
    pub fn identity(&self, name: &str) -> Option<&CompiledIdentity> {
        self.identities.iter().find(|identity| identity.spec.name == name)
    }
}

/// Compiles every identity; rule ids are numbered from 1 in order.
pub fn compile(identities: &[IdentitySpec]) -> Result<CompiledPolicy, Vec<CompileError>> {
    let mut errors = Vec::new();
    let mut compiled = CompiledPolicy::default();
    if identities.len() > limits::MAX_IDENTITIES as usize {
        errors.push(CompileError::Policy(format!(
            "{} identities, the kernel maps hold at most {}",
            identities.len(),
            limits::MAX_IDENTITIES
        )));
    }
    let mut next_rule_id = 1u32;
    for spec in identities {
        match compile_identity(spec, &mut next_rule_id, &mut compiled.rules) {
            Ok(identity) => compiled.identities.push(identity),
            Err(mut identity_errors) => errors.append(&mut identity_errors),
        }
    }
    check_capacity(&compiled, &mut errors);
    if errors.is_empty() { Ok(compiled) } else { Err(errors) }
}

fn check_capacity(compiled: &CompiledPolicy, errors: &mut Vec<CompileError>) {
    // Reloads keep the old and the new policy in the maps at once: each gets half.
    let sum = |select: fn(&CompiledIdentity) -> usize| compiled.identities.iter().map(select).sum::<usize>();
    let checks = [
        ("file/exec prefix entries", sum(|i| i.prefix_entries.len()), limits::MAX_PATH_ENTRIES),
        ("file/exec suffix entries", sum(|i| i.suffix_entries.len()), limits::MAX_PATH_ENTRIES),
        ("unix socket entries", sum(|i| i.unix_entries.len()), limits::MAX_UNIX_ENTRIES),
        ("network entries", sum(|i| i.net_entries.len()), limits::MAX_NET_ENTRIES),
    ];
    for (what, used, capacity) in checks {
        if used > capacity as usize / 2 {
            errors.push(CompileError::Policy(format!("{used} {what}, at most {} fit", capacity / 2)));
        }
    }
}

fn compile_identity(
    spec: &IdentitySpec,
    next_rule_id: &mut u32,
    rules: &mut BTreeMap<u32, RuleInfo>,
) -> Result<CompiledIdentity, Vec<CompileError>> {
    let mut errors = Vec::new();
    let mut prefix = EntryBuilder::default();
    let mut suffix = EntryBuilder::default();
    let mut unix = EntryBuilder::default();
    let mut net: Vec<(([u8; 16], u8), NetRule)> = Vec::new();
    let rule_error = |rule: &str, problem: String| CompileError::Rule {
        identity: spec.name.clone(),
        rule: rule.to_string(),
        problem,
    };

    for rule in spec.files.iter().chain(spec.exec.iter()) {
        let rule_id = register(next_rule_id, rules, spec, &rule.id, rule.pattern.describe());
        if let Err(problem) = add_path_rule(rule, rule_id, rank_of(rule), &mut prefix, &mut suffix) {
            errors.push(rule_error(&rule.id, problem));
        }
    }
    for rule in &spec.network {
        match &rule.target {
            NetTarget::Unix(path) => {
                let rule_id = register(next_rule_id, rules, spec, &rule.id, format!("unix {path}"));
                let as_path = unix_as_path(rule, path);
                if let Err(problem) =
                    add_path_rule(&as_path, rule_id, rank_of(&as_path), &mut unix, &mut EntryBuilder::default())
                {
                    errors.push(rule_error(&rule.id, problem));
                }
            }
            NetTarget::Cidr { addr, prefix_len } => {
                let description = format!("{addr}/{prefix_len} ports {}", describe_ports(&rule.ports));
                let rule_id = register(next_rule_id, rules, spec, &rule.id, description);
                match mapped_network(*addr, *prefix_len) {
                    Ok((network, bits)) => {
                        let ranges = if rule.ports.is_empty() { vec![(0, u16::MAX)] } else { rule.ports.clone() };
                        for (low, high) in ranges {
                            if low > high {
                                errors.push(rule_error(&rule.id, format!("port range {low}-{high} is empty")));
                                continue;
                            }
                            let candidate = NetRule {
                                rule_id,
                                port_low: low,
                                port_high: high,
                                // Ranking only (the trie matched the address already):
                                // a grant outranks any CIDR length.
                                prefix_len: if rule.from_delegator {
                                    DELEGATOR_NET_RANK
                                } else if rule.grant {
                                    GRANT_NET_RANK
                                } else {
                                    bits
                                },
                                protocols: rule.protocols,
                                verdict: rule.action as u8,
                                expires_at_ns: rule.expires_at_boot_ns.unwrap_or(0),
                                ..NetRule::default()
                            };
                            net.push(((network, bits), candidate));
                        }
                    }
                    Err(problem) => errors.push(rule_error(&rule.id, problem)),
                }
            }
        }
    }

    // The guards this identity did not opt out of, registered after its own
    // rules so those keep their numbers.
    for group in HostControl::ALL.into_iter().filter(|group| !spec.host_control_allowed.contains(group)) {
        let (paths, sockets) = group.rules();
        let rule_id = register(next_rule_id, rules, spec, &group.rule_id(), group.description().to_string());
        for rule in &paths {
            if let Err(problem) = add_path_rule(rule, rule_id, GUARD_PATH_RANK, &mut prefix, &mut suffix) {
                errors.push(rule_error(&rule.id, problem));
            }
        }
        for socket in &sockets {
            let NetTarget::Unix(path) = &socket.target else { continue };
            let as_path = unix_as_path(socket, path);
            if let Err(problem) =
                add_path_rule(&as_path, rule_id, GUARD_PATH_RANK, &mut unix, &mut EntryBuilder::default())
            {
                errors.push(rule_error(&socket.id, problem));
            }
        }
    }
    let mut collect = |result: Result<_, Vec<String>>| {
        result.unwrap_or_else(|problems: Vec<String>| {
            errors.extend(problems.into_iter().map(|problem| identity_error(spec, problem)));
            Vec::new()
        })
    };
    let prefix_entries = collect(prefix.build());
    let suffix_entries = collect(suffix.build());
    let unix_entries = collect(unix.build());
    let net_entries = build_net_entries(net).unwrap_or_else(|problems| {
        errors.extend(problems.into_iter().map(|problem| identity_error(spec, problem)));
        Vec::new()
    });
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(CompiledIdentity {
        spec: spec.clone(),
        policy: identity_policy(spec),
        prefix_entries,
        suffix_entries,
        unix_entries,
        net_entries,
    })
}

/// A unix socket rule as a path rule over the socket's path.
fn unix_as_path(rule: &NetRuleSpec, path: &str) -> PathRuleSpec {
    PathRuleSpec {
        id: rule.id.clone(),
        pattern: if path.ends_with('/') {
            PathPattern::Directory(path.to_string())
        } else {
            PathPattern::Exact(path.to_string())
        },
        access: rtid_common::access::ALL,
        action: rule.action,
        expires_at_boot_ns: rule.expires_at_boot_ns,
        grant: rule.grant,
        from_delegator: rule.from_delegator,
    }
}

/// What a rule adds to its match length to rank above others on the same object.
fn rank_of(rule: &PathRuleSpec) -> u16 {
    if rule.from_delegator {
        DELEGATOR_PATH_RANK
    } else if rule.grant {
        GRANT_PATH_RANK
    } else {
        0
    }
}

fn identity_error(spec: &IdentitySpec, problem: String) -> CompileError {
    CompileError::Identity { identity: spec.name.clone(), problem }
}

fn register(
    next_rule_id: &mut u32,
    rules: &mut BTreeMap<u32, RuleInfo>,
    spec: &IdentitySpec,
    id: &str,
    description: String,
) -> u32 {
    let rule_id = *next_rule_id;
    *next_rule_id += 1;
    rules.insert(rule_id, RuleInfo { identity: spec.name.clone(), id: id.to_string(), description });
    rule_id
}

fn identity_policy(spec: &IdentitySpec) -> IdentityPolicy {
    IdentityPolicy {
        ruleset: 0,
        mode: match spec.mode {
            Mode::Enforce => mode::ENFORCE,
            Mode::Audit => mode::AUDIT,
        },
        audit: match spec.audit {
            AuditLevel::Decisions => audit_level::DECISIONS,
            AuditLevel::All => audit_level::ALL,
        },
        default_file: spec.defaults.file as u8,
        default_network: spec.defaults.network as u8,
        default_exec: spec.defaults.exec as u8,
        on_expiry: spec.on_expiry as u8,
        file_deny_fallback: spec.file_deny_fallback as u8,
        unresolved_path: unresolved_path_verdict(spec) as u8,
        guards: (if spec.capabilities.user_namespaces { 0 } else { guard::DENY_USER_NAMESPACES })
            | spec.sockets_allowed.iter().fold(guard::DENY_SOCKETS, |guards, kind| guards & !kind.guard_bit()),
        denied_capabilities: spec.capabilities.denied,
        anonymous_exec: anonymous_exec_verdict(spec) as u8,
        _pad: [0; 7],
    }
}

/// What an unresolvable path gets: the policy's choice, else deny for an
/// identity that protects any file (a path it cannot resolve might be one of
/// them), else its file default.
pub fn unresolved_path_verdict(spec: &IdentitySpec) -> Verdict {
    spec.defaults.unresolved_path.unwrap_or(if spec.files.is_empty() { spec.defaults.file } else { Verdict::Deny })
}

/// What executing a nameless file (memfd) gets: the policy's choice, else
/// deny for an identity with any exec rule (a copy in memory would slip past
/// them), else its exec default.
pub fn anonymous_exec_verdict(spec: &IdentitySpec) -> Verdict {
    spec.defaults.anonymous_exec.unwrap_or(if spec.exec.is_empty() { spec.defaults.exec } else { Verdict::Deny })
}

pub fn describe_ports(ports: &[(u16, u16)]) -> String {
    if ports.is_empty() {
        return "any".into();
    }
    let parts: Vec<String> =
        ports.iter().map(|(low, high)| if low == high { low.to_string() } else { format!("{low}-{high}") }).collect();
    parts.join(",")
}

/// Adds a path rule to the prefix or suffix trie builder.
fn add_path_rule(
    rule: &PathRuleSpec,
    rule_id: u32,
    rank: u16,
    prefix: &mut EntryBuilder,
    suffix: &mut EntryBuilder,
) -> Result<(), String> {
    let candidate = |match_len: usize| PathRule {
        rule_id,
        match_len: match_len as u16 + rank,
        access: rule.access,
        verdict: rule.action as u8,
        expires_at_ns: rule.expires_at_boot_ns.unwrap_or(0),
    };
    if rule.access == 0 {
        return Err("the rule covers no access".into());
    }
    match &rule.pattern {
        PathPattern::Exact(path) => {
            check_absolute(path)?;
            // The NUL terminator makes the entry match only the whole path,
            // and one byte longer than a directory rule of the same text.
            let mut bytes = path.as_bytes().to_vec();
            bytes.push(0);
            check_length(&bytes, path)?;
            // Decisive: no name or suffix rule relaxes or overrides it (`stronger_match`).
            prefix.add(bytes, candidate(path.len() + 1 + DECISIVE_RANK as usize));
        }
        PathPattern::Directory(dir) => {
            check_absolute(dir)?;
            let dir = if dir.ends_with('/') { dir.clone() } else { format!("{dir}/") };
            check_length(dir.as_bytes(), &dir)?;
            prefix.add(dir.as_bytes().to_vec(), candidate(dir.len()));
            if dir.len() > 1 {
                // The directory itself, opened to list it.
                let mut itself = dir.as_bytes()[..dir.len() - 1].to_vec();
                itself.push(0);
                prefix.add(itself, candidate(dir.len()));
            }
        }
        PathPattern::Name(name) => {
            if name.is_empty() || name.contains('/') {
                return Err(format!("name {name:?} must be a file name without '/'"));
            }
            let bytes: Vec<u8> = format!("/{name}").bytes().rev().collect();
            check_length(&bytes, name)?;
            let len = bytes.len();
            suffix.add(bytes, candidate(len));
        }
        PathPattern::Suffix(tail) => {
            if tail.is_empty() {
                return Err("suffix must not be empty".into());
            }
            let bytes: Vec<u8> = tail.bytes().rev().collect();
            check_length(&bytes, tail)?;
            let len = bytes.len();
            suffix.add(bytes, candidate(len));
        }
    }
    Ok(())
}

fn check_absolute(path: &str) -> Result<(), String> {
    if !path.starts_with('/') && !path.starts_with('@') {
        return Err(format!("path {path:?} must be absolute"));
    }
    if path.split('/').any(|part| part == ".." || part == ".") {
        return Err(format!(
            "path {path:?} must not contain '.' or '..' components (the kernel matches resolved paths)"
        ));
    }
    if path.as_bytes().contains(&0) {
        return Err(format!("path {path:?} contains a NUL byte"));
    }
    Ok(())
}

fn check_length(bytes: &[u8], shown: &str) -> Result<(), String> {
    if bytes.len() > PATH_KEY_BYTES {
        return Err(format!(
            "{shown:?} is {} bytes; the kernel matches at most {PATH_KEY_BYTES} bytes of a rule path",
            bytes.len()
        ));
    }
    Ok(())
}

/// Collects rules by key bytes, then gives each entry the rules of the entries covering it.
#[derive(Default)]
struct EntryBuilder {
    own: BTreeMap<Vec<u8>, Vec<PathRule>>,
}

impl EntryBuilder {
    fn add(&mut self, bytes: Vec<u8>, rule: PathRule) {
        self.own.entry(bytes).or_default().push(rule);
    }

    fn build(self) -> Result<Vec<PathEntry>, Vec<String>> {
        let mut entries = Vec::new();
        let mut errors = Vec::new();
        for bytes in self.own.keys() {
            let mut candidates: Vec<PathRule> = self
                .own
                .iter()
                .filter(|(other, _)| bytes.starts_with(other))
                .flat_map(|(_, rules)| rules.iter().copied())
                .collect();
            candidates.sort_by(|a, b| b.match_len.cmp(&a.match_len).then(b.verdict.cmp(&a.verdict)));
            match fill_path_list(&candidates) {
                Some(rules) => entries.push(PathEntry { bytes: bytes.clone(), rules }),
                None => errors.push(format!(
                    "{} rules overlap at {:?}; at most {RULES_PER_ENTRY} can cover one path",
                    candidates.len(),
                    String::from_utf8_lossy(bytes)
                )),
            }
        }
        if errors.is_empty() { Ok(entries) } else { Err(errors) }
    }
}

fn fill_path_list(candidates: &[PathRule]) -> Option<PathRuleList> {
    if candidates.len() > RULES_PER_ENTRY {
        return None;
    }
    let mut list = PathRuleList { count: candidates.len() as u32, ..PathRuleList::default() };
    list.rules[..candidates.len()].copy_from_slice(candidates);
    Some(list)
}

/// An address block in the v6 space the kernel trie uses (IPv4 as ::ffff:a.b.c.d/96+len).
pub fn mapped_network(addr: IpAddr, prefix_len: u8) -> Result<([u8; 16], u8), String> {
    let (bytes, bits) = match addr {
        IpAddr::V4(v4) => {
            if prefix_len > 32 {
                return Err(format!("{addr}/{prefix_len} is not a valid CIDR"));
            }
            (v4.to_ipv6_mapped().octets(), 96 + prefix_len)
        }
        IpAddr::V6(v6) => {
            if prefix_len > 128 {
                return Err(format!("{addr}/{prefix_len} is not a valid CIDR"));
            }
            (v6.octets(), prefix_len)
        }
    };
    Ok((mask(bytes, bits), bits))
}

fn mask(mut bytes: [u8; 16], bits: u8) -> [u8; 16] {
    for (index, byte) in bytes.iter_mut().enumerate() {
        let start = index as u32 * 8;
        let keep = (bits as u32).saturating_sub(start).min(8);
        *byte &= if keep == 0 { 0 } else { 0xffu8 << (8 - keep) };
    }
    bytes
}

/// (wildcard, the loopback address it is judged as), in the v6 space of the trie.
const WILDCARDS_AS_LOOPBACK: [([u8; 16], [u8; 16]); 2] = [
    ([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 127, 0, 0, 1]),
    ([0; 16], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
];

fn covers(outer: &([u8; 16], u8), inner: &([u8; 16], u8)) -> bool {
    outer.1 <= inner.1 && mask(inner.0, outer.1) == outer.0
}

fn build_net_entries(rules: Vec<(([u8; 16], u8), NetRule)>) -> Result<Vec<NetEntry>, Vec<String>> {
    let mut networks: Vec<([u8; 16], u8)> = rules.iter().map(|(network, _)| *network).collect();
    // A connect or send to 0.0.0.0 or :: reaches this host's services as one
    // to loopback does: each wildcard gets its own entry carrying exactly the
    // rules of its loopback address, so a rule on loopback holds for it too.
    let judged_as = |network: &([u8; 16], u8)| {
        WILDCARDS_AS_LOOPBACK
            .iter()
            .find(|(wildcard, _)| (*wildcard, 128) == *network)
            .map(|(_, loopback)| (*loopback, 128))
    };
    for (wildcard, loopback) in WILDCARDS_AS_LOOPBACK {
        if rules.iter().any(|(outer, _)| covers(outer, &(loopback, 128))) {
            networks.push((wildcard, 128));
        }
    }
    networks.sort();
    networks.dedup();
    let mut entries = Vec::new();
    let mut errors = Vec::new();
    for network in networks {
        let judged = judged_as(&network).unwrap_or(network);
        let mut candidates: Vec<NetRule> =
            rules.iter().filter(|(outer, _)| covers(outer, &judged)).map(|(_, rule)| *rule).collect();
        candidates.sort_by(|a, b| b.prefix_len.cmp(&a.prefix_len).then(b.verdict.cmp(&a.verdict)));
        if candidates.len() > RULES_PER_ENTRY {
            errors.push(format!(
                "{} network rules (counting each port range) overlap at {}; at most {RULES_PER_ENTRY} can cover one address",
                candidates.len(),
                describe_network(&network)
            ));
            continue;
        }
        let mut list = NetRuleList { count: candidates.len() as u32, ..NetRuleList::default() };
        list.rules[..candidates.len()].copy_from_slice(&candidates);
        entries.push(NetEntry { addr: network.0, prefix_len: network.1, rules: list });
    }
    if errors.is_empty() { Ok(entries) } else { Err(errors) }
}

fn describe_network(network: &([u8; 16], u8)) -> String {
    let v6 = std::net::Ipv6Addr::from(network.0);
    match v6.to_ipv4_mapped() {
        Some(v4) if network.1 >= 96 => format!("{v4}/{}", network.1 - 96),
        _ => format!("{v6}/{}", network.1),
    }
}

/// Whether a verdict is one policy may use for file deny fallback.
pub fn valid_fallback(verdict: Verdict) -> bool {
    matches!(verdict, Verdict::Kill | Verdict::Flag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{NetRuleSpec, PathRuleSpec};
    use rtid_common::{access, select_path_rule};

    fn entry<'a>(entries: &'a [PathEntry], bytes: &[u8]) -> &'a PathEntry {
        entries.iter().find(|entry| entry.bytes == bytes).expect("entry present")
    }

    #[test]
    fn directory_entries_inherit_covering_rules_longest_first() {
        let mut spec = IdentitySpec::new("coder");
        spec.files.push(PathRuleSpec::file("srv", PathPattern::Directory("/srv/".into()), Verdict::Flag));
        spec.files.push(PathRuleSpec::file("secret", PathPattern::Directory("/srv/secret/".into()), Verdict::Deny));
        spec.files.push(PathRuleSpec::file("key", PathPattern::Exact("/srv/secret/key".into()), Verdict::Allow));
        let compiled = compile(&[spec]).expect("compiles");
        let identity = &compiled.identities[0];
        let exact = entry(&identity.prefix_entries, b"/srv/secret/key\0");
        let ids: Vec<u32> = exact.rules.rules[..exact.rules.count as usize].iter().map(|r| r.rule_id).collect();
        assert_eq!(ids, vec![3, 2, 1]);
        let picked = select_path_rule(&exact.rules, access::READ, 0).expect("a rule");
        assert_eq!(picked.rule_id, 3);
        // The directory itself is covered by its rule.
        let itself = entry(&identity.prefix_entries, b"/srv/secret\0");
        assert_eq!(select_path_rule(&itself.rules, access::READ, 0).map(|r| r.rule_id), Some(2));
    }

    #[test]
    fn name_and_suffix_rules_never_relax_a_directory_rule_and_exact_paths_decide() {
        let mut spec = IdentitySpec::new("coder");
        spec.files.push(PathRuleSpec::file("aws", PathPattern::Directory("/h/.aws/".into()), Verdict::Deny));
        spec.files.push(PathRuleSpec::file("credentials", PathPattern::Name("credentials".into()), Verdict::Flag));
        spec.files.push(PathRuleSpec::file("config", PathPattern::Exact("/h/.aws/config".into()), Verdict::Allow));
        spec.files.push(PathRuleSpec::file("conf", PathPattern::Suffix("config".into()), Verdict::StepUp));
        spec.files.push(PathRuleSpec::file("src", PathPattern::Directory("/h/src/".into()), Verdict::Allow));
        spec.files.push(PathRuleSpec::file("pem", PathPattern::Suffix(".pem".into()), Verdict::Deny));
        let compiled = compile(&[spec]).expect("compiles");
        let identity = &compiled.identities[0];
        let decide = |path: &str| {
            let mut forward = path.as_bytes().to_vec();
            forward.push(0);
            let reversed: Vec<u8> = path.bytes().rev().collect();
            let longest = |entries: &[PathEntry], key: &[u8]| {
                entries
                    .iter()
                    .filter(|entry| key.starts_with(&entry.bytes))
                    .max_by_key(|entry| entry.bytes.len())
                    .map(|e| e.rules)
            };
            let prefix = longest(&identity.prefix_entries, &forward);
            let suffix = longest(&identity.suffix_entries, &reversed);
            let pass = |found| found;
            let (verdict, rule) =
                rtid_common::decide_path(prefix.as_ref(), suffix.as_ref(), access::READ, Verdict::Allow, 0, &pass)
                    .expect("read requested");
            (verdict, rule.map(|rule| compiled.rules[&rule.rule_id].id.clone()))
        };
        assert_eq!(decide("/h/.aws/credentials"), (Verdict::Deny, Some("aws".into())));
        assert_eq!(decide("/h/.aws/config"), (Verdict::Allow, Some("config".into())), "exact beats a stricter suffix");
        assert_eq!(
            decide("/h/src/server.pem"),
            (Verdict::Deny, Some("pem".into())),
            "suffix deny inside an allowed dir"
        );
        assert_eq!(decide("/h/src/main.rs"), (Verdict::Allow, Some("src".into())));
    }

    #[test]
    fn equal_length_prefers_the_stricter_verdict() {
        let mut spec = IdentitySpec::new("coder");
        spec.files.push(PathRuleSpec::file("allow", PathPattern::Directory("/data/".into()), Verdict::Allow));
        spec.files.push(PathRuleSpec::file("deny", PathPattern::Directory("/data/".into()), Verdict::Deny));
        let compiled = compile(&[spec]).expect("compiles");
        let dir = entry(&compiled.identities[0].prefix_entries, b"/data/");
        assert_eq!(select_path_rule(&dir.rules, access::READ, 0).map(|r| r.verdict), Some(Verdict::Deny));
    }

    #[test]
    fn names_and_suffixes_are_stored_reversed() {
        let mut spec = IdentitySpec::new("coder");
        spec.files.push(PathRuleSpec::file("env", PathPattern::Name(".env".into()), Verdict::StepUp));
        spec.files.push(PathRuleSpec::file("pem", PathPattern::Suffix(".pem".into()), Verdict::Flag));
        let compiled = compile(&[spec]).expect("compiles");
        let identity = &compiled.identities[0];
        assert!(identity.suffix_entries.iter().any(|e| e.bytes == b"vne./"));
        assert!(identity.suffix_entries.iter().any(|e| e.bytes == b"mep."));
    }

    #[test]
    fn errors_name_identity_and_rule_and_are_all_reported() {
        let mut spec = IdentitySpec::new("coder");
        spec.files.push(PathRuleSpec::file("relative", PathPattern::Exact("etc/passwd".into()), Verdict::Deny));
        spec.files.push(PathRuleSpec::file("long", PathPattern::Exact(format!("/{}", "a".repeat(300))), Verdict::Deny));
        spec.network.push(NetRuleSpec::cidr("bad", "10.0.0.0".parse().unwrap(), 33, vec![], Verdict::Deny));
        let errors = compile(&[spec]).expect_err("invalid");
        assert_eq!(errors.len(), 3, "{errors:?}");
        let text: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        assert!(text[0].contains("identity coder: rule relative"), "{text:?}");
        assert!(text[1].contains("at most 252 bytes"), "{text:?}");
        assert!(text[2].contains("10.0.0.0/33 is not a valid CIDR"), "{text:?}");
    }

    #[test]
    fn network_entries_inherit_shorter_prefixes() {
        let mut spec = IdentitySpec::new("coder");
        spec.network.push(NetRuleSpec::cidr("lan", "10.0.0.0".parse().unwrap(), 8, vec![], Verdict::Deny));
        spec.network.push(NetRuleSpec::cidr("web", "10.1.0.0".parse().unwrap(), 16, vec![(443, 443)], Verdict::Allow));
        let compiled = compile(&[spec]).expect("compiles");
        let entries = &compiled.identities[0].net_entries;
        let web = entries.iter().find(|e| e.prefix_len == 112).expect("/16 entry");
        assert_eq!(web.rules.count, 2);
        let on_other_port = rtid_common::select_net_rule(&web.rules, 80, rtid_common::protocol::TCP, 0);
        assert_eq!(on_other_port.map(|r| r.verdict), Some(Verdict::Deny));
        let on_443 = rtid_common::select_net_rule(&web.rules, 443, rtid_common::protocol::TCP, 0);
        assert_eq!(on_443.map(|r| r.verdict), Some(Verdict::Allow));
    }

    #[test]
    fn every_identity_gets_the_default_ceiling_and_the_user_namespace_guard() {
        let compiled = compile(&[IdentitySpec::new("coder")]).expect("compiles");
        let policy = compiled.identities[0].policy;
        assert_eq!(policy.denied_capabilities, crate::policy::model::default_denied_mask());
        assert_eq!(policy.guards, guard::DENY_USER_NAMESPACES | guard::DENY_SOCKETS);
        let names = crate::policy::model::capability_names(policy.denied_capabilities);
        assert_eq!(names.len(), crate::policy::model::DEFAULT_DENIED_CAPABILITIES.len());
        assert!(names.contains(&"CAP_SYS_ADMIN") && names.contains(&"CAP_CHECKPOINT_RESTORE"));
    }

    fn guard_rule(compiled: &CompiledPolicy, group: HostControl) -> Option<u32> {
        compiled.rules.iter().find(|(_, info)| info.id == group.rule_id()).map(|(id, _)| *id)
    }

    #[test]
    fn host_control_guards_outrank_allow_rules_grants_and_delegators() {
        let mut spec = IdentitySpec::new("coder");
        spec.network.push(NetRuleSpec::unix("docker-ok", "/run/docker.sock", Verdict::Allow));
        let mut grant = NetRuleSpec::unix("grant-1", "/run/docker.sock", Verdict::Allow);
        grant.grant = true;
        spec.network.push(grant);
        let mut core =
            PathRuleSpec::file("core", PathPattern::Exact("/proc/sys/kernel/core_pattern".into()), Verdict::Allow);
        core.grant = true;
        spec.files.push(core);
        spec.files.push(PathRuleSpec::file(
            "cron-ok",
            PathPattern::Directory("/var/spool/cron/crontabs/".into()),
            Verdict::Allow,
        ));
        let compiled = compile(&[spec]).expect("compiles");
        let identity = &compiled.identities[0];
        let docker = entry(&identity.unix_entries, b"/run/docker.sock\0");
        let picked = select_path_rule(&docker.rules, access::WRITE, 0).expect("a rule");
        assert_eq!(
            (picked.verdict, Some(picked.rule_id)),
            (Verdict::Deny, guard_rule(&compiled, HostControl::ContainerRuntime))
        );
        let core = entry(&identity.prefix_entries, b"/proc/sys/kernel/core_pattern\0");
        let picked = select_path_rule(&core.rules, access::WRITE, 0).expect("a rule");
        assert_eq!(
            (picked.verdict, Some(picked.rule_id)),
            (Verdict::Deny, guard_rule(&compiled, HostControl::KernelTunables))
        );
        // Reading stays with the identity's own rules: the guard covers writes.
        assert_eq!(select_path_rule(&core.rules, access::READ, 0).map(|r| r.verdict), Some(Verdict::Allow));
        let cron = entry(&identity.prefix_entries, b"/var/spool/cron/crontabs/");
        let picked = select_path_rule(&cron.rules, access::WRITE, 0).expect("a rule");
        assert_eq!(Some(picked.rule_id), guard_rule(&compiled, HostControl::Scheduler));
        assert_eq!(compiled.rules[&picked.rule_id].identity, "coder");
        // The guard names are the rule ids explain and events report.
        for group in HostControl::ALL {
            assert!(guard_rule(&compiled, group).is_some(), "{group:?}");
        }
    }

    #[test]
    fn an_identity_that_opts_out_of_a_guard_has_none_of_its_rules() {
        let mut spec = IdentitySpec::new("builder");
        spec.host_control_allowed.insert(HostControl::ContainerRuntime);
        spec.network.push(NetRuleSpec::unix("docker-ok", "/run/docker.sock", Verdict::Allow));
        let compiled = compile(&[spec]).expect("compiles");
        assert_eq!(guard_rule(&compiled, HostControl::ContainerRuntime), None);
        assert!(guard_rule(&compiled, HostControl::KernelTunables).is_some());
        let docker = entry(&compiled.identities[0].unix_entries, b"/run/docker.sock\0");
        assert_eq!(select_path_rule(&docker.rules, access::WRITE, 0).map(|r| r.verdict), Some(Verdict::Allow));
    }
}
