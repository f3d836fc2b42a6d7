//! File rules on the running kernel, judged on the path the kernel resolved.
//! On this host's fallback backend, a deny becomes a kill (SIGKILL at open exit,
//! before a byte is read) or a flag, as the identity's policy chooses.

use rtid_common::{EventKind, Outcome, event_flags};
use rtid_tests::*;

fn coder(dir: &TestDir) -> IdentitySpec {
    let mut spec = IdentitySpec::new("coder");
    let base = dir.0.display().to_string();
    spec.files = vec![
        PathRuleSpec::file("secret-dir", PathPattern::Directory(format!("{base}/secret/")), Verdict::Deny),
        PathRuleSpec::file(
            "public-in-secret",
            PathPattern::Directory(format!("{base}/secret/public/")),
            Verdict::Allow,
        ),
        PathRuleSpec::file("exact-key", PathPattern::Exact(format!("{base}/keys/id_rsa")), Verdict::Kill),
        PathRuleSpec::file("env-files", PathPattern::Name(".env".into()), Verdict::Flag),
        PathRuleSpec::file("pem-files", PathPattern::Suffix(".pem".into()), Verdict::Flag),
        PathRuleSpec::file("tie-flag", PathPattern::Directory(format!("{base}/tie/")), Verdict::Flag),
        PathRuleSpec::file("tie-deny", PathPattern::Directory(format!("{base}/tie/")), Verdict::Deny),
    ];
    spec
}

fn is_file_event(event: &rtid_common::Event, pid: u32) -> bool {
    event.kind == EventKind::FileOpen as u8 && event.tgid == pid
}

#[test]
fn untagged_process_is_not_affected() {
    let dir = TestDir::new("untagged");
    let secret = dir.file("secret/token", "s3cret");
    let mut harness = Harness::start(vec![coder(&dir)]);
    let run = harness.probe_untagged(&["open", &secret]);
    assert!(run.succeeded(), "untagged open must succeed: {run:?}");
    assert_eq!(run.stdout.trim(), "ok s3cret");
}

#[test]
fn directory_prefix_kills_before_a_byte_is_read() {
    let dir = TestDir::new("prefix");
    let secret = dir.file("secret/a/b/token", "s3cret");
    let mut harness = Harness::start(vec![coder(&dir)]);
    let run = harness.probe_as("coder", &["open", &secret]);
    assert!(run.killed(), "deny on the fallback backend kills: {run:?}");
    assert!(!run.stdout.contains("s3cret"), "the secret must never be printed: {run:?}");
    let rule = harness.rule_id("coder", "secret-dir");
    let event = harness.expect_event("deny of the secret", |e| is_file_event(e, run.pid) && e.rule_id == rule);
    assert_eq!(event_path(&event), secret);
    assert_eq!(event.verdict, Verdict::Deny as u8);
    assert_eq!(event.outcome, Outcome::Killed as u8);
    assert_ne!(event.flags & event_flags::BACKEND_FALLBACK, 0, "the event says the deny fell back to kill");
    assert_eq!(event.identity, harness.identity_id("coder"));
    assert_eq!(event.backend, rtid_common::Backend::Tracepoint as u8);
}

#[test]
fn prefix_matches_only_at_slash_boundaries() {
    let dir = TestDir::new("boundary");
    let near = dir.file("secretary/notes", "notes");
    let mut harness = Harness::start(vec![coder(&dir)]);
    let run = harness.probe_as("coder", &["open", &near]);
    assert!(run.succeeded(), "{near} is not under secret/: {run:?}");
    assert_eq!(run.stdout.trim(), "ok notes");
}

#[test]
fn longest_match_wins() {
    let dir = TestDir::new("longest");
    let public = dir.file("secret/public/readme", "hello");
    let mut harness = Harness::start(vec![coder(&dir)]);
    let run = harness.probe_as("coder", &["open", &public]);
    assert!(run.succeeded(), "the longer allow rule wins: {run:?}");
}

#[test]
fn exact_rule_kills_and_matches_only_that_path() {
    let dir = TestDir::new("exact");
    let key = dir.file("keys/id_rsa", "PRIVATE");
    let other = dir.file("keys/id_rsa.pub", "PUBLIC");
    let mut harness = Harness::start(vec![coder(&dir)]);
    let allowed = harness.probe_as("coder", &["open", &other]);
    assert!(allowed.succeeded(), "exact rule must not match a longer name: {allowed:?}");
    let run = harness.probe_as("coder", &["open", &key]);
    assert!(run.killed(), "{run:?}");
    assert!(!run.stdout.contains("PRIVATE"));
    let rule = harness.rule_id("coder", "exact-key");
    let event = harness.expect_event("kill of the key", |e| is_file_event(e, run.pid) && e.rule_id == rule);
    assert_eq!(event.verdict, Verdict::Kill as u8);
    assert_eq!(event.outcome, Outcome::Killed as u8);
}

