//! Judging an action of a tagged process: identity status, then rules, then
//! the identity's mode and the backend's ability to refuse. Shared by every
//! hook family and both backends.

use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use aya_ebpf::maps::lpm_trie::Key;
use rtid_common::{
    DecisionSource, EACCES, EPERM, IdentityId, IdentityPolicy, IdentityPolicyKey, IdentityStatus, NetKey, Outcome,
    PathKey, ProcessIdentity, RuleMatch, Verdict, access, decide_address, decide_path, event_flags, mode,
    select_path_rule,
};

use crate::maps::{
    IDENTITY_POLICY, IDENTITY_STATUS, NET_RULES, PATH_PREFIX_RULES, PATH_SUFFIX_RULES, PROCESS_IDENTITY, RUNTIME_STATE,
};
use crate::path::{PathScratch, ResolvedPath, build_keys};

/// The calling process's identity: the one lookup every hook makes before
/// anything else. `None` is the untagged fast path.
#[inline(always)]
pub fn identity_of(tgid: u32) -> Option<ProcessIdentity> {
    // SAFETY: the value is copied out immediately; a concurrent delete cannot
    // free it while this program runs (hash map values are RCU-protected).
    unsafe { PROCESS_IDENTITY.get(&tgid) }.copied()
}

/// What policy in force says about an identity, with its generation.
pub struct ActivePolicy {
    pub policy: IdentityPolicy,
    pub generation: u32,
    pub now_ns: u64,
}

/// A missing policy fails closed: an identity whose policy was removed is
/// denied everything rather than let through.
const MISSING_POLICY: IdentityPolicy = IdentityPolicy {
    ruleset: 0,
    mode: mode::ENFORCE,
    audit: 0,
    default_file: Verdict::Deny as u8,
    default_network: Verdict::Deny as u8,
    default_exec: Verdict::Deny as u8,
    on_expiry: Verdict::Deny as u8,
    file_deny_fallback: Verdict::Kill as u8,
    unresolved_path: Verdict::Deny as u8,
    guards: rtid_common::guard::DENY_USER_NAMESPACES | rtid_common::guard::DENY_SOCKETS,
    denied_capabilities: u64::MAX,
    anonymous_exec: Verdict::Deny as u8,
    _pad: [0; 7],
};

#[inline(always)]
pub fn active_policy(identity: IdentityId) -> ActivePolicy {
    let (slot, generation) = match RUNTIME_STATE.get(0) {
        Some(state) => (state.active_slot, state.generation),
        None => (0, 0),
    };
    let key = IdentityPolicyKey { slot, identity };
    // SAFETY: copied out at once (see identity_of).
    let policy = unsafe { IDENTITY_POLICY.get(&key) }.copied().unwrap_or(MISSING_POLICY);
    // SAFETY: the helper has no preconditions.
    let now_ns = unsafe { bpf_ktime_get_boot_ns() };
    ActivePolicy { policy, generation, now_ns }
}

/// Passes a rule match through map memory. Each scan ends in several verifier
/// states (found or not, with different bounds); everything after it would
/// be verified once per combination of them, which older kernels' verifiers
/// cannot afford. Re-read from memory, the result is one unknown value.
#[inline(always)]
fn settle_match(found: Option<RuleMatch>) -> Option<RuleMatch> {
    let Some(scratch) = crate::path::scratch() else { return found };
    let packed = match found {
        Some(rule) => 1 << 63 | (rule.verdict as u64) << 48 | (rule.match_len as u64) << 32 | rule.rule_id as u64,
        None => 0,
    };
    let packed = crate::path::opaque_u64(scratch, packed);
    if packed >> 63 == 0 {
        return None;
    }
    Some(RuleMatch {
        rule_id: packed as u32,
        match_len: (packed >> 32) as u16,
        verdict: Verdict::from_u8((packed >> 48) as u8 & 7),
    })
}

