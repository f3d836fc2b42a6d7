//! Compiled rules as the kernel reads them, and the one function that picks the
//! rule deciding an action. Userspace (`rtid policy explain`) calls the same
//! selection code on the same map values, so the two can never disagree.
//!
//! Path and address rules live in LPM tries. A trie lookup returns only the
//! longest matching entry, so userspace compiles every entry to carry the rules
//! of all shorter entries that cover it too, sorted longest match first and, at
//! equal length, strictest first. One lookup then yields every candidate and the
//! first rule that applies to the access is the answer.

use crate::verdict::Verdict;

/// Path bytes in an LPM key: the kernel limits LPM data to 256 bytes, four of
/// which hold the ruleset. Rule paths longer than this are refused by policy
/// validation; longer runtime paths are matched on their first (prefix trie) or
/// last (suffix trie) bytes.
pub const PATH_KEY_BYTES: usize = 252;
/// Candidate rules stored with one trie entry (its own and the ones it inherits).
pub const RULES_PER_ENTRY: usize = 16;
/// Added to the match length of rules that decide by precedence rather than
/// by strictness: exact-path rules, grants, delegators' restrictions and
/// built-in guards (which add larger ranks on top). Longer than any path.
pub const DECISIVE_RANK: u16 = 0x0800;
/// Bits of an LPM key before the path or address: the ruleset id.
pub const RULESET_PREFIX_BITS: u32 = 32;

/// LPM data for file, exec and unix-socket path rules: the ruleset, then the path
/// (forward in the prefix trie, reversed in the suffix trie).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathKey {
    pub ruleset: u32,
    pub path: [u8; PATH_KEY_BYTES],
}

impl PathKey {
    pub const fn zeroed() -> PathKey {
        PathKey { ruleset: 0, path: [0; PATH_KEY_BYTES] }
    }
}

/// One candidate path rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathRule {
    /// Rule id reported in events; userspace maps it to the policy's name.
    pub rule_id: u32,
    /// Path bytes the rule's pattern covers: longer is more specific.
    pub match_len: u16,
    /// `access::*` bits this rule applies to.
    pub access: u8,
    /// `Verdict as u8`.
    pub verdict: u8,
    /// Boot-clock ns after which the rule no longer applies; 0: never.
    pub expires_at_ns: u64,
}

/// Value of the path tries: candidates, most specific first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PathRuleList {
    pub count: u32,
    pub _pad: u32,
    pub rules: [PathRule; RULES_PER_ENTRY],
}

impl Default for PathRuleList {
    fn default() -> Self {
        PathRuleList { count: 0, _pad: 0, rules: [PathRule::default(); RULES_PER_ENTRY] }
    }
}

/// LPM data for network rules: the ruleset, then the IPv6 address (IPv4 as
/// v4-mapped `::ffff:a.b.c.d`, so one trie serves both families).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetKey {
    pub ruleset: u32,
    pub addr: [u8; 16],
}

/// One candidate network rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRule {
    pub rule_id: u32,
    /// Inclusive port range, host byte order. 0..=65535 for any port.
    pub port_low: u16,
    pub port_high: u16,
    /// Prefix length of the rule's CIDR in the v6 address space (v4 rules are 96 + len).
    pub prefix_len: u8,
    /// `protocol::*` bits.
    pub protocols: u8,
    /// `Verdict as u8`.
    pub verdict: u8,
    pub _pad: u8,
    pub _pad2: u32,
    /// Boot-clock ns after which the rule no longer applies; 0: never.
    pub expires_at_ns: u64,
}

/// Value of the network trie: candidates, most specific first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NetRuleList {
    pub count: u32,
    pub _pad: u32,
    pub rules: [NetRule; RULES_PER_ENTRY],
}

impl Default for NetRuleList {
    fn default() -> Self {
        NetRuleList { count: 0, _pad: 0, rules: [NetRule::default(); RULES_PER_ENTRY] }
    }
}

/// The rule that decided, as reported in events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleMatch {
    pub rule_id: u32,
    pub match_len: u16,
    pub verdict: Verdict,
}

impl RuleMatch {
    /// Longest match wins; at equal length the stricter verdict wins.
    #[inline(always)]
    pub fn beats(&self, other: &RuleMatch) -> bool {
        self.match_len > other.match_len || (self.match_len == other.match_len && self.verdict > other.verdict)
    }
}

#[inline(always)]
fn rule_live(expires_at_ns: u64, now_ns: u64) -> bool {
    expires_at_ns == 0 || now_ns < expires_at_ns
}

// The scans below visit every slot, last to first, and copy the fields of each
// applicable candidate (so the first applicable one is what remains), without
// breaking out early or remembering an index. The eBPF verifier then tracks
// two states per slot (found or not) instead of one per exit or per index,
// which multiplied across lookups exhausts its budget on older kernels.

/// The first live candidate in `list` that covers the single access bit `access_bit`.
#[inline(always)]
pub fn select_path_rule(list: &PathRuleList, access_bit: u8, now_ns: u64) -> Option<RuleMatch> {
    let mut found = false;
    let (mut rule_id, mut match_len, mut verdict) = (0u32, 0u16, 0u8);
    let mut index = RULES_PER_ENTRY;
    while index > 0 {
        index -= 1;
        let rule = &list.rules[index];
        if (index as u32) < list.count && rule.access & access_bit != 0 && rule_live(rule.expires_at_ns, now_ns) {
            found = true;
            rule_id = rule.rule_id;
            match_len = rule.match_len;
            verdict = rule.verdict;
        }
    }
    found.then(|| RuleMatch { rule_id, match_len, verdict: Verdict::from_u8(verdict) })
}

