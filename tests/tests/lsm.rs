//! The BPF LSM backend, on a kernel that runs it: every refusal is synchronous
//! (EPERM, or EACCES for step-up), nothing is done before it. This host cannot
//! load LSM programs, so `cargo xtask vm-test` (part of `cargo xtask test`)
//! runs this suite inside a VM booting Debian's kernel. The programs are
//! loaded once (software emulation makes loading slow) and each scenario
//! installs its own policy, as a reload would.

use std::{
    net::{TcpListener, UdpSocket},
    os::unix::net::UnixListener,
    panic::{AssertUnwindSafe, catch_unwind},
    path::Path,
    time::Duration,
};

use rtid_common::{Backend, DecisionSource, EventKind, Outcome};
use rtid_tests::*;
use rtid_userspace::loader::{LoadOptions, LsmMode};

const EPERM: i32 = 1;
const EACCES: i32 = 13;

#[test]
#[ignore = "needs BPF LSM: runs inside the VM through `cargo xtask vm-test`"]
fn lsm_backend() {
    let options = LoadOptions { lsm: LsmMode::Required, ..LoadOptions::default() };
    let mut harness = Harness::start_with(vec![IdentitySpec::new("placeholder")], options);
    let backends = harness.kernel.backends();
    assert_eq!((backends.file, backends.exec, backends.network), (Backend::Lsm, Backend::Lsm, Backend::Lsm));

    let scenarios: [(&str, fn(&mut Harness)); 11] = [
        ("file deny reaches child, grandchild and thread", file_deny_lineage),
        ("file rule kinds and resolution", file_rule_kinds),
        ("exec deny and kill", exec_deny_and_kill),
        ("network deny", network_deny),
        ("unix socket rule", unix_socket),
        ("step-up", step_up),
        ("audit mode", audit_mode),
        ("rule and identity expiry", expiry),
        ("revocation", revocation),
        ("bpf() refused to agents", bpf_refused),
        ("quarantine", quarantine),
    ];
    let mut failures = Vec::new();
    for (name, scenario) in scenarios {
        println!("lsm scenario: {name}");
        match catch_unwind(AssertUnwindSafe(|| scenario(&mut harness))) {
            Ok(()) => println!("lsm scenario: {name}: ok"),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|text| text.to_string()))
                    .unwrap_or_default();
                println!("lsm scenario: {name}: FAILED: {message}");
                failures.push(format!("{name}: {message}"));
            }
        }
        harness.events.drain();
        harness.seen.clear();
        // A failed scenario must not leave the identity expired or revoked for the next.
        if harness.kernel.identity_id("agent").is_some() {
            harness.kernel.set_revoked("agent", false).expect("restore identity");
            harness.kernel.set_identity_expiry("agent", None).expect("restore identity");
        }
    }
    assert!(failures.is_empty(), "failed scenarios:\n{}", failures.join("\n"));
}

fn secret_rules(dir: &TestDir) -> IdentitySpec {
    let base = dir.0.display().to_string();
    let mut spec = IdentitySpec::new("agent");
    spec.files = vec![
        PathRuleSpec::file("secret-dir", PathPattern::Directory(format!("{base}/secret/")), Verdict::Deny),
        PathRuleSpec::file("public", PathPattern::Directory(format!("{base}/secret/public/")), Verdict::Allow),
        PathRuleSpec::file("exact", PathPattern::Exact(format!("{base}/keys/id_rsa")), Verdict::Deny),
        PathRuleSpec::file("env", PathPattern::Name(".env".into()), Verdict::Deny),
        PathRuleSpec::file("pem", PathPattern::Suffix(".pem".into()), Verdict::Deny),
        PathRuleSpec::file("tie-flag", PathPattern::Directory(format!("{base}/tie/")), Verdict::Flag),
        PathRuleSpec::file("tie-deny", PathPattern::Directory(format!("{base}/tie/")), Verdict::Deny),
    ];
    spec
}

fn assert_lsm_event(harness: &mut Harness, what: &str, pid: u32, kind: EventKind, rule: u32) -> rtid_common::Event {
    let event = harness.expect_event(what, |e| e.tgid == pid && e.kind == kind as u8 && e.rule_id == rule);
    assert_eq!(event.backend, Backend::Lsm as u8, "{what}: backend");
    event
}

