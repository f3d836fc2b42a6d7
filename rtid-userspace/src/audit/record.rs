//! The on-disk record: one JSON object per line,
//!
//! ```text
//! {"seq":7,"time":"2025-01-01T00:00:00.000000Z","kind":"decision","prev":"<64 hex>","body":{...},"hash":"<64 hex>"}
//! ```
//!
//! `hash` is the SHA-256 of the exact bytes of the line before `,"hash":`.
//! Hashing the bytes as written, not a re-serialisation, means verification
//! never depends on JSON formatting being stable across serde versions; and
//! since those bytes include `prev`, each hash commits to the whole history.

use std::time::SystemTime;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

/// A SHA-256 digest.
pub(crate) type Digest = [u8; 32];

/// `prev` of the very first record of a trail.
pub(crate) const GENESIS: Digest = [0; 32];

/// What follows the hashed part of every line: `,"hash":"<64 hex>"}`.
const HASH_FIELD: &[u8] = b",\"hash\":\"";
const HASH_HEX_LEN: usize = 64;
const LINE_END: &[u8] = b"\"}";
const SUFFIX_LEN: usize = HASH_FIELD.len() + HASH_HEX_LEN + LINE_END.len();

/// What a record is, as written in `kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum RecordKind {
    Decision,
    Change,
    /// Written by the trail itself where records were lost.
    Gap,
}

impl RecordKind {
    fn as_str(self) -> &'static str {
        match self {
            RecordKind::Decision => "decision",
            RecordKind::Change => "change",
            RecordKind::Gap => "gap",
        }
    }
}

/// The position a new record takes in the chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ChainHead {
    pub next_seq: u64,
    pub prev: Digest,
}

impl ChainHead {
    pub const GENESIS: ChainHead = ChainHead { next_seq: 0, prev: GENESIS };
}

/// Renders the record at `head` as one line (with its newline) and moves
/// `head` past it.
pub(crate) fn render(head: &mut ChainHead, kind: RecordKind, time: SystemTime, body: &serde_json::Value) -> Vec<u8> {
    let covered = format!(
        r#"{{"seq":{},"time":"{}","kind":"{}","prev":"{}","body":{}"#,
        head.next_seq,
        humantime::format_rfc3339_micros(time),
        kind.as_str(),
        hex::encode(head.prev),
        body,
    );
    let (line, hash) = seal(covered.as_bytes());
    *head = ChainHead { next_seq: head.next_seq.saturating_add(1), prev: hash };
    line
}

/// Appends the hash of `covered` to it, making a complete line.
pub(crate) fn seal(covered: &[u8]) -> (Vec<u8>, Digest) {
    let hash = digest(covered);
    let mut line = Vec::with_capacity(covered.len() + SUFFIX_LEN + 1);
    line.extend_from_slice(covered);
    line.extend_from_slice(HASH_FIELD);
    line.extend_from_slice(hex::encode(hash).as_bytes());
    line.extend_from_slice(LINE_END);
    line.push(b'\n');
    (line, hash)
}

fn digest(bytes: &[u8]) -> Digest {
    Sha256::digest(bytes).into()
}

/// A line read back: what the chain needs of it.
#[derive(Clone, Debug)]
pub(crate) struct ParsedRecord {
    pub seq: u64,
    pub kind: RecordKind,
    pub prev: Digest,
    /// The hash the line claims.
    pub hash: Digest,
    /// Whether the line's content still hashes to `hash`.
    pub intact: bool,
    /// For a gap record, how many records it says were lost.
    pub lost: u64,
}

/// The fields, all required, none unknown; serde refuses duplicate keys, so
/// a second `hash` cannot hide in the hashed part.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRecord {
    seq: u64,
    time: String,
    kind: RecordKind,
    prev: String,
    body: serde_json::Value,
    hash: String,
}

