//! `cargo xtask setup`: installs what rtid's build and tests need on a
//! Debian-like machine. Every item is checked before anything is installed, so a
//! second run is fast and changes nothing. It prints one line per item; where it
//! cannot install something (no apt-get, not root) it says exactly what is
//! missing and exits non-zero.

use std::{fs, path::Path, process::Command};

use anyhow::{Context, bail};

use crate::{
    command::{EBPF_TOOLCHAIN, LLVM_BIN, RUST_TOOLCHAIN, build_path, checked, find_program, is_root, output},
    cross,
    kernels::{Arch, VM_KERNELS, VmKernel, busybox, cache_dir, ensure_busybox},
};

/// How to tell a package is there without dpkg (on a machine that is not Debian).
enum Probe {
    Program(&'static str),
    File(&'static str),
}

impl Probe {
    fn describe(&self) -> String {
        match self {
            Probe::Program(name) => format!("no `{name}` on PATH"),
            Probe::File(path) => format!("no {path}"),
        }
    }
}

/// Debian packages, each with what it is for and how to detect it without dpkg.
const APT_PACKAGES: [(&str, Probe); 15] = [
    // bpf-linker links against LLVM 22 (and its Polly library).
    ("llvm-22-dev", Probe::File("/usr/lib/llvm-22/bin/llvm-config")),
    ("libpolly-22-dev", Probe::File("/usr/lib/llvm-22/lib/libPolly.a")),
    // C CO-RE shims compiled to BPF bitcode.
    ("clang-22", Probe::Program("clang-22")),
    // Inspecting loaded programs and maps.
    ("bpftool", Probe::Program("bpftool")),
    // The BPF LSM suite runs in a VM booting Debian's kernel (this host refuses
    // LSM programs): qemu, a static busybox for the initramfs, cpio to pack it.
    ("qemu-system-x86", Probe::Program("qemu-system-x86_64")),
    ("busybox-static", Probe::File("/bin/busybox")),
    ("cpio", Probe::Program("cpio")),
    // Stripping debug info from the test executables packed into the VM.
    ("binutils", Probe::Program("objcopy")),
    // Network tests (and `ip link set lo up` in the VM).
    ("iproute2", Probe::Program("ip")),
    ("python3", Probe::Program("python3")),
    // Event-stream tests: a real NATS JetStream server, and promtool to check /metrics.
    ("nats-server", Probe::Program("nats-server")),
    ("prometheus", Probe::Program("promtool")),
    // The arm64 build (cross.rs): Debian's cross linker and the target's glibc;
    // and qemu-system-aarch64 for the arm64 VM pass.
    ("gcc-aarch64-linux-gnu", Probe::Program("aarch64-linux-gnu-gcc")),
    ("libc6-dev-arm64-cross", Probe::File("/usr/aarch64-linux-gnu/lib/libc.so")),
    ("qemu-system-arm", Probe::Program("qemu-system-aarch64")),
];

/// Rust targets the pinned toolchain must have besides the host's: (toolchain, target).
const RUST_TARGETS: [(&str, &str); 1] = [(RUST_TOOLCHAIN, "aarch64-unknown-linux-gnu")];

/// Kernel filesystems the programs and tests use: (fstype, mount point).
const MOUNTS: [(&str, &str); 3] =
    [("bpf", "/sys/fs/bpf"), ("tracefs", "/sys/kernel/tracing"), ("securityfs", "/sys/kernel/security")];

/// What became of one item.
enum Status {
    Ok,
    Installed,
    Mounted,
    /// Not there and not needed from this run (said why), not a failure.
    Skipped(String),
    /// Not there and not installable here: the text says what to do.
    Missing(String),
}

/// Prints one line per item and remembers what is missing.
#[derive(Default)]
struct Report {
    missing: Vec<String>,
}

impl Report {
    fn record(&mut self, item: &str, status: anyhow::Result<Status>) {
        let text = match status {
            Ok(Status::Ok) => "ok".to_owned(),
            Ok(Status::Installed) => "installed".to_owned(),
            Ok(Status::Mounted) => "mounted".to_owned(),
            Ok(Status::Skipped(why)) => format!("skipped: {why}"),
            Ok(Status::Missing(why)) => {
                self.missing.push(item.to_owned());
                format!("MISSING: {why}")
            }
            // A failed install leaves the item missing; keep checking the rest.
            Err(error) => {
                self.missing.push(item.to_owned());
                format!("MISSING: {error:#}")
            }
        };
        println!("setup: {item:<46} {text}");
    }
}

pub fn run() -> anyhow::Result<()> {
    let mut report = Report::default();
    toolchains(&mut report);
    for (toolchain, target) in RUST_TARGETS {
        report.record(&format!("rust target {target} ({toolchain})"), rust_target(toolchain, target));
    }
    apt_packages(&mut report);
    report.record("bpf-linker (llvm-22)", bpf_linker());
    for kernel in VM_KERNELS {
        let item = format!("VM kernel Linux {} ({})", kernel.version, kernel.arch.debian());
        report.record(&item, vm_kernel(&kernel));
    }
    // Guests of another architecture need its busybox (the host's is for the host).
    let mut foreign: Vec<Arch> =
        VM_KERNELS.iter().map(|kernel| kernel.arch).filter(|&arch| cross::is_cross(arch)).collect();
    foreign.dedup();
    for arch in foreign {
        report.record(&format!("VM busybox-static ({})", arch.debian()), vm_busybox(arch));
    }
    for (package, module) in PYTHON_PACKAGES {
        report.record(&format!("python package {package}"), python_package(package, module));
    }
    mounts(&mut report);
    if !report.missing.is_empty() {
        bail!("setup incomplete; missing: {}", report.missing.join(", "));
    }
    Ok(())
}

// ---- rustup toolchains ----

fn toolchains(report: &mut Report) {
    let wanted = [(RUST_TOOLCHAIN, &["clippy", "rustfmt"][..]), (EBPF_TOOLCHAIN, &["rust-src"][..])];
    // RUSTUP_AUTO_INSTALL=0 on these machines: nothing installs unless asked.
    let Some(installed) = output(Command::new("rustup").args(["toolchain", "list"])) else {
        for (name, components) in wanted {
            report.record(
                &toolchain_item(name, components),
                Ok(Status::Missing("rustup not found: install it from https://rustup.rs".into())),
            );
        }
        return;
    };
    for (name, components) in wanted {
        report.record(&toolchain_item(name, components), toolchain(&installed, name, components));
    }
}

/// A rustup target (the standard library for another architecture) of `toolchain`.
fn rust_target(toolchain: &str, target: &str) -> anyhow::Result<Status> {
    let Some(installed) =
        output(Command::new("rustup").args(["target", "list", "--installed", "--toolchain", toolchain]))
    else {
        return Ok(Status::Missing(format!(
            "`rustup target list --toolchain {toolchain}` failed: is {toolchain} installed?"
        )));
    };
    if installed.lines().any(|line| line.trim() == target) {
        return Ok(Status::Ok);
    }
    checked(Command::new("rustup").args(["target", "add", "--toolchain", toolchain, target]))?;
    Ok(Status::Installed)
}

fn toolchain_item(name: &str, components: &[&str]) -> String {
    format!("rust toolchain {name} ({})", components.join(", "))
}

fn toolchain(installed: &str, name: &str, components: &[&str]) -> anyhow::Result<Status> {
    // `rustup toolchain list` names them with the host triple: 1.98.0-x86_64-unknown-linux-gnu.
    let present = installed.lines().any(|line| line == name || line.starts_with(&format!("{name}-")));
    if !present {
        checked(
            Command::new("rustup")
                .args(["toolchain", "install", name, "--profile", "minimal", "--component"])
                .arg(components.join(",")),
        )?;
        return Ok(Status::Installed);
    }
    let have = output(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", name]))
        .with_context(|| format!("listing the components of {name}"))?;
    // Components are listed with their target (clippy-x86_64-unknown-linux-gnu), rust-src without.
    let lacking: Vec<&str> = components
        .iter()
        .copied()
        .filter(|component| !have.lines().any(|line| line == *component || line.starts_with(&format!("{component}-"))))
        .collect();
    if lacking.is_empty() {
        return Ok(Status::Ok);
    }
    checked(Command::new("rustup").args(["component", "add", "--toolchain", name]).args(&lacking))?;
    Ok(Status::Installed)
}

// ---- Debian packages ----

fn apt_packages(report: &mut Report) {
    let dpkg = find_program("dpkg-query").is_some();
    let present = |package: &str, probe: &Probe| {
        if dpkg { dpkg_installed(package) } else { probe_finds(probe) }
    };
    let missing: Vec<&str> =
        APT_PACKAGES.iter().filter(|(package, probe)| !present(package, probe)).map(|(package, _)| *package).collect();
    // Install everything missing in one go (one `apt-get update`), then report per package.
    let install_error = if missing.is_empty() {
        None
    } else if find_program("apt-get").is_none() {
        Some("no apt-get on this machine: install it (or its equivalent) by hand".to_owned())
    } else if !is_root() {
        Some("not installed: run `cargo xtask setup` as root to apt-get install it".to_owned())
    } else {
        println!("setup: apt-get install {}", missing.join(" "));
        apt_get_install(&missing).err().map(|error| format!("{error:#}"))
    };
    for (package, probe) in &APT_PACKAGES {
        let status = if !missing.contains(package) {
            Status::Ok
        } else if present(package, probe) {
            Status::Installed
        } else {
            let why = install_error.clone().unwrap_or_else(|| "apt-get did not install it".into());
            // Without dpkg, say what was looked for.
            Status::Missing(if dpkg { why } else { format!("{}; {why}", probe.describe()) })
        };
        report.record(&format!("apt package {package}"), Ok(status));
    }
}

fn apt_get_install(packages: &[&str]) -> anyhow::Result<()> {
    checked(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    checked(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn dpkg_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.trim() == "install ok installed")
}

fn probe_finds(probe: &Probe) -> bool {
    match probe {
        Probe::Program(name) => find_program(name).is_some(),
        Probe::File(path) => Path::new(path).exists(),
    }
}

// ---- Python packages ----

/// (pip requirement, module to import): the OCSF schema models the event
/// tests validate rtid's OCSF output against.
const PYTHON_PACKAGES: [(&str, &str); 1] = [("ocsf-emitter==0.3.0", "ocsf_emitter")];

fn python_package(requirement: &str, module: &str) -> anyhow::Result<Status> {
    let importable = || {
        Command::new("python3").args(["-c", &format!("import {module}")]).output().is_ok_and(|out| out.status.success())
    };
    if importable() {
        return Ok(Status::Ok);
    }
    if find_program("python3").is_none() {
        return Ok(Status::Missing("no python3".into()));
    }
    checked(Command::new("python3").args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        requirement,
    ]))?;
    if importable() {
        Ok(Status::Installed)
    } else {
        Ok(Status::Missing(format!("pip installed {requirement} but `import {module}` fails")))
    }
}

// ---- bpf-linker ----

fn bpf_linker() -> anyhow::Result<Status> {
    let linker_runs = || output(Command::new("bpf-linker").arg("--version").env("PATH", build_path())).is_some();
    if linker_runs() {
        return Ok(Status::Ok);
    }
    if !Path::new(LLVM_BIN).join("llvm-config").exists() {
        return Ok(Status::Missing(format!("building it needs LLVM 22 in {LLVM_BIN} (llvm-22-dev)")));
    }
    // `+1.98.0` rather than the machine default (which may be older), through
    // rustup's proxy (first on the build PATH); LLVM 22 first on PATH so
    // llvm-sys finds llvm-config 22.
    checked(
        Command::new("cargo")
            .arg(format!("+{RUST_TOOLCHAIN}"))
            .args(["install", "--locked", "bpf-linker", "--no-default-features", "--features", "llvm-22"])
            .env("PATH", build_path()),
    )?;
    if !linker_runs() {
        bail!("cargo install finished but `bpf-linker --version` still fails");
    }
    Ok(Status::Installed)
}

// ---- VM kernels ----

fn vm_kernel(kernel: &VmKernel) -> anyhow::Result<Status> {
    if find_program("apt-get").is_none() && kernel.image().is_err() {
        return Ok(Status::Missing(format!("fetching it needs apt-get; or unpack it into {}", cache_dir().display())));
    }
    Ok(if kernel.ensure()? { Status::Installed } else { Status::Ok })
}

fn vm_busybox(arch: Arch) -> anyhow::Result<Status> {
    if find_program("apt-get").is_none() && busybox(arch).is_err() {
        return Ok(Status::Missing(format!(
            "fetching it needs apt-get; or unpack Debian's busybox-static for {} into {}",
            arch.debian(),
            cache_dir().display()
        )));
    }
    Ok(if ensure_busybox(arch)? { Status::Installed } else { Status::Ok })
}

// ---- kernel filesystems ----

fn is_mounted(mounts: &str, fstype: &str, point: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(point) && fields.next() == Some(fstype)
    })
}

fn mount(fstype: &str, point: &str) -> anyhow::Result<()> {
    checked(Command::new("mount").args(["-t", fstype, fstype, point]))
}

fn mounts(report: &mut Report) {
    let mounted = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let root = is_root();
    for (fstype, point) in MOUNTS {
        let status = if is_mounted(&mounted, fstype, point) {
            Ok(Status::Ok)
        } else if !root {
            // Only root can mount, and only root runs the tests that need it
            // (`cargo xtask test` mounts it itself).
            Ok(Status::Skipped("not mounted; needs root".into()))
        } else {
            mount(fstype, point).map(|()| Status::Mounted)
        };
        report.record(&format!("mount {fstype} on {point}"), status);
    }
}

/// For `test` and `bench` (run as root): mounts whichever kernel filesystem is absent.
pub fn ensure_mounts() -> anyhow::Result<()> {
    let mounted = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    for (fstype, point) in MOUNTS {
        if !is_mounted(&mounted, fstype, point) {
            mount(fstype, point)?;
        }
    }
    Ok(())
}
