//! `cargo xtask vm-test`: rtid's kernel suites, run for real inside VMs.
//!
//! This host refuses LSM programs and runs one kernel, so the suites also boot
//! Debian's kernels (see kernels.rs) under qemu with software emulation: the
//! BPF LSM suite on every kernel in the list, and the fallback suite (the
//! host's kernel-facing integration tests) on the oldest kernel booted with
//! BPF LSM left out of `lsm=`. The initramfs holds busybox, the test
//! executables, the probe and the rtid binary with their shared libraries, and
//! an /init that mounts the kernel filesystems, runs the suites and reports
//! their exit status on the serial console, which is streamed here as it runs.

use std::{
    collections::BTreeSet,
    fs,
    io::{BufRead, BufReader},
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{
    command::{cargo, checked, output, target_dir},
    cross,
    kernels::{Arch, VM_KERNELS, VmKernel, busybox},
};

/// Marker the guest prints with the suite's exit status.
const EXIT_MARKER: &str = "RTID-VM-EXIT=";
/// The whole VM run, boot included; TCG runs code 10 to 50 times slower.
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Every package but the eBPF crate (which builds for bpfel inside
/// rtid-userspace's build.rs), every target: the same selection `cargo xtask
/// test` builds on the host, so features resolve the same way and shared
/// dependencies are not rebuilt between the host and the VM runs.
pub const BUILD_SELECTION: [&str; 4] = ["--workspace", "--exclude", "rtid-ebpf", "--all-targets"];

/// Builds rtid, the probe and the integration tests for `arch` in one cargo
/// run and returns the executables of `targets`, in the order named.
fn build_test_executables(targets: &[&str], arch: Arch) -> anyhow::Result<Vec<PathBuf>> {
    let out = cross::cargo(arch, "build")
        .args(BUILD_SELECTION)
        .arg("--message-format=json")
        .stderr(Stdio::inherit())
        .output()
        .context("building the test executables")?;
    if !out.status.success() {
        bail!("building rtid and its tests failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    targets
        .iter()
        .map(|target| {
            // The compiler-artifact message of the test target carries its executable.
            text.lines()
                .find_map(|line| {
                    if !(line.contains(&format!("\"name\":\"{target}\"")) && line.contains("\"test\":true")) {
                        return None;
                    }
                    let (_, rest) = line.split_once("\"executable\":\"")?;
                    let (executable, _) = rest.split_once('"')?;
                    Some(PathBuf::from(executable))
                })
                .with_context(|| format!("no executable for test target {target} in cargo's output"))
        })
        .collect()
}

/// Shared libraries an executable needs, as (file here, path in the guest):
/// from ldd for the host's architecture, from its dynamic section for another.
fn shared_libraries(arch: Arch, executable: &Path) -> anyhow::Result<BTreeSet<(PathBuf, String)>> {
    if cross::is_cross(arch) {
        return cross::guest_libraries(arch, executable);
    }
    let listing = output(Command::new("ldd").arg(executable)).unwrap_or_default();
    let mut libraries = BTreeSet::new();
    for line in listing.lines() {
        let candidate = match line.split_once("=>") {
            Some((_, target)) => target.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = candidate.filter(|path| path.starts_with('/')) {
            libraries.insert((PathBuf::from(path), path.to_owned()));
        }
    }
    Ok(libraries)
}

fn copy_into(root: &Path, source: &Path, destination: &str) -> anyhow::Result<()> {
    let target = root.join(destination.trim_start_matches('/'));
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::copy(source, &target).with_context(|| format!("copying {} into the initramfs", source.display()))?;
    Ok(())
}

/// Quotes `args` for the guest's shell.
fn shell_words(args: &[String]) -> String {
    args.iter().map(|arg| format!("'{}'", arg.replace('\'', r"'\''"))).collect::<Vec<_>>().join(" ")
}

/// The directory of a build profile (target/debug) from an executable in it or in its deps/.
fn profile_dir(executable: &Path) -> anyhow::Result<&Path> {
    let parent = executable.parent().context("executable without a directory")?;
    Ok(if parent.ends_with("deps") { parent.parent().context("deps/ without a parent")? } else { parent })
}

/// The guest's /init: mounts what the programs need, runs each of `commands`
/// (executables under /rtid), and prints whether all passed after EXIT_MARKER.
fn init_script(commands: &[String]) -> String {
    let commands: String = commands.iter().map(|command| format!("{command} || status=1\n")).collect();
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /run /root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mkdir -p /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
ip link set lo up
echo "kernel: $(uname -r); active LSMs: $(cat /sys/kernel/security/lsm)"
export HOME=/root RTID_PROBE=/rtid/rtid-probe RTID_BINARY=/rtid/rtid RTID_IN_VM=1 RUST_BACKTRACE=1
status=0
{commands}echo "{EXIT_MARKER}$status"
poweroff -f
"#
    )
}

/// Packs `root` into a newc cpio archive with the system's cpio.
fn pack(root: &Path, archive: &Path) -> anyhow::Result<()> {
    let script = format!("cd {} && find . | cpio -o -H newc --quiet > {}", root.display(), archive.display());
    checked(Command::new("sh").args(["-c", &script]))
}

/// Builds an initramfs for an `arch` guest holding busybox and `executables`
/// (name in /rtid, path here) with their shared libraries, whose /init runs `commands`.
fn build_initramfs(arch: Arch, executables: &[(String, PathBuf)], commands: &[String]) -> anyhow::Result<PathBuf> {
    let work = target_dir().join("vm");
    let root = work.join("root");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("bin"))?;
    copy_into(&root, &busybox(arch)?, "/bin/busybox")?;
    let mut libraries = BTreeSet::new();
    for (name, executable) in executables {
        let destination = format!("/rtid/{name}");
        copy_into(&root, executable, &destination)?;
        // Debug builds carry hundreds of MiB of DWARF the guest does not need
        // in RAM; symbols stay for backtraces.
        checked(
            Command::new(cross::binutil(arch, "objcopy"))
                .arg("--strip-debug")
                .arg(root.join(destination.trim_start_matches('/'))),
        )?;
        libraries.extend(shared_libraries(arch, executable)?);
    }
    for (library, destination) in libraries {
        copy_into(&root, &library, &destination)?;
    }
    fs::write(root.join("init"), init_script(commands))?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    let archive = work.join("initramfs.cpio");
    pack(&root, &archive)?;
    Ok(archive)
}

/// Boots the kernel with `initramfs`, streams the console, returns the suite's exit status.
/// Returns the suite's exit status and how many tests it reported passed.
fn boot(arch: Arch, kernel: &Path, initramfs: &Path, extra_cmdline: &str) -> anyhow::Result<(i32, u32)> {
    let mut qemu = Command::new(arch.qemu())
        .args(arch.qemu_machine())
        .args(["-m", "3072", "-smp", "1", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .arg("-append")
        .arg(format!("console={} quiet panic=-1 rdinit=/init {extra_cmdline}", arch.console()).trim_end())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {} (run `cargo xtask setup`)", arch.qemu()))?;
    let stdout = qemu.stdout.take().context("qemu stdout")?;
    let (lines_tx, lines_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + VM_TIMEOUT;
    let mut status = None;
    let mut passed = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match lines_rx.recv_timeout(remaining) {
            Ok(Ok(line)) => {
                let line = line.trim_end_matches('\r');
                println!("vm| {line}");
                if let Some(code) = line.trim().strip_prefix(EXIT_MARKER) {
                    status = code.trim().parse().ok();
                }
                if let Some(summary) = line.trim().strip_prefix("test result: ok. ") {
                    passed += summary.split(' ').next().and_then(|count| count.parse::<u32>().ok()).unwrap_or(0);
                }
            }
            Ok(Err(_)) | Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = qemu.kill();
                bail!("the VM did not finish within {VM_TIMEOUT:?}");
            }
        }
    }
    let _ = qemu.wait();
    let status = status.context("the VM ended without reporting the suite's exit status (see the console above)")?;
    Ok((status, passed))
}

/// Which backend a VM pass proves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// BPF LSM active (the kernel's default LSM list includes it):
    /// tests/tests/lsm.rs, and the backend-aware suites of rtid's own
    /// integrity (integrity.rs, hardening.rs, control.rs).
    Lsm,
    /// Booted with BPF LSM left out of `lsm=`: the host's kernel-facing suites,
    /// on the tracepoint and cgroup backends.
    Fallback,
}

impl Suite {
    fn name(self) -> &'static str {
        match self {
            Suite::Lsm => "lsm",
            Suite::Fallback => "fallback",
        }
    }

    /// Kernel command line: the fallback pass names every LSM Debian enables except bpf.
    fn cmdline(self) -> &'static str {
        match self {
            Suite::Lsm => "",
            Suite::Fallback => "lsm=landlock,lockdown,yama,apparmor",
        }
    }

    /// Integration test targets this pass runs on `arch`. Under arm64
    /// emulation (several times slower than x86_64's) the LSM pass runs the
    /// LSM suite and the real daemon only: the integrity suites prove the
    /// same programs on x86_64's 6.1 and 6.12, and CI has 90 minutes.
    fn targets(self, arch: Arch) -> &'static [&'static str] {
        match (self, arch) {
            (Suite::Lsm, Arch::X86_64) => &LSM_TARGETS,
            (Suite::Lsm, Arch::Arm64) => &LSM_TARGETS[..1],
            (Suite::Fallback, _) => &FALLBACK_TARGETS,
        }
    }
}

