//! `rtid policy explain`: the decision the kernel would make, computed from
//! the live maps (LPM lookups done by the kernel itself) with the decision
//! functions from rtid-common that the programs run. No second matcher.

use std::net::IpAddr;

use rtid_common::{
    DECISIVE_RANK, PATH_KEY_BYTES, PathRuleList, RuleMatch, Verdict, access, decide_address, decide_path, protocol,
};

use super::{
    LoadError, RtidKernel, boot_time_ns,
    maps::{net_key, path_key},
};
use crate::api::{ExplainAction, Explanation, RuleCandidate};

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
            matches: Vec::new(),
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
            matches: Vec::new(),
        });
    }
    let on_expiry = if Verdict::from_u8(policy.on_expiry) == Verdict::Kill { Verdict::Kill } else { Verdict::Deny };
    if status.revoked != 0 {
        return Ok(answer(on_expiry, "identity_revoked", None));
    }
    if status.expires_at_ns != 0 && now >= status.expires_at_ns {
        return Ok(answer(on_expiry, "identity_expired", None));
    }
    let mut matches = Vec::new();
    let (verdict, rule) = match action {
        ExplainAction::Open { path, write } => {
            let requested = if *write { access::WRITE } else { access::READ };
            let found = judge_path(kernel, policy.ruleset, path, requested, Verdict::from_u8(policy.default_file), now);
            matches = path_candidates(kernel, policy.ruleset, path, requested, now, found.1);
            found
        }
        ExplainAction::Exec { path } => {
            let found =
                judge_path(kernel, policy.ruleset, path, access::EXEC, Verdict::from_u8(policy.default_exec), now);
            matches = path_candidates(kernel, policy.ruleset, path, access::EXEC, now, found.1);
            found
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
    let mut explanation = answer(verdict, if rule.is_some() { "rule" } else { "default" }, rule);
    explanation.matches = matches;
    Ok(explanation)
}

/// Forward and reversed trie keys of a path, as the programs build them.
fn path_keys(path: &str) -> (Vec<u8>, Vec<u8>) {
    let bytes = path.as_bytes();
    let mut forward = bytes[..bytes.len().min(PATH_KEY_BYTES)].to_vec();
    if bytes.len() < PATH_KEY_BYTES {
        forward.push(0);
    }
    let reversed: Vec<u8> = bytes.iter().rev().take(PATH_KEY_BYTES).copied().collect();
    (forward, reversed)
}

/// Every live rule matching `path` for the requested access, the winner
/// first, each with why it won or lost (`rules::stronger_match` is the rule).
fn path_candidates(
    kernel: &RtidKernel,
    ruleset: u32,
    path: &str,
    requested: u8,
    now: u64,
    winner: Option<RuleMatch>,
) -> Vec<RuleCandidate> {
    let (forward, reversed) = path_keys(path);
    let prefix = kernel.maps.lookup_prefix(&path_key(ruleset, &forward));
    let suffix = kernel.maps.lookup_suffix(&path_key(ruleset, &reversed));
    let live = |list: &Option<PathRuleList>| -> Vec<RuleMatch> {
        let Some(list) = list else { return Vec::new() };
        list.rules[..list.count as usize]
            .iter()
            .filter(|rule| rule.access & requested != 0 && (rule.expires_at_ns == 0 || now < rule.expires_at_ns))
            .map(|rule| RuleMatch {
                rule_id: rule.rule_id,
                match_len: rule.match_len,
                verdict: Verdict::from_u8(rule.verdict),
            })
            .collect()
    };
    let from_prefix = live(&prefix);
    let from_suffix = live(&suffix);
    let mut candidates: Vec<RuleCandidate> = Vec::new();
    for (rule, in_suffix) in
        from_prefix.iter().map(|rule| (rule, false)).chain(from_suffix.iter().map(|rule| (rule, true)))
    {
        let Some(info) = kernel.rule_info(rule.rule_id) else { continue };
        if candidates.iter().any(|seen| seen.rule_id == info.id) {
            continue;
        }
        let won = winner.is_some_and(|winner| winner.rule_id == rule.rule_id);
        let why = match (won, winner) {
            (true, _) => why_it_won(rule, &from_prefix, &from_suffix, in_suffix),
            (false, Some(winner)) => {
                why_it_lost(rule, &winner, in_suffix, from_suffix.iter().any(|r| r.rule_id == winner.rule_id))
            }
            (false, None) => "does not apply".into(),
        };
        candidates.push(RuleCandidate {
            rule_id: info.id.clone(),
            rule: info.description.clone(),
            verdict: rule.verdict.name().into(),
            won,
            why,
        });
    }
    candidates.sort_by_key(|candidate| !candidate.won);
    candidates
}

fn rank_name(match_len: u16) -> &'static str {
    match match_len {
        0x7000.. => "a built-in guard",
        0x6000.. => "a restriction of the delegator",
        0x4000.. => "a grant",
        _ => "an exact path",
    }
}

fn why_it_won(rule: &RuleMatch, from_prefix: &[RuleMatch], from_suffix: &[RuleMatch], in_suffix: bool) -> String {
    if rule.match_len >= DECISIVE_RANK {
        return format!("{} outranks directory, name and suffix rules", rank_name(rule.match_len));
    }
    let other_side = if in_suffix { from_prefix } else { from_suffix };
    if other_side.is_empty() {
        return if in_suffix {
            "the longest matching name or suffix rule".into()
        } else {
            "the longest matching directory rule".into()
        };
    }
    "the stricter of the directory and the name or suffix rules (a name or suffix rule never relaxes a directory rule)"
        .into()
}

fn why_it_lost(rule: &RuleMatch, winner: &RuleMatch, in_suffix: bool, winner_in_suffix: bool) -> String {
    if winner.match_len >= DECISIVE_RANK {
        return format!("{} decides", rank_name(winner.match_len));
    }
    if in_suffix == winner_in_suffix {
        return if winner.match_len > rule.match_len {
            "a longer match of the same kind decides".into()
        } else {
            "a stricter rule of the same length decides".into()
        };
    }
    if winner.verdict > rule.verdict {
        "weaker than the winner: name and suffix rules never relax a directory rule, nor the other way round".into()
    } else {
        "same verdict, the longer match is reported".into()
    }
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
    let (forward, reversed) = path_keys(path);
    let prefix = kernel.maps.lookup_prefix(&path_key(ruleset, &forward));
    let suffix = kernel.maps.lookup_suffix(&path_key(ruleset, &reversed));
    decide_path(prefix.as_ref(), suffix.as_ref(), requested, default, now, &pass).unwrap_or((Verdict::Allow, None))
}