fn file_deny_lineage(harness: &mut Harness) {
    let dir = TestDir::new("lsm-lineage");
    let secret = dir.file("secret/token", "s3cret");
    harness.install(vec![secret_rules(&dir)]);
    let probe = probe_path().display().to_string();

    let run = harness.probe_as("agent", &["open", &secret]);
    assert_eq!(run.errno(), Some(EPERM), "tagged open: {run:?}");
    let rule = harness.rule_id("agent", "secret-dir");
    let event = assert_lsm_event(harness, "denied open", run.pid, EventKind::FileOpen, rule);
    assert_eq!((event.outcome, event.errno), (Outcome::Blocked as u8, EPERM));
    assert_eq!(event_path(&event), secret);

    let child = harness.probe_as("agent", &["spawn", &probe, "open", &secret]);
    assert!(child.stdout.contains("exit 1"), "child gets EPERM: {child:?}");
    let grandchild = harness.probe_as("agent", &["spawn", "/bin/sh", "-c", &format!("{probe} open {secret}")]);
    assert!(grandchild.stdout.contains("exit 1"), "grandchild gets EPERM: {grandchild:?}");
    let thread = harness.probe_as("agent", &["thread-open", &secret]);
    assert_eq!(thread.errno(), Some(EPERM), "second thread: {thread:?}");
    let untagged = harness.probe_untagged(&["open", &secret]);
    assert_eq!(untagged.stdout.trim(), "ok s3cret", "untagged: {untagged:?}");
}

fn file_rule_kinds(harness: &mut Harness) {
    let dir = TestDir::new("lsm-kinds");
    let base = dir.0.display().to_string();
    harness.install(vec![secret_rules(&dir)]);
    let cases = [
        (dir.file("secret/a/b/c", "x"), Some("secret-dir")),
        (dir.file("secretary/notes", "x"), None),
        (dir.file("secret/public/readme", "x"), None),
        (dir.file("keys/id_rsa", "x"), Some("exact")),
        (dir.file("keys/id_rsa.pub", "x"), None),
        (dir.file("project/.env", "x"), Some("env")),
        (dir.file("project/x.env", "x"), None),
        (dir.file("project/server.pem", "x"), Some("pem")),
        (dir.file("tie/file", "x"), Some("tie-deny")),
    ];
    for (path, rule) in cases {
        let run = harness.probe_as("agent", &["open", &path]);
        match rule {
            Some(rule) => {
                assert_eq!(run.errno(), Some(EPERM), "{path} should be denied by {rule}: {run:?}");
                let id = harness.rule_id("agent", rule);
                assert_lsm_event(harness, rule, run.pid, EventKind::FileOpen, id);
            }
            None => assert!(run.succeeded(), "{path} should open: {run:?}"),
        }
    }
    let secret = dir.file("secret/token", "s3cret");
    let link = dir.path("link");
    std::os::unix::fs::symlink(&secret, &link).unwrap();
    let via_link = harness.probe_as("agent", &["open", &link]);
    assert_eq!(via_link.errno(), Some(EPERM), "symlink: {via_link:?}");
    let via_dotdot = harness.probe_as("agent", &["open", &format!("{base}/keys/../secret/token")]);
    assert_eq!(via_dotdot.errno(), Some(EPERM), "dot-dot: {via_dotdot:?}");
    let argv =
        vec!["/bin/sh".into(), "-c".into(), format!("cd {base}/secret && {} open token", probe_path().display())];
    let relative = harness.run_as("agent", &argv);
    assert!(relative.stdout.contains("err 1"), "relative path: {relative:?}");
    let write = harness.probe_as("agent", &["open", &dir.file("secret/w", ""), "--write"]);
    assert_eq!(write.errno(), Some(EPERM), "write: {write:?}");
}

