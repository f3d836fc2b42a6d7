//! What rtid assumes of the kernel, end to end with the real `rtid daemon`. On
//! a kernel that lacks a feature (simulated with RTID_SIMULATE_MISSING, which
//! the loader treats exactly as the kernel lacking it) the daemon refuses to
//! start, names the feature, prints no verifier log and leaves nothing pinned;
//! a BPF LSM hook whose helper is missing falls back and says why; and on this
//! host `rtid status` reports the kernel, its BTF and each action's backend.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use rtid_tests::{daemon::*, *};
use rtid_userspace::loader::compat::{self, ProgramKind};
use serde_json::Value;

/// `uname -r`, asked of the system rather than of rtid.
fn uname_release() -> String {
    let output = Command::new("uname").arg("-r").output().expect("run uname");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

/// What a daemon that should refuse to start did.
struct Refusal {
    status: ExitStatus,
    stderr: String,
    pins: PathBuf,
    socket: String,
}

/// Runs `rtid daemon` (with a pin dir) as if the kernel lacked `feature`, until it exits.
fn start_without(feature: &str) -> Refusal {
    require_root();
    let name = format!("compat-{}", feature.replace([':', '_'], "-"));
    let dir = TestDir::new(&name);
    let pins = PathBuf::from(format!("/sys/fs/bpf/rtid-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pins);
    let socket = dir.path("rtid.sock");
    let stderr_path = dir.path("stderr");
    let mut child = Command::new(rtid_binary())
        .args(["--socket", &socket, "daemon", "--state-dir", &dir.path("state")])
        .arg("--pin-dir")
        .arg(&pins)
        .env("RTID_SIMULATE_MISSING", feature)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("start rtid daemon");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the daemon") {
            break status;
        }
        let serving = Path::new(&socket).exists();
        if serving || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(&pins);
            let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
            panic!("the daemon did not refuse to start without {feature} (serving: {serving}): {stderr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(&stderr_path).expect("daemon stderr");
    Refusal { status, stderr, pins, socket }
}

impl Refusal {
    /// Exit status 1 (refused), the feature named, no verifier log, nothing pinned or served.
    fn assert_refused_naming(&self, feature: &str) {
        assert_eq!(self.status.code(), Some(1), "refused with exit status 1: {}", self.stderr);
        assert!(self.stderr.contains(feature), "stderr names {feature:?}: {}", self.stderr);
        for dump in ["processed ", "Verifier output", "R1 ", "R1=", "R10 ", "R10="] {
            assert!(!self.stderr.contains(dump), "no verifier log ({dump:?}) in: {}", self.stderr);
        }
        assert!(!self.pins.exists(), "nothing left pinned: {} exists", self.pins.display());
        assert!(!Path::new(&self.socket).exists(), "the control socket never served");
    }
}

#[test]
fn without_btf_the_daemon_refuses_naming_btf() {
    start_without("btf").assert_refused_naming(
        "rtid: loading the kernel programs: this kernel has no BTF \
         (/sys/kernel/btf/vmlinux missing; needs CONFIG_DEBUG_INFO_BTF=y)",
    );
}

#[test]
fn without_bpf_send_signal_the_daemon_refuses_naming_the_helper_and_kernel() {
    // Every program that kills calls it, sched_process_exec (always loaded) among them.
    let refusal = start_without("helper:bpf_send_signal");
    refusal.assert_refused_naming(&format!("kernel {} lacks helper bpf_send_signal (#109) for ", uname_release()));
    assert!(refusal.stderr.contains("for tp_btf/sched_process_exec programs"), "{}", refusal.stderr);
}

#[test]
fn without_the_unix_connect_tracepoint_the_daemon_refuses_naming_it() {
    // This host has no BPF LSM to take over AF_UNIX connects, so the
    // tracepoint is required; the pin dir was made by then, and is removed.
    start_without("tracepoint:sys_enter_connect").assert_refused_naming(&format!(
        "kernel {} has no tracepoint syscalls/sys_enter_connect although it has the connect syscall",
        uname_release()
    ));
}

#[test]
fn without_the_fork_btf_tracepoint_the_daemon_refuses_naming_the_btf_type() {
    start_without("btf-type:btf_trace_sched_process_fork").assert_refused_naming(&format!(
        "kernel {}'s BTF has no btf_trace_sched_process_fork, which tp_btf/sched_process_fork attaches to",
        uname_release()
    ));
}

fn status_json(daemon: &Daemon) -> Value {
    let output = daemon.cli(&["--json", "status"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    serde_json::from_slice(&output.stdout).expect("status JSON")
}

#[test]
fn status_reports_the_kernel_its_btf_and_the_backend_of_each_action() {
    let daemon = Daemon::start("compat-status", Vec::new());
    let status = status_json(&daemon);
    let kernel = &status["kernel"];
    assert_eq!(kernel["release"], uname_release().as_str(), "{status}");
    assert_eq!(kernel["btf"]["path"], "/sys/kernel/btf/vmlinux");
    let size = std::fs::metadata("/sys/kernel/btf/vmlinux").expect("kernel BTF").len();
    assert_eq!(kernel["btf"]["size"], size);
    // The host refuses BPF LSM programs: every action on its fallback.
    let backends = &status["backends"];
    for (action, backend) in [
        ("file", "tracepoint"),
        ("exec", "tracepoint"),
        ("network", "cgroup_sock"),
        ("unix", "tracepoint"),
        ("protect", "tracepoint"),
    ] {
        assert_eq!(backends[action], backend, "{action}: {backends}");
    }
    let fallbacks = kernel["fallbacks"].as_array().expect("fallbacks");
    let actions: Vec<&str> = fallbacks.iter().filter_map(|fallback| fallback["action"].as_str()).collect();
    assert_eq!(actions, ["file", "exec", "network", "unix_socket", "bpf_syscall"]);
    for fallback in fallbacks {
        // Here: the LSM hook that did not load (EPERM); on a kernel without
        // BPF LSM in its list, the `lsm=` boot parameter to add.
        let reason = fallback["reason"].as_str().expect("a reason");
        assert!(reason.contains("lsm"), "says why BPF LSM is not used: {reason}");
        assert!(!reason.contains("Verifier output") && !reason.contains("processed "), "{reason}");
    }
    // x86_64 has every syscall rtid attaches to.
    assert_eq!(kernel["skipped_tracepoints"], Value::Array(Vec::new()));

    let human = daemon.cli(&["status"]);
    let human = text(&human);
    let line = |name: &str| human.lines().find(|line| line.starts_with(name)).map(str::to_string);
    let kernel_line = line("kernel ").unwrap_or_else(|| panic!("a kernel line: {human}"));
    assert_eq!(kernel_line.split_whitespace().nth(1), Some(uname_release().as_str()));
    assert!(line("btf ").is_some_and(|line| line.contains("/sys/kernel/btf/vmlinux")), "{human}");
    assert!(line("backend: unix sockets").is_some_and(|line| line.ends_with("tracepoint")), "{human}");
    assert!(line("backend: bpf()").is_some_and(|line| line.ends_with("tracepoint")), "{human}");
    assert!(human.contains("FALLBACK"), "fallbacks listed: {human}");
}

#[test]
fn an_lsm_hook_whose_helper_is_missing_falls_back_and_says_why() {
    // A helper that only BPF LSM programs call, read from the embedded object.
    let programs = compat::embedded_programs().expect("the embedded eBPF object");
    let elsewhere: Vec<_> =
        programs.iter().filter(|program| program.kind != ProgramKind::Lsm).flat_map(|p| p.helpers.iter()).collect();
    let helper = programs
        .iter()
        .filter(|program| program.kind == ProgramKind::Lsm)
        .flat_map(|program| program.helpers.iter())
        .find(|helper| !elsewhere.contains(helper))
        .copied()
        .expect("some helper only BPF LSM programs call (bpf_probe_read_kernel_str in the socket hooks)");

    let simulate = vec![("RTID_SIMULATE_MISSING".to_string(), format!("helper:#{}", helper.0))];
    let daemon = Daemon::start_with_env("compat-lsm-helper", Vec::new(), Vec::new(), simulate);
    let status = status_json(&daemon);
    let named = format!("kernel {} lacks helper {helper} for lsm/", uname_release());
    let fallbacks = status["kernel"]["fallbacks"].as_array().expect("fallbacks");
    assert!(
        fallbacks.iter().any(|fallback| fallback["reason"].as_str().is_some_and(|reason| reason.contains(&named))),
        "a fallback names {named:?}: {fallbacks:?}"
    );
    assert_eq!(status["backends"]["network"], "cgroup_sock");
}