/// The LSM-only suite (ignored on the host: it needs BPF LSM) and the suites
/// that assert the LSM outcome where LSM is active and the fallback's on the host.
const LSM_TARGETS: [&str; 5] = ["lsm", "integrity", "hardening", "control", "aliases"];

/// Whether a target's tests are `#[ignore]`d on the host and run here with `--ignored`.
fn ignored_on_host(target: &str) -> bool {
    target == "lsm"
}

/// The host suites that exercise the kernel backends without outside peers
/// (NATS, promtool, python) and without timing assumptions emulation breaks
/// (the daemon suite's one-second TTLs, the ring flood); the real daemon runs
/// in every LSM pass instead.
const FALLBACK_TARGETS: [&str; 4] = ["files", "network", "exec", "identity"];

/// One VM boot: a kernel and the suite it runs.
#[derive(Clone, Copy, Debug)]
pub struct VmPass {
    pub kernel: VmKernel,
    pub suite: Suite,
}

impl VmPass {
    pub fn name(&self) -> String {
        format!("vm {} {}", self.kernel.name(), self.suite.name())
    }
}

/// The passes for the kernels of `arch`: the LSM suite on every one where BPF
/// LSM attaches, the fallback suite on the oldest (the host's own kernel
/// covers the newest).
fn passes_for(arch: Arch) -> Vec<VmPass> {
    let kernels = VM_KERNELS.iter().copied().filter(|kernel| kernel.arch == arch);
    let mut passes: Vec<VmPass> =
        kernels.clone().filter(|kernel| kernel.bpf_lsm).map(|kernel| VmPass { kernel, suite: Suite::Lsm }).collect();
    passes.extend(kernels.take(1).map(|kernel| VmPass { kernel, suite: Suite::Fallback }));
    passes
}

