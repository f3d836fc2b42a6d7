//! `cargo xtask test`: every test, for real. On this host: unit tests and the
//! integration tests of rtid-tests (tracepoints, cgroup socket hooks). Then, in a
//! VM booting a kernel where BPF LSM works, the LSM suite (see vm.rs).

use crate::{
    command::{cargo, checked, require_root},
    setup, vm,
};

/// Unit and integration tests in one run: unit tests are cheap, and the
/// integration tests load programs into the running kernel and attach at the
/// cgroup root, so no two may run at once (`--test-threads=1`).
fn host_tests(extra: &[String]) -> anyhow::Result<()> {
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
        .args(extra);
    checked(&mut command)
}

/// `extra` (test name filters, libtest flags) goes to both runs.
pub fn run(extra: &[String]) -> anyhow::Result<()> {
    require_root("cargo xtask test")?;
    setup::ensure_mounts()?;
    println!("== host: unit and integration tests ==");
    host_tests(extra)?;
    println!("== VM: BPF LSM suite ==");
    vm::run(extra)
}
