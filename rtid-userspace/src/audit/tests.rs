//! The writer and verify together, on real files: an untouched trail passes,
//! each kind of tampering is named at the right line, rotation, restarts and
//! drops keep the chain whole.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant, SystemTime},
};

use serde_json::json;

use super::{
    AuditKind, AuditStats, Tampering, TamperingKind, VerifyError,
    record::{self, ChainHead, RecordKind},
    start, verify_files,
    writer::{rotated_path, start_with_capacity},
};
use crate::daemon::config::AuditConfig;

/// A directory of its own under the system temp dir, removed afterwards.
struct TempDir(PathBuf);

impl TempDir {
    fn new(test: &str) -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!("rtid-audit-{}-{test}-{}", std::process::id(), COUNT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(unique);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A config whose log is in a subdirectory not yet made (start makes it).
    fn config(&self) -> AuditConfig {
        AuditConfig {
            path: self.0.join("trail").join("audit.log"),
            max_size: bytesize::ByteSize::mib(64),
            keep: 3,
            flush_interval: Duration::from_millis(20),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Appends `count` records, numbered by `"n"` from `from`, and stops the writer.
fn write_records(config: &AuditConfig, from: u64, count: u64) -> AuditStats {
    let writer = start(config).unwrap();
    for n in from..from + count {
        let kind = if n % 2 == 0 { AuditKind::Decision } else { AuditKind::Change };
        writer.append(kind, json!({ "n": n, "what": "deny open /etc/shadow" }));
    }
    writer.flush_and_stop();
    writer.stats()
}

fn read_lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    fs::write(path, text).unwrap();
}

fn field(line: &str, name: &str) -> serde_json::Value {
    serde_json::from_str::<serde_json::Value>(line).unwrap()[name].clone()
}

fn hash_of(line: &str) -> [u8; 32] {
    let mut hash = [0; 32];
    hex::decode_to_slice(field(line, "hash").as_str().unwrap(), &mut hash).unwrap();
    hash
}

/// What an attacker who knows the format does after an edit: hash it again.
fn rehash(line: &str) -> String {
    let covered = &line[..line.rfind(",\"hash\":").unwrap()];
    let (sealed, _) = record::seal(covered.as_bytes());
    String::from_utf8(sealed).unwrap().trim_end().to_owned()
}

/// A record made with the writer's own code, at any place in the chain.
fn forge(seq: u64, prev: [u8; 32]) -> String {
    let mut head = ChainHead { next_seq: seq, prev };
    let line =
        record::render(&mut head, RecordKind::Decision, SystemTime::now(), &json!({ "n": 1000, "what": "allow" }));
    String::from_utf8(line).unwrap().trim_end().to_owned()
}

/// A ten-record trail (seq 0..=9 on lines 1..=10) and its lines.
fn ten_records(dir: &TempDir) -> (PathBuf, Vec<String>) {
    let config = dir.config();
    write_records(&config, 0, 10);
    let lines = read_lines(&config.path);
    assert_eq!(lines.len(), 10);
    (config.path, lines)
}

fn tampering(path: &Path) -> Tampering {
    match verify_files(&[path.to_owned()]) {
        Err(VerifyError::Tampered(tampering)) => tampering,
        other => panic!("expected tampering, got {other:?}"),
    }
}

fn assert_named(tampering: &Tampering, kind: TamperingKind, line: u64, seq: Option<u64>) {
    assert_eq!((&tampering.kind, tampering.line, tampering.seq), (&kind, line, seq), "{tampering}");
}

#[test]
fn an_untouched_trail_verifies_and_each_record_names_the_one_before() {
    let dir = TempDir::new("untouched");
    let (path, lines) = ten_records(&dir);

    assert_eq!(field(&lines[0], "prev"), json!("0".repeat(64)));
    for (seq, pair) in lines.windows(2).enumerate() {
        assert_eq!(field(&pair[1], "prev"), field(&pair[0], "hash"), "seq {}", seq + 1);
        assert_eq!(field(&pair[1], "seq"), json!(seq + 1));
    }
    assert_eq!(field(&lines[0], "kind"), json!("decision"));
    assert_eq!(field(&lines[1], "kind"), json!("change"));
    assert_eq!(field(&lines[3], "body")["n"], json!(3));
    humantime::parse_rfc3339(field(&lines[0], "time").as_str().unwrap()).unwrap();

    let summary = verify_files(&[path]).unwrap();
    assert_eq!((summary.records, summary.files, summary.first_seq, summary.last_seq), (10, 1, 0, 9));
    assert_eq!(summary.last_hash, field(&lines[9], "hash").as_str().unwrap());
    assert_eq!(summary.gaps, 0);
    assert!(summary.to_string().contains("seq 0"), "{summary}");
}

#[test]
fn an_edited_body_is_named() {
    let dir = TempDir::new("edited");
    let (path, mut lines) = ten_records(&dir);
    lines[3] = lines[3].replace(r#""n":3"#, r#""n":33"#);
    write_lines(&path, &lines);

    let found = tampering(&path);
    assert_named(&found, TamperingKind::Edited, 4, Some(3));
    let text = found.to_string();
    assert!(text.contains(&format!("{}:4: seq 3: edited", path.display())), "{text}");
}

#[test]
fn an_edit_with_a_recomputed_hash_is_named_by_the_next_record() {
    let dir = TempDir::new("rehashed");
    let (path, mut lines) = ten_records(&dir);
    lines[3] = rehash(&lines[3].replace("deny", "allow"));
    write_lines(&path, &lines);

    assert_named(&tampering(&path), TamperingKind::Edited, 4, Some(3));
}

#[test]
fn an_edited_first_record_is_caught_too() {
    let dir = TempDir::new("first-edited");
    let (path, mut lines) = ten_records(&dir);
    lines[0] = rehash(&lines[0].replace("deny", "allow"));
    write_lines(&path, &lines);

    assert_named(&tampering(&path), TamperingKind::Edited, 1, Some(0));
}

#[test]
fn a_changed_seq_with_a_recomputed_hash_is_named() {
    let dir = TempDir::new("seq-edited");
    let (path, mut lines) = ten_records(&dir);
    lines[3] = rehash(&lines[3].replace(r#"{"seq":3,"#, r#"{"seq":30,"#));
    write_lines(&path, &lines);

    assert_named(&tampering(&path), TamperingKind::Edited, 4, Some(30));
}

#[test]
fn a_second_record_claiming_the_same_predecessor_is_named_as_inserted() {
    let dir = TempDir::new("rival");
    let (path, mut lines) = ten_records(&dir);
    // Names line 3 as its predecessor, as line 4 (seq 3) does, but with a stale seq.
    lines.insert(3, forge(2, hash_of(&lines[2])));
    write_lines(&path, &lines);

    assert_named(&tampering(&path), TamperingKind::Inserted, 4, Some(2));
}

#[test]
fn a_deleted_line_is_named_with_the_missing_seqs() {
    let dir = TempDir::new("deleted");
    let (path, mut lines) = ten_records(&dir);
    lines.remove(3);
    write_lines(&path, &lines);

    // The hole is found at the record after it, now line 4.
    let found = tampering(&path);
    assert_named(&found, TamperingKind::Removed { first: 3, last: 3 }, 4, Some(4));
    assert!(found.to_string().contains("record seq 3 removed"), "{found}");

    lines.drain(3..5); // seq 4 and 5 as well
    write_lines(&path, &lines);
    assert_named(&tampering(&path), TamperingKind::Removed { first: 3, last: 5 }, 4, Some(6));
}

#[test]
fn a_forged_record_chained_onto_a_genuine_one_is_named_as_inserted() {
    let dir = TempDir::new("inserted-chained");
    let (path, mut lines) = ten_records(&dir);
    // The most plausible forgery: the next seq, naming the record before it.
    let forged = forge(3, hash_of(&lines[2]));
    lines.insert(3, forged);
    write_lines(&path, &lines);

    assert_named(&tampering(&path), TamperingKind::Inserted, 4, Some(3));
}

#[test]
fn a_forged_record_with_a_made_up_prev_is_named_as_inserted() {
    let dir = TempDir::new("inserted-unchained");
    let (path, mut lines) = ten_records(&dir);
    lines.insert(3, forge(2, [7; 32]));
    write_lines(&path, &lines);

    assert_named(&tampering(&path), TamperingKind::Inserted, 4, Some(2));
}

#[test]
fn a_copied_record_is_named_as_inserted() {
    let dir = TempDir::new("inserted-copy");
    let (path, mut lines) = ten_records(&dir);
    let copy = lines[1].clone();
    lines.insert(5, copy);
    write_lines(&path, &lines);

    let found = tampering(&path);
    assert_named(&found, TamperingKind::Inserted, 6, Some(1));
    assert!(found.detail.contains("a copy of"), "{found}");
}

#[test]
fn two_swapped_lines_are_named_as_reordered() {
    let dir = TempDir::new("swapped");
    let (path, mut lines) = ten_records(&dir);
    lines.swap(3, 4);
    write_lines(&path, &lines);
    assert_named(&tampering(&path), TamperingKind::Reordered, 4, Some(4));

    // The last two: nothing after them names either.
    lines.swap(3, 4);
    lines.swap(8, 9);
    write_lines(&path, &lines);
    assert_named(&tampering(&path), TamperingKind::Reordered, 9, Some(9));
}

#[test]
fn a_record_moved_further_is_named_as_reordered() {
    let dir = TempDir::new("moved");
    let (path, mut lines) = ten_records(&dir);
    let moved = lines.remove(2);
    lines.insert(6, moved);
    write_lines(&path, &lines);

    // Line 3 now holds seq 3, whose predecessor only comes at line 7.
    assert_named(&tampering(&path), TamperingKind::Reordered, 3, Some(3));
}

#[test]
fn extreme_forged_seqs_are_reported_not_panicked_on() {
    let dir = TempDir::new("extreme");
    let (path, mut lines) = ten_records(&dir);
    lines.push(forge(u64::MAX, [7; 32]));
    write_lines(&path, &lines);
    assert_eq!(tampering(&path).line, 11);

    lines[10] = forge(u64::MAX, hash_of(&lines[9]));
    lines.push(forge(0, hash_of(&lines[10])));
    write_lines(&path, &lines);
    assert_eq!(tampering(&path).line, 11);
}

#[test]
fn a_malformed_line_is_named() {
    let dir = TempDir::new("malformed");
    let (path, mut lines) = ten_records(&dir);
    lines[2].truncate(40);
    write_lines(&path, &lines);
    assert_named(&tampering(&path), TamperingKind::Malformed, 3, None);

    lines[0] = "not a record".into();
    write_lines(&path, &lines);
    assert_named(&tampering(&path), TamperingKind::Malformed, 1, None);
}

#[test]
fn nothing_to_verify_and_missing_files_are_errors_not_passes() {
    let dir = TempDir::new("empty");
    let empty = dir.0.join("empty.log");
    fs::write(&empty, "").unwrap();
    assert!(matches!(verify_files(&[empty]), Err(VerifyError::NoRecords { .. })));
    let missing = dir.0.join("missing.log");
    assert!(matches!(verify_files(&[missing]), Err(VerifyError::Unreadable { .. })));
}

#[test]
fn rotation_keeps_the_chain_across_files_in_any_order() {
    let dir = TempDir::new("rotation");
    let mut config = dir.config();
    config.max_size = bytesize::ByteSize::b(1024);
    write_records(&config, 0, 60);

    let live = config.path.clone();
    let rotated: Vec<PathBuf> = (1..=3).map(|k| rotated_path(&live, k)).collect();
    assert!(!rotated_path(&live, 4).exists(), "only `keep` rotated files are kept");
    for path in rotated.iter().chain([&live]) {
        let size = fs::metadata(path).unwrap().len();
        assert!(size > 0 && size <= 1024, "{}: {size} bytes", path.display());
    }
    // Each file's first record names the last record of the file before it.
    for (older, newer) in [(&rotated[2], &rotated[1]), (&rotated[1], &rotated[0]), (&rotated[0], &live)] {
        let (older, newer) = (read_lines(older), read_lines(newer));
        assert_eq!(field(&newer[0], "prev"), field(older.last().unwrap(), "hash"));
    }

    let shuffled = vec![rotated[0].clone(), live.clone(), rotated[2].clone(), rotated[1].clone()];
    let summary = verify_files(&shuffled).unwrap();
    let oldest_kept = field(&read_lines(&rotated[2])[0], "seq").as_u64().unwrap();
    assert!(oldest_kept > 0, "the oldest records were rotated away");
    assert_eq!((summary.files, summary.first_seq, summary.last_seq), (4, oldest_kept, 59));
    assert_eq!(summary.records, 60 - oldest_kept);
    assert!(summary.to_string().contains("anchored"), "{summary}");

    // A whole file taken out is a removal, named at the file after the hole.
    let found = match verify_files(&[rotated[2].clone(), rotated[0].clone(), live]) {
        Err(VerifyError::Tampered(found)) => found,
        other => panic!("{other:?}"),
    };
    assert!(matches!(found.kind, TamperingKind::Removed { .. }), "{found}");
    assert_eq!((&found.file, found.line), (&rotated[0], 1));
}

#[test]
fn a_record_larger_than_the_limit_gets_a_file_of_its_own() {
    let dir = TempDir::new("oversize");
    let mut config = dir.config();
    config.max_size = bytesize::ByteSize::b(100);
    write_records(&config, 0, 3);

    let files = [rotated_path(&config.path, 2), rotated_path(&config.path, 1), config.path.clone()];
    for path in &files {
        assert_eq!(read_lines(path).len(), 1, "{}", path.display());
    }
    assert!(!rotated_path(&config.path, 3).exists(), "no empty file was rotated");
    assert_eq!(verify_files(&files).unwrap().records, 3);
}

#[test]
fn a_restarted_writer_continues_the_chain() {
    let dir = TempDir::new("restart");
    let config = dir.config();
    write_records(&config, 0, 5);
    write_records(&config, 5, 5);

    let lines = read_lines(&config.path);
    assert_eq!(field(&lines[5], "seq"), json!(5));
    assert_eq!(field(&lines[5], "prev"), field(&lines[4], "hash"));
    let summary = verify_files(&[config.path]).unwrap();
    assert_eq!((summary.records, summary.first_seq, summary.last_seq), (10, 0, 9));
}

#[test]
fn a_restart_after_rotation_continues_from_the_newest_rotated_file() {
    let dir = TempDir::new("restart-rotated");
    let config = dir.config();
    write_records(&config, 0, 5);
    // As a crash right after rotating leaves it: an empty live file.
    let newest = rotated_path(&config.path, 1);
    fs::rename(&config.path, &newest).unwrap();
    fs::write(&config.path, "").unwrap();
    write_records(&config, 5, 3);

    assert_eq!(field(&read_lines(&config.path)[0], "seq"), json!(5));
    let summary = verify_files(&[config.path, newest]).unwrap();
    assert_eq!((summary.records, summary.files, summary.last_seq), (8, 2, 7));
}

#[test]
fn a_restart_refuses_to_guess_past_an_unreadable_last_record() {
    let dir = TempDir::new("unreadable");
    let config = dir.config();
    write_records(&config, 0, 3);
    let mut lines = read_lines(&config.path);
    lines[2] = "garbage".into();
    write_lines(&config.path, &lines);

    let error = start(&config).err().expect("start must fail");
    assert!(matches!(error, super::AuditError::Unreadable { .. }), "{error}");
    assert!(error.to_string().contains(&config.path.display().to_string()), "{error}");
}

#[test]
fn a_restart_chains_on_from_an_edited_last_record_so_verify_still_names_it() {
    let dir = TempDir::new("edited-tail");
    let config = dir.config();
    write_records(&config, 0, 3);
    let mut lines = read_lines(&config.path);
    lines[2] = lines[2].replace("deny", "allow");
    write_lines(&config.path, &lines);
    write_records(&config, 3, 2);

    assert_named(&tampering(&config.path), TamperingKind::Edited, 3, Some(2));
}

#[test]
fn a_second_writer_on_the_same_log_is_refused() {
    let dir = TempDir::new("locked");
    let config = dir.config();
    let first = start(&config).unwrap();
    let error = start(&config).err().expect("a second writer must be refused");
    assert!(matches!(error, super::AuditError::Locked { .. }), "{error}");
    first.flush_and_stop();
    start(&config).unwrap().flush_and_stop();
}

#[test]
fn verify_says_when_the_last_line_is_incomplete() {
    let dir = TempDir::new("incomplete");
    let (path, lines) = ten_records(&dir);
    let mut text = lines.join("\n");
    text.truncate(text.len() - 10);
    fs::write(&path, text).unwrap();

    let found = tampering(&path);
    assert_named(&found, TamperingKind::Malformed, 10, None);
    assert!(found.detail.contains("incomplete last line"), "{found}");
}

#[test]
fn a_write_torn_by_a_crash_is_cut_and_marked_by_a_gap() {
    let dir = TempDir::new("torn");
    let config = dir.config();
    write_records(&config, 0, 3);
    let torn = r#"{"seq":3,"time":"20"#;
    let mut text = fs::read_to_string(&config.path).unwrap();
    text.push_str(torn);
    fs::write(&config.path, &text).unwrap();
    write_records(&config, 3, 2);

    let lines = read_lines(&config.path);
    assert_eq!(lines.len(), 6);
    assert_eq!(field(&lines[3], "kind"), json!("gap"));
    assert_eq!(field(&lines[3], "body"), json!({ "tornBytes": torn.len() }));
    assert_eq!(verify_files(&[config.path]).unwrap().records, 6);
}

#[test]
fn a_whole_last_record_missing_only_its_newline_is_kept() {
    let dir = TempDir::new("no-newline");
    let config = dir.config();
    write_records(&config, 0, 3);
    let text = fs::read_to_string(&config.path).unwrap();
    fs::write(&config.path, text.trim_end()).unwrap();
    write_records(&config, 3, 1);

    let lines = read_lines(&config.path);
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|line| field(line, "kind") != json!("gap")));
    assert_eq!(verify_files(&[config.path]).unwrap().records, 4);
}

#[test]
fn a_full_queue_drops_counts_and_marks_the_gap_in_the_chain() {
    let dir = TempDir::new("full");
    let config = dir.config();
    let writer = start_with_capacity(&config, 4).unwrap();
    let release = writer.hold();
    for n in 0..7 {
        writer.append(AuditKind::Decision, json!({ "n": n }));
    }
    assert_eq!(writer.stats(), AuditStats { written: 0, dropped: 3, io_errors: 0 });
    drop(release);
    // Wait for the queue to drain, so the next record is queued, not dropped.
    let deadline = Instant::now() + Duration::from_secs(5);
    while writer.stats().written < 4 {
        assert!(Instant::now() < deadline, "the writer never drained the queue");
        std::thread::sleep(Duration::from_millis(2));
    }
    writer.append(AuditKind::Change, json!({ "n": 7 }));
    writer.flush_and_stop();
    assert_eq!(writer.stats(), AuditStats { written: 5, dropped: 3, io_errors: 0 });

    let lines = read_lines(&config.path);
    let kinds: Vec<_> = lines.iter().map(|line| field(line, "kind")).collect();
    assert_eq!(kinds, ["decision", "decision", "decision", "decision", "gap", "change"].map(|kind| json!(kind)));
    assert_eq!(field(&lines[4], "body"), json!({ "lost": 3 }));
    let summary = verify_files(&[config.path]).unwrap();
    assert_eq!((summary.records, summary.gaps, summary.lost), (6, 1, 3));
    assert!(summary.to_string().contains("3 record(s) dropped"), "{summary}");

    // After the stop nothing can be written; it still counts.
    writer.append(AuditKind::Change, json!({}));
    assert_eq!(writer.stats().dropped, 4);
}

#[test]
fn drops_after_the_last_record_are_marked_at_stop() {
    let dir = TempDir::new("full-at-stop");
    let config = dir.config();
    let writer = start_with_capacity(&config, 1).unwrap();
    let release = writer.hold();
    writer.append(AuditKind::Decision, json!({ "n": 0 }));
    writer.append(AuditKind::Decision, json!({ "n": 1 }));
    drop(release);
    writer.flush_and_stop();

    let lines = read_lines(&config.path);
    assert_eq!(lines.len(), 2);
    assert_eq!(field(&lines[1], "body"), json!({ "lost": 1 }));
}

#[test]
fn records_are_written_through_without_an_explicit_flush() {
    let dir = TempDir::new("write-through");
    let config = dir.config();
    let writer = start(&config).unwrap();
    writer.append(AuditKind::Decision, json!({ "n": 0 }));
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::read_to_string(&config.path).unwrap_or_default().lines().count() < 1 {
        assert!(Instant::now() < deadline, "the record never reached the file");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(writer.stats().written, 1);
    // `flush` returns only once what came before is in the file.
    for n in 1..50 {
        writer.append(AuditKind::Decision, json!({ "n": n }));
    }
    writer.flush();
    assert_eq!(read_lines(&config.path).len(), 50);
    writer.flush_and_stop();
}

#[test]
fn dropping_the_last_handle_writes_what_is_queued() {
    let dir = TempDir::new("drop");
    let config = dir.config();
    let writer = start(&config).unwrap();
    let clone = writer.clone();
    for n in 0..100 {
        clone.append(AuditKind::Change, json!({ "n": n }));
    }
    drop(writer);
    drop(clone);
    assert_eq!(read_lines(&config.path).len(), 100);
}

#[test]
fn the_handle_can_be_shared_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<super::AuditWriter>();
    assert_eq!(serde_json::to_value(AuditKind::Decision).unwrap(), json!("decision"));
    assert_eq!(serde_json::to_value(AuditKind::Change).unwrap(), json!("change"));
}
