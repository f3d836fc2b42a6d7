//! `cargo xtask vm-test`: the BPF LSM suite, run for real inside a VM.
//!
//! This host refuses LSM programs, so the suite boots Debian's kernel (where
//! BPF LSM is active) under qemu with software emulation. The initramfs holds
//! busybox, the test executable and the probe with their shared libraries, and
//! an /init that mounts the kernel filesystems, runs the suite and reports its
//! exit status on the serial console, which is streamed here as it runs.

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

use crate::command::{cargo, checked, output, target_dir};

/// Marker the guest prints with the suite's exit status.
const EXIT_MARKER: &str = "RTID-VM-EXIT=";
/// The whole VM run, boot included; TCG runs code 10 to 50 times slower.
const VM_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Builds the named integration test target and returns its executable.
fn build_test_executable(target: &str) -> anyhow::Result<PathBuf> {
    let out = cargo()
        .args(["test", "-p", "rtid-tests", "--test", target, "--no-run", "--message-format=json"])
        .stderr(Stdio::inherit())
        .output()
        .context("building the test executable")?;
    if !out.status.success() {
        bail!("building test target {target} failed");
    }
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        // The compiler-artifact message of the test target carries its executable.
        if line.contains(&format!("\"name\":\"{target}\""))
            && line.contains("\"test\":true")
            && let Some((_, rest)) = line.split_once("\"executable\":\"")
            && let Some((executable, _)) = rest.split_once('"')
        {
            return Ok(PathBuf::from(executable));
        }
    }
    bail!("no executable for test target {target} in cargo's output")
}

/// Debian's kernel with BPF LSM, newest first.
fn find_kernel() -> anyhow::Result<PathBuf> {
    let mut kernels: Vec<PathBuf> = fs::read_dir("/boot")
        .context("reading /boot")?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("vmlinuz-") && name.ends_with("-amd64"))
        })
        .collect();
    kernels.sort();
    kernels.pop().context("no /boot/vmlinuz-*-amd64: run `cargo xtask setup` (installs linux-image-amd64)")
}

/// Shared libraries an executable needs, from ldd.
fn shared_libraries(executable: &Path) -> anyhow::Result<BTreeSet<PathBuf>> {
    let listing = output(Command::new("ldd").arg(executable)).unwrap_or_default();
    let mut libraries = BTreeSet::new();
    for line in listing.lines() {
        let candidate = match line.split_once("=>") {
            Some((_, target)) => target.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = candidate.filter(|path| path.starts_with('/')) {
            libraries.insert(PathBuf::from(path));
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

/// The guest's /init: mounts what the programs need, runs `command` (whose
/// executable is /rtid/run), and prints its exit status after EXIT_MARKER.
fn init_script(command: &str) -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mkdir -p /proc /sys /dev /tmp /run
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
export RTID_PROBE=/rtid/rtid-probe RTID_IN_VM=1 RUST_BACKTRACE=1
{command}
echo "{EXIT_MARKER}$?"
poweroff -f
"#
    )
}

/// Packs `root` into a newc cpio archive with the system's cpio.
fn pack(root: &Path, archive: &Path) -> anyhow::Result<()> {
    let script = format!("cd {} && find . | cpio -o -H newc --quiet > {}", root.display(), archive.display());
    checked(Command::new("sh").args(["-c", &script]))
}

/// Builds an initramfs holding busybox, `executable` (as /rtid/run) and the
/// probe the tests spawn, with their shared libraries, whose /init runs `command`.
fn build_initramfs(executable: &Path, probe: &Path, command: &str) -> anyhow::Result<PathBuf> {
    let work = target_dir().join("vm");
    let root = work.join("root");
    let _ = fs::remove_dir_all(&root);
    fs::create_dir_all(root.join("bin"))?;
    copy_into(&root, Path::new("/bin/busybox"), "/bin/busybox")?;
    copy_into(&root, executable, "/rtid/run")?;
    copy_into(&root, probe, "/rtid/rtid-probe")?;
    let mut libraries = shared_libraries(executable)?;
    libraries.extend(shared_libraries(probe)?);
    for library in libraries {
        copy_into(&root, &library, &library.display().to_string())?;
    }
    fs::write(root.join("init"), init_script(command))?;
    fs::set_permissions(root.join("init"), fs::Permissions::from_mode(0o755))?;
    let archive = work.join("initramfs.cpio");
    pack(&root, &archive)?;
    Ok(archive)
}

/// Boots the kernel with `initramfs`, streams the console, returns the suite's exit status.
/// Returns the suite's exit status and how many tests it reported passed.
fn boot(kernel: &Path, initramfs: &Path) -> anyhow::Result<(i32, u32)> {
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-accel", "tcg", "-m", "2048", "-smp", "1", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 quiet panic=-1 rdinit=/init"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (run `cargo xtask setup`)")?;
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

/// Runs the LSM suite in the VM; `args` (test name filters, libtest flags) go to the suite.
/// Returns how many tests passed in the VM.
pub fn run(args: &[String]) -> anyhow::Result<u64> {
    let suite = build_test_executable("lsm")?;
    let probe = profile_dir(&suite)?.join("rtid-probe");
    let kernel = find_kernel()?;
    println!("vm-test: booting {} with {}", kernel.display(), suite.display());
    // The suite's tests are #[ignore]d on the host (they need BPF LSM); here they run.
    let command = format!("/rtid/run --ignored --test-threads=1 --nocapture {}", shell_words(args));
    let initramfs = build_initramfs(&suite, &probe, &command)?;
    let (status, passed) = boot(&kernel, &initramfs)?;
    if status != 0 {
        bail!("the BPF LSM suite failed in the VM (exit status {status})");
    }
    if passed == 0 {
        // Unfiltered, no test run means the suite did not really run: fail.
        // Filtered (e.g. `cargo xtask test -- files`), the filter may name only host tests.
        if args.is_empty() {
            bail!("the BPF LSM suite ran no test in the VM");
        }
        println!("vm-test: no BPF LSM test matches {args:?}");
        return Ok(0);
    }
    println!("vm-test: the BPF LSM suite passed in the VM");
    Ok(u64::from(passed))
}

/// Runs rtid-bench inside the VM with `args` (emulated: compare ratios, not
/// times; the guest sets RTID_IN_VM=1 so the benchmark can say so or scale down).
pub fn bench(args: &[String]) -> anyhow::Result<()> {
    checked(cargo().args(["build", "--release", "-p", "rtid-tests", "--bin", "rtid-bench", "--bin", "rtid-probe"]))?;
    let release = target_dir().join("release");
    let kernel = find_kernel()?;
    let command = format!("/rtid/run {}", shell_words(args));
    let initramfs = build_initramfs(&release.join("rtid-bench"), &release.join("rtid-probe"), &command)?;
    let (status, _) = boot(&kernel, &initramfs)?;
    if status != 0 {
        bail!("the benchmark failed in the VM (exit status {status})");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{profile_dir, shell_words};

    #[test]
    fn arguments_reach_the_guest_shell_verbatim() {
        let args = ["--exact".to_owned(), "it's here".to_owned()];
        assert_eq!(shell_words(&args), r"'--exact' 'it'\''s here'");
    }

    #[test]
    fn the_probe_sits_in_the_profile_directory() {
        let dir = Path::new("/t/debug");
        assert_eq!(profile_dir(Path::new("/t/debug/deps/lsm-0123")).unwrap(), dir);
        assert_eq!(profile_dir(Path::new("/t/debug/rtid-bench")).unwrap(), dir);
    }
}