/// A single-use rule decides once: true when `rule_id` is one whose use is
/// already spent, so the action is stepped up again (until the daemon, seeing
/// the use, removes the grant and recompiles).
#[inline(always)]
fn single_use_spent(source: DecisionSource, rule_id: u32) -> bool {
    if source != DecisionSource::Rule {
        return false;
    }
    let Some(uses) = crate::maps::ONCE_RULES.get_ptr_mut(&rule_id) else { return false };
    // SAFETY: a valid map value pointer; a concurrent use on another CPU can
    // at worst let one extra call through, never corrupt memory.
    let uses = unsafe { &mut *uses };
    if *uses == 0 {
        return true;
    }
    *uses -= 1;
    false
}

/// Same for a whole decision, so enforcement and reporting are verified once.
#[inline(always)]
pub fn settle_decision(decision: Decision) -> Decision {
    settle_with_verdict(decision, decision.verdict)
}

/// The final decision of one action: spends a single-use rule's use (exactly
/// once per action, so only here, never in the inner judges) and settles.
/// The check is folded into the packed value before it is settled, so its
/// branches add no verifier states either.
#[inline(always)]
pub fn settle_action(decision: Decision) -> Decision {
    let verdict = if single_use_spent(decision.source, decision.rule_id) { Verdict::StepUp } else { decision.verdict };
    settle_with_verdict(decision, verdict)
}

#[inline(always)]
fn settle_with_verdict(decision: Decision, verdict: Verdict) -> Decision {
    let Some(scratch) = crate::path::scratch() else { return Decision { verdict, ..decision } };
    let packed = (verdict as u64) << 40 | (decision.source as u64) << 32 | decision.rule_id as u64;
    let packed = crate::path::opaque_u64(scratch, packed);
    Decision {
        verdict: Verdict::from_u8((packed >> 40) as u8 & 7),
        source: DecisionSource::from_u8((packed >> 32) as u8 & 7),
        rule_id: packed as u32,
    }
}

/// A decision before enforcement.
#[derive(Clone, Copy)]
pub struct Decision {
    pub verdict: Verdict,
    pub source: DecisionSource,
    pub rule_id: u32,
}

impl Decision {
    #[inline(always)]
    fn from_match(found: Option<RuleMatch>, default: u8) -> (Verdict, Option<RuleMatch>) {
        match found {
            Some(rule) => (rule.verdict, Some(rule)),
            None => (Verdict::from_u8(default), None),
        }
    }

    #[inline(always)]
    fn from_pair(pair: (Verdict, Option<RuleMatch>)) -> Decision {
        match pair.1 {
            Some(rule) => Decision { verdict: pair.0, source: DecisionSource::Rule, rule_id: rule.rule_id },
            None => Decision { verdict: pair.0, source: DecisionSource::Default, rule_id: 0 },
        }
    }
}

/// Expiry and revocation override every rule.
#[inline(always)]
pub fn status_override(identity: IdentityId, active: &ActivePolicy) -> Option<Decision> {
    // SAFETY: copied out at once (see identity_of).
    let status = unsafe { IDENTITY_STATUS.get(&identity) }.copied()?;
    let source = if status.revoked != 0 {
        DecisionSource::IdentityRevoked
    } else if status.expires_at_ns != 0 && active.now_ns >= status.expires_at_ns {
        DecisionSource::IdentityExpired
    } else {
        return None;
    };
    let verdict = match Verdict::from_u8(active.policy.on_expiry) {
        Verdict::Kill => Verdict::Kill,
        _ => Verdict::Deny,
    };
    Some(Decision { verdict, source, rule_id: 0 })
}

/// Judges a path against the prefix and suffix tries, per requested access bit;
/// the strictest result across bits holds.
#[inline(always)]
pub fn judge_path(
    prefix_key: &Key<PathKey>,
    suffix_key: &Key<PathKey>,
    requested: u8,
    default: u8,
    now_ns: u64,
) -> Decision {
    let prefix = PATH_PREFIX_RULES.get(prefix_key);
    let suffix = PATH_SUFFIX_RULES.get(suffix_key);
    match decide_path(prefix, suffix, requested, Verdict::from_u8(default), now_ns, &settle_match) {
        Some(pair) => settle_decision(Decision::from_pair(pair)),
        // No access requested (O_PATH): nothing to judge.
        None => Decision { verdict: Verdict::Allow, source: DecisionSource::Default, rule_id: 0 },
    }
}

