//! Identity in the kernel: inheritance across fork, exec and threads; cleanup
//! at exit; pid reuse; expiry, revocation, audit mode and rule expiry.

use std::time::Duration;

use rtid_common::{DecisionSource, EventKind, Outcome};
use rtid_tests::*;

fn secret_identity(dir: &TestDir) -> IdentitySpec {
    let mut spec = IdentitySpec::new("agent");
    spec.files = vec![PathRuleSpec::file(
        "secret",
        PathPattern::Directory(format!("{}/secret/", dir.0.display())),
        Verdict::Deny,
    )];
    spec
}

#[test]
fn child_grandchild_and_thread_are_judged_under_the_identity() {
    let dir = TestDir::new("inherit");
    let secret = dir.file("secret/token", "s3cret");
    let mut harness = Harness::start(vec![secret_identity(&dir)]);
    let probe = probe_path().display().to_string();

    // Child (fork+exec of the probe from the labeled probe).
    let child = harness.probe_as("agent", &["spawn", &probe, "open", &secret]);
    assert!(child.stdout.contains("signal 9"), "child killed: {child:?}");
    // Grandchild: the labeled probe spawns a shell that spawns the probe.
    let grandchild = harness.probe_as("agent", &["spawn", "/bin/sh", "-c", &format!("{probe} open {secret}; exit 0")]);
    assert!(grandchild.succeeded(), "the shell itself survives: {grandchild:?}");
    assert!(!grandchild.stdout.contains("s3cret"), "grandchild never read the secret: {grandchild:?}");
    // Second thread.
    let thread = harness.probe_as("agent", &["thread-open", &secret]);
    assert!(thread.killed(), "a second thread acts under the process identity: {thread:?}");

    let id = harness.identity_id("agent");
    let start = harness
        .expect_event("process start of the child", |e| e.kind == EventKind::ProcessStart as u8 && e.tgid == child.pid);
    assert_eq!(start.identity, id);
    assert_ne!(start.related_tgid, 0);
    let child_tgid = start.related_tgid;
    let denied =
        harness.expect_event("child's denied open", |e| e.kind == EventKind::FileOpen as u8 && e.tgid == child_tgid);
    assert_eq!(denied.identity, id);
    assert_eq!(denied.parent_tgid, child.pid, "the event names the parent");
    assert_ne!(denied.process_start_ns, 0);
    harness.expect_event("exit of the child", |e| e.kind == EventKind::Exit as u8 && e.tgid == child_tgid);
}

#[test]
fn untagged_processes_stay_untagged() {
    let dir = TestDir::new("untagged-id");
    let secret = dir.file("secret/token", "s3cret");
    let mut harness = Harness::start(vec![secret_identity(&dir)]);
    let run = harness.probe_untagged(&["spawn", &probe_path().display().to_string(), "open", &secret]);
    assert!(run.succeeded() && run.stdout.contains("exit 0"), "{run:?}");
}

#[test]
fn exit_removes_the_entry_and_a_reused_pid_is_not_identified() {
    let dir = TestDir::new("reuse");
    let mut harness = Harness::start(vec![secret_identity(&dir)]);
    let run = harness.probe_as("agent", &["open", "/etc/hostname"]);
    assert!(run.status.success() || run.stdout.starts_with("err"), "{run:?}");
    harness.expect_event("exit", |e| e.kind == EventKind::Exit as u8 && e.tgid == run.pid);
    assert_eq!(harness.kernel.process_identity(run.pid).expect("map read"), None, "entry removed at exit");

    // Cycle pids until an untagged process gets the same pid (pid_max bounds
    // the wait). Setting ns_last_pid just below the target makes the kernel
    // hand it out next, which saves cycling the whole pid space (minutes
    // under emulation); another process may take it first, hence the loop.
    let target = run.pid;
    let mut reused = None;
    for _ in 0..200_000 {
        let _ = std::fs::write("/proc/sys/kernel/ns_last_pid", (target - 1).to_string());
        let child = std::process::Command::new("/bin/true").spawn().expect("spawn");
        let pid = child.id();
        if pid == target {
            reused = Some(child);
            break;
        }
        let mut child = child;
        let _ = child.wait();
    }
    let mut reused = reused.expect("pid was reused within the pid space");
    assert_eq!(
        harness.kernel.process_identity(target).expect("map read"),
        None,
        "new process with the old pid is untagged"
    );
    let _ = reused.wait();
}