/// What `cargo xtask test` runs: the x86_64 kernels' passes, then the LSM
/// suite on the arm64 kernels where BPF LSM attaches (6.12: about 2 minutes in
/// the VM). arm64's fallback pass (on 6.1) runs with `vm-test --arch arm64`.
pub fn default_passes() -> Vec<VmPass> {
    let mut passes = passes_for(Arch::X86_64);
    passes.extend(passes_for(Arch::Arm64).into_iter().filter(|pass| pass.suite == Suite::Lsm));
    passes
}

/// The passes a `vm-test` selection names among the kernels of `arch` (amd64
/// by default): by default, [`passes_for`] that architecture.
pub fn select_passes(kernel: Option<&str>, arch: Option<Arch>, suite: Option<Suite>) -> anyhow::Result<Vec<VmPass>> {
    let arch = arch.unwrap_or(Arch::X86_64);
    let kernels: Vec<VmKernel> = VM_KERNELS.iter().copied().filter(|known| known.arch == arch).collect();
    let Some(named) = kernels.iter().find(|known| kernel.is_none_or(|wanted| known.version == wanted)) else {
        let known: Vec<&str> = kernels.iter().map(|known| known.version).collect();
        bail!("no {} VM kernel {:?}; known: {}", arch.debian(), kernel.unwrap_or_default(), known.join(", "));
    };
    if kernel.is_some() && suite == Some(Suite::Lsm) && !named.bpf_lsm {
        bail!("BPF LSM programs do not attach on Linux {} (see kernels.rs): try --suite fallback", named.name());
    }
    let mut passes: Vec<VmPass> = match suite {
        // Asked for explicitly, a suite runs on every kernel named (the LSM suite where it can).
        Some(suite) => kernels
            .iter()
            .filter(|known| suite != Suite::Lsm || known.bpf_lsm)
            .map(|&kernel| VmPass { kernel, suite })
            .collect(),
        None => passes_for(arch),
    };
    passes.retain(|pass| kernel.is_none_or(|wanted| pass.kernel.version == wanted));
    Ok(passes)
}