fn exec_deny_and_kill(harness: &mut Harness) {
    let dir = TestDir::new("lsm-exec");
    std::fs::create_dir_all(dir.path("bin")).unwrap();
    let denied = dir.path("bin/denied-tool");
    let killed = dir.path("bin/killed-tool");
    std::fs::copy(probe_path(), &denied).unwrap();
    std::fs::copy(probe_path(), &killed).unwrap();
    let marker = dir.path("marker");
    let mut spec = IdentitySpec::new("agent");
    spec.exec = vec![
        PathRuleSpec::exec("no-tool", PathPattern::Exact(denied.clone()), Verdict::Deny),
        PathRuleSpec::exec("kill-tool", PathPattern::Exact(killed.clone()), Verdict::Kill),
    ];
    harness.install(vec![spec]);

    let run = harness.probe_as("agent", &["exec", &denied, "marker", &marker]);
    assert_eq!(run.errno(), Some(EPERM), "execve fails with EPERM and the caller continues: {run:?}");
    assert!(!Path::new(&marker).exists(), "the denied binary never ran");
    let rule = harness.rule_id("agent", "no-tool");
    let event = assert_lsm_event(harness, "exec deny", run.pid, EventKind::Exec, rule);
    assert_eq!(event.outcome, Outcome::Blocked as u8);

    let run = harness.probe_as("agent", &["exec", &killed, "marker", &marker]);
    assert!(run.killed(), "kill verdict: {run:?}");
    assert!(!Path::new(&marker).exists(), "the killed binary never ran");
}

fn network_deny(harness: &mut Harness) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let other = TcpListener::bind("127.0.0.1:0").unwrap();
    let other_port = other.local_addr().unwrap().port();
    let v6 = TcpListener::bind("[::1]:0").unwrap();
    let v6_port = v6.local_addr().unwrap().port();
    let udp = UdpSocket::bind("127.0.9.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    let mut spec = IdentitySpec::new("agent");
    spec.network = vec![
        NetRuleSpec::cidr("port", "127.0.0.1".parse().unwrap(), 32, vec![(port, port)], Verdict::Deny),
        NetRuleSpec::cidr("v6", "::1".parse().unwrap(), 128, vec![(v6_port, v6_port)], Verdict::Deny),
        NetRuleSpec::cidr("block", "127.0.9.0".parse().unwrap(), 24, vec![], Verdict::Deny),
    ];
    harness.install(vec![spec]);

    let refused = harness.probe_as("agent", &["connect", &format!("127.0.0.1:{port}")]);
    assert_eq!(refused.errno(), Some(EPERM), "v4: {refused:?}");
    let rule = harness.rule_id("agent", "port");
    let event = assert_lsm_event(harness, "v4 connect deny", refused.pid, EventKind::Connect, rule);
    assert_eq!(event.net.port, port);
    let allowed = harness.probe_as("agent", &["connect", &format!("127.0.0.1:{other_port}")]);
    assert!(allowed.succeeded(), "other port: {allowed:?}");
    let refused = harness.probe_as("agent", &["connect", &format!("[::1]:{v6_port}")]);
    assert_eq!(refused.errno(), Some(EPERM), "v6: {refused:?}");
    let mapped = TcpListener::bind("[::]:0").unwrap();
    let _ = mapped;
    let refused = harness.probe_as("agent", &["connect", &format!("[::ffff:127.0.0.1]:{port}")]);
    assert_eq!(refused.errno(), Some(EPERM), "v4-mapped: {refused:?}");
    let refused = harness.probe_as("agent", &["sendto", &format!("127.0.9.1:{udp_port}")]);
    assert_eq!(refused.errno(), Some(EPERM), "udp sendto: {refused:?}");
    let rule = harness.rule_id("agent", "block");
    assert_lsm_event(harness, "udp send deny", refused.pid, EventKind::Send, rule);
}

fn unix_socket(harness: &mut Harness) {
    let dir = TestDir::new("lsm-unix");
    let denied = dir.path("docker.sock");
    let open = dir.path("ok.sock");
    let _a = UnixListener::bind(&denied).unwrap();
    let _b = UnixListener::bind(&open).unwrap();
    let mut spec = IdentitySpec::new("agent");
    spec.network = vec![NetRuleSpec::unix("docker", &denied, Verdict::Deny)];
    harness.install(vec![spec]);
    let refused = harness.probe_as("agent", &["unix-connect", &denied]);
    assert_eq!(refused.errno(), Some(EPERM), "{refused:?}");
    let rule = harness.rule_id("agent", "docker");
    let event = assert_lsm_event(harness, "unix deny", refused.pid, EventKind::Connect, rule);
    assert_eq!(event_path(&event), denied);
    let allowed = harness.probe_as("agent", &["unix-connect", &open]);
    assert!(allowed.succeeded(), "{allowed:?}");
}

