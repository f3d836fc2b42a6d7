//! `rtid policy explain`: the decision the kernel would make, computed from
//! the live maps (LPM lookups done by the kernel itself) with the decision
//! functions from rtid-common that the programs run. No second matcher.

use std::net::IpAddr;

use rtid_common::{PATH_KEY_BYTES, RuleMatch, Verdict, access, decide_address, decide_path, protocol};

use super::{
    LoadError, RtidKernel, boot_time_ns,
    maps::{net_key, path_key},
};
use crate::api::{ExplainAction, Explanation};

fn pass(found: Option<RuleMatch>) -> Option<RuleMatch> {
    found
}

pub fn explain(kernel: &RtidKernel, identity: &str, action: &ExplainAction) -> Result<Explanation, LoadError> {
    let id = kernel.identity_id(identity).ok_or_else(|| LoadError::UnknownIdentity(identity.into()))?;
    let policy = kernel.maps.active_policy(id)?.ok_or_else(|| LoadError::UnknownIdentity(identity.into()))?;
    let status = kernel.maps.status(id)?;
    let now = boot_time_ns();
    let answer = |verdict: Verdict, decided_by: &str, rule: Option<RuleMatch>| {
        let info = rule.and_then(|rule| kernel.rule_info(rule.rule_id));
        Explanation {
            identity: identity.into(),
            verdict: verdict.name().into(),
            decided_by: decided_by.into(),
            rule_id: info.map(|info| info.id.clone()),
            rule: info.map(|info| info.description.clone()),
        }
    };
    // rtid's own files come first in the kernel, before expiry, revocation
    // and every rule: writes, and any open of the daemon's memory.
    if let ExplainAction::Open { path, write } = action
        && let Some(protection) = protected_path(kernel, path)
        && (*write || protection == rtid_common::protection::DAEMON_TRACE)
    {
        return Ok(Explanation {
            identity: identity.into(),
            verdict: Verdict::Deny.name().into(),
            decided_by: "protected".into(),
            rule_id: Some(rtid_common::protection::name(protection).into()),
            rule: Some("built in: rtid's own files and processes cannot be changed from an identity".into()),
        });
    }
    let on_expiry = if Verdict::from_u8(policy.on_expiry) == Verdict::Kill { Verdict::Kill } else { Verdict::Deny };
    if status.revoked != 0 {
        return Ok(answer(on_expiry, "identity_revoked", None));
    }
    if status.expires_at_ns != 0 && now >= status.expires_at_ns {
        return Ok(answer(on_expiry, "identity_expired", None));
    }
    let (verdict, rule) = match action {
        ExplainAction::Open { path, write } => {
            let requested = if *write { access::WRITE } else { access::READ };
            judge_path(kernel, policy.ruleset, path, requested, Verdict::from_u8(policy.default_file), now)
        }
        ExplainAction::Exec { path } => {
            judge_path(kernel, policy.ruleset, path, access::EXEC, Verdict::from_u8(policy.default_exec), now)
        }
        ExplainAction::Connect { address, port, udp } => {
            let addr: IpAddr = address.parse().map_err(|_| LoadError::Map {
                map: "NET_RULES",
                problem: format!("{address:?} is not an IP address"),
            })?;
            let octets = match addr {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            let key = net_key(policy.ruleset, octets, 128);
            let list = kernel.maps.lookup_net(&key);
            let protocol = if *udp { protocol::UDP } else { protocol::TCP };
            decide_address(list.as_ref(), *port, protocol, Verdict::from_u8(policy.default_network), now, &pass)
        }
    };
    Ok(answer(verdict, if rule.is_some() { "rule" } else { "default" }, rule))
}

/// The protected-path lookup the programs do: the path and its terminator,
/// so an exact entry matches the file and a directory entry (trailing `/`)
/// everything under it.
fn protected_path(kernel: &RtidKernel, path: &str) -> Option<u32> {
    let mut key = path.as_bytes()[..path.len().min(PATH_KEY_BYTES)].to_vec();
    if path.len() < PATH_KEY_BYTES {
        key.push(0);
    }
    kernel.maps.lookup_protected(&key)
}

fn judge_path(
    kernel: &RtidKernel,
    ruleset: u32,
    path: &str,
    requested: u8,
    default: Verdict,
    now: u64,
) -> (Verdict, Option<RuleMatch>) {
    let bytes = path.as_bytes();
    let mut forward = bytes[..bytes.len().min(PATH_KEY_BYTES)].to_vec();
    if bytes.len() < PATH_KEY_BYTES {
        forward.push(0);
    }
    let reversed: Vec<u8> = bytes.iter().rev().take(PATH_KEY_BYTES).copied().collect();
    let prefix = kernel.maps.lookup_prefix(&path_key(ruleset, &forward));
    let suffix = kernel.maps.lookup_suffix(&path_key(ruleset, &reversed));
    decide_path(prefix.as_ref(), suffix.as_ref(), requested, default, now, &pass).unwrap_or((Verdict::Allow, None))
}
