//! `rtid run`'s launch hardening, judged by effect on the running kernel: a
//! root process started through `fork_paused_hardened` and labeled with an
//! identity cannot regain the capabilities its identity is denied, create user
//! namespaces, mount, or signal or trace the daemon (a sacrificial stand-in
//! here), and neither can anything it starts. Seccomp and the capability sets
//! are not BPF LSM: these hold before the effect on both backends.

use std::{
    io::Read,
    os::fd::OwnedFd,
    process::{Child, Command, Stdio},
};

use rtid_common::capability;
use rtid_tests::{Harness, IdentitySpec, ProbeRun, TestDir, probe_path};
use rtid_userspace::launch::{Hardening, fork_paused_hardened};

const EPERM: i32 = libc::EPERM;

fn capability_bit(name: &str) -> u64 {
    1u64 << capability::number(name).expect("known capability")
}

/// What `setcap` writes, without needing it (the VM images have no libcap tools).
struct FileCapabilities {
    permitted: u64,
    inheritable: u64,
    effective: bool,
}

/// Writes `security.capability` as `struct vfs_cap_data` revision 2
/// (linux/capability.h): magic and flags, then permitted and inheritable as
/// low/high 32-bit pairs, little endian.
fn set_file_capabilities(binary: &str, caps: FileCapabilities) {
    const VFS_CAP_REVISION_2: u32 = 0x0200_0000;
    const VFS_CAP_FLAGS_EFFECTIVE: u32 = 0x1;
    let magic = VFS_CAP_REVISION_2 | if caps.effective { VFS_CAP_FLAGS_EFFECTIVE } else { 0 };
    let mut value = Vec::with_capacity(20);
    value.extend_from_slice(&magic.to_le_bytes());
    for half in [0, 32] {
        value.extend_from_slice(&((caps.permitted >> half) as u32).to_le_bytes());
        value.extend_from_slice(&((caps.inheritable >> half) as u32).to_le_bytes());
    }
    let path = std::ffi::CString::new(binary).expect("path without NUL");
    // SAFETY: both pointers are to live, NUL-terminated or `len`-long buffers
    // for the duration of the call.
    let result = unsafe {
        libc::setxattr(path.as_ptr(), c"security.capability".as_ptr(), value.as_ptr().cast(), value.len(), 0)
    };
    assert_eq!(result, 0, "setting file capabilities on {binary}: {}", std::io::Error::last_os_error());
}

/// The hardening `rtid run` would apply for `identity`, as compiled and installed.
fn hardening_for(harness: &Harness, identity: &str, daemon_pid: Option<u32>) -> Hardening {
    let policy = harness.kernel.policy().identity(identity).expect("identity installed").policy;
    Hardening::from_policy(&policy, daemon_pid)
}

/// `Harness::run_as`, through the hardened fork.
fn run_hardened(harness: &mut Harness, identity: &str, hardening: &Hardening, argv: &[String]) -> ProbeRun {
    let mut child = fork_paused_hardened(argv, true, hardening).expect("hardened fork");
    harness.kernel.label_pid(child.pid, identity).unwrap_or_else(|error| panic!("labeling {}: {error}", child.pid));
    child.release().expect("release child");
    let stdout = read_all(child.stdout.take());
    let status = child.wait().expect("wait for child");
    ProbeRun { pid: child.pid, status, stdout }
}

fn probe_hardened(harness: &mut Harness, identity: &str, hardening: &Hardening, args: &[&str]) -> ProbeRun {
    let mut argv = vec![probe_path().display().to_string()];
    argv.extend(args.iter().map(|arg| arg.to_string()));
    run_hardened(harness, identity, hardening, &argv)
}

fn read_all(fd: Option<OwnedFd>) -> String {
    let Some(fd) = fd else { return String::new() };
    let mut output = String::new();
    let _ = std::fs::File::from(fd).read_to_string(&mut output);
    output
}

/// A `Cap*:` or other numeric line of /proc/PID/status as printed by `cat`.
fn status_field(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in:\n{status}"));
    let value = line.trim();
    if field.starts_with("Cap") {
        u64::from_str_radix(value, 16).expect("hex capability set")
    } else {
        value.parse().expect("number")
    }
}

fn agent() -> IdentitySpec {
    IdentitySpec::new("agent")
}

/// A stand-in for the daemon: an untagged process the agent must not touch.
struct StandIn(Child);

