//! rtid's integrity, attacked by a root agent: the daemon, rtid's files, its
//! control socket, the capability ceiling and the full process table. Every
//! test is backend-aware: where BPF LSM serves the protection (the VM's LSM
//! passes), the call fails with EPERM and nothing changes; on the fallback (this
//! host), the attacker dies of SIGKILL, and the test checks exactly what the
//! threat model says still happened. Each test also checks the event.

use std::{
    os::unix::{fs::PermissionsExt, net::UnixListener},
    path::Path,
    process::{Child, Command},
};

use rtid_common::{
    Backend, DecisionSource, Event, EventKind, Outcome, file_change,
    protection::{self},
};
use rtid_tests::*;
use rtid_userspace::{
    launch::fork_paused,
    loader::{LoadOptions, ProtectedPath, ProtectionLevel},
    policy::CapabilityCeiling,
};

const EPERM: i32 = 1;
const SIGCONT: &str = "18";
const CAP_NET_RAW: u32 = 13;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_SYS_MODULE: u32 = 16;
const CAP_DAC_READ_SEARCH: u32 = 2;

/// Whether `protection` holds before the effect on this kernel (BPF LSM).
fn enforced(harness: &Harness, protection: u32) -> bool {
    let name = protection::name(protection);
    let status = harness.kernel.protections().into_iter().find(|status| status.name == name);
    let status = status.unwrap_or_else(|| panic!("protections() lists {name}"));
    assert_ne!(status.level, ProtectionLevel::Unavailable, "{name} holds one way or the other");
    status.level == ProtectionLevel::Enforced
}

/// An identity whose capability ceiling does not get in the way of the
/// protection under test (capability checks come before some of them).
fn uncapped(name: &str) -> IdentitySpec {
    let mut spec = IdentitySpec::new(name);
    spec.capabilities = CapabilityCeiling { denied: 0, opted_in: 0, user_namespaces: true };
    spec.sockets_allowed = SocketKind::ALL.into_iter().collect();
    spec
}

/// The event of a protection that held against `run`.
fn protection_event(harness: &mut Harness, run: &ProbeRun, kind: EventKind, protection: u32) -> Event {
    let what = format!("{} ({})", protection::name(protection), kind.name());
    let event = harness.expect_event(&what, |e| e.tgid == run.pid && e.kind == kind as u8 && e.rule_id == protection);
    assert_eq!(event.decision, DecisionSource::Protected as u8, "{what}: {}", describe(&event));
    event
}

/// Refused with EPERM under BPF LSM (event backend lsm, outcome blocked), or
/// killed by SIGKILL on the fallback (outcome killed).
fn assert_held(harness: &mut Harness, lsm: bool, run: &ProbeRun, kind: EventKind, protection: u32) -> Event {
    if lsm {
        assert_eq!(run.errno(), Some(EPERM), "{}: refused with EPERM: {run:?}", protection::name(protection));
    } else {
        assert!(run.killed(), "{}: the caller is killed: {run:?}", protection::name(protection));
    }
    let event = protection_event(harness, run, kind, protection);
    let (outcome, backend) =
        if lsm { (Outcome::Blocked, Backend::Lsm) } else { (Outcome::Killed, Backend::Tracepoint) };
    assert_eq!((event.outcome, event.backend), (outcome as u8, backend as u8), "{}", describe(&event));
    event
}

/// A stand-in for the daemon: an untagged process registered as the daemon.
struct StandIn(Child);

impl StandIn {
    fn start(harness: &mut Harness) -> StandIn {
        let child = Command::new("sleep").arg("1000").spawn().expect("start the stand-in daemon");
        harness.kernel.set_daemon_tgid(child.id()).expect("register the daemon");
        StandIn(child)
    }

    fn pid(&self) -> String {
        self.0.id().to_string()
    }

