//! `cargo xtask test`: every test, for real. On this host the fallback backend
//! (tracepoints, cgroup socket hooks); then, in a VM booting a kernel where BPF
//! LSM works, the LSM backend. Integration tests load programs into the
//! running kernel and attach at the cgroup root, so they run one at a time.

use crate::{
    command::{cargo, checked, require_root},
    setup, vm,
};

pub fn run_tests(extra: &[String]) -> anyhow::Result<()> {
    let mut command = cargo();
    command.args(["test", "--workspace", "--exclude", "rtid-ebpf", "--", "--test-threads=1"]).args(extra);
    checked(&mut command)
}

pub fn run(extra: &[String]) -> anyhow::Result<()> {
    require_root("cargo xtask test")?;
    setup::mounts()?;
    println!("== host tests (fallback backend) ==");
    run_tests(extra)?;
    println!("== VM tests (BPF LSM backend) ==");
    vm::run(None)
}