#[test]
fn name_and_suffix_rules_flag() {
    let dir = TestDir::new("suffix");
    let env = dir.file("project/.env", "API_KEY=1");
    let pem = dir.file("project/server.pem", "CERT");
    let not_env = dir.file("project/x.env", "no");
    let mut harness = Harness::start(vec![coder(&dir)]);
    for (path, rule) in [(&env, "env-files"), (&pem, "pem-files")] {
        let run = harness.probe_as("coder", &["open", path]);
        assert!(run.succeeded(), "flag allows: {run:?}");
        let rule_id = harness.rule_id("coder", rule);
        let event = harness.expect_event(rule, |e| is_file_event(e, run.pid) && e.rule_id == rule_id);
        assert_eq!(event.verdict, Verdict::Flag as u8);
        assert_eq!(event.outcome, Outcome::Allowed as u8);
        assert_eq!(&event_path(&event), path);
    }
    let run = harness.probe_as("coder", &["open", &not_env]);
    assert!(run.succeeded());
    harness.settle(std::time::Duration::from_millis(300));
    assert!(!harness.seen.iter().any(|e| is_file_event(e, run.pid)), "x.env is not named .env: no event expected");
}

#[test]
fn deny_wins_at_equal_length() {
    let dir = TestDir::new("tie");
    let tied = dir.file("tie/file", "tie");
    let mut harness = Harness::start(vec![coder(&dir)]);
    let run = harness.probe_as("coder", &["open", &tied]);
    assert!(run.killed(), "deny beats flag at equal length: {run:?}");
    let rule = harness.rule_id("coder", "tie-deny");
    harness.expect_event("tie-deny", |e| is_file_event(e, run.pid) && e.rule_id == rule);
}

#[test]
fn relative_paths_dotdot_and_symlinks_are_resolved() {
    let dir = TestDir::new("resolve");
    let secret = dir.file("secret/token", "s3cret");
    dir.file("work/placeholder", "");
    let link = dir.path("work/innocent-link");
    std::os::unix::fs::symlink(&secret, &link).expect("symlink");
    let mut harness = Harness::start(vec![coder(&dir)]);

    let via_link = harness.probe_as("coder", &["open", &link]);
    assert!(via_link.killed(), "symlink to a denied file: {via_link:?}");
    let via_dotdot = harness.probe_as("coder", &["open", &format!("{}/work/../secret/token", dir.0.display())]);
    assert!(via_dotdot.killed(), "dot-dot into a denied dir: {via_dotdot:?}");
    let via_proc_root = harness.probe_as("coder", &["open", &format!("/proc/self/root{secret}")]);
    assert!(via_proc_root.killed(), "/proc/self/root prefix: {via_proc_root:?}");

    // A relative path: run the probe from inside the secret directory.
    let argv = vec![
        "/bin/sh".to_string(),
        "-c".to_string(),
        format!("cd {}/secret && exec {} open token", dir.0.display(), probe_path().display()),
    ];
    let relative = harness.run_as("coder", &argv);
    assert!(relative.killed(), "relative path: {relative:?}");
    let rule = harness.rule_id("coder", "secret-dir");
    let event = harness.expect_event("relative open", |e| is_file_event(e, relative.pid) && e.rule_id == rule);
    assert_eq!(event_path(&event), secret, "the event carries the resolved path");
}

#[test]
fn flag_fallback_lets_the_open_through_and_says_so() {
    let dir = TestDir::new("flagfallback");
    let secret = dir.file("secret/token", "s3cret");
    let mut spec = coder(&dir);
    spec.file_deny_fallback = Verdict::Flag;
    let mut harness = Harness::start(vec![spec]);
    let run = harness.probe_as("coder", &["open", &secret]);
    assert!(run.succeeded(), "with fallback flag the open goes through: {run:?}");
    let rule = harness.rule_id("coder", "secret-dir");
    let event = harness.expect_event("flagged deny", |e| is_file_event(e, run.pid) && e.rule_id == rule);
    assert_eq!(event.outcome, Outcome::FlaggedInstead as u8);
    assert_ne!(event.flags & event_flags::BACKEND_FALLBACK, 0);
}