fn step_up(harness: &mut Harness) {
    let dir = TestDir::new("lsm-stepup");
    let env = dir.file("project/.env", "API_KEY=1");
    let mut spec = IdentitySpec::new("agent");
    spec.files = vec![PathRuleSpec::file("env", PathPattern::Name(".env".into()), Verdict::StepUp)];
    harness.install(vec![spec]);
    let run = harness.probe_as("agent", &["open", &env]);
    assert_eq!(run.errno(), Some(EACCES), "step-up fails with EACCES: {run:?}");
    let rule = harness.rule_id("agent", "env");
    let event = assert_lsm_event(harness, "step-up request", run.pid, EventKind::FileOpen, rule);
    assert_eq!((event.verdict, event.outcome, event.errno), (Verdict::StepUp as u8, Outcome::Blocked as u8, EACCES));
}

fn audit_mode(harness: &mut Harness) {
    let dir = TestDir::new("lsm-audit");
    let secret = dir.file("secret/token", "s3cret");
    let mut spec = secret_rules(&dir);
    spec.mode = Mode::Audit;
    harness.install(vec![spec]);
    let run = harness.probe_as("agent", &["open", &secret]);
    assert_eq!(run.stdout.trim(), "ok s3cret", "audit mode allows: {run:?}");
    let rule = harness.rule_id("agent", "secret-dir");
    let event = assert_lsm_event(harness, "audit-only", run.pid, EventKind::FileOpen, rule);
    assert_eq!((event.verdict, event.outcome), (Verdict::Deny as u8, Outcome::AuditOnly as u8));
}

fn expiry(harness: &mut Harness) {
    let dir = TestDir::new("lsm-expiry");
    let secret = dir.file("secret/token", "s3cret");
    let mut spec = IdentitySpec::new("agent");
    let mut rule =
        PathRuleSpec::file("temporary", PathPattern::Directory(format!("{}/secret/", dir.0.display())), Verdict::Deny);
    rule.expires_at_boot_ns = Some(rtid_userspace::loader::boot_time_ns() + 2_000_000_000);
    spec.files = vec![rule];
    harness.install(vec![spec]);
    let during = harness.probe_as("agent", &["open", &secret]);
    assert_eq!(during.errno(), Some(EPERM), "rule in force: {during:?}");
    std::thread::sleep(Duration::from_millis(2200));
    let after = harness.probe_as("agent", &["open", &secret]);
    assert!(after.succeeded(), "rule expired: {after:?}");

    harness.kernel.set_identity_expiry("agent", Some(Duration::from_millis(1))).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    let expired = harness.probe_as("agent", &["open", &secret]);
    assert_eq!(expired.status.code(), Some(127), "an expired identity cannot even exec: {expired:?}");
    harness.expect_event("expired exec", |e| {
        e.kind == EventKind::Exec as u8 && e.decision == DecisionSource::IdentityExpired as u8
    });
    harness.kernel.set_identity_expiry("agent", None).unwrap();
}

fn revocation(harness: &mut Harness) {
    let dir = TestDir::new("lsm-revoke");
    let go = dir.path("go");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    harness.install(vec![IdentitySpec::new("agent")]);
    let mut child = rtid_userspace::launch::fork_paused(
        &[probe_path().display().to_string(), "connect-twice".into(), addr, go.clone()],
        true,
    )
    .unwrap();
    harness.kernel.label_pid(child.pid, "agent").unwrap();
    child.release().unwrap();
    let _first = accept_within(&listener, EVENT_TIMEOUT);
    harness.kernel.set_revoked("agent", true).unwrap();
    std::fs::write(&go, "").unwrap();
    let mut output = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(child.stdout.take().unwrap()), &mut output).unwrap();
    child.wait().unwrap();
    assert_eq!(output.lines().collect::<Vec<_>>(), vec!["ok connected", "err 1"], "revoked on the next call");
    harness.kernel.set_revoked("agent", false).unwrap();
}