/// Parses one line (without its newline). `Err` says why it is not a record.
pub(crate) fn parse(line: &[u8]) -> Result<ParsedRecord, String> {
    let (covered, claimed_hex) = split(line)?;
    let stored: StoredRecord = serde_json::from_slice(line).map_err(|error| format!("not a record: {error}"))?;
    humantime::parse_rfc3339(&stored.time).map_err(|error| format!("time {:?}: {error}", stored.time))?;
    let prev = decode_digest(&stored.prev).map_err(|error| format!("prev: {error}"))?;
    let hash = decode_digest(claimed_hex)?;
    // The JSON parser and the byte split must agree on which hash is claimed.
    if stored.hash != claimed_hex {
        return Err("the hash field is not the last field".into());
    }
    let lost = match stored.kind {
        RecordKind::Gap => stored.body.get("lost").and_then(serde_json::Value::as_u64).unwrap_or(0),
        _ => 0,
    };
    Ok(ParsedRecord { seq: stored.seq, kind: stored.kind, prev, hash, intact: digest(covered) == hash, lost })
}

/// Splits a line into the hashed bytes and the hex hash that ends it.
fn split(line: &[u8]) -> Result<(&[u8], &str), String> {
    let Some(suffix_start) = line.len().checked_sub(SUFFIX_LEN) else {
        return Err("too short to be a record".into());
    };
    let (covered, suffix) = line.split_at(suffix_start);
    let hex_part = suffix
        .strip_prefix(HASH_FIELD)
        .and_then(|rest| rest.strip_suffix(LINE_END))
        .ok_or("does not end with the \"hash\" field")?;
    let hex_part = std::str::from_utf8(hex_part).map_err(|_| "the hash is not hex")?;
    Ok((covered, hex_part))
}

fn decode_digest(text: &str) -> Result<Digest, String> {
    let mut digest = [0; 32];
    hex::decode_to_slice(text, &mut digest).map_err(|error| format!("{text:?} is not a SHA-256 in hex: {error}"))?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line_without_newline(line: &[u8]) -> &[u8] {
        line.strip_suffix(b"\n").unwrap()
    }

    #[test]
    fn a_rendered_record_parses_back_and_chains() {
        let mut head = ChainHead::GENESIS;
        let first = render(&mut head, RecordKind::Decision, SystemTime::now(), &serde_json::json!({"a": "x\ny"}));
        let after_first = head;
        let second = render(&mut head, RecordKind::Gap, SystemTime::now(), &serde_json::json!({"lost": 3}));
        assert_eq!(first.iter().filter(|&&byte| byte == b'\n').count(), 1, "one line per record");

        let first = parse(line_without_newline(&first)).unwrap();
        assert!(first.intact);
        assert_eq!((first.seq, first.prev, first.kind), (0, GENESIS, RecordKind::Decision));
        assert_eq!(first.hash, after_first.prev);

        let second = parse(line_without_newline(&second)).unwrap();
        assert!(second.intact);
        assert_eq!((second.seq, second.prev, second.lost), (1, first.hash, 3));
        assert_eq!(head, ChainHead { next_seq: 2, prev: second.hash });
    }

    #[test]
    fn a_changed_byte_breaks_the_hash_but_not_the_parse() {
        let mut head = ChainHead::GENESIS;
        let line = render(&mut head, RecordKind::Change, SystemTime::now(), &serde_json::json!({"n": 1}));
        let edited = String::from_utf8(line).unwrap().replace(r#"{"n":1}"#, r#"{"n":2}"#);
        let parsed = parse(line_without_newline(edited.as_bytes())).unwrap();
        assert!(!parsed.intact);
    }

    #[test]
    fn non_records_are_refused_with_a_reason() {
        assert!(parse(b"hello").unwrap_err().contains("too short"));
        let mut head = ChainHead::GENESIS;
        let line = render(&mut head, RecordKind::Change, SystemTime::now(), &serde_json::json!({}));
        let line = String::from_utf8(line).unwrap();
        let extra_field = line.replace(r#""body""#, r#""extra":1,"body""#);
        assert!(parse(line_without_newline(extra_field.as_bytes())).unwrap_err().contains("extra"));
        let bad_kind = line.replace("\"change\"", "\"other\"");
        assert!(parse(line_without_newline(bad_kind.as_bytes())).is_err());
    }
}
