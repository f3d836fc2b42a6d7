//! What `policy check` warns about: valid policy that weakens rtid's built-in
//! protections (capabilities allowed back, user namespaces, `hostControl`
//! guards turned off), and policy that says something it cannot have
//! (an allow a delegator's denial or a guard overrides).

use rtid_common::Verdict;

use super::{
    delegation,
    model::{CapabilityCeiling, HostControl, IdentitySpec, NetTarget, PathPattern, PathRuleSpec, capability_names},
};

/// One warning per weakened protection or ineffective allow, naming the identity.
pub fn warnings(identities: &[IdentitySpec]) -> Vec<String> {
    let mut found = Vec::new();
    for identity in identities {
        let name = &identity.name;
        for capability in capability_names(identity.capabilities.opted_in) {
            found.push(format!(
                "identity {name}: capabilities.allow: {capability} is denied to identities by default; this identity may use it"
            ));
        }
        if identity.capabilities.user_namespaces {
            found.push(format!(
                "identity {name}: capabilities.userNamespaces: allow: its processes may create user namespaces, in which they hold every capability"
            ));
        }
        for group in &identity.host_control_allowed {
            found.push(format!(
                "identity {name}: hostControl.allow: {}: the built-in guard {} is off ({})",
                group.name(),
                group.rule_id(),
                group.description().trim_start_matches("built-in: ")
            ));
        }
        for kind in &identity.sockets_allowed {
            found.push(format!(
                "identity {name}: sockets.allow: {}: its processes may create {} sockets, which no address rule judges",
                kind.name(),
                kind.name()
            ));
        }
        if identity.defaults.unresolved_path.is_some_and(|verdict| !verdict.is_blocking()) && !identity.files.is_empty()
        {
            found.push(format!(
                "identity {name}: defaults.unresolvedPath: a path the kernel cannot resolve (a file handle, a detached tree, \
                 a path deeper or longer than the walk) is let through, whatever its file rules say"
            ));
        }
        found.extend(delegation_warnings(identities, identity));
        found.extend(shadowed_allows(identity));
        found.extend(never_winning(identity));
    }
    found
}

/// Rules that can never decide: another rule on the same pattern covers the
/// same access with a verdict at least as strict (the stricter wins a tie).
fn never_winning(identity: &IdentitySpec) -> Vec<String> {
    let mut found = Vec::new();
    for (section, rules) in [("files", &identity.files), ("exec", &identity.exec)] {
        for (index, rule) in rules.iter().enumerate() {
            let beaten_by = rules.iter().enumerate().find(|(other_index, other)| {
                *other_index != index
                    && other.pattern == rule.pattern
                    && rule.access & !other.access == 0
                    && other.expires_at_boot_ns.is_none()
                    && (other.action > rule.action || (other.action == rule.action && *other_index < index))
            });
            if let Some((_, other)) = beaten_by {
                found.push(format!(
                    "identity {}: {section}: rule {} can never win: rule {} on the same {} is as strict or stricter ({})",
                    identity.name,
                    rule.id,
                    other.id,
                    rule.pattern.describe(),
                    other.action.name()
                ));
            }
        }
    }
    found
}

/// An identity's allowances that a delegator up its chain takes away.
fn delegation_warnings(identities: &[IdentitySpec], identity: &IdentitySpec) -> Vec<String> {
    let Ok(chain) = delegation::chain(identities, &identity.name) else { return Vec::new() };
    let mut found = Vec::new();
    let own: &CapabilityCeiling = &identity.capabilities;
    for delegator in chain.iter().take(chain.len().saturating_sub(1)) {
        let lost = own.opted_in & delegator.capabilities.denied;
        for capability in capability_names(lost) {
            found.push(format!(
                "identity {}: capabilities.allow: {capability} has no effect: its delegator {} denies it",
                identity.name, delegator.name
            ));
        }
        if own.user_namespaces && !delegator.capabilities.user_namespaces {
            found.push(format!(
                "identity {}: capabilities.userNamespaces: allow has no effect: its delegator {} denies them",
                identity.name, delegator.name
            ));
        }
        for group in
            identity.host_control_allowed.iter().filter(|group| !delegator.host_control_allowed.contains(group))
        {
            found.push(format!(
                "identity {}: hostControl.allow: {} has no effect: its delegator {} keeps the guard",
                identity.name,
                group.name(),
                delegator.name
            ));
        }
    }
    found
}