#[test]
fn identity_expiry_denies_everything() {
    let dir = TestDir::new("expiry");
    let go = dir.path("go");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut harness = Harness::start(vec![secret_identity(&dir)]);
    let addr = format!("127.0.0.1:{port}");
    let mut child = rtid_userspace::launch::fork_paused(
        &[probe_path().display().to_string(), "connect-twice".into(), addr.clone(), go.clone()],
        true,
    )
    .expect("fork");
    harness.kernel.label_pid(child.pid, "agent").unwrap();
    child.release().unwrap();
    let _first = accept_within(&listener, EVENT_TIMEOUT);
    harness.kernel.set_identity_expiry("agent", Some(Duration::from_millis(1))).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    std::fs::write(&go, "").unwrap();
    let output = read_stdout(&mut child);
    assert_eq!(
        output.lines().collect::<Vec<_>>(),
        vec!["ok connected", "err 1"],
        "expired identity is refused connects"
    );
    let pid = child.pid;
    let event =
        harness.expect_event("expired", |e| e.tgid == pid && e.decision == DecisionSource::IdentityExpired as u8);
    assert_eq!(event.outcome, Outcome::Blocked as u8);

    // Everything else is refused too: a new exec under the expired identity is killed.
    let exec = harness.probe_as("agent", &["open", "/etc/hostname"]);
    assert!(exec.killed(), "expired identity cannot run anything (fallback kill at exec): {exec:?}");
}

fn read_stdout(child: &mut rtid_userspace::launch::PausedChild) -> String {
    use std::io::Read;
    let mut text = String::new();
    if let Some(stdout) = child.stdout.take() {
        std::fs::File::from(stdout).read_to_string(&mut text).ok();
    }
    child.wait().expect("wait");
    text
}

#[test]
fn revocation_takes_effect_on_the_very_next_call() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = TestDir::new("revoke");
    let go = dir.path("go");
    let mut harness = Harness::start(vec![secret_identity(&dir)]);
    // One agent process connects, waits for the go file, then connects again.
    let go_arg = go.clone();
    let addr = format!("127.0.0.1:{port}");
    let mut child = rtid_userspace::launch::fork_paused(
        &[probe_path().display().to_string(), "connect-twice".into(), addr, go_arg],
        true,
    )
    .expect("fork");
    harness.kernel.label_pid(child.pid, "agent").unwrap();
    child.release().unwrap();
    // The first connect reached the listener: the identity was allowed then.
    let _first = accept_within(&listener, EVENT_TIMEOUT);
    harness.kernel.set_revoked("agent", true).unwrap();
    std::fs::write(&go, "").unwrap();
    let output = read_stdout(&mut child);
    let lines: Vec<&str> = output.lines().collect();
    assert_eq!(lines, vec!["ok connected", "err 1"], "the call right after revocation fails with EPERM");
    let pid = child.pid;
    let event =
        harness.expect_event("revoked", |e| e.tgid == pid && e.decision == DecisionSource::IdentityRevoked as u8);
    assert_eq!(event.outcome, Outcome::Blocked as u8);
}

#[test]
fn audit_mode_allows_and_reports_what_would_have_happened() {
    let dir = TestDir::new("audit");
    let secret = dir.file("secret/token", "s3cret");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut spec = secret_identity(&dir);
    spec.mode = Mode::Audit;
    spec.network =
        vec![NetRuleSpec::cidr("no-loopback", "127.0.0.1".parse().unwrap(), 32, vec![(port, port)], Verdict::Deny)];
    let mut harness = Harness::start(vec![spec]);
    let open = harness.probe_as("agent", &["open", &secret]);
    assert!(open.succeeded(), "audit mode lets the open through: {open:?}");
    let connect = harness.probe_as("agent", &["connect", &format!("127.0.0.1:{port}")]);
    assert!(connect.succeeded(), "audit mode lets the connect through: {connect:?}");
    for pid in [open.pid, connect.pid] {
        let event =
            harness.expect_event("audit-only event", |e| e.tgid == pid && e.outcome == Outcome::AuditOnly as u8);
        assert_eq!(event.verdict, Verdict::Deny as u8, "the event says what would have happened");
        assert_ne!(event.flags & rtid_common::event_flags::AUDIT_MODE, 0);
    }
}