/// The decision for a path action (open or exec) of a tagged process:
/// expiry and revocation first, then the path rules.
#[inline(always)]
pub fn decide_path_action(
    process: &ProcessIdentity,
    active: &ActivePolicy,
    scratch: &mut PathScratch,
    resolved: &ResolvedPath,
    requested: u8,
    default: u8,
) -> Decision {
    settle_action(match status_override(process.identity, active) {
        Some(decision) => decision,
        // Never judged on the tail that was resolved: that could be any name.
        None if resolved.unresolved => {
            crate::maps::count(rtid_common::counter::PATH_UNRESOLVED);
            let verdict = Verdict::from_u8(active.policy.unresolved_path);
            Decision { verdict, source: DecisionSource::UnresolvedPath, rule_id: 0 }
        }
        None if resolved.anonymous && requested & access::EXEC != 0 => {
            let verdict = Verdict::from_u8(active.policy.anonymous_exec);
            Decision { verdict, source: DecisionSource::AnonymousExec, rule_id: 0 }
        }
        None => {
            build_keys(scratch, resolved, active.policy.ruleset);
            judge_path(&scratch.prefix_key, &scratch.suffix_key, requested, default, active.now_ns)
        }
    })
}

/// Judges an address (v6 or v4-mapped) and port against the network trie.
#[inline(always)]
pub fn judge_address(key: &Key<NetKey>, port: u16, protocol_bit: u8, default: u8, now_ns: u64) -> Decision {
    let pair = decide_address(NET_RULES.get(key), port, protocol_bit, Verdict::from_u8(default), now_ns, &settle_match);
    settle_decision(Decision::from_pair(pair))
}

/// Judges a unix socket path (exact or directory-prefix rules).
#[inline(always)]
pub fn judge_unix(key: &Key<PathKey>, default: u8, now_ns: u64) -> Decision {
    let found =
        settle_match(crate::maps::UNIX_RULES.get(key).and_then(|list| select_path_rule(list, access::ALL, now_ns)));
    settle_decision(Decision::from_pair(Decision::from_match(found, default)))
}

/// What the hook must do.
#[derive(Clone, Copy)]
pub struct Enforcement {
    pub outcome: Outcome,
    /// Errno to return when `outcome` is `Blocked`.
    pub errno: i32,
    /// Send SIGKILL to the acting process.
    pub kill: bool,
    pub flags: u16,
}

/// Turns a decision into an action given the identity's mode and whether this
/// hook can refuse the call (LSM, cgroup socket hooks) or only kill or flag
/// (syscall-exit tracepoints). Settled like decisions, so reporting is verified once.
#[inline(always)]
pub fn enforce(decision: &Decision, policy: &IdentityPolicy, can_refuse: bool) -> Enforcement {
    settle_enforcement(choose_enforcement(decision, policy, can_refuse))
}

#[inline(always)]
pub fn settle_enforcement(enforcement: Enforcement) -> Enforcement {
    let Some(scratch) = crate::path::scratch() else { return enforcement };
    let packed = (enforcement.outcome as u64) << 56
        | (enforcement.kill as u64) << 48
        | (enforcement.flags as u64) << 32
        | enforcement.errno as u32 as u64;
    let packed = crate::path::opaque_u64(scratch, packed);
    Enforcement {
        outcome: Outcome::from_u8((packed >> 56) as u8 & 7),
        kill: (packed >> 48) & 1 != 0,
        flags: (packed >> 32) as u16,
        errno: packed as u32 as i32,
    }
}