impl StandIn {
    fn start() -> StandIn {
        StandIn(Command::new("/bin/sleep").arg("600").stdin(Stdio::null()).spawn().expect("start stand-in"))
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    /// Running, neither stopped nor dead.
    fn assert_running(&mut self) {
        assert!(self.0.try_wait().expect("try_wait").is_none(), "the stand-in daemon died");
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat of stand-in");
        let state = stat.rsplit(')').next().and_then(|rest| rest.split_whitespace().next()).unwrap_or("?");
        assert!(state == "S" || state == "R", "stand-in daemon state {state}: {stat}");
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn denied_capabilities_leave_every_set_and_no_new_privs_is_set() {
    let mut harness = Harness::start(vec![agent()]);
    let hardening = hardening_for(&harness, "agent", None);
    assert_ne!(hardening.denied_capabilities & capability_bit("CAP_SYS_ADMIN"), 0, "the default ceiling");
    let run = run_hardened(&mut harness, "agent", &hardening, &["/bin/cat".into(), "/proc/self/status".into()]);
    assert!(run.status.success(), "{run:?}");
    for set in ["CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"] {
        assert_eq!(
            status_field(&run.stdout, set) & hardening.denied_capabilities,
            0,
            "{set} keeps a denied capability:\n{}",
            run.stdout
        );
    }
    // Root keeps what the identity is not denied.
    assert_ne!(status_field(&run.stdout, "CapEff") & capability_bit("CAP_CHOWN"), 0, "{}", run.stdout);
    assert_eq!(status_field(&run.stdout, "NoNewPrivs"), 1);
    assert_eq!(status_field(&run.stdout, "Seccomp"), 2, "filter mode");
}

#[test]
fn a_file_capability_binary_or_capset_does_not_give_them_back() {
    let dir = TestDir::new("filecaps");
    let mut harness = Harness::start(vec![agent()]);
    let hardening = hardening_for(&harness, "agent", None);
    let with_caps = |name: &str, caps: FileCapabilities| {
        // Named `cat` in a directory of its own: busybox (the VM's /bin/cat)
        // picks its applet by the name it runs under.
        std::fs::create_dir_all(dir.path(name)).expect("directory for the copy");
        let binary = dir.path(&format!("{name}/cat"));
        std::fs::copy("/bin/cat", &binary).expect("copy cat");
        set_file_capabilities(&binary, caps);
        binary
    };
    let caps = capability_bit("CAP_SYS_ADMIN") | capability_bit("CAP_NET_RAW") | capability_bit("CAP_SYS_MODULE");

    // A capability-aware binary (no effective bit) runs, without them.
    let aware = with_caps("cat-aware", FileCapabilities { permitted: caps, inheritable: caps, effective: false });
    let run = run_hardened(&mut harness, "agent", &hardening, &[aware, "/proc/self/status".into()]);
    assert!(run.status.success(), "{run:?}");
    let gained = status_field(&run.stdout, "CapEff") | status_field(&run.stdout, "CapPrm");
    assert_eq!(gained & hardening.denied_capabilities, 0, "file capabilities regained:\n{}", run.stdout);
    // A capability-dumb one (effective bit) that cannot have them all does not run at all.
    let dumb = with_caps("cat-dumb", FileCapabilities { permitted: caps, inheritable: caps, effective: true });
    let run = run_hardened(&mut harness, "agent", &hardening, &[dumb, "/proc/self/status".into()]);
    assert!(!run.status.success() && run.stdout.is_empty(), "exec of a capability-dumb binary: {run:?}");

    let number = capability::number("CAP_SYS_ADMIN").unwrap().to_string();
    let raise = probe_hardened(&mut harness, "agent", &hardening, &["cap-raise", &number]);
    assert_eq!(raise.errno(), Some(EPERM), "capset raising CAP_SYS_ADMIN: {raise:?}");
    let raw = probe_hardened(&mut harness, "agent", &hardening, &["raw-socket"]);
    // Refused by the kernel's capability check (EPERM); on the fallback
    // backend rtid's capability hook may kill the caller first.
    assert!(raw.errno() == Some(EPERM) || raw.killed(), "raw socket without CAP_NET_RAW: {raw:?}");
}

#[test]
fn user_namespaces_and_mounts_are_refused() {
    let dir = TestDir::new("userns");
    let mount_point = dir.path("mnt");
    std::fs::create_dir_all(&mount_point).expect("mount point");
    let mut harness = Harness::start(vec![agent()]);
    let hardening = hardening_for(&harness, "agent", None);

    for action in ["unshare-user", "clone-newuser"] {
        let run = probe_hardened(&mut harness, "agent", &hardening, &[action]);
        assert_eq!(run.errno(), Some(EPERM), "{action}: {run:?}");
    }
    // clone3 cannot be judged by its flags (they sit in memory): it reports
    // ENOSYS, and libc falls back to clone, which is judged.
    let run = probe_hardened(&mut harness, "agent", &hardening, &["clone3"]);
    assert_eq!(run.errno(), Some(libc::ENOSYS), "clone3: {run:?}");
    let run = probe_hardened(&mut harness, "agent", &hardening, &["io-uring-setup"]);
    assert_eq!(run.errno(), Some(EPERM), "io_uring_setup: {run:?}");
    let run = probe_hardened(&mut harness, "agent", &hardening, &["mount-tmpfs", &mount_point]);
    assert_eq!(run.errno(), Some(EPERM), "mount: {run:?}");
    let mounted = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    assert!(!mounted.contains(&mount_point), "the tmpfs was mounted");

    // The real tool, as an agent would use it.
    let argv: Vec<String> = ["/usr/bin/unshare", "-Urm", "/bin/true"].iter().map(|arg| arg.to_string()).collect();
    let run = run_hardened(&mut harness, "agent", &hardening, &argv);
    assert!(!run.status.success(), "unshare -Urm succeeded: {run:?}");
}

#[test]
fn the_daemon_cannot_be_signalled_stopped_or_traced() {
    let mut stand_in = StandIn::start();
    let pid = stand_in.pid().to_string();
    let mut harness = Harness::start(vec![agent()]);
    let hardening = hardening_for(&harness, "agent", Some(stand_in.pid()));

    for args in [
        vec!["kill", pid.as_str(), "9"],
        vec!["kill", pid.as_str(), "19"],
        vec!["ptrace-attach", pid.as_str()],
        vec!["vm-write", pid.as_str()],
        vec!["pidfd-kill", pid.as_str(), "9"],
        // Signal 0 only asks whether signalling would work: harmless if the filter failed.
        vec!["kill", "-1", "0"],
    ] {
        let run = probe_hardened(&mut harness, "agent", &hardening, &args);
        assert_eq!(run.errno(), Some(EPERM), "{args:?}: {run:?}");
        stand_in.assert_running();
    }
    // The process group the daemon leads (kill(-pgid)) is refused too.
    let group = format!("-{pid}");
    let run = probe_hardened(&mut harness, "agent", &hardening, &["kill", &group, "0"]);
    assert_eq!(run.errno(), Some(EPERM), "kill -PGID: {run:?}");
    stand_in.assert_running();
}

#[test]
fn the_filter_survives_exec_and_fork() {
    let mut stand_in = StandIn::start();
    let mut harness = Harness::start(vec![agent()]);
    let hardening = hardening_for(&harness, "agent", Some(stand_in.pid()));
    // A shell (exec) starts probes (fork + exec), one of which starts another (a grandchild).
    let probe = probe_path().display().to_string();
    let script = format!(
        "{probe} unshare-user; {probe} kill {pid} 9; {probe} spawn {probe} mount-tmpfs /mnt; exit 0",
        pid = stand_in.pid()
    );
    let argv: Vec<String> = vec!["/bin/sh".into(), "-c".into(), script];
    let run = run_hardened(&mut harness, "agent", &hardening, &argv);
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(lines, vec!["err 1", "err 1", "err 1", "ok exit 1"], "{run:?}");
    stand_in.assert_running();
}

#[test]
fn an_identity_that_allows_user_namespaces_may_create_them() {
    let mut open = IdentitySpec::new("builder");
    open.capabilities.user_namespaces = true;
    let mut harness = Harness::start(vec![open, agent()]);
    let hardening = hardening_for(&harness, "builder", None);
    assert!(!hardening.deny_user_namespaces);
    let run = probe_hardened(&mut harness, "builder", &hardening, &["unshare-user"]);
    assert!(run.succeeded(), "{run:?}");
    // Its capability ceiling still holds inside: mounting needs CAP_SYS_ADMIN, refused by the filter.
    let run = probe_hardened(&mut harness, "builder", &hardening, &["mount-tmpfs", "/mnt"]);
    assert_eq!(run.errno(), Some(EPERM), "{run:?}");
}
