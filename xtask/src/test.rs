//! `cargo xtask test`: every test, for real. On this host: unit tests and the
//! integration tests of rtid-tests (tracepoints, cgroup socket hooks). Then the
//! arm64 cross build of rtid (see cross.rs). Then, in a VM booting a kernel
//! where BPF LSM works, the LSM suite (see vm.rs).

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
};

use anyhow::{Context, bail};

use crate::{
    command::{cargo, checked, require_root},
    cross,
    kernels::Arch,
    setup, vm,
};

/// Unit and integration tests in one run: unit tests are cheap, and the
/// integration tests load programs into the running kernel and attach at the
/// cgroup root, so no two may run at once (`--test-threads=1`).
fn host_tests(extra: &[String]) -> anyhow::Result<Tally> {
    // The daemon tests run the real `rtid` binary from the same profile dir;
    // `cargo test` builds only the binaries of the package under test, so a
    // fresh checkout would have none.
    checked(cargo().arg("build").args(vm::BUILD_SELECTION)).context("building rtid and its tests")?;
    let mut command = cargo();
    command
        .args([
            "test",
            "--workspace",
            "--exclude",
            "rtid-ebpf",
            // Every suite runs and reports, even after one fails.
            "--no-fail-fast",
            "--",
            "--test-threads=1",
        ])
        .args(extra)
        .stdout(Stdio::piped());
    let mut child = command.spawn().context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let mut tally = Tally::default();
    // Stream the output as it comes, and count the libtest summaries.
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        tally.add_summary(&line);
    }
    let status = child.wait()?;
    if !status.success() {
        println!("tests: {} passed, {} failed, {} skipped", tally.passed, tally.failed.max(1), tally.ignored);
        bail!("host tests failed ({status})");
    }
    Ok(tally)
}

/// Totals over every libtest summary line (`test result: ok. N passed; N failed; N ignored; ...`).
#[derive(Default)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn add_summary(&mut self, line: &str) {
        let Some(summary) = line.trim().strip_prefix("test result: ") else { return };
        for part in summary.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(kind), Some(count)) = (words.next(), words.next()) else { continue };
            let Ok(count) = count.parse::<u64>() else { continue };
            match kind {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

/// The host kernel's release, for the report.
fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "kernel".into(), |release| release.trim().to_owned())
}

/// `extra` (test name filters, libtest flags) goes to both runs.
pub fn run(extra: &[String]) -> anyhow::Result<()> {
    require_root("cargo xtask test")?;
    setup::ensure_mounts()?;
    println!("== host: unit and integration tests ==");
    let host = host_tests(extra)?;
    println!("== arm64: cross build of rtid ==");
    cross::build_for_tests(Arch::Arm64).context("arm64 build failed")?;
    println!("arm64 build: ok");
    println!("== VMs: BPF LSM suite on each kernel, fallback suite with BPF LSM off ==");
    let passes = vm::run(&vm::default_passes(), extra)?;
    println!("host {}: {} passed", host_kernel(), host.passed);
    println!("arm64 build: ok");
    for (pass, passed) in &passes {
        println!("{}: {passed} passed", pass.name());
    }
    // The host's ignored tests are tests/tests/lsm.rs (they need BPF LSM),
    // run for real in each LSM pass.
    let lsm_ran = passes.iter().any(|(pass, passed)| pass.suite == vm::Suite::Lsm && *passed > 0);
    let ignored = if lsm_ran { 0 } else { host.ignored };
    let in_vms: u64 = passes.iter().map(|(_, passed)| passed).sum();
    println!("tests: {} passed, {} failed, {} skipped", host.passed + in_vms, host.failed, ignored);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Tally;

    #[test]
    fn summaries_are_totalled() {
        let mut tally = Tally::default();
        tally.add_summary(
            "test result: ok. 9 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 1.2s",
        );
        tally.add_summary(
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s",
        );
        tally.add_summary("running 4 tests");
        assert_eq!((tally.passed, tally.failed, tally.ignored), (11, 3, 1));
    }
}
