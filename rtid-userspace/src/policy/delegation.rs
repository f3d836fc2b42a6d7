//! Delegation: an identity delegated from another may do only what both
//! allow. Compiled in userspace so the kernel still makes one lookup per
//! identity: every restrictive rule of each delegator up the chain is added
//! to the delegated identity, outranking its own rules and grants; defaults
//! and the expiry verdict combine to the stricter; the TTL to the shortest;
//! the capability ceiling to the union of denied capabilities, and user
//! namespaces and `hostControl` opt-outs only where every delegator has them.

use std::collections::BTreeMap;

use rtid_common::Verdict;

use super::model::IdentitySpec;

/// The chain from the root delegator down to `name` (names), or an error on a cycle or unknown name.
pub fn chain<'a>(identities: &'a [IdentitySpec], name: &str) -> Result<Vec<&'a IdentitySpec>, String> {
    let by_name: BTreeMap<&str, &IdentitySpec> =
        identities.iter().map(|identity| (identity.name.as_str(), identity)).collect();
    let mut chain = Vec::new();
    let mut current = by_name.get(name).copied().ok_or_else(|| format!("unknown identity {name:?}"))?;
    loop {
        if chain.iter().any(|seen: &&IdentitySpec| seen.name == current.name) {
            return Err(format!("delegation cycle through {:?}", current.name));
        }
        chain.push(current);
        match &current.delegated_by {
            Some(parent) => {
                current = by_name
                    .get(parent.as_str())
                    .copied()
                    .ok_or_else(|| format!("{:?} is delegated by unknown identity {parent:?}", current.name))?;
            }
            None => break,
        }
    }
    chain.reverse();
    Ok(chain)
}

/// `owner > delegator > ... > identity`, as events report it.
pub fn describe_chain(identities: &[IdentitySpec], name: &str) -> Option<String> {
    let chain = chain(identities, name).ok()?;
    let mut parts: Vec<String> = Vec::new();
    if let Some(owner) = chain.first().and_then(|root| root.owner.clone()) {
        parts.push(owner);
    }
    parts.extend(chain.iter().map(|identity| identity.name.clone()));
    Some(parts.join(" > "))
}

/// Every identity with its delegators' restrictions folded in.
pub fn effective(identities: &[IdentitySpec]) -> Result<Vec<IdentitySpec>, String> {
    let mut result = Vec::with_capacity(identities.len());
    for identity in identities {
        let chain = chain(identities, &identity.name)?;
        let mut narrowed = identity.clone();
        for delegator in chain.iter().take(chain.len() - 1) {
            let restrictive = |verdict: Verdict| verdict != Verdict::Allow;
            for rule in delegator.files.iter().filter(|rule| restrictive(rule.action)) {
                let mut inherited = rule.clone();
                inherited.id = format!("{}/{}", delegator.name, rule.id);
                inherited.from_delegator = true;
                narrowed.files.push(inherited);
            }
            for rule in delegator.exec.iter().filter(|rule| restrictive(rule.action)) {
                let mut inherited = rule.clone();
                inherited.id = format!("{}/{}", delegator.name, rule.id);
                inherited.from_delegator = true;
                narrowed.exec.push(inherited);
            }
            for rule in delegator.network.iter().filter(|rule| restrictive(rule.action)) {
                let mut inherited = rule.clone();
                inherited.id = format!("{}/{}", delegator.name, rule.id);
                inherited.from_delegator = true;
                narrowed.network.push(inherited);
            }
            narrowed.defaults.file = narrowed.defaults.file.max(delegator.defaults.file);
            narrowed.defaults.network = narrowed.defaults.network.max(delegator.defaults.network);
            narrowed.defaults.exec = narrowed.defaults.exec.max(delegator.defaults.exec);
            narrowed.on_expiry = narrowed.on_expiry.max(delegator.on_expiry);
            narrowed.ttl = match (narrowed.ttl, delegator.ttl) {
                (Some(own), Some(inherited)) => Some(own.min(inherited)),
                (own, inherited) => own.or(inherited),
            };
            narrowed.capabilities.denied |= delegator.capabilities.denied;
            narrowed.capabilities.opted_in &= !delegator.capabilities.denied;
            narrowed.capabilities.user_namespaces &= delegator.capabilities.user_namespaces;
            narrowed.host_control_allowed.retain(|group| delegator.host_control_allowed.contains(group));
        }
        result.push(narrowed);
    }
    Ok(result)
}