#[test]
fn a_rule_with_a_two_second_expiry_stops_applying() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut harness = Harness::start(vec![IdentitySpec::new("agent")]);
    // The expiry is set once the programs are loaded, so loading time does not eat into it.
    let mut spec = IdentitySpec::new("agent");
    let mut rule = NetRuleSpec::cidr("temporary", "127.0.0.1".parse().unwrap(), 32, vec![(port, port)], Verdict::Deny);
    rule.expires_at_boot_ns = Some(rtid_userspace::loader::boot_time_ns() + 2_000_000_000);
    spec.network = vec![rule];
    harness.kernel.install(rtid_userspace::policy::compile(&[spec]).unwrap()).unwrap();
    let during = harness.probe_as("agent", &["connect", &format!("127.0.0.1:{port}")]);
    assert_eq!(during.errno(), Some(1), "{during:?}");
    std::thread::sleep(Duration::from_millis(2200));
    let after = harness.probe_as("agent", &["connect", &format!("127.0.0.1:{port}")]);
    assert!(after.succeeded(), "rule expired: {after:?}");
}

#[test]
fn processes_in_a_bound_cgroup_carry_its_identity_whatever_their_lineage() {
    let dir = TestDir::new("cgroup");
    let secret = dir.file("secret/token", "s3cret");
    let root = rtid_userspace::loader::cgroup::cgroup2_root().expect("cgroup2 mounted");
    let cgroup = root.join(format!("rtid-test-{}", std::process::id()));
    std::fs::create_dir_all(&cgroup).expect("create cgroup");
    let mut harness = Harness::start(vec![secret_identity(&dir)]);
    harness.kernel.bind_cgroup(&cgroup, "agent").expect("bind cgroup");

    // An untagged shell joins the cgroup by itself, then runs the probe: no
    // label, no tagged ancestor, only membership.
    let script = format!(
        "echo $$ > {procs}; {probe} open {secret}; exit 0",
        procs = cgroup.join("cgroup.procs").display(),
        probe = probe_path().display()
    );
    let output = std::process::Command::new("/bin/sh").args(["-c", &script]).output().expect("run shell");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let _ = std::fs::remove_dir(&cgroup);
    assert!(!stdout.contains("s3cret"), "a member of the bound cgroup is judged under the identity: {stdout}");
    let id = harness.identity_id("agent");
    let event = harness
        .expect_event("denied open by cgroup member", |e| e.kind == EventKind::FileOpen as u8 && e.identity == id);
    assert_eq!(event_path(&event), secret);
}

#[test]
fn an_agent_cannot_use_the_bpf_syscall() {
    let dir = TestDir::new("protect");
    let mut harness = Harness::start(vec![secret_identity(&dir)]);
    let run = harness.probe_as("agent", &["bpf"]);
    assert!(run.killed(), "a tagged process using bpf() is killed before the call returns: {run:?}");
    harness.expect_event("tamper", |e| e.kind == EventKind::Tamper as u8 && e.tgid == run.pid);
    let untagged = harness.probe_untagged(&["bpf"]);
    assert!(untagged.succeeded(), "root without an identity may: {untagged:?}");
}

#[test]
fn five_refusals_within_the_window_quarantine_the_identity_in_the_kernel() {
    let denied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let denied_port = denied.local_addr().unwrap().port();
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
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
        Some(rtid_userspace::policy::Quarantine { after: 5, within: Duration::from_secs(60), kill: false });
    let mut harness = Harness::start(vec![spec]);
    let denied_addr = format!("127.0.0.1:{denied_port}");
    let mut args = vec!["connect-each", open_addr.as_str()];
    args.extend(std::iter::repeat_n(denied_addr.as_str(), 5));
    args.push(open_addr.as_str());
    let run = harness.probe_as("agent", &args);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines.first().copied(), Some("ok connected"), "allowed before: {run:?}");
    assert_eq!(&lines[1..6], &["err 1"; 5], "{run:?}");
    assert_eq!(lines.get(6).copied(), Some("err 1"), "the sixth action, allowed before, is refused: {run:?}");
    let event = harness.expect_event("quarantine", |e| {
        e.flags & rtid_common::event_flags::QUARANTINE_TRIPPED != 0 && e.tgid == run.pid
    });
    assert_eq!(event.identity, harness.identity_id("agent"));
    // Release lifts it.
    harness.kernel.set_revoked("agent", false).unwrap();
    let after = harness.probe_as("agent", &["connect", &open_addr]);
    assert!(after.succeeded(), "{after:?}");
}
