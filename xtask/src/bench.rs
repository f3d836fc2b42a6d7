//! `cargo xtask bench`: runs the benchmark binary (rtid-bench) as root.

use crate::command::{cargo, require_root, checked};

pub fn run_bench(iterations: u32, vm: bool) -> anyhow::Result<()> {
    require_root("cargo xtask bench")?;
    crate::setup::mounts()?;
    let mut command = cargo();
    command.args(["run", "--release", "-p", "rtid-tests", "--bin", "rtid-bench", "--", "--iterations"]).arg(iterations.to_string());
    checked(&mut command)?;
    if vm {
        crate::vm::bench(iterations)?;
    }
    Ok(())
}

pub fn run(iterations: u32, vm: bool) -> anyhow::Result<()> {
    run_bench(iterations, vm)
}
