//! One object, one decision: another name, another route or another kind of
//! socket reaches nothing the direct path cannot. Each test performs the
//! attack as an identified root process and judges it by its effect (the
//! secret never printed, the datagram never received). Runs on this host's
//! fallback backend (refusal becomes SIGKILL where a call cannot be refused)
//! and, through `cargo xtask vm-test --suite lsm`, under BPF LSM (EPERM).

use std::net::{TcpListener, UdpSocket};

use rtid_common::{
    Backend, DecisionSource, Event, EventKind, Outcome, Verdict, event_flags, protection, socket_detail,
};
use rtid_tests::*;
use rtid_userspace::{api::ExplainAction, loader::ProtectionLevel, policy::CapabilityCeiling};

const EPERM: i32 = 1;

fn lsm_files(harness: &Harness) -> bool {
    harness.kernel.backends().file == Backend::Lsm
}

/// The refusal a backend gives an open or exec: EPERM under BPF LSM, SIGKILL
/// before the call returns on the fallback.
fn assert_refused(lsm: bool, run: &ProbeRun, what: &str) {
    if lsm {
        assert_eq!(run.errno(), Some(EPERM), "{what}: {run:?}");
    } else {
        assert!(run.killed(), "{what}: {run:?}");
    }
}

fn event_of(harness: &mut Harness, what: &str, run: &ProbeRun, kind: EventKind) -> Event {
    harness.expect_event(what, |e| e.tgid == run.pid && e.kind == kind as u8 && e.verdict != Verdict::Allow as u8)
}

#[test]
fn a_name_rule_never_relaxes_a_directory_deny_and_an_exact_allow_carves_one_file() {
    let dir = TestDir::new("precedence");
    let credentials = dir.file("aws/credentials", "AKIA-SECRET");
    let config = dir.file("aws/config", "region=eu");
    let key = dir.file("project/server.pem", "PRIVATE KEY");
    let mut spec = IdentitySpec::new("agent");
    spec.files = vec![
        PathRuleSpec::file("aws", PathPattern::Directory(dir.path("aws/")), Verdict::Deny),
        PathRuleSpec::file("credentials", PathPattern::Name("credentials".into()), Verdict::Flag),
        PathRuleSpec::file("aws-config", PathPattern::Exact(config.clone()), Verdict::Allow),
        PathRuleSpec::file("project", PathPattern::Directory(dir.path("project/")), Verdict::Allow),
        PathRuleSpec::file("pem", PathPattern::Suffix(".pem".into()), Verdict::Deny),
    ];
    let mut harness = Harness::start(vec![spec]);
    let lsm = lsm_files(&harness);

    let run = harness.probe_as("agent", &["open", &credentials]);
    assert_refused(lsm, &run, "deny ~/.aws/ with flag credentials");
    assert!(!run.stdout.contains("AKIA"), "{run:?}");
    let event = event_of(&mut harness, "the directory deny", &run, EventKind::FileOpen);
    assert_eq!(event.rule_id, harness.rule_id("agent", "aws"), "{}", describe(&event));
    assert_eq!(event.verdict, Verdict::Deny as u8);

    // A suffix deny holds inside an allowed directory too.
    let run = harness.probe_as("agent", &["open", &key]);
    assert_refused(lsm, &run, "deny *.pem inside an allowed directory");
    assert!(!run.stdout.contains("PRIVATE"), "{run:?}");

    // The exact allow carves out exactly that file.
    let run = harness.probe_as("agent", &["open", &config]);
    assert_eq!(run.stdout.trim(), "ok region=eu", "{run:?}");

    let explained = harness
        .kernel
        .explain("agent", &ExplainAction::Open { path: credentials.clone(), write: false })
        .expect("explain");
    assert_eq!((explained.verdict.as_str(), explained.rule_id.as_deref()), ("deny", Some("aws")));
    let shown: Vec<(&str, bool)> =
        explained.matches.iter().map(|candidate| (candidate.rule_id.as_str(), candidate.won)).collect();
    assert_eq!(shown, vec![("aws", true), ("credentials", false)], "{explained:?}");
    assert!(explained.matches[1].why.contains("never relax"), "{explained:?}");
    let explained =
        harness.kernel.explain("agent", &ExplainAction::Open { path: config, write: false }).expect("explain");
    assert_eq!((explained.verdict.as_str(), explained.rule_id.as_deref()), ("allow", Some("aws-config")));
    assert!(explained.matches.iter().any(|candidate| candidate.rule_id == "aws" && !candidate.won), "{explained:?}");
}

