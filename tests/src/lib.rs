//! Shared harness for the integration tests: load rtid into the running
//! kernel, install identities, run `rtid-probe` under an identity, and look
//! at what the kernel did and reported. Everything is detached when the
//! harness drops, also when a test fails.

pub mod daemon;
pub mod peers;

use std::{
    io::Read,
    os::{fd::OwnedFd, unix::process::ExitStatusExt},
    path::PathBuf,
    process::ExitStatus,
    time::Duration,
};

use rtid_common::{Event, EventKind};
pub use rtid_userspace::policy::{
    AuditLevel, Defaults, IdentitySpec, Mode, NetRuleSpec, NetTarget, PathPattern, PathRuleSpec, SocketKind,
};
use rtid_userspace::{
    events::EventReader,
    launch::fork_paused,
    loader::{LoadOptions, RtidKernel},
    policy::compile,
};

pub use rtid_common::Verdict;

/// How long a test waits for an event it expects.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Harness {
    pub kernel: RtidKernel,
    pub events: EventReader,
    /// Events read so far, kept for later assertions.
    pub seen: Vec<Event>,
}

/// The result of one probe run.
#[derive(Debug)]
pub struct ProbeRun {
    pub pid: u32,
    pub status: ExitStatus,
    pub stdout: String,
}

impl ProbeRun {
    pub fn killed(&self) -> bool {
        self.status.signal() == Some(libc::SIGKILL)
    }

    pub fn succeeded(&self) -> bool {
        self.status.success() && self.stdout.starts_with("ok")
    }

    /// The errno the probe reported, if its call failed.
    pub fn errno(&self) -> Option<i32> {
        self.stdout.trim().strip_prefix("err ").and_then(|code| code.parse().ok())
    }
}

/// Path of the probe binary built alongside the tests: `RTID_PROBE` if set
/// (inside the VM), else next to the test executable's `deps/` directory.
pub fn probe_path() -> PathBuf {
    if let Some(path) = std::env::var_os("RTID_PROBE") {
        return PathBuf::from(path);
    }
    let test_binary = std::env::current_exe().expect("test executable path");
    let profile_dir = test_binary.parent().and_then(|deps| deps.parent()).expect("target profile dir");
    profile_dir.join("rtid-probe")
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "integration tests load BPF programs and must run as root");
}

impl Harness {
    /// Loads rtid with the fallback backends this host supports and installs `identities`.
    pub fn start(identities: Vec<IdentitySpec>) -> Harness {
        Harness::start_with(identities, LoadOptions::default())
    }

    pub fn start_with(identities: Vec<IdentitySpec>, options: LoadOptions) -> Harness {
        require_root();
        let mut kernel = RtidKernel::load(&options).unwrap_or_else(|error| panic!("loading rtid: {error}"));
        let compiled = compile(&identities).unwrap_or_else(|errors| panic!("policy does not compile: {errors:?}"));
        kernel.install(compiled).unwrap_or_else(|error| panic!("installing policy: {error}"));
        let events = kernel.take_events().expect("event reader");
        Harness { kernel, events, seen: Vec::new() }
    }

    /// Swaps in a new policy (atomically, as a reload does).
    pub fn install(&mut self, identities: Vec<IdentitySpec>) {
        let compiled = compile(&identities).unwrap_or_else(|errors| panic!("policy does not compile: {errors:?}"));
        self.kernel.install(compiled).unwrap_or_else(|error| panic!("installing policy: {error}"));
    }

    /// Runs `rtid-probe ARGS` labeled with `identity` before it execs; waits for it.
    pub fn probe_as(&mut self, identity: &str, args: &[&str]) -> ProbeRun {
        let mut argv = vec![probe_path().display().to_string()];
        argv.extend(args.iter().map(|arg| arg.to_string()));
        self.run_as(identity, &argv)
    }

