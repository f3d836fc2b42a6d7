//! Exec rules: decided at exec, before the new image runs one instruction of
//! its own. On this host's fallback the binary is killed at the exec
//! tracepoint; the marker the binary would write never appears.

use rtid_common::{EventKind, Outcome};
use rtid_tests::*;

fn setup(dir: &TestDir) -> (String, String) {
    let forbidden = dir.path("bin/forbidden-tool");
    std::fs::create_dir_all(dir.path("bin")).unwrap();
    std::fs::copy(probe_path(), &forbidden).expect("copy probe as the forbidden tool");
    (forbidden, dir.path("marker"))
}

fn exec_identity(forbidden: &str) -> IdentitySpec {
    let mut spec = IdentitySpec::new("execagent");
    spec.exec = vec![PathRuleSpec::exec("no-tool", PathPattern::Exact(forbidden.into()), Verdict::Kill)];
    spec
}

#[test]
fn exec_of_a_killed_binary_dies_before_it_runs() {
    let dir = TestDir::new("exec-kill");
    let (forbidden, marker) = setup(&dir);
    let mut harness = Harness::start(vec![exec_identity(&forbidden)]);

    // exec in place (no fork): the labeled process itself becomes the tool.
    let run = harness.probe_as("execagent", &["exec", &forbidden, "marker", &marker]);
    assert!(run.killed(), "{run:?}");
    assert!(!std::path::Path::new(&marker).exists(), "the forbidden binary must not run");

    let rule = harness.rule_id("execagent", "no-tool");
    let event = harness
        .expect_event("exec kill", |e| e.kind == EventKind::Exec as u8 && e.tgid == run.pid && e.rule_id == rule);
    assert_eq!(event.outcome, Outcome::Killed as u8);
    assert_eq!(event_path(&event), forbidden);
    assert_eq!(event.identity, harness.identity_id("execagent"));

    // Untagged, the same binary runs.
    let untagged = harness.probe_untagged(&["exec", &forbidden, "marker", &marker]);
    assert!(untagged.succeeded(), "{untagged:?}");
    assert!(std::path::Path::new(&marker).exists());
}

#[test]
fn exec_through_a_symlink_is_judged_on_the_binary() {
    let dir = TestDir::new("exec-link");
    let (forbidden, marker) = setup(&dir);
    let link = dir.path("innocent");
    std::os::unix::fs::symlink(&forbidden, &link).unwrap();
    let mut harness = Harness::start(vec![exec_identity(&forbidden)]);
    let run = harness.probe_as("execagent", &["spawn", &link, "marker", &marker]);
    assert!(run.stdout.contains("signal 9"), "the child exec is killed: {run:?}");
    assert!(!std::path::Path::new(&marker).exists());
}

#[test]
fn allowed_exec_is_reported_for_identified_processes() {
    let dir = TestDir::new("exec-allow");
    let (forbidden, marker) = setup(&dir);
    let mut harness = Harness::start(vec![exec_identity(&forbidden)]);
    let run = harness.probe_as("execagent", &["marker", &marker]);
    assert!(run.succeeded(), "{run:?}");
    let event = harness.expect_event("allowed exec", |e| e.kind == EventKind::Exec as u8 && e.tgid == run.pid);
    assert_eq!(event.verdict, Verdict::Allow as u8);
    assert_eq!(event_path(&event), probe_path().canonicalize().unwrap().display().to_string());
}

#[test]
fn an_exec_selector_labels_a_process_started_without_the_cli() {
    let dir = TestDir::new("selector");
    let agent = dir.path("bin/agent");
    std::fs::create_dir_all(dir.path("bin")).unwrap();
    std::fs::copy(probe_path(), &agent).unwrap();
    let secret = dir.file("secret/token", "s3cret");
    let mut spec = IdentitySpec::new("selected");
    spec.files = vec![PathRuleSpec::file(
        "secret",
        PathPattern::Directory(format!("{}/secret/", dir.0.display())),
        Verdict::Deny,
    )];
    let mut harness = Harness::start(vec![spec]);
    harness.kernel.set_exec_selectors(&[(agent.clone(), "selected".into())]).expect("selectors");

    // Started by a plain, untagged Command: the exec itself assigns the identity.
    let output = std::process::Command::new(&agent).args(["open", &secret]).output().expect("run agent");
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(output.status.signal(), Some(libc::SIGKILL), "selected by its exe and judged: {output:?}");
    let id = harness.identity_id("selected");
    let event =
        harness.expect_event("exec of the selected binary", |e| e.kind == EventKind::Exec as u8 && e.identity == id);
    assert_eq!(event_path(&event), agent);
    // Other binaries stay untagged.
    let other = harness.probe_untagged(&["open", &secret]);
    assert!(other.succeeded(), "{other:?}");
}