/// Makes `names` as nested directories under `base` one at a time (relative
/// to the last, so no path string exceeds PATH_MAX) and `file` at the bottom.
fn nested(base: &str, names: &[String], file: &str, content: &str) {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let c = |text: &str| std::ffi::CString::new(text).expect("no NUL");
    // SAFETY: NUL-terminated strings and descriptors owned here.
    unsafe {
        let mut dir = OwnedFd::from_raw_fd(libc::open(c(base).as_ptr(), libc::O_PATH | libc::O_DIRECTORY));
        for name in names {
            assert_eq!(libc::mkdirat(dir.as_raw_fd(), c(name).as_ptr(), 0o755), 0, "mkdir {name}");
            let next = libc::openat(dir.as_raw_fd(), c(name).as_ptr(), libc::O_PATH | libc::O_DIRECTORY);
            assert!(next >= 0, "open {name}");
            dir = OwnedFd::from_raw_fd(next);
        }
        let fd = libc::openat(dir.as_raw_fd(), c(file).as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
        assert!(fd >= 0, "create {file}");
        std::io::Write::write_all(&mut std::fs::File::from_raw_fd(fd), content.as_bytes()).expect("write");
    }
}

/// Removes a tree deeper or longer than `remove_dir_all` can walk by path.
fn remove_deep(base: &str) {
    let _ = std::process::Command::new("rm").args(["-rf", base]).status();
}

#[test]
fn paths_deeper_or_longer_than_the_walk_are_refused_not_judged_on_their_tail() {
    let dir = TestDir::new("unresolved");
    let secret = dir.path("secret");
    std::fs::create_dir_all(&secret).expect("secret dir");
    let mut spec = IdentitySpec::new("agent");
    spec.files = vec![PathRuleSpec::file("secret", PathPattern::Directory(format!("{secret}/")), Verdict::Deny)];
    let mut harness = Harness::start(vec![spec]);
    let lsm = lsm_files(&harness);
    let before = harness.kernel.counters().expect("counters").paths_unresolved;

    // 80 directories deep: the walk stops at 64 steps; the tail names no rule.
    let deep: Vec<String> = (0..80).map(|_| "d".to_string()).collect();
    nested(&secret, &deep, "token", "DEEP-SECRET");
    // 18 names of 250 bytes: longer than the walk's 4096-byte buffer.
    let long: Vec<String> = (0..18).map(|index| format!("{index:02}{}", "x".repeat(248))).collect();
    nested(&secret, &long, "token", "LONG-SECRET");
    assert!(long.iter().map(|name| name.len() + 1).sum::<usize>() > 4096);

    for (what, names) in [("80 deep", &deep), ("over 4096 bytes", &long)] {
        let mut args = vec!["open-chain".to_string(), secret.clone()];
        args.extend(names.iter().cloned());
        args.push("token".into());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = harness.probe_as("agent", &args);
        assert_refused(lsm, &run, what);
        assert!(!run.stdout.contains("SECRET"), "{what}: {run:?}");
        let event = event_of(&mut harness, what, &run, EventKind::FileOpen);
        assert_eq!(event.decision, DecisionSource::UnresolvedPath as u8, "{what}: {}", describe(&event));
        assert_ne!(event.flags & event_flags::PATH_UNRESOLVED, 0, "{what}: {}", describe(&event));
        assert_eq!(event.verdict, Verdict::Deny as u8);
    }
    let after = harness.kernel.counters().expect("counters").paths_unresolved;
    assert!(after >= before + 2, "unresolved paths counted: {before} -> {after}");
    // An untagged process is not judged at all.
    let mut args = vec!["open-chain".to_string(), secret.clone()];
    args.extend(deep.iter().cloned());
    args.push("token".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_eq!(harness.probe_untagged(&args).stdout.trim(), "ok DEEP-SECRET");
    remove_deep(&secret);
}

#[test]
fn a_file_opened_by_handle_is_judged_as_the_file() {
    let dir = TestDir::new("handle");
    let secret = dir.file("secret/token", "HANDLE-SECRET");
    let mut spec = IdentitySpec::new("agent");
    spec.files = vec![PathRuleSpec::file("secret", PathPattern::Directory(dir.path("secret/")), Verdict::Deny)];
    // open_by_handle_at needs CAP_DAC_READ_SEARCH: allowed, so the path rule is what is tested.
    let dac_read_search = 1u64 << rtid_common::capability::number("CAP_DAC_READ_SEARCH").expect("capability");
    spec.capabilities = CapabilityCeiling { denied: spec.capabilities.denied & !dac_read_search, ..spec.capabilities };
    let mut harness = Harness::start(vec![spec]);
    let lsm = lsm_files(&harness);
    let run = harness.probe_as("agent", &["open-by-handle", &secret]);
    assert_refused(lsm, &run, "open_by_handle_at");
    let event = event_of(&mut harness, "open by handle", &run, EventKind::FileOpen);
    // Judged as the file (or, were its dentry disconnected, as unresolved): never allowed.
    assert_eq!(event.verdict, Verdict::Deny as u8, "{}", describe(&event));
    assert!(
        event.rule_id == harness.rule_id("agent", "secret") || event.decision == DecisionSource::UnresolvedPath as u8,
        "{}",
        describe(&event)
    );
}

#[test]
fn a_binary_copied_into_memory_is_an_anonymous_exec() {
    let mut guarded = IdentitySpec::new("agent");
    guarded.exec = vec![PathRuleSpec::exec("ssh", PathPattern::Exact("/usr/bin/ssh".into()), Verdict::Deny)];
    let mut harness = Harness::start(vec![guarded, IdentitySpec::new("free")]);
    let lsm = harness.kernel.backends().exec == Backend::Lsm;
    let run = harness.probe_as("agent", &["memfd-exec", "/bin/true"]);
    assert_refused(lsm, &run, "exec from a memfd");
    let event = event_of(&mut harness, "memfd exec", &run, EventKind::Exec);
    assert_eq!(event.decision, DecisionSource::AnonymousExec as u8, "{}", describe(&event));
    assert_eq!(event.verdict, Verdict::Deny as u8);
    // An identity without exec rules keeps its exec default (allow).
    let run = harness.probe_as("free", &["memfd-exec", "/bin/true"]);
    assert!(run.status.success() && run.stdout.is_empty(), "memfd exec without exec rules: {run:?}");
}

#[test]
fn wildcard_destinations_are_judged_as_loopback() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let port = listener.local_addr().expect("port").port();
    let listener6 = TcpListener::bind("[::1]:0").expect("v6 listener");
    let port6 = listener6.local_addr().expect("port").port();
    let mut spec = IdentitySpec::new("agent");
    spec.network = vec![
        NetRuleSpec::cidr("v4-service", "127.0.0.1".parse().unwrap(), 32, vec![(port, port)], Verdict::Deny),
        NetRuleSpec::cidr("v6-service", "::1".parse().unwrap(), 128, vec![(port6, port6)], Verdict::Deny),
    ];
    let mut harness = Harness::start(vec![spec]);
    for (target, rule) in [(format!("0.0.0.0:{port}"), "v4-service"), (format!("[::]:{port6}"), "v6-service")] {
        let run = harness.probe_as("agent", &["connect", &target]);
        assert_eq!(run.errno(), Some(EPERM), "{target}: {run:?}");
        let event = event_of(&mut harness, &target, &run, EventKind::Connect);
        assert_eq!(event.rule_id, harness.rule_id("agent", rule), "{}", describe(&event));
    }
    listener.set_nonblocking(true).expect("nonblocking");
    assert!(listener.accept().is_err(), "no connection reached the service");
    let explained = harness
        .kernel
        .explain("agent", &ExplainAction::Connect { address: "0.0.0.0".into(), port, udp: false })
        .expect("explain");
    assert_eq!((explained.verdict.as_str(), explained.rule_id.as_deref()), ("deny", Some("v4-service")));
}

#[test]
fn a_udp_send_to_an_unspec_address_is_judged_as_ipv4() {
    let receiver = UdpSocket::bind("127.0.0.1:0").expect("receiver");
    let port = receiver.local_addr().expect("port").port();
    let mut spec = IdentitySpec::new("agent");
    let mut rule = NetRuleSpec::cidr("receiver", "127.0.0.1".parse().unwrap(), 32, vec![(port, port)], Verdict::Deny);
    rule.protocols = rtid_common::protocol::UDP;
    spec.network = vec![rule];
    let mut harness = Harness::start(vec![spec]);
    let run = harness.probe_as("agent", &["sendto-unspec", "127.0.0.1", &port.to_string()]);
    assert_eq!(run.errno(), Some(EPERM), "{run:?}");
    let event = event_of(&mut harness, "AF_UNSPEC send", &run, EventKind::Send);
    assert_eq!(event.rule_id, harness.rule_id("agent", "receiver"), "{}", describe(&event));
    // The probe has exited: a datagram it sent would be queued by now.
    receiver.set_nonblocking(true).expect("nonblocking");
    let mut buffer = [0u8; 16];
    assert!(receiver.recv(&mut buffer).is_err(), "the datagram must not arrive");
    // The same send untagged arrives: the refusal was rtid's.
    let untagged = harness.probe_untagged(&["sendto-unspec", "127.0.0.1", &port.to_string()]);
    assert_eq!(untagged.stdout.trim(), "ok sent 4", "{untagged:?}");
    receiver.set_nonblocking(false).expect("blocking");
    assert_eq!(receiver.recv(&mut buffer).expect("datagram"), 4);
}

#[test]
fn raw_and_packet_sockets_are_refused_unless_the_policy_allows_them() {
    let mut allowed = IdentitySpec::new("allowed");
    allowed.sockets_allowed = [SocketKind::Raw, SocketKind::Packet].into_iter().collect();
    allowed.capabilities = CapabilityCeiling { denied: 0, opted_in: 0, user_namespaces: false };
    let mut harness = Harness::start(vec![IdentitySpec::new("agent"), allowed]);
    let name = protection::name(protection::SOCKET_KIND);
    let held =
        harness.kernel.protections().into_iter().find(|status| status.name == name).expect("socket kinds listed");
    let lsm = held.level == ProtectionLevel::Enforced;
    for (action, family, socket_type) in
        [("raw-socket", libc::AF_INET, libc::SOCK_RAW), ("packet-socket", libc::AF_PACKET, libc::SOCK_RAW)]
    {
        let run = harness.probe_as("agent", &[action]);
        assert_refused(lsm, &run, action);
        let event = event_of(&mut harness, action, &run, EventKind::Socket);
        assert_eq!(event.rule_id, protection::SOCKET_KIND, "{}", describe(&event));
        assert_eq!(event.decision, DecisionSource::Protected as u8);
        let (got_family, got_type, _) = socket_detail::unpack(event.detail);
        assert_eq!((got_family, got_type), (family as u32, socket_type as u32), "{}", describe(&event));
        let expected = if lsm { Outcome::Blocked } else { Outcome::Killed };
        assert_eq!(event.outcome, expected as u8, "{}", describe(&event));
        let run = harness.probe_as("allowed", &[action]);
        assert!(run.succeeded(), "allowed by sockets.allow: {run:?}");
    }
    // TCP, UDP and unix sockets are every identity's: judged by address, not kind.
    let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
    let run = harness.probe_as("agent", &["connect", &listener.local_addr().expect("addr").to_string()]);
    assert!(run.succeeded(), "{run:?}");
}

#[test]
fn a_process_sharing_the_descriptor_table_never_reads_a_descriptor_whose_opener_died() {
    let dir = TestDir::new("clonefiles");
    let secret = dir.file("secret/token", "SHARED-SECRET");
    let mut spec = IdentitySpec::new("agent");
    spec.files = vec![PathRuleSpec::file("secret", PathPattern::Directory(dir.path("secret/")), Verdict::Deny)];
    let mut harness = Harness::start(vec![spec]);
    let lsm = lsm_files(&harness);
    // The harness reads the probe's stdout until every holder closes it: the
    // child too, so this returns once both are gone.
    let run = harness.probe_as("agent", &["clone-files-read", &secret]);
    assert!(!run.stdout.contains("SHARED-SECRET"), "the secret reached a process: {run:?}");
    if lsm {
        assert!(run.stdout.lines().any(|line| line == "err 1"), "EPERM for the open: {run:?}");
    } else {
        assert!(run.killed(), "the opener is killed: {run:?}");
    }
    let child: u32 = run
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("child "))
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("the probe names its child: {run:?}"));
    if !lsm {
        // Without BPF LSM the open is killed after the descriptor exists: the
        // sibling sharing the table is killed before it ever runs.
        let event = harness.expect_event("the sibling's kill", |e| {
            e.kind == EventKind::ProcessStart as u8 && e.related_tgid == child && e.rule_id == protection::SHARED_FILES
        });
        assert_eq!((event.decision, event.outcome), (DecisionSource::Protected as u8, Outcome::Killed as u8));
        assert!(!run.stdout.contains("leaked"), "the sibling never ran: {run:?}");
    }
}