/// Builds the test executables, the probe and the rtid binary for `suite`, for `arch`.
fn suite_executables(suite: Suite, arch: Arch) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let built = build_test_executables(suite.targets(arch), arch)?;
    let mut executables: Vec<(String, PathBuf)> = suite
        .targets(arch)
        .iter()
        .zip(built)
        .map(|(target, executable)| (format!("tests/{target}"), executable))
        .collect();
    let profile = profile_dir(&executables[0].1)?.to_path_buf();
    executables.push(("rtid-probe".into(), profile.join("rtid-probe")));
    executables.push(("rtid".into(), profile.join("rtid")));
    Ok(executables)
}

/// Runs one pass; `args` (test name filters, libtest flags) go to its suites.
/// Returns how many tests passed.
pub fn run_pass(pass: &VmPass, args: &[String]) -> anyhow::Result<u64> {
    let kernel = pass.kernel.image()?;
    let arch = pass.kernel.arch;
    let executables = suite_executables(pass.suite, arch)?;
    let commands: Vec<String> = pass
        .suite
        .targets(arch)
        .iter()
        .map(|target| {
            // The LSM suite is #[ignore]d on the host (it needs BPF LSM); here it runs.
            let ignored = if ignored_on_host(target) { "--ignored " } else { "" };
            format!("/rtid/tests/{target} {ignored}--test-threads=1 --nocapture {}", shell_words(args))
        })
        .collect();
    println!("{}: booting {}", pass.name(), kernel.display());
    let started = Instant::now();
    let initramfs = build_initramfs(arch, &executables, &commands)?;
    let (status, passed) = boot(arch, &kernel, &initramfs, pass.suite.cmdline())?;
    println!("{}: the VM ran for {:.0?}", pass.name(), started.elapsed());
    if status != 0 {
        bail!("{}: failed (see the console above)", pass.name());
    }
    if passed == 0 && args.is_empty() {
        // Unfiltered, no test run means the suite did not really run.
        bail!("{}: ran no test", pass.name());
    }
    Ok(u64::from(passed))
}

