//! Running the real `rtid` daemon and CLI for end-to-end tests.

use std::{
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use crate::*;

/// The `rtid` binary: `RTID_BINARY`, or the one in the test executable's
/// profile dir (`cargo xtask test` builds it first).
pub fn rtid_binary() -> PathBuf {
    let binary =
        std::env::var_os("RTID_BINARY").map(PathBuf::from).unwrap_or_else(|| probe_path().with_file_name("rtid"));
    assert!(
        binary.exists(),
        "no rtid binary at {}: build it with `cargo build -p rtid-userspace` (cargo xtask test does) or set RTID_BINARY",
        binary.display()
    );
    binary
}

/// A daemon with its own socket, state dir and pin dir, stopped and unpinned on drop.
pub struct Daemon {
    child: Option<Child>,
    pub dir: TestDir,
    pub pins: PathBuf,
    pub policy: Vec<String>,
    /// Extra daemon arguments.
    pub extra: Vec<String>,
    /// Extra environment of the daemon.
    pub env: Vec<(String, String)>,
}

impl Daemon {
    pub fn start(name: &str, policy: Vec<String>) -> Daemon {
        Daemon::start_with(name, policy, Vec::new())
    }

    /// Starts with extra daemon arguments.
    pub fn start_with(name: &str, policy: Vec<String>, extra: Vec<String>) -> Daemon {
        Daemon::start_with_env(name, policy, extra, Vec::new())
    }

    /// Starts with extra daemon arguments and environment.
    pub fn start_with_env(name: &str, policy: Vec<String>, extra: Vec<String>, env: Vec<(String, String)>) -> Daemon {
        require_root();
        let dir = TestDir::new(name);
        let pins = PathBuf::from(format!("/sys/fs/bpf/rtid-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&pins);
        let mut daemon = Daemon { child: None, dir, pins, policy, extra, env };
        daemon.spawn();
        daemon
    }

    pub fn socket(&self) -> String {
        self.dir.path("rtid.sock")
    }

    /// Where the daemon's stdout goes.
    pub fn stdout_path(&self) -> String {
        self.dir.path("stdout.jsonl")
    }

    pub fn spawn(&mut self) {
        let mut command = Command::new(rtid_binary());
        command
            .args(["--socket", &self.socket(), "daemon", "--state-dir", &self.dir.path("state")])
            .arg("--pin-dir")
            .arg(&self.pins)
            // The stdout sink's output, for the tests that read it (appended across restarts).
            .stdout(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(self.stdout_path())
                    .expect("daemon stdout file"),
            ))
            .stderr(Stdio::inherit());
        for path in &self.policy {
            command.args(["--policy", path]);
        }
        command.args(&self.extra);
        command.envs(self.env.iter().map(|(name, value)| (name, value)));
        let _ = std::fs::remove_file(self.socket());
        self.child = Some(command.spawn().expect("start rtid daemon"));
        // Under emulation (RTID_IN_VM) loading, BTF parsing and helper probes
        // run 10 to 50 times slower: the bound only keeps a hung start from
        // hanging the suite.
        let bound = if std::env::var_os("RTID_IN_VM").is_some() { 300 } else { 30 };
        let deadline = Instant::now() + Duration::from_secs(bound);
        while self.cli(&["status"]).status.code() != Some(0) {
            if let Some(status) = self.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                panic!("rtid daemon exited before it was ready: {status}");
            }
            assert!(Instant::now() < deadline, "daemon not ready within {bound}s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn kill_hard(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn signal(&mut self, signal: i32) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        // SAFETY: sends a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, signal) };
        if signal == libc::SIGHUP {
            self.child = Some(child);
            return std::os::unix::process::ExitStatusExt::from_raw(0);
        }
        child.wait().expect("daemon exits")
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(rtid_binary()).arg("--socket").arg(self.socket()).args(args).output().expect("run rtid")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill_hard();
        let _ = std::fs::remove_dir_all(&self.pins);
    }
}

/// An identified caller of the control API was refused: by the kernel at
/// connect (EPERM under BPF LSM, exit 69; SIGKILL on the fallback) or by the
/// daemon (exit 1, naming the identity). Never served.
pub fn refused_to_an_identity(output: &Output) -> bool {
    let said = text(output);
    let by_daemon = output.status.code() == Some(1) && said.contains("carries identity");
    let by_kernel_eperm = output.status.code() == Some(69) && said.contains("Operation not permitted");
    let by_kernel_kill = output.status.code() == Some(128 + 9);
    by_daemon || by_kernel_eperm || by_kernel_kill
}

pub fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

pub fn write_policy(dir: &TestDir, name: &str, body: &str) -> String {
    dir.file(name, body)
}

pub fn coder_policy(secret_dir: &str, action: &str) -> String {
    format!(
        "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: test\nspec:\n  identities:\n    - name: coder\n      owner: alice@example.com\n      files:\n        - {{ id: secret, path: {secret_dir}/, action: {action} }}\n"
    )
}