    fn assert_alive(&mut self) {
        assert_eq!(self.0.try_wait().expect("wait for the stand-in"), None, "the daemon keeps running");
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_daemon_cannot_be_signalled_traced_or_written() {
    let mut harness = Harness::start(vec![uncapped("agent")]);
    let mut daemon = StandIn::start(&mut harness);
    let pid = daemon.pid();
    let tgid = daemon.0.id();
    let lsm = enforced(&harness, protection::DAEMON_SIGNAL);
    assert_eq!(lsm, enforced(&harness, protection::DAEMON_TRACE));

    // On the fallback the signal is still delivered: a harmless one there.
    let signals: &[&str] = if lsm { &["9", "19"] } else { &[SIGCONT] };
    for signal in signals {
        let run = harness.probe_as("agent", &["kill", &pid, signal]);
        let event = assert_held(&mut harness, lsm, &run, EventKind::Tamper, protection::DAEMON_SIGNAL);
        assert_eq!((event.detail, event.related_tgid), (tgid, tgid), "names the daemon: {}", describe(&event));
        daemon.assert_alive();
    }
    // Signal 0 only asks whether the process exists.
    let probe = harness.probe_as("agent", &["kill", &pid, "0"]);
    assert!(probe.succeeded(), "kill(pid, 0) is not an attack: {probe:?}");

    for (action, what) in [("ptrace-attach", "ptrace"), ("vm-write", "process_vm_writev")] {
        let run = harness.probe_as("agent", &[action, &pid]);
        let event = assert_held(&mut harness, lsm, &run, EventKind::Tamper, protection::DAEMON_TRACE);
        assert_eq!(event.detail, tgid, "{what}: {}", describe(&event));
        daemon.assert_alive();
    }

    // /proc/<daemon>/mem is protected on both backends before any byte is
    // written: refused at open (LSM), or the opener killed on its way out of
    // open (fallback).
    let mem = format!("/proc/{pid}/mem");
    let run = harness.probe_as("agent", &["open", &mem, "--write"]);
    let event = assert_held(&mut harness, lsm, &run, EventKind::FileOpen, protection::DAEMON_TRACE);
    assert_eq!(event_path(&event), mem);
    daemon.assert_alive();

    // An untagged root operator may still signal it.
    let untagged = harness.probe_untagged(&["kill", &pid, SIGCONT]);
    assert!(untagged.succeeded(), "{untagged:?}");
}

/// A protected directory with one file in it, rewritten before each attack.
struct ProtectedDir {
    dir: TestDir,
    file: String,
    outside: String,
}

impl ProtectedDir {
    fn new(harness: &mut Harness, name: &str) -> ProtectedDir {
        let dir = TestDir::new(name);
        let file = dir.file("rtid/policy.yaml", "original");
        let outside = dir.path("outside");
        std::fs::create_dir_all(&outside).expect("outside dir");
        let protected = [ProtectedPath::directory(dir.path("rtid"))];
        harness.kernel.set_protected_paths(&protected).expect("protect the directory");
        ProtectedDir { dir, file, outside }
    }

    fn restore(&self) {
        let _ = std::fs::remove_file(self.dir.path("rtid/new"));
        let _ = std::fs::remove_file(self.dir.path("rtid/evil"));
        std::fs::write(&self.file, "original").expect("restore the protected file");
        std::fs::set_permissions(&self.file, std::fs::Permissions::from_mode(0o644)).expect("mode");
        for name in ["moved", "linked", "replacement"] {
            let _ = std::fs::remove_file(Path::new(&self.outside).join(name));
        }
    }

    fn content(&self) -> Option<String> {
        std::fs::read_to_string(&self.file).ok()
    }
}

#[test]
fn rtids_files_cannot_be_written_replaced_or_removed() {
    let mut harness = Harness::start(vec![uncapped("agent")]);
    let files = ProtectedDir::new(&mut harness, "integrity-files");
    let lsm = enforced(&harness, protection::PROTECTED_FILE);
    let file = files.file.clone();
    let outside = |name: &str| Path::new(&files.outside).join(name).display().to_string();
    let new_name = files.dir.path("rtid/new");
    let evil = files.dir.path("rtid/evil");

    // Write open: held before the first byte on both backends.
    files.restore();
    let run = harness.probe_as("agent", &["open", &file, "--write"]);
    let event = assert_held(&mut harness, lsm, &run, EventKind::FileOpen, protection::PROTECTED_FILE);
    assert_eq!(event_path(&event), file);
    assert_eq!(files.content().as_deref(), Some("original"), "not one byte written");

    // (probe arguments, file_change under LSM, path the event names)
    std::fs::write(outside("replacement"), "replaced").expect("replacement file");
    let attacks: Vec<(Vec<String>, u32, String)> = vec![
        (vec!["truncate".into(), file.clone()], file_change::TRUNCATE, file.clone()),
        (vec!["unlink".into(), file.clone()], file_change::UNLINK, file.clone()),
        (vec!["rename".into(), file.clone(), outside("moved")], file_change::RENAME_FROM, file.clone()),
        (vec!["rename".into(), outside("replacement"), file.clone()], file_change::RENAME_TO, file.clone()),
        (vec!["link".into(), file.clone(), outside("linked")], file_change::LINK, file.clone()),
        (vec!["chmod".into(), file.clone()], file_change::CHMOD, file.clone()),
        (vec!["create".into(), new_name.clone()], file_change::CREATE, new_name.clone()),
        (vec!["symlink".into(), "/etc/passwd".into(), evil.clone()], file_change::CREATE, evil.clone()),
    ];
    for (args, change, path) in attacks {
        files.restore();
        std::fs::write(outside("replacement"), "replaced").expect("replacement file");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let run = harness.probe_as("agent", &args);
        let what = format!("{args:?}");
        if lsm {
            let event = assert_held(&mut harness, lsm, &run, EventKind::FileChange, protection::PROTECTED_FILE);
            assert_eq!(event.detail, change, "{what}: {}", describe(&event));
            assert_eq!(event_path(&event), path, "{what}");
            assert_eq!(files.content().as_deref(), Some("original"), "{what}: the file is intact");
            let mode = std::fs::metadata(&file).expect("still there").permissions().mode() & 0o777;
            assert_eq!(mode, 0o644, "{what}: mode unchanged");
            assert!(!Path::new(&new_name).exists() && !Path::new(&evil).exists(), "{what}: no new name");
            assert!(!Path::new(&outside("linked")).exists(), "{what}: no second name");
        } else if args[0] == "create" {
            // O_CREAT is an open: the file is made, its opener killed before writing.
            let event = assert_held(&mut harness, lsm, &run, EventKind::FileOpen, protection::PROTECTED_FILE);
            assert_eq!(event_path(&event), path, "{what}");
            assert_eq!(std::fs::read(&new_name).expect("created").len(), 0, "{what}: nothing written");
        } else {
            // Killed at syscall entry on the absolute path it named; the change itself happened.
            let event = assert_held(&mut harness, lsm, &run, EventKind::FileChange, protection::PROTECTED_FILE);
            assert_eq!(event_path(&event), path, "{what}: the path as the caller named it");
        }
    }

    // Outside the protected directory, the same identity changes files freely;
    // an untagged operator changes protected ones.
    files.restore();
    let scratch = files.dir.file("outside/scratch", "x");
    let run = harness.probe_as("agent", &["unlink", &scratch]);
    assert!(run.succeeded(), "unprotected files are not judged by this: {run:?}");
    let run = harness.probe_untagged(&["open", &file, "--write"]);
    assert!(run.succeeded(), "the operator may write: {run:?}");
}

#[test]
fn the_control_socket_refuses_agents() {
    let mut harness = Harness::start(vec![uncapped("agent")]);
    let dir = TestDir::new("integrity-socket");
    let socket = dir.path("rtid.sock");
    let _listener = UnixListener::bind(&socket).expect("bind the control socket");
    harness.kernel.set_protected_paths(&[ProtectedPath::control_socket(&socket)]).expect("protect the socket");
    let lsm = harness.kernel.backends().unix == Backend::Lsm;
    assert_eq!(lsm, enforced(&harness, protection::CONTROL_SOCKET));

    let run = harness.probe_as("agent", &["unix-connect", &socket]);
    let event = assert_held(&mut harness, lsm, &run, EventKind::Connect, protection::CONTROL_SOCKET);
    assert_eq!(event_path(&event), socket);

    // By a relative name: BPF LSM judges the socket the kernel found; the
    // fallback sees only the name given (the README's threat model says so).
    let run = harness.probe_as("agent", &["unix-connect-in", &dir.0.display().to_string(), "rtid.sock"]);
    if lsm {
        assert_held(&mut harness, lsm, &run, EventKind::Connect, protection::CONTROL_SOCKET);
    } else {
        assert!(run.succeeded(), "the fallback judges names, and this one is relative: {run:?}");
    }

    let untagged = harness.probe_untagged(&["unix-connect", &socket]);
    assert!(untagged.succeeded(), "{untagged:?}");
}

#[test]
fn capabilities_above_the_ceiling_and_user_namespaces_are_refused() {
    let mut audited = IdentitySpec::new("audited");
    audited.mode = Mode::Audit;
    audited.sockets_allowed.insert(SocketKind::Raw);
    // Raw sockets are a socket kind of their own (tests/tests/aliases.rs):
    // allowed here, so that the capability under them is what is tested.
    let mut agent = IdentitySpec::new("agent");
    agent.sockets_allowed.insert(SocketKind::Raw);
    let mut harness = Harness::start(vec![agent, uncapped("trusted"), audited]);
    let lsm = enforced(&harness, protection::CAPABILITY);
    assert_eq!(lsm, enforced(&harness, protection::USER_NAMESPACE));

    let run = harness.probe_as("agent", &["raw-socket"]);
    let event = assert_held(&mut harness, lsm, &run, EventKind::Capability, protection::CAPABILITY);
    assert_eq!(event.detail, CAP_NET_RAW, "{}", describe(&event));

    let dir = TestDir::new("integrity-mount");
    let target = dir.path("mnt");
    std::fs::create_dir_all(&target).expect("mount point");
    let run = harness.probe_as("agent", &["mount-tmpfs", &target]);
    // On the fallback the mount was made before the caller died: undo it.
    let mounted = std::ffi::CString::new(target.clone()).expect("path");
    // SAFETY: a NUL-terminated path; failing (nothing mounted) is fine.
    let unmounted = unsafe { libc::umount2(mounted.as_ptr(), libc::MNT_DETACH) } == 0;
    assert_eq!(unmounted, !lsm, "mounted only where the call could not be refused");
    let event = assert_held(&mut harness, lsm, &run, EventKind::Capability, protection::CAPABILITY);
    assert_eq!(event.detail, CAP_SYS_ADMIN, "{}", describe(&event));

    // A bind mount of a secret over a path the agent may read: the other way
    // round path rules. Refused, or (fallback) made and undone here.
    let secret = dir.file("secret", "SECRET");
    let decoy = dir.file("decoy", "decoy");
    let run = harness.probe_as("agent", &["bind-mount", &secret, &decoy]);
    let decoy_path = std::ffi::CString::new(decoy.clone()).expect("path");
    // SAFETY: a NUL-terminated path; failing (nothing mounted) is fine.
    let unbound = unsafe { libc::umount2(decoy_path.as_ptr(), libc::MNT_DETACH) } == 0;
    assert_eq!(unbound, !lsm, "bound only where the call could not be refused");
    let event = assert_held(&mut harness, lsm, &run, EventKind::Capability, protection::CAPABILITY);
    assert_eq!(event.detail, CAP_SYS_ADMIN, "{}", describe(&event));
    assert_eq!(std::fs::read_to_string(&decoy).unwrap(), "decoy");

    for (action, capability) in
        [("unshare-mount", CAP_SYS_ADMIN), ("open-by-handle", CAP_DAC_READ_SEARCH), ("load-module", CAP_SYS_MODULE)]
    {
        let args: Vec<&str> = if action == "open-by-handle" { vec![action, &secret] } else { vec![action] };
        let run = harness.probe_as("agent", &args);
        assert!(!run.stdout.contains("SECRET"), "{action}: {run:?}");
        if action == "load-module" && !Path::new("/proc/modules").exists() {
            // A kernel built without module support (this host): there is
            // nothing to load, for anyone. The VM's Debian kernels have it.
            assert_eq!(run.errno(), Some(libc::ENOSYS), "{run:?}");
            continue;
        }
        let event = assert_held(&mut harness, lsm, &run, EventKind::Capability, protection::CAPABILITY);
        assert_eq!(event.detail, capability, "{action}: {}", describe(&event));
    }

    let run = harness.probe_as("agent", &["unshare-user"]);
    let event = assert_held(&mut harness, lsm, &run, EventKind::Capability, protection::USER_NAMESPACE);
    assert_eq!(event.detail, CAP_SYS_ADMIN, "{}", describe(&event));

    // An identity that opted back in, and one in audit mode, may.
    let run = harness.probe_as("trusted", &["raw-socket"]);
    assert!(run.succeeded(), "opted in: {run:?}");
    let run = harness.probe_as("audited", &["raw-socket"]);
    assert!(run.succeeded(), "audit mode reports and lets through: {run:?}");
    let event = protection_event(&mut harness, &run, EventKind::Capability, protection::CAPABILITY);
    assert_eq!((event.outcome, event.detail), (Outcome::AuditOnly as u8, CAP_NET_RAW), "{}", describe(&event));
    let untagged = harness.probe_untagged(&["raw-socket"]);
    assert!(untagged.succeeded(), "{untagged:?}");
}

#[test]
fn a_full_process_table_kills_the_child_it_cannot_tag() {
    const CAPACITY: u32 = 4;
    let options = LoadOptions { max_processes: Some(CAPACITY), ..LoadOptions::default() };
    let mut harness = Harness::start_with(vec![IdentitySpec::new("agent")], options);
    assert_eq!(harness.kernel.process_table_fill(), (0, CAPACITY));

    // Three tagged sleepers, and a fourth tagged process that forks: its child is the fifth.
    let mut sleepers = Vec::new();
    for _ in 0..CAPACITY - 1 {
        let mut child = fork_paused(&["/bin/sleep".into(), "1000".into()], false).expect("fork");
        harness.kernel.label_pid(child.pid, "agent").expect("label");
        child.release().expect("release");
        sleepers.push(child);
    }
    assert_eq!(harness.kernel.process_table_fill(), (CAPACITY as usize - 1, CAPACITY));
    let run = harness.probe_as("agent", &["spawn", "/bin/true"]);
    for sleeper in &sleepers {
        // SAFETY: signals a child of this test that has not been waited for.
        unsafe { libc::kill(sleeper.pid as i32, libc::SIGKILL) };
        let _ = sleeper.wait();
    }
    assert_eq!(run.stdout.trim(), "ok signal 9", "the untaggable child is killed: {run:?}");

    let counters = harness.kernel.counters().expect("counters");
    assert_eq!(counters.untaggable_killed, 1, "{counters:?}");
    assert!(counters.process_table_full >= 1, "{counters:?}");
    let parent = run.pid;
    let event = harness.expect_event("untaggable child killed", |e| {
        e.kind == EventKind::ProcessStart as u8 && e.rule_id == protection::CAPACITY
    });
    assert_eq!(event.decision, DecisionSource::Protected as u8);
    assert_eq!(event.outcome, Outcome::Killed as u8);
    assert_eq!(event.identity, harness.identity_id("agent"));
    assert_eq!(event.tgid, event.related_tgid, "reported from the child itself");
    assert_eq!(event.parent_tgid, parent, "{}", describe(&event));
}

#[test]
fn protections_name_each_protection_and_its_backend() {
    let harness = Harness::start(vec![IdentitySpec::new("agent")]);
    let protections = harness.kernel.protections();
    let names: Vec<&str> = protections.iter().map(|status| status.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "rtid/bpf",
            "rtid/protected",
            "rtid/control-socket",
            "rtid/daemon-signal",
            "rtid/daemon-trace",
            "rtid/capability",
            "rtid/user-namespace",
            "rtid/socket-kind",
            "rtid/shared-files",
            "rtid/capacity"
        ]
    );
    let lsm = harness.kernel.backends().file == Backend::Lsm;
    for status in &protections {
        let expected = if lsm || status.name == "rtid/capacity" || status.name == "rtid/shared-files" {
            ProtectionLevel::Enforced
        } else {
            ProtectionLevel::AfterTheFact
        };
        assert_eq!(status.level, expected, "{status:?}");
        assert!(!status.detail.is_empty(), "{status:?}");
    }
}

/// A unix socket listening at `path` for the length of a test: the real
/// service's if it is there, else one made here (and removed afterwards).
struct ServiceSocket {
    path: String,
    made: Option<UnixListener>,
}

impl ServiceSocket {
    fn at(path: &str) -> ServiceSocket {
        if Path::new(path).exists() {
            return ServiceSocket { path: path.into(), made: None };
        }
        std::fs::create_dir_all(Path::new(path).parent().expect("parent")).expect("socket directory");
        let listener = UnixListener::bind(path).unwrap_or_else(|error| panic!("listening at {path}: {error}"));
        ServiceSocket { path: path.into(), made: Some(listener) }
    }
}

impl Drop for ServiceSocket {
    fn drop(&mut self) {
        if self.made.take().is_some() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The event of a host-control guard that refused `run`.
fn guarded_by(harness: &mut Harness, run: &ProbeRun, kind: EventKind, group: &str) {
    let event = harness.expect_event(group, |e| e.tgid == run.pid && e.kind == kind as u8);
    let rule = harness.kernel.rule_info(event.rule_id).map(|info| info.id.clone());
    assert_eq!(rule.as_deref(), Some(format!("rtid/host-control/{group}").as_str()), "{}", describe(&event));
}

/// The built-in host-control guards: an identity cannot have the service
/// manager, the scheduler, a container runtime or the kernel's core-dump
/// helper run something for it, outside its identity.
#[test]
fn untagged_deputies_are_out_of_reach() {
    let mut harness = Harness::start(vec![IdentitySpec::new("agent")]);
    let lsm_sockets = enforced(&harness, protection::CONTROL_SOCKET);
    let lsm_files = enforced(&harness, protection::PROTECTED_FILE);
    let refused = |run: &ProbeRun, lsm: bool, what: &str| {
        if lsm {
            assert_eq!(run.errno(), Some(EPERM), "{what}: refused with EPERM: {run:?}");
        } else {
            assert!(run.killed(), "{what}: killed before it acts: {run:?}");
        }
    };

    // systemctl and systemd-run talk to PID 1 over these.
    for path in ["/run/systemd/private", "/run/dbus/system_bus_socket"] {
        let socket = ServiceSocket::at(path);
        let run = harness.probe_as("agent", &["unix-connect", &socket.path]);
        refused(&run, lsm_sockets, path);
        guarded_by(&mut harness, &run, EventKind::Connect, "serviceManager");
    }
    let socket = ServiceSocket::at("/run/containerd/containerd.sock");
    let run = harness.probe_as("agent", &["unix-connect", &socket.path]);
    refused(&run, lsm_sockets, "containerd");
    guarded_by(&mut harness, &run, EventKind::Connect, "containerRuntime");

    // An at job: a new file in the spool. The open is refused (or its caller
    // killed) after O_CREAT made the name, so at most an empty file remains.
    std::fs::create_dir_all("/var/spool/cron/atjobs").expect("at spool");
    let job = format!("/var/spool/cron/atjobs/a{:05}rtid-test", std::process::id() % 100_000);
    let run = harness.probe_as("agent", &["create", &job]);
    refused(&run, lsm_files, "at job");
    guarded_by(&mut harness, &run, EventKind::FileOpen, "scheduler");
    match std::fs::read(&job) {
        Ok(content) => {
            assert!(content.is_empty(), "the job holds nothing: {content:?}");
            std::fs::remove_file(&job).expect("remove the empty job");
        }
        Err(error) => assert_eq!(error.kind(), std::io::ErrorKind::NotFound),
    }

    // The core-dump helper runs as root, outside any identity.
    let core_pattern = "/proc/sys/kernel/core_pattern";
    let before = std::fs::read_to_string(core_pattern).expect("core_pattern");
    let run = harness.probe_as("agent", &["open", core_pattern, "--write"]);
    let after = std::fs::read_to_string(core_pattern).expect("core_pattern");
    if after != before {
        std::fs::write(core_pattern, before.trim_end()).expect("restore core_pattern");
    }
    assert_eq!(after, before, "core_pattern unchanged");
    refused(&run, lsm_files, "core_pattern");
    guarded_by(&mut harness, &run, EventKind::FileOpen, "kernelTunables");
}