#[inline(always)]
fn choose_enforcement(decision: &Decision, policy: &IdentityPolicy, can_refuse: bool) -> Enforcement {
    if decision.source == DecisionSource::Protected {
        // Built-in protections hold in audit mode too, and kill where they cannot refuse.
        return crate::protect::protected_enforcement(can_refuse);
    }
    let audit_mode = policy.mode == mode::AUDIT;
    let flags = if audit_mode { event_flags::AUDIT_MODE } else { 0 };
    let allowed = Enforcement { outcome: Outcome::Allowed, errno: 0, kill: false, flags };
    if !decision.verdict.is_blocking() {
        return allowed;
    }
    if audit_mode {
        return Enforcement { outcome: Outcome::AuditOnly, ..allowed };
    }
    match decision.verdict {
        Verdict::Kill => Enforcement { outcome: Outcome::Killed, kill: true, ..allowed },
        Verdict::Deny if can_refuse => Enforcement { outcome: Outcome::Blocked, errno: EPERM, ..allowed },
        Verdict::StepUp if can_refuse => Enforcement { outcome: Outcome::Blocked, errno: EACCES, ..allowed },
        // Deny or step-up where the call cannot be refused: the policy's fallback.
        _ => {
            let flags = flags | event_flags::BACKEND_FALLBACK;
            if Verdict::from_u8(policy.file_deny_fallback) == Verdict::Kill {
                Enforcement { outcome: Outcome::Killed, errno: 0, kill: true, flags }
            } else {
                Enforcement { outcome: Outcome::FlaggedInstead, errno: 0, kill: false, flags }
            }
        }
    }
}

/// Enforcement plus quarantine: a refused action counts against the
/// identity's quarantine threshold; crossing it revokes the identity at once,
/// in the kernel (and kills the actor when the policy says so). The event of
/// the action that tripped it carries `QUARANTINE_TRIPPED` (no second event:
/// each emit site costs verifier budget on older kernels).
#[inline(always)]
pub fn enforce_for(identity: IdentityId, decision: &Decision, active: &ActivePolicy, can_refuse: bool) -> Enforcement {
    let mut enforcement = enforce(decision, &active.policy, can_refuse);
    let refused = matches!(enforcement.outcome, Outcome::Blocked | Outcome::Killed | Outcome::FlaggedInstead);
    if refused && decision.source != DecisionSource::IdentityRevoked {
        if let Some(then_kill) = note_refusal(identity, active.now_ns) {
            enforcement.kill |= then_kill;
            enforcement.flags |= event_flags::QUARANTINE_TRIPPED;
        }
    }
    settle_enforcement(enforcement)
}

/// Counts a refusal; returns `Some(then_kill)` when this one trips the quarantine.
#[inline(always)]
fn note_refusal(identity: IdentityId, now_ns: u64) -> Option<bool> {
    let state = crate::maps::QUARANTINE.get_ptr_mut(&identity)?;
    // SAFETY: a valid map value pointer; concurrent updates from other CPUs
    // can only lose a count, never corrupt memory.
    let state = unsafe { &mut *state };
    if state.tripped != 0 || state.after == 0 {
        return None;
    }
    if now_ns.saturating_sub(state.window_start_ns) > state.window_ns {
        state.window_start_ns = now_ns;
        state.count = 0;
    }
    state.count += 1;
    if state.count < state.after {
        return None;
    }
    state.tripped = 1;
    // SAFETY: copied out at once (see identity_of).
    let revoked =
        IdentityStatus { revoked: 1, ..unsafe { IDENTITY_STATUS.get(&identity) }.copied().unwrap_or_default() };
    let _ = IDENTITY_STATUS.insert(&identity, &revoked, 0);
    Some(state.then_kill != 0)
}

/// Whether an event is sent: every verdict other than a plain allow, and
/// allowed actions too for identities that audit everything.
#[inline(always)]
pub fn should_report(decision: &Decision, policy: &IdentityPolicy) -> bool {
    decision.verdict != Verdict::Allow || policy.audit != 0
}