/// Identities delegated, directly or not, from `name`.
pub fn delegated_from(identities: &[IdentitySpec], name: &str) -> Vec<String> {
    identities
        .iter()
        .filter(|identity| identity.name != name)
        .filter(|identity| {
            chain(identities, &identity.name).is_ok_and(|chain| chain.iter().any(|link| link.name == name))
        })
        .map(|identity| identity.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{PathPattern, PathRuleSpec};

    #[test]
    fn a_delegated_identity_inherits_restrictions_and_the_stricter_defaults() {
        let mut planner = IdentitySpec::new("planner");
        planner.owner = Some("alice@example.com".into());
        planner.defaults.network = Verdict::Deny;
        planner.files.push(PathRuleSpec::file("no-ssh", PathPattern::Directory("/root/.ssh/".into()), Verdict::Deny));
        let mut coder = IdentitySpec::new("coder");
        coder.delegated_by = Some("planner".into());
        coder.files.push(PathRuleSpec::file("ssh-ok", PathPattern::Exact("/root/.ssh/id_rsa".into()), Verdict::Allow));
        let all = vec![planner, coder];
        let effective = effective(&all).unwrap();
        let coder = &effective[1];
        assert!(coder.files.iter().any(|rule| rule.id == "planner/no-ssh" && rule.from_delegator));
        assert_eq!(coder.defaults.network, Verdict::Deny);
        assert_eq!(describe_chain(&all, "coder").as_deref(), Some("alice@example.com > planner > coder"));
        assert_eq!(delegated_from(&all, "planner"), vec!["coder".to_string()]);
        // Compiled, the inherited deny outranks the child's own exact allow.
        let compiled = crate::policy::compile(&effective).unwrap();
        let entry = compiled.identities[1].prefix_entries.iter().find(|e| e.bytes == b"/root/.ssh/id_rsa\0").unwrap();
        let picked = rtid_common::select_path_rule(&entry.rules, rtid_common::access::READ, 0).unwrap();
        assert_eq!(picked.verdict, Verdict::Deny);
    }

    #[test]
    fn a_delegated_identity_cannot_allow_what_its_delegator_denies() {
        use crate::policy::model::{HostControl, capability_bit};
        let net_raw = capability_bit(rtid_common::capability::number("CAP_NET_RAW").unwrap());
        let nice = capability_bit(rtid_common::capability::number("CAP_SYS_NICE").unwrap());
        let mut planner = IdentitySpec::new("planner");
        planner.capabilities.denied |= nice;
        planner.host_control_allowed.insert(HostControl::Scheduler);
        let mut coder = IdentitySpec::new("coder");
        coder.delegated_by = Some("planner".into());
        coder.capabilities.denied &= !net_raw;
        coder.capabilities.opted_in |= net_raw;
        coder.capabilities.user_namespaces = true;
        coder.host_control_allowed.insert(HostControl::ContainerRuntime);
        coder.host_control_allowed.insert(HostControl::Scheduler);
        let effective = effective(&[planner, coder]).unwrap();
        let coder = &effective[1];
        assert_ne!(coder.capabilities.denied & net_raw, 0, "the delegator's default ceiling holds");
        assert_ne!(coder.capabilities.denied & nice, 0, "the delegator's extra denial holds");
        assert_eq!(coder.capabilities.opted_in, 0);
        assert!(!coder.capabilities.user_namespaces);
        assert_eq!(coder.host_control_allowed.iter().copied().collect::<Vec<_>>(), vec![HostControl::Scheduler]);
        let compiled = crate::policy::compile(&effective).unwrap();
        assert_ne!(compiled.identities[1].policy.denied_capabilities & net_raw, 0);
    }

    #[test]
    fn cycles_are_refused() {
        let mut a = IdentitySpec::new("a");
        a.delegated_by = Some("b".into());
        let mut b = IdentitySpec::new("b");
        b.delegated_by = Some("a".into());
        assert!(effective(&[a, b]).unwrap_err().contains("cycle"));
    }
}
