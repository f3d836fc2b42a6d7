//! Running commands with the environment rtid's build needs.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context};

/// The pinned nightly that builds the eBPF crate (its LLVM matches bpf-linker's LLVM 22).
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";
/// The toolchain for everything else (aya 0.16 needs 1.98).
pub const RUST_TOOLCHAIN: &str = "1.98.0";
pub const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// PATH with LLVM 22 and cargo's bin dir first, for bpf-linker and aya-build.
pub fn build_path() -> String {
    let home = env::var("HOME").unwrap_or_else(|_| "/root".into());
    let current = env::var("PATH").unwrap_or_default();
    format!("{LLVM_BIN}:{home}/.cargo/bin:{current}")
}

/// A command run in the workspace root with the build PATH.
pub fn cargo() -> Command {
    let mut command = Command::new("cargo");
    command.current_dir(workspace_root()).env("PATH", build_path());
    command
}

/// Runs `command`, failing with its description if it does not succeed.
pub fn checked(command: &mut Command) -> anyhow::Result<()> {
    let description = format!("{command:?}");
    let status = command.status().with_context(|| format!("starting {description}"))?;
    if !status.success() {
        bail!("{description} failed: {status}");
    }
    Ok(())
}

/// Runs `command` and returns its stdout, or None if it cannot run or fails.
pub fn output(command: &mut Command) -> Option<String> {
    let output = command.output().ok()?;
    output.status.success().then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn build_rtid(release: bool) -> anyhow::Result<()> {
    let mut command = cargo();
    command.args(["build", "-p", "rtid-userspace"]);
    if release {
        command.arg("--release");
    }
    checked(&mut command)
}

pub fn require_root(what: &str) -> anyhow::Result<()> {
    let uid = output(Command::new("id").arg("-u")).unwrap_or_default();
    if uid.trim() != "0" {
        bail!("{what} loads BPF programs into the kernel and must run as root");
    }
    Ok(())
}
