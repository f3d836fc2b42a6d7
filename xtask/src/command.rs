//! Running commands with the environment rtid's build needs.

use std::{
    env,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

/// The pinned nightly that builds the eBPF crate: its LLVM (22) matches the
/// bpf-linker built on llvm-22; the floating nightly is on LLVM 23 and fails to link.
pub const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";
/// The toolchain for everything else (aya 0.16 needs 1.98); rust-toolchain.toml names it too.
pub const RUST_TOOLCHAIN: &str = "1.98.0";
/// LLVM 22 from Debian: bpf-linker is built against it and aya-build runs it.
pub const LLVM_BIN: &str = "/usr/lib/llvm-22/bin";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Cargo's target directory, which CARGO_TARGET_DIR may move.
pub fn target_dir() -> PathBuf {
    env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target"))
}

/// Where `cargo install` puts binaries (bpf-linker) and rustup its proxies.
fn cargo_bin() -> PathBuf {
    let home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"));
    home.join("bin")
}

/// PATH with LLVM 22 and cargo's bin dir first: aya-build (in rtid-userspace's
/// build.rs) runs bpf-linker, which must find LLVM 22's tools, and `cargo +toolchain`
/// only works through rustup's proxy.
pub fn build_path() -> String {
    let current = env::var("PATH").unwrap_or_default();
    format!("{LLVM_BIN}:{}:{current}", cargo_bin().display())
}

/// Finds an executable on the build PATH, plus the sbin directories a non-root
/// PATH may lack (bpftool and ip live there).
pub fn find_program(name: &str) -> Option<PathBuf> {
    let path = format!("{}:/usr/sbin:/sbin", build_path());
    path.split(':').filter(|dir| !dir.is_empty()).map(|dir| Path::new(dir).join(name)).find(|candidate| {
        candidate.metadata().is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    })
}

/// `cargo` in the workspace root with the build PATH.
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

/// `cargo xtask build`: the rtid binary; its build.rs builds and embeds the eBPF object.
pub fn build_rtid(release: bool) -> anyhow::Result<()> {
    let mut command = cargo();
    command.args(["build", "-p", "rtid-userspace"]);
    if release {
        command.arg("--release");
    }
    checked(&mut command)
}

pub fn is_root() -> bool {
    output(Command::new("id").arg("-u")).is_some_and(|uid| uid.trim() == "0")
}

pub fn require_root(what: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("{what} loads BPF programs into the kernel and must run as root (try: sudo -E {what})");
    }
    Ok(())
}