/// Runs `passes` one after another, each reported by name; fails if any fails.
/// Returns how many tests passed in each.
pub fn run(passes: &[VmPass], args: &[String]) -> anyhow::Result<Vec<(VmPass, u64)>> {
    let mut results = Vec::new();
    for pass in passes {
        let result = run_pass(pass, args);
        match &result {
            Ok(passed) => println!("{}: {passed} passed", pass.name()),
            Err(error) => println!("{}: FAILED: {error:#}", pass.name()),
        }
        results.push((pass.name(), result));
    }
    for (name, result) in &results {
        match result {
            Ok(passed) => println!("{name}: {passed} passed"),
            Err(_) => println!("{name}: FAILED"),
        }
    }
    let failed: Vec<&str> =
        results.iter().filter(|(_, result)| result.is_err()).map(|(name, _)| name.as_str()).collect();
    if !failed.is_empty() {
        bail!("VM passes failed: {}", failed.join(", "));
    }
    Ok(passes.iter().zip(results).map(|(pass, (_, result))| (*pass, result.unwrap_or(0))).collect())
}

/// Runs rtid-bench inside the VM on the oldest kernel with `args` (emulated:
/// compare ratios, not times; the guest sets RTID_IN_VM=1 so the benchmark
/// can say so or scale down).
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    checked(cargo().args(["build", "--release", "-p", "rtid-tests", "--bin", "rtid-bench", "--bin", "rtid-probe"]))?;
    let release = target_dir().join("release");
    let (arch, kernel) = (VM_KERNELS[0].arch, VM_KERNELS[0].image()?);
    let executables =
        [("bench".to_owned(), release.join("rtid-bench")), ("rtid-probe".to_owned(), release.join("rtid-probe"))];
    let initramfs = build_initramfs(arch, &executables, &[format!("/rtid/bench {}", shell_words(args))])?;
    let (status, _) = boot(arch, &kernel, &initramfs, "")?;
    if status != 0 {
        bail!("the benchmark failed in the VM (exit status {status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{Suite, profile_dir, select_passes, shell_words};
    use crate::kernels::Arch;

    #[test]
    fn arguments_reach_the_guest_shell_verbatim() {
        let args = ["--exact".to_owned(), "it's here".to_owned()];
        assert_eq!(shell_words(&args), r"'--exact' 'it'\''s here'");
    }

    #[test]
    fn passes_are_selected_by_architecture() {
        let names = |passes: Vec<super::VmPass>| passes.iter().map(super::VmPass::name).collect::<Vec<_>>();
        let select = |kernel, arch, suite| names(select_passes(kernel, arch, suite).unwrap());
        assert_eq!(
            names(super::default_passes()),
            ["vm 6.1 lsm", "vm 6.12 lsm", "vm 6.1 fallback", "vm 6.12 arm64 lsm"]
        );
        assert_eq!(select(None, None, None), ["vm 6.1 lsm", "vm 6.12 lsm", "vm 6.1 fallback"]);
        assert_eq!(select(Some("6.1"), None, None), ["vm 6.1 lsm", "vm 6.1 fallback"]);
        // arm64 6.1 cannot attach LSM programs: its LSM suite is left out, or refused when named.
        assert_eq!(select(None, Some(Arch::Arm64), None), ["vm 6.12 arm64 lsm", "vm 6.1 arm64 fallback"]);
        assert_eq!(select(None, Some(Arch::Arm64), Some(Suite::Lsm)), ["vm 6.12 arm64 lsm"]);
        assert_eq!(select(Some("6.12"), Some(Arch::Arm64), Some(Suite::Lsm)), ["vm 6.12 arm64 lsm"]);
        assert_eq!(select(Some("6.1"), Some(Arch::Arm64), Some(Suite::Fallback)), ["vm 6.1 arm64 fallback"]);
        let refused = select_passes(Some("6.1"), Some(Arch::Arm64), Some(Suite::Lsm)).unwrap_err();
        assert!(refused.to_string().contains("do not attach on Linux 6.1 arm64"), "{refused}");
        assert!(select_passes(Some("5.10"), Some(Arch::Arm64), None).is_err());
    }

    #[test]
    fn the_probe_sits_in_the_profile_directory() {
        let dir = Path::new("/t/debug");
        assert_eq!(profile_dir(Path::new("/t/debug/deps/lsm-0123")).unwrap(), dir);
        assert_eq!(profile_dir(Path::new("/t/debug/rtid-bench")).unwrap(), dir);
    }
}
