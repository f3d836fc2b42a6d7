//! `cargo xtask bench`: runs the benchmark binary (rtid-bench, in rtid-tests)
//! as root, passing its arguments through.

use crate::{
    command::{cargo, checked, require_root},
    setup, vm,
};

pub fn run(args: &[String], in_vm: bool) -> anyhow::Result<()> {
    require_root("cargo xtask bench")?;
    setup::ensure_mounts()?;
    // Release: the numbers should be those of a production build. The
    // pipeline figure runs the real daemon, so rtid is built too.
    checked(cargo().args(["build", "--release", "-p", "rtid-userspace", "--bin", "rtid"]))?;
    checked(cargo().args(["build", "--release", "-p", "rtid-tests", "--bin", "rtid-probe"]))?;
    checked(cargo().args(["run", "--release", "-p", "rtid-tests", "--bin", "rtid-bench", "--"]).args(args))?;
    if in_vm {
        vm::bench(args)?;
    }
    Ok(())
}
