//! The event pipeline figure: events per second from the kernel ring,
//! through the real `rtid daemon` (decode, names, /proc enrichment, audit
//! decision, cap), into a JSON file sink, with every loss counted. An agent
//! with `audit: all` opens one file N times; each open is one event.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use std::io::Write as _;

use anyhow::{Context, bail, ensure};
use rtid_tests::TestDir;

/// Events per burst: well past the ring's capacity (8 MiB of events).
const BURSTS: [u64; 2] = [20_000, 200_000];

struct DaemonUnderTest {
    child: Child,
    socket: String,
}

impl Drop for DaemonUnderTest {
    fn drop(&mut self) {
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn rtid_binary() -> anyhow::Result<PathBuf> {
    let binary = std::env::current_exe()?.with_file_name("rtid");
    ensure!(binary.exists(), "no rtid binary at {} (cargo xtask bench builds it)", binary.display());
    Ok(binary)
}

fn cli(daemon: &DaemonUnderTest, args: &[&str]) -> anyhow::Result<std::process::Output> {
    Command::new(rtid_binary()?).args(["--socket", &daemon.socket]).args(args).output().context("running rtid")
}

fn status(daemon: &DaemonUnderTest) -> anyhow::Result<serde_json::Value> {
    let output = cli(daemon, &["--json", "status"])?;
    serde_json::from_slice(&output.stdout).context("rtid status --json")
}

fn start_daemon(dir: &TestDir, sink: &str) -> anyhow::Result<DaemonUnderTest> {
    let socket = dir.path("rtid.sock");
    let policy = dir.file(
        "policy.yaml",
        "apiVersion: rtid.dev/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: pipeline-bench\nspec:\n  identities:\n    - name: flood\n      audit: all\n      defaults: { file: allow, network: allow, exec: allow }\n",
    );
    let config =
        dir.file("config.yaml", &format!("sinks:\n  - {{ type: file, path: {sink}, maxSize: 4GiB, queue: 262144 }}\n"));
    let child = Command::new(rtid_binary()?)
        .args([
            "--socket",
            &socket,
            "daemon",
            "--no-pin",
            "--state-dir",
            &dir.path("state"),
            "--policy",
            &policy,
            "--config",
            &config,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting rtid daemon")?;
    let daemon = DaemonUnderTest { child, socket };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cli(&daemon, &["status"]).is_ok_and(|output| output.status.success()) {
        ensure!(Instant::now() < deadline, "rtid daemon not ready within 30s");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(daemon)
}

fn count_lines(path: &Path) -> u64 {
    std::fs::read(path).map(|bytes| bytes.iter().filter(|byte| **byte == b'\n').count() as u64).unwrap_or(0)
}

/// What one burst gave.
struct Burst {
    written: u64,
    /// Until the agent's last open returned.
    agent_seconds: f64,
    /// From the daemon's first chance to read until the sink stopped growing.
    sink_seconds: f64,
    kernel_drops: u64,
    sink_drops: u64,
}

/// One burst of `count` opens. With `paused`, the daemon is stopped (SIGSTOP)
/// while the agent runs, so the ring fills first and the figure is the
/// daemon's own drain rate, not the agent's pace.
fn burst(dir: &TestDir, probe: &Path, count: u64, paused: bool) -> anyhow::Result<Burst> {
    let sink = PathBuf::from(format!("/dev/shm/rtid-pipeline-bench-{}-{count}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&sink);
    let daemon = start_daemon(dir, &sink.display().to_string())?;
    let target = dir.file("target.txt", "x");
    let baseline = count_lines(&sink);
    // `rtid run` asks the daemon to label the agent: launch it first, then stop the daemon.
    let mut agent = Command::new(rtid_binary()?)
        .args(["--socket", &daemon.socket, "run", "--identity", "flood", "--", &probe.display().to_string()])
        .arg("wait-stdin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the agent")?;
    std::thread::sleep(Duration::from_millis(300));
    let daemon_pid = daemon.child.id() as i32;
    if paused {
        // SAFETY: signals our own child.
        unsafe { libc::kill(daemon_pid, libc::SIGSTOP) };
    }
    let started = Instant::now();
    // The agent (a child the labeled probe spawns) starts on this line.
    let mut stdin = agent.stdin.take().context("agent stdin")?;
    writeln!(stdin, "open-many {count} {target}").context("starting the agent's opens")?;
    drop(stdin);
    let output = agent.wait_with_output().context("waiting for the agent")?;
    let agent_seconds = started.elapsed().as_secs_f64();
    ensure!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("opened {count}")),
        "the agent's opens failed: {output:?}"
    );
    let reading_from = Instant::now();
    if paused {
        // SAFETY: signals our own child.
        unsafe { libc::kill(daemon_pid, libc::SIGCONT) };
    }
    let clock_start = if paused { reading_from } else { started };
    // Wait until the sink stops growing: everything the ring held is out.
    let mut last = (count_lines(&sink), Instant::now());
    let mut finished_at = clock_start.elapsed();
    loop {
        std::thread::sleep(Duration::from_millis(20));
        let lines = count_lines(&sink);
        if lines != last.0 {
            last = (lines, Instant::now());
            finished_at = clock_start.elapsed();
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        if clock_start.elapsed() > Duration::from_secs(120) {
            bail!("the sink was still growing after 120 s");
        }
    }
    let report = status(&daemon)?;
    let sink_drops: u64 = report["sinks"]
        .as_array()
        .map(|sinks| sinks.iter().filter_map(|sink| sink["dropped"].as_u64()).sum())
        .unwrap_or(0);
    let _ = std::fs::remove_file(&sink);
    Ok(Burst {
        written: last.0 - baseline,
        agent_seconds,
        sink_seconds: finished_at.as_secs_f64(),
        kernel_drops: report["ring_full_drops"].as_u64().unwrap_or(0),
        sink_drops,
    })
}

pub fn run(probe: &Path) -> anyhow::Result<()> {
    let dir = TestDir::new("pipeline-bench");
    println!();
    println!("### Event pipeline: kernel ring → rtid daemon → JSON file sink (/dev/shm)");
    println!();
    println!("One agent (`audit: all`) opens a file N times as fast as it can; every open is an event (the agent's");
    println!("start, exec and exit are counted too). Live: events per second from the first open until the sink stops");
    println!("growing. Drain: the daemon is stopped while the agent fills the ring, then timed emptying it.");
    println!();
    println!(
        "| run | opens | events in the sink | agent (s) | sink done (s) | events/s | kernel ring drops | sink drops |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    // Below the ring's capacity, with the daemon stopped while the agent runs:
    // the daemon's own rate. Then the agent and the daemon at once, past it.
    for (label, count, paused) in
        [("drain (daemon paused)", 10_000, true), ("live", BURSTS[0], false), ("live", BURSTS[1], false)]
    {
        let burst = burst(&dir, probe, count, paused)?;
        println!(
            "| {label} | {count} | {} | {:.2} | {:.2} | {:.0} | {} | {} |",
            burst.written,
            burst.agent_seconds,
            burst.sink_seconds,
            burst.written as f64 / burst.sink_seconds.max(1e-9),
            burst.kernel_drops,
            burst.sink_drops
        );
    }
    Ok(())
}