fn bpf_refused(harness: &mut Harness) {
    // Without a capability ceiling: on 6.1 bpf() checks CAP_BPF before the
    // `bpf` hook runs, and the ceiling would refuse it first (as a capability).
    let mut agent = IdentitySpec::new("agent");
    agent.capabilities = rtid_userspace::policy::CapabilityCeiling { denied: 0, opted_in: 0, user_namespaces: true };
    harness.install(vec![agent]);
    let run = harness.probe_as("agent", &["bpf"]);
    assert_eq!(run.errno(), Some(EPERM), "{run:?}");
    let event = harness.expect_event("tamper", |e| e.kind == EventKind::Tamper as u8 && e.tgid == run.pid);
    assert_eq!(event.backend, Backend::Lsm as u8);
    let untagged = harness.probe_untagged(&["bpf"]);
    assert!(untagged.succeeded(), "{untagged:?}");
}

fn quarantine(harness: &mut Harness) {
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    let denied_port = denied.local_addr().unwrap().port();
    let open = TcpListener::bind("127.0.0.1:0").unwrap();
    let open_addr = open.local_addr().unwrap().to_string();
    let mut spec = IdentitySpec::new("agent");
    spec.network = vec![NetRuleSpec::cidr(
        "no",
        "127.0.0.1".parse().unwrap(),
        32,
        vec![(denied_port, denied_port)],
        Verdict::Deny,
    )];
    spec.quarantine =
        Some(rtid_userspace::policy::Quarantine { after: 3, within: Duration::from_secs(60), kill: false });
    harness.install(vec![spec]);
    let denied_addr = format!("127.0.0.1:{denied_port}");
    let run =
        harness.probe_as("agent", &["connect-each", &open_addr, &denied_addr, &denied_addr, &denied_addr, &open_addr]);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines,
        vec!["ok connected", "err 1", "err 1", "err 1", "err 1"],
        "the fourth connect, allowed before, is refused: {run:?}"
    );
    harness.kernel.set_revoked("agent", false).unwrap();
}

/// The real `rtid daemon` on this kernel, as an operator starts it: it loads,
/// picks BPF LSM for every kind of action, and an agent launched with
/// `rtid run` is refused with EPERM (not killed) on a secret and a port, the
/// secret's bytes never reaching it.
#[test]
#[ignore = "needs BPF LSM: runs inside the VM through `cargo xtask vm-test`"]
fn the_daemon_enforces_through_bpf_lsm() {
    use rtid_tests::daemon::{Daemon, text, write_policy};

    let scratch = TestDir::new("lsm-daemon-data");
    let secret = scratch.file("secret/key", "LSM-SECRET-BYTES");
    let denied = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = denied.local_addr().expect("addr").port();
    let policy = write_policy(
        &scratch,
        "policy.yaml",
        &format!(
            "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: lsm\nspec:\n  identities:\n    - name: coder\n      defaults: {{ file: allow, network: allow, exec: allow }}\n      files:\n        - {{ id: secret, path: {}/secret/, action: deny }}\n      network:\n        - {{ id: port, cidr: 127.0.0.1/32, ports: [\"{port}\"], protocol: tcp, action: deny }}\n",
            scratch.0.display()
        ),
    );
    let daemon = Daemon::start("lsm-daemon", vec![policy]);

    let status = daemon.cli(&["--json", "status"]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let report = String::from_utf8_lossy(&status.stdout).into_owned();
    for kind in ["file", "exec", "network"] {
        assert!(report.contains(&format!("\"{kind}\":\"lsm\"")), "{kind} served by BPF LSM: {report}");
    }

    let probe = probe_path().display().to_string();
    let read = daemon.cli(&["run", "--identity", "coder", "--", &probe, "open", &secret]);
    assert_eq!(read.status.code(), Some(1), "refused, not killed: {}", text(&read));
    assert_eq!(String::from_utf8_lossy(&read.stdout).trim(), "err 1", "EPERM: {}", text(&read));
    assert!(!text(&read).contains("LSM-SECRET-BYTES"));

    let connect = daemon.cli(&["run", "--identity", "coder", "--", &probe, "connect", &format!("127.0.0.1:{port}")]);
    assert_eq!(String::from_utf8_lossy(&connect.stdout).trim(), "err 1", "EPERM: {}", text(&connect));
    denied.set_nonblocking(true).expect("nonblocking");
    assert_eq!(denied.accept().map(|_| ()).unwrap_err().kind(), std::io::ErrorKind::WouldBlock, "no connection");

    // Untagged, the same open works: only the agent is judged.
    assert_eq!(std::fs::read_to_string(&secret).expect("read as untagged"), "LSM-SECRET-BYTES");
}
