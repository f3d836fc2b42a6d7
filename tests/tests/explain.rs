//! `rtid policy explain` answers from the live maps with the decision code the
//! kernel runs; here its answers are checked against what the kernel did for
//! the cases of the core suites.

use std::net::TcpListener;

use rtid_common::{EventKind, Verdict};
use rtid_tests::*;
use rtid_userspace::api::ExplainAction;

fn policy(dir: &TestDir, denied_port: u16) -> IdentitySpec {
    let base = dir.0.display().to_string();
    let mut spec = IdentitySpec::new("coder");
    spec.file_deny_fallback = Verdict::Flag;
    spec.files = vec![
        PathRuleSpec::file("secret-dir", PathPattern::Directory(format!("{base}/secret/")), Verdict::Deny),
        PathRuleSpec::file("public", PathPattern::Directory(format!("{base}/secret/public/")), Verdict::Allow),
        PathRuleSpec::file("exact", PathPattern::Exact(format!("{base}/keys/id_rsa")), Verdict::Deny),
        PathRuleSpec::file("env", PathPattern::Name(".env".into()), Verdict::Flag),
        PathRuleSpec::file("pem", PathPattern::Suffix(".pem".into()), Verdict::Flag),
        PathRuleSpec::file("tie-flag", PathPattern::Directory(format!("{base}/tie/")), Verdict::Flag),
        PathRuleSpec::file("tie-deny", PathPattern::Directory(format!("{base}/tie/")), Verdict::Deny),
    ];
    spec.network = vec![
        NetRuleSpec::cidr("port", "127.0.0.1".parse().unwrap(), 32, vec![(denied_port, denied_port)], Verdict::Deny),
        NetRuleSpec::cidr("block", "127.0.9.0".parse().unwrap(), 24, vec![], Verdict::Deny),
    ];
    spec
}

#[test]
fn explain_agrees_with_the_kernel() {
    let dir = TestDir::new("explain");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let denied = listener.local_addr().unwrap().port();
    let open_listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let open = open_listener.local_addr().unwrap().port();
    let mut harness = Harness::start(vec![policy(&dir, denied)]);

    let files = [
        dir.file("secret/a/b", "x"),
        dir.file("secretary/notes", "x"),
        dir.file("secret/public/readme", "x"),
        dir.file("keys/id_rsa", "x"),
        dir.file("keys/id_rsa.pub", "x"),
        dir.file("project/.env", "x"),
        dir.file("project/x.env", "x"),
        dir.file("project/server.pem", "x"),
        dir.file("tie/file", "x"),
    ];
    for path in files {
        let explained = harness
            .kernel
            .explain("coder", &ExplainAction::Open { path: path.clone(), write: false })
            .expect("explain");
        let run = harness.probe_as("coder", &["open", &path]);
        // With fileDenyFallback: flag, every open goes through; the event (or its absence) is the verdict.
        assert!(run.succeeded(), "{run:?}");
        harness.settle(std::time::Duration::from_millis(200));
        let event = harness.seen.iter().find(|e| e.kind == EventKind::FileOpen as u8 && e.tgid == run.pid).copied();
        let kernel_verdict = event.map_or(Verdict::Allow, |e| Verdict::from_u8(e.verdict));
        assert_eq!(
            explained.verdict,
            kernel_verdict.name(),
            "{path}: explain {explained:?} vs kernel {kernel_verdict:?}"
        );
        if let Some(event) = event {
            let kernel_rule = harness.kernel.rule_info(event.rule_id).map(|info| info.id.clone());
            assert_eq!(explained.rule_id, kernel_rule, "{path}: rule");
        }
    }

    for (address, port) in [("127.0.0.1", denied), ("127.0.0.1", open), ("127.0.9.9", 80)] {
        let explained = harness
            .kernel
            .explain("coder", &ExplainAction::Connect { address: address.into(), port, udp: false })
            .expect("explain");
        let run = harness.probe_as("coder", &["connect", &format!("{address}:{port}")]);
        let kernel_verdict = if run.errno() == Some(1) { "deny" } else { "allow" };
        assert_eq!(explained.verdict, kernel_verdict, "{address}:{port}: explain {explained:?} vs {run:?}");
    }
}

/// rtid's own files: explain names the built-in protection, above every rule,
/// and the kernel refuses the write it describes (EPERM under BPF LSM, the
/// writer killed before it writes on the fallback).
#[test]
fn explain_names_rtids_protection_of_its_own_files() {
    use rtid_userspace::loader::ProtectedPath;
    let dir = TestDir::new("explain-protected");
    let policy_file = dir.file("etc/rtid/policy.yaml", "original");
    let mut spec = IdentitySpec::new("coder");
    spec.files = vec![PathRuleSpec::file("allow-etc", PathPattern::Directory(dir.path("etc/")), Verdict::Allow)];
    let mut harness = Harness::start(vec![spec]);
    harness.kernel.set_protected_paths(&[ProtectedPath::directory(dir.path("etc/rtid"))]).expect("protect");

    let write = ExplainAction::Open { path: policy_file.clone(), write: true };
    let explained = harness.kernel.explain("coder", &write).expect("explain");
    assert_eq!(explained.verdict, "deny", "{explained:?}");
    assert_eq!(explained.decided_by, "protected", "{explained:?}");
    assert_eq!(explained.rule_id.as_deref(), Some("rtid/protected"), "{explained:?}");
    // Reading is not protected: the identity's own rule decides.
    let read = ExplainAction::Open { path: policy_file.clone(), write: false };
    let explained = harness.kernel.explain("coder", &read).expect("explain");
    assert_eq!((explained.verdict.as_str(), explained.rule_id.as_deref()), ("allow", Some("allow-etc")));

    let run = harness.probe_as("coder", &["open", &policy_file, "--write"]);
    assert!(run.errno() == Some(libc::EPERM) || run.killed(), "the write explain refuses: {run:?}");
    assert_eq!(std::fs::read_to_string(&policy_file).unwrap(), "original");
}