    /// Runs any command labeled with `identity` before it execs; waits for it.
    pub fn run_as(&mut self, identity: &str, argv: &[String]) -> ProbeRun {
        let mut child = fork_paused(argv, true).expect("fork");
        self.kernel.label_pid(child.pid, identity).unwrap_or_else(|error| panic!("labeling {}: {error}", child.pid));
        child.release().expect("release child");
        let stdout = read_all(child.stdout.take());
        let status = child.wait().expect("wait for child");
        ProbeRun { pid: child.pid, status, stdout }
    }

    /// Runs `rtid-probe ARGS` without an identity.
    pub fn probe_untagged(&mut self, args: &[&str]) -> ProbeRun {
        let output = std::process::Command::new(probe_path()).args(args).output().expect("run probe");
        ProbeRun { pid: 0, status: output.status, stdout: String::from_utf8_lossy(&output.stdout).into_owned() }
    }

    /// Waits for an event matching `wanted`, keeping everything read in `seen`.
    pub fn expect_event(&mut self, what: &str, wanted: impl Fn(&Event) -> bool) -> Event {
        if let Some(event) = self.seen.iter().find(|event| wanted(event)) {
            return *event;
        }
        let (events, found) = self.events.collect_until(EVENT_TIMEOUT, &wanted);
        let base = self.seen.len();
        self.seen.extend(events);
        match found {
            Some(index) => self.seen[base + index],
            None => {
                let summary: Vec<String> = self.seen.iter().map(describe).collect();
                panic!("no event {what} within {EVENT_TIMEOUT:?}; saw:\n{}", summary.join("\n"));
            }
        }
    }

    /// Reads whatever events arrive within `wait`.
    pub fn settle(&mut self, wait: Duration) {
        let (events, _) = self.events.collect_until(wait, |_| false);
        self.seen.extend(events);
    }

    pub fn rule_id(&self, identity: &str, rule: &str) -> u32 {
        self.kernel
            .policy()
            .rules
            .iter()
            .find(|(_, info)| info.identity == identity && info.id == rule)
            .map(|(id, _)| *id)
            .unwrap_or_else(|| panic!("no rule {rule} for {identity}"))
    }

    pub fn identity_id(&self, identity: &str) -> u32 {
        self.kernel.identity_id(identity).expect("identity installed")
    }
}

fn read_all(fd: Option<OwnedFd>) -> String {
    let Some(fd) = fd else { return String::new() };
    let mut file = std::fs::File::from(fd);
    let mut output = String::new();
    let _ = file.read_to_string(&mut output);
    output
}

/// One line per event, for failure messages.
pub fn describe(event: &Event) -> String {
    format!(
        "{} tgid={} identity={} verdict={:?} outcome={:?} rule={} path={:?} port={} flags={:#x}",
        EventKind::from_u8(event.kind).map_or("?", |kind| kind.name()),
        event.tgid,
        event.identity,
        Verdict::from_u8(event.verdict),
        rtid_common::Outcome::from_u8(event.outcome),
        event.rule_id,
        String::from_utf8_lossy(event.path_bytes()),
        event.net.port,
        event.flags,
    )
}

/// Accepts one connection, or fails the test after `timeout` (never hangs).
pub fn accept_within(listener: &std::net::TcpListener, timeout: Duration) -> std::net::TcpStream {
    listener.set_nonblocking(true).expect("nonblocking listener");
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match listener.accept() {
            Ok((stream, _)) => return stream,
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => panic!("no connection within {timeout:?}: {error}"),
        }
    }
}

/// The path of an event as text.
pub fn event_path(event: &Event) -> String {
    String::from_utf8_lossy(event.path_bytes()).into_owned()
}

/// A fresh directory under /tmp for a test's files, removed on drop.
pub struct TestDir(pub PathBuf);

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let path = std::env::temp_dir().join(format!("rtid-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("create test dir");
        // Resolve symlinks in the temp dir itself: rules match resolved paths.
        TestDir(std::fs::canonicalize(&path).expect("canonical test dir"))
    }

    pub fn file(&self, relative: &str, content: &str) -> String {
        let path = self.0.join(relative);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("create parent");
        }
        std::fs::write(&path, content).expect("write test file");
        path.display().to_string()
    }

    pub fn path(&self, relative: &str) -> String {
        self.0.join(relative).display().to_string()
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
