//! The event pipeline figure: events per second from the kernel ring,
//! through the real `rtid daemon` (decode, names, /proc enrichment, audit
//! decision, cap), into a JSON file sink, with every loss counted. An agent
//! with `audit: all` opens one file N times; each open is one event.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

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

/// One burst of `count` opens; returns (events written, seconds, kernel drops, sink drops).
fn burst(dir: &TestDir, probe: &Path, count: u64) -> anyhow::Result<(u64, f64, u64, u64)> {
    let sink = PathBuf::from(format!("/dev/shm/rtid-pipeline-bench-{}-{count}.jsonl", std::process::id()));
    let _ = std::fs::remove_file(&sink);
    let daemon = start_daemon(dir, &sink.display().to_string())?;
    let target = dir.file("target.txt", "x");
    let baseline = count_lines(&sink);
    let started = Instant::now();
    let run = cli(
        &daemon,
        &["run", "--identity", "flood", "--", &probe.display().to_string(), "open-many", &count.to_string(), &target],
    )?;
    ensure!(
        String::from_utf8_lossy(&run.stdout).contains(&format!("opened {count}")),
        "the agent's opens failed: {run:?}"
    );
    // Wait until the sink stops growing: everything the ring held is out.
    let mut last = (count_lines(&sink), Instant::now());
    let mut finished_at = started.elapsed();
    loop {
        std::thread::sleep(Duration::from_millis(50));
        let lines = count_lines(&sink);
        if lines != last.0 {
            last = (lines, Instant::now());
            finished_at = started.elapsed();
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the sink was still growing after 120 s");
        }
    }
    let report = status(&daemon)?;
    let kernel_drops = report["ring_full_drops"].as_u64().unwrap_or(0);
    let sink_drops: u64 = report["sinks"]
        .as_array()
        .map(|sinks| sinks.iter().filter_map(|sink| sink["dropped"].as_u64()).sum())
        .unwrap_or(0);
    let written = last.0 - baseline;
    let _ = std::fs::remove_file(&sink);
    Ok((written, finished_at.as_secs_f64(), kernel_drops, sink_drops))
}

pub fn run(probe: &Path) -> anyhow::Result<()> {
    let dir = TestDir::new("pipeline-bench");
    println!();
    println!("### Event pipeline: kernel ring → rtid daemon → JSON file sink (/dev/shm)");
    println!();
    println!(
        "One agent (`audit: all`) opens a file N times as fast as it can; every open is an event. Events per second"
    );
    println!(
        "from the first open until the sink stops growing; lifecycle events of the agent (start, exec, exit) are included."
    );
    println!();
    println!("| opens (events) | events in the sink | seconds | events/s | kernel ring drops | sink drops |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for count in BURSTS {
        let (written, seconds, kernel_drops, sink_drops) = burst(&dir, probe, count)?;
        println!(
            "| {count} | {written} | {seconds:.2} | {:.0} | {kernel_drops} | {sink_drops} |",
            written as f64 / seconds.max(1e-9)
        );
    }
    Ok(())
}