/// Allow rules on objects a `hostControl` guard the identity keeps refuses:
/// the guard outranks them (see `compile::GUARD_PATH_RANK`).
fn shadowed_allows(identity: &IdentitySpec) -> Vec<String> {
    let mut found = Vec::new();
    for group in HostControl::ALL.into_iter().filter(|group| !identity.host_control_allowed.contains(group)) {
        let (paths, sockets) = group.rules();
        for rule in identity.files.iter().filter(|rule| rule.action == Verdict::Allow) {
            if paths.iter().any(|guarded| rule.access & guarded.access != 0 && overlaps(guarded, &rule.pattern)) {
                found.push(format!(
                    "identity {}: rule {} allows what {} refuses; the guard wins (opt out with hostControl.allow: [{}])",
                    identity.name,
                    rule.id,
                    group.rule_id(),
                    group.name()
                ));
            }
        }
        for rule in identity.network.iter().filter(|rule| rule.action == Verdict::Allow) {
            let NetTarget::Unix(path) = &rule.target else { continue };
            let reopens = sockets.iter().any(|socket| match &socket.target {
                NetTarget::Unix(guarded) => guarded == path || (path.ends_with('/') && guarded.starts_with(path)),
                NetTarget::Cidr { .. } => false,
            });
            if reopens {
                found.push(format!(
                    "identity {}: rule {} allows what {} refuses; the guard wins (opt out with hostControl.allow: [{}])",
                    identity.name,
                    rule.id,
                    group.rule_id(),
                    group.name()
                ));
            }
        }
    }
    found
}

/// Whether a user pattern names something inside a guarded pattern (or a
/// directory holding it).
fn overlaps(guarded: &PathRuleSpec, pattern: &PathPattern) -> bool {
    let user_path = match pattern {
        PathPattern::Exact(path) | PathPattern::Directory(path) => path,
        PathPattern::Name(name) => return matches!(&guarded.pattern, PathPattern::Name(guarded) if guarded == name),
        PathPattern::Suffix(_) => return false,
    };
    match &guarded.pattern {
        PathPattern::Exact(path) => user_path == path || (user_path.ends_with('/') && path.starts_with(user_path)),
        PathPattern::Directory(dir) => {
            user_path.starts_with(dir.as_str())
                || user_path == dir.trim_end_matches('/')
                || (user_path.ends_with('/') && dir.starts_with(user_path.as_str()))
        }
        PathPattern::Name(name) => user_path.rsplit('/').next() == Some(name.as_str()),
        PathPattern::Suffix(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{NetRuleSpec, capability_bit};

    #[test]
    fn opt_ins_and_opt_outs_are_warned_naming_identity_and_what() {
        let mut coder = IdentitySpec::new("coder");
        let net_raw = capability_bit(rtid_common::capability::number("CAP_NET_RAW").unwrap());
        coder.capabilities.denied &= !net_raw;
        coder.capabilities.opted_in |= net_raw;
        coder.capabilities.user_namespaces = true;
        coder.host_control_allowed.insert(HostControl::ContainerRuntime);
        let shown = warnings(&[coder]);
        assert_eq!(shown.len(), 3, "{shown:?}");
        assert!(shown[0].contains("identity coder") && shown[0].contains("CAP_NET_RAW"), "{shown:?}");
        assert!(shown[1].contains("userNamespaces"), "{shown:?}");
        assert!(shown[2].contains("containerRuntime") && shown[2].contains("rtid/host-control/containerRuntime"));
        assert!(warnings(&[IdentitySpec::new("plain")]).is_empty());
    }

    #[test]
    fn allows_under_a_kept_guard_are_warned() {
        let mut coder = IdentitySpec::new("coder");
        coder.files.push(PathRuleSpec::file(
            "core",
            PathPattern::Exact("/proc/sys/kernel/core_pattern".into()),
            Verdict::Allow,
        ));
        coder.network.push(NetRuleSpec::unix("docker", "/run/docker.sock", Verdict::Allow));
        coder.files.push(PathRuleSpec::file("home", PathPattern::Directory("/home/".into()), Verdict::Allow));
        let shown = warnings(&[coder.clone()]);
        assert_eq!(shown.len(), 2, "{shown:?}");
        assert!(shown[0].contains("rule docker") && shown[0].contains("containerRuntime"), "{shown:?}");
        assert!(shown[1].contains("rule core") && shown[1].contains("kernelTunables"), "{shown:?}");
        coder.host_control_allowed.insert(HostControl::ContainerRuntime);
        let shown = warnings(&[coder]);
        assert!(!shown.iter().any(|warning| warning.contains("rule docker")), "{shown:?}");
    }
}

#[cfg(test)]
mod precedence_tests {
    use super::*;

    #[test]
    fn a_rule_beaten_on_its_own_pattern_is_warned_and_sockets_allowed_too() {
        let mut spec = IdentitySpec::new("coder");
        spec.files = vec![
            PathRuleSpec::file("weak", PathPattern::Directory("/srv/".into()), Verdict::Flag),
            PathRuleSpec::file("strong", PathPattern::Directory("/srv/".into()), Verdict::Deny),
            PathRuleSpec::file("other", PathPattern::Name(".env".into()), Verdict::Flag),
        ];
        spec.sockets_allowed.insert(super::super::model::SocketKind::Raw);
        let found = warnings(&[spec]);
        assert!(found.iter().any(|w| w.contains("rule weak can never win: rule strong")), "{found:?}");
        assert!(
            !found.iter().any(|w| w.contains("rule strong can never win") || w.contains("rule other")),
            "{found:?}"
        );
        assert!(found.iter().any(|w| w.contains("sockets.allow: raw")), "{found:?}");
    }
}