/// The first live candidate in `list` that covers `port` and `protocol_bit`.
#[inline(always)]
pub fn select_net_rule(list: &NetRuleList, port: u16, protocol_bit: u8, now_ns: u64) -> Option<RuleMatch> {
    let mut found = false;
    let (mut rule_id, mut prefix_len, mut verdict) = (0u32, 0u8, 0u8);
    let mut index = RULES_PER_ENTRY;
    while index > 0 {
        index -= 1;
        let rule = &list.rules[index];
        if (index as u32) < list.count
            && rule.protocols & protocol_bit != 0
            && port >= rule.port_low
            && port <= rule.port_high
            && rule_live(rule.expires_at_ns, now_ns)
        {
            found = true;
            rule_id = rule.rule_id;
            prefix_len = rule.prefix_len;
            verdict = rule.verdict;
        }
    }
    found.then(|| RuleMatch { rule_id, match_len: prefix_len as u16, verdict: Verdict::from_u8(verdict) })
}

/// Of the winners from the prefix trie (exact paths and directories) and the
/// suffix trie (names and suffixes), the one that decides. A name or suffix
/// rule never relaxes a directory rule: between the two the stricter verdict
/// wins (the longer match at equal verdicts), so `deny ~/.aws/` with `flag
/// credentials` still refuses `~/.aws/credentials`, and `deny *.pem` holds
/// inside an allowed project directory. Only rules ranked decisive (an exact
/// path, a grant, a delegator's restriction, a guard) win by rank.
#[inline(always)]
pub fn stronger_match(prefix: Option<RuleMatch>, suffix: Option<RuleMatch>) -> Option<RuleMatch> {
    match (prefix, suffix) {
        (Some(prefix), Some(suffix)) => {
            let suffix_wins = if prefix.match_len >= DECISIVE_RANK || suffix.match_len >= DECISIVE_RANK {
                suffix.beats(&prefix)
            } else {
                suffix.verdict > prefix.verdict
                    || (suffix.verdict == prefix.verdict && suffix.match_len > prefix.match_len)
            };
            Some(if suffix_wins { suffix } else { prefix })
        }
        (Some(prefix), None) => Some(prefix),
        (None, suffix) => suffix,
    }
}

/// The stricter of two decisions for different access bits of one action
/// (an open for read and write is judged for each and the stricter result holds).
#[inline(always)]
pub fn stricter(a: (Verdict, Option<RuleMatch>), b: (Verdict, Option<RuleMatch>)) -> (Verdict, Option<RuleMatch>) {
    if b.0 > a.0 { b } else { a }
}

const ACCESS_BITS: [u8; 3] =
    [crate::verdict::access::READ, crate::verdict::access::WRITE, crate::verdict::access::EXEC];

/// The winning candidate of one trie entry for each requested access bit.
/// `settle` is applied to each result (the kernel passes it through map memory
/// to keep the verifier's state count down; userspace passes it through).
#[inline(always)]
fn candidates_per_bit(
    list: Option<&PathRuleList>,
    requested: u8,
    now_ns: u64,
    settle: &impl Fn(Option<RuleMatch>) -> Option<RuleMatch>,
) -> [Option<RuleMatch>; 3] {
    let mut found = [None; 3];
    // Every use of the list sits inside its null check: the verifier refuses
    // arithmetic on a possibly-null map value, which a shared loop invited.
    if let Some(list) = list {
        let mut index = 0;
        while index < ACCESS_BITS.len() {
            if requested & ACCESS_BITS[index] != 0 {
                found[index] = settle(select_path_rule(list, ACCESS_BITS[index], now_ns));
            }
            index += 1;
        }
    }
    found
}

/// The decision for a path: per requested access bit, the stronger of the
/// prefix-trie and suffix-trie winners (or the default when neither matches);
/// across bits, the strictest. `None` when no access was requested (O_PATH).
/// The kernel programs and `rtid policy explain` both decide through this.
#[inline(always)]
pub fn decide_path(
    prefix: Option<&PathRuleList>,
    suffix: Option<&PathRuleList>,
    requested: u8,
    default: Verdict,
    now_ns: u64,
    settle: &impl Fn(Option<RuleMatch>) -> Option<RuleMatch>,
) -> Option<(Verdict, Option<RuleMatch>)> {
    let from_prefix = candidates_per_bit(prefix, requested, now_ns, settle);
    let from_suffix = candidates_per_bit(suffix, requested, now_ns, settle);
    let mut result: Option<(Verdict, Option<RuleMatch>)> = None;
    let mut index = 0;
    while index < ACCESS_BITS.len() {
        if requested & ACCESS_BITS[index] != 0 {
            let pair = match stronger_match(from_prefix[index], from_suffix[index]) {
                Some(rule) => (rule.verdict, Some(rule)),
                None => (default, None),
            };
            result = Some(match result {
                Some(previous) => stricter(previous, pair),
                None => pair,
            });
        }
        index += 1;
    }
    result
}

/// The decision for an address and port (see `decide_path`).
#[inline(always)]
pub fn decide_address(
    list: Option<&NetRuleList>,
    port: u16,
    protocol_bit: u8,
    default: Verdict,
    now_ns: u64,
    settle: &impl Fn(Option<RuleMatch>) -> Option<RuleMatch>,
) -> (Verdict, Option<RuleMatch>) {
    let found = settle(list.and_then(|list| select_net_rule(list, port, protocol_bit, now_ns)));
    match found {
        Some(rule) => (rule.verdict, Some(rule)),
        None => (default, None),
    }
}

#[cfg(feature = "user")]
crate::impl_pod!(PathKey, PathRule, PathRuleList, NetKey, NetRule, NetRuleList);
