//! `cargo xtask setup`: installs what rtid's build and tests need on a
//! Debian-like machine. Every step checks first, so a second run is fast and
//! changes nothing. Elsewhere it names exactly what is missing.

use std::{path::Path, process::Command};

use anyhow::bail;

use crate::command::{build_path, output, checked, EBPF_TOOLCHAIN, LLVM_BIN, RUST_TOOLCHAIN};

/// Debian packages: LLVM 22 for bpf-linker; qemu, busybox and Debian's kernel
/// for the BPF LSM test VM; iproute2 for network tests.
const APT_PACKAGES: [&str; 8] = [
    "cpio",
    "llvm-22-dev",
    "libpolly-22-dev",
    "qemu-system-x86",
    "busybox-static",
    "linux-image-amd64",
    "iproute2",
    "bpftool",
];

pub fn run_setup_step(name: &str, result: anyhow::Result<&'static str>) -> anyhow::Result<()> {
    match result {
        Ok(state) => {
            println!("setup: {name}: {state}");
            Ok(())
        }
        Err(error) => bail!("setup: {name}: {error:#}"),
    }
}

pub fn run() -> anyhow::Result<()> {
    run_setup_step("rust toolchains", toolchains())?;
    run_setup_step("debian packages", apt_packages())?;
    run_setup_step("bpf-linker", bpf_linker())?;
    run_setup_step("kernel filesystems", mounts())?;
    Ok(())
}

fn toolchains() -> anyhow::Result<&'static str> {
    let installed = output(Command::new("rustup").args(["toolchain", "list"]))
        .ok_or_else(|| anyhow::anyhow!("rustup not found: install rustup, then rerun"))?;
    let has = |name: &str| installed.lines().any(|line| line.starts_with(name));
    let mut changed = false;
    if !has(RUST_TOOLCHAIN) {
        checked(Command::new("rustup").args([
            "toolchain", "install", RUST_TOOLCHAIN, "--profile", "minimal", "--component", "clippy,rustfmt",
        ]))?;
        changed = true;
    }
    let ebpf_has_src = has(EBPF_TOOLCHAIN)
        && output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", EBPF_TOOLCHAIN]))
            .is_some_and(|components| components.contains("rust-src"));
    if !ebpf_has_src {
        checked(Command::new("rustup").args([
            "toolchain", "install", EBPF_TOOLCHAIN, "--profile", "minimal", "--component", "rust-src",
        ]))?;
        changed = true;
    }
    Ok(if changed { "installed" } else { "ok" })
}

fn dpkg_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.contains("install ok installed"))
}

fn apt_packages() -> anyhow::Result<&'static str> {
    if output(Command::new("dpkg-query").arg("--version")).is_none() {
        bail!("not a Debian-like system: install by hand {} (LLVM 22 development files, qemu, busybox-static and a Debian kernel image)", APT_PACKAGES.join(", "));
    }
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|package| !dpkg_installed(package)).collect();
    if missing.is_empty() {
        return Ok("ok");
    }
    println!("setup: installing {}", missing.join(" "));
    checked(Command::new("apt-get").arg("update").arg("-q"))?;
    checked(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok("installed")
}

fn bpf_linker() -> anyhow::Result<&'static str> {
    let present = output(Command::new("bpf-linker").arg("--version").env("PATH", build_path())).is_some();
    if present {
        return Ok("ok");
    }
    if !Path::new(LLVM_BIN).exists() {
        bail!("{LLVM_BIN} missing: llvm-22-dev is needed to build bpf-linker");
    }
    checked(Command::new("cargo")
        .args([&format!("+{RUST_TOOLCHAIN}"), "install", "bpf-linker", "--no-default-features", "--features", "llvm-22"])
        .env("PATH", build_path()))?;
    Ok("installed")
}

/// bpffs, tracefs and securityfs, where absent (tests attach tracepoints and read the LSM list).
pub fn mounts() -> anyhow::Result<&'static str> {
    let mounted = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let is_mounted = |fstype: &str, point: &str| mounted.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&point) && fields.get(2) == Some(&fstype)
    });
    let mut changed = false;
    for (fstype, point) in [("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing"), ("securityfs", "/sys/kernel/security")] {
        if !is_mounted(fstype, point) {
            checked(Command::new("mount").args(["-t", fstype, fstype, point]))?;
            changed = true;
        }
    }
    Ok(if changed { "mounted" } else { "ok" })
}
