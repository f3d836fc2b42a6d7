//! Building rtid for another CPU architecture: arm64 (`aarch64-unknown-linux-gnu`)
//! on an x86_64 host, with Debian's cross toolchain (`gcc-aarch64-linux-gnu`
//! links, `libc6-dev-arm64-cross` is the target's glibc) and the rustup target
//! of the pinned toolchain, all installed by `cargo xtask setup`.
//!
//! Only the userspace crates are cross-compiled. The eBPF object is built by
//! rtid-userspace's build.rs (aya-build), which runs its own cargo with
//! `--target bpfel-unknown-none` on its command line: the `--target` given
//! here belongs to the outer build only, and the linker and C compiler are set
//! per target triple in the environment (`CARGO_TARGET_<TRIPLE>_LINKER`,
//! `CC_<triple>`), never in a cargo config that would reach host builds, so
//! the kernel programs are the same bpfel object on every architecture.
//!
//! For the VM, a foreign executable's shared libraries cannot come from `ldd`
//! (it runs the binary's interpreter): they are read from its dynamic section
//! (`DT_NEEDED`, program interpreter) with the cross `readelf` and resolved in
//! the cross sysroot.

use std::{
    collections::{BTreeMap, BTreeSet, VecDeque},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, bail};

use crate::{
    command::{self, checked, output, target_dir},
    kernels::Arch,
};

/// Whether building for `arch` is a cross build on this host.
pub fn is_cross(arch: Arch) -> bool {
    Arch::host() != Some(arch)
}

/// Debian's GNU triplet for `arch`: the prefix of its cross tools
/// (`aarch64-linux-gnu-gcc`) and the directory of its cross sysroot.
pub fn gnu_triplet(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "x86_64-linux-gnu",
        Arch::Arm64 => "aarch64-linux-gnu",
    }
}

/// A binutils program that handles `arch`'s binaries: the host's own for the
/// host architecture, else the cross one (`aarch64-linux-gnu-objcopy`).
pub fn binutil(arch: Arch, tool: &str) -> String {
    if is_cross(arch) { format!("{}-{tool}", gnu_triplet(arch)) } else { tool.to_owned() }
}

/// A target triple as cargo spells it in environment variable names
/// (`CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER`).
fn env_triple(triple: &str) -> String {
    triple.replace(['-', '.'], "_").to_uppercase()
}

/// `cargo <subcommand>` in the workspace root building for `arch`: the host's
/// own build for the host architecture (target/<profile>); otherwise with
/// `--target` (target/<triple>/<profile>), Debian's cross gcc as linker, and
/// the cross gcc and ar for build scripts that compile C (ring), each named
/// for that target only.
pub fn cargo(arch: Arch, subcommand: &str) -> Command {
    let mut command = command::cargo();
    command.arg(subcommand);
    if is_cross(arch) {
        let triple = arch.rust_target();
        let gnu = gnu_triplet(arch);
        command
            .args(["--target", triple])
            .env(format!("CARGO_TARGET_{}_LINKER", env_triple(triple)), format!("{gnu}-gcc"))
            .env(format!("CC_{}", triple.replace('-', "_")), format!("{gnu}-gcc"))
            .env(format!("AR_{}", triple.replace('-', "_")), format!("{gnu}-ar"));
    }
    command
}

/// The directory cargo (through [`cargo`]) puts `arch`'s binaries in.
pub fn profile_dir(arch: Arch, release: bool) -> PathBuf {
    let profile = if release { "release" } else { "debug" };
    if is_cross(arch) { target_dir().join(arch.rust_target()).join(profile) } else { target_dir().join(profile) }
}

/// `cargo xtask build --arch ARCH`: the rtid binary for `arch` (its build.rs
/// builds and embeds the bpfel eBPF object). Returns the binary, checked to be
/// an ELF executable for `arch`.
pub fn build_rtid(arch: Arch, release: bool) -> anyhow::Result<PathBuf> {
    let mut command = cargo(arch, "build");
    command.args(["-p", "rtid-userspace", "--bin", "rtid"]);
    if release {
        command.arg("--release");
    }
    checked(&mut command).with_context(|| format!("building rtid for {}", arch.debian()))?;
    checked_binary(profile_dir(arch, release).join("rtid"), arch)
}

/// What `cargo xtask test` runs for `arch`, built with the VM passes'
/// selection so they reuse it; returns the rtid binary, checked as in [`build_rtid`].
pub fn build_for_tests(arch: Arch) -> anyhow::Result<PathBuf> {
    checked(cargo(arch, "build").args(crate::vm::BUILD_SELECTION))
        .with_context(|| format!("building rtid and its tests for {}", arch.debian()))?;
    checked_binary(profile_dir(arch, false).join("rtid"), arch)
}

/// `binary`, if it is an ELF executable for `arch`.
fn checked_binary(binary: PathBuf, arch: Arch) -> anyhow::Result<PathBuf> {
    let header = read_prefix(&binary, 20)?;
    let machine = elf_machine(&header).with_context(|| format!("{} is not an ELF file", binary.display()))?;
    if machine != elf_machine_of(arch) {
        bail!("{} is built for ELF machine {machine:#x}, not {}", binary.display(), arch.debian());
    }
    Ok(binary)
}

fn read_prefix(path: &Path, length: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(length);
    fs::File::open(path)
        .and_then(|file| file.take(length as u64).read_to_end(&mut bytes))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes)
}

/// ELF `e_machine` of `arch` (EM_X86_64, EM_AARCH64).
fn elf_machine_of(arch: Arch) -> u16 {
    match arch {
        Arch::X86_64 => 62,
        Arch::Arm64 => 183,
    }
}

/// `e_machine` of a little-endian ELF header, if `header` is one.
fn elf_machine(header: &[u8]) -> Option<u16> {
    const ELFDATA2LSB: u8 = 1;
    if header.len() < 20 || !header.starts_with(b"\x7fELF") || header[5] != ELFDATA2LSB {
        return None;
    }
    Some(u16::from_le_bytes([header[18], header[19]]))
}

// ---- shared libraries of foreign executables ----

/// What `readelf -W -l -d` says about one ELF file.
#[derive(Debug, Default, PartialEq, Eq)]
struct DynamicInfo {
    /// `DT_NEEDED`: library names (`libc.so.6`), in order.
    needed: Vec<String>,
    /// `PT_INTERP`: the dynamic linker's absolute path (`/lib/ld-linux-aarch64.so.1`).
    interpreter: Option<String>,
}

/// Parses `readelf -W -l -d` output:
/// ` 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]` and
/// `      [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]`.
fn parse_readelf(text: &str) -> DynamicInfo {
    let bracketed = |rest: &str| {
        rest.trim().strip_prefix('[').and_then(|rest| rest.split_once(']')).map(|(inner, _)| inner.to_owned())
    };
    let mut info = DynamicInfo::default();
    for line in text.lines() {
        if let Some((_, rest)) = line.split_once("(NEEDED)") {
            if let Some(name) = rest.split_once("Shared library:").and_then(|(_, name)| bracketed(name)) {
                info.needed.push(name);
            }
        } else if let Some((_, rest)) = line.split_once("[Requesting program interpreter:") {
            info.interpreter = rest.split_once(']').map(|(path, _)| path.trim().to_owned());
        }
    }
    info
}

/// Every library `roots` need, directly or through each other, resolved in
/// `lib_dir`: (name, file). `read` gives a file's [`DynamicInfo`].
fn library_closure(
    roots: &[String],
    lib_dir: &Path,
    read: &mut dyn FnMut(&Path) -> anyhow::Result<DynamicInfo>,
) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let mut found = BTreeMap::new();
    let mut queue: VecDeque<String> = roots.iter().cloned().collect();
    while let Some(name) = queue.pop_front() {
        if found.contains_key(&name) {
            continue;
        }
        if name.contains('/') {
            bail!("DT_NEEDED entry {name:?} is a path, not a library name");
        }
        let file = lib_dir.join(&name);
        if !file.exists() {
            bail!("{name} is needed but not in {} (the cross libc: libc6-dev-arm64-cross)", lib_dir.display());
        }
        queue.extend(read(&file)?.needed);
        found.insert(name, file);
    }
    Ok(found)
}

fn readelf(arch: Arch, file: &Path) -> anyhow::Result<DynamicInfo> {
    let tool = binutil(arch, "readelf");
    let text = output(Command::new(&tool).args(["-W", "-l", "-d"]).arg(file))
        .with_context(|| format!("`{tool} -W -l -d {}` failed (run `cargo xtask setup`)", file.display()))?;
    Ok(parse_readelf(&text))
}

/// The shared libraries a foreign (`arch`) executable needs in the guest, as
/// (file here, path in the guest): its `DT_NEEDED` libraries and theirs from
/// the cross sysroot (/usr/aarch64-linux-gnu/lib), placed in the guest's
/// multiarch directory (/lib/aarch64-linux-gnu, where Debian's dynamic linker
/// looks), and the dynamic linker itself at the path the executable names.
pub fn guest_libraries(arch: Arch, executable: &Path) -> anyhow::Result<BTreeSet<(PathBuf, String)>> {
    let gnu = gnu_triplet(arch);
    let lib_dir = PathBuf::from(format!("/usr/{gnu}/lib"));
    let info = readelf(arch, executable)?;
    let mut libraries: BTreeSet<(PathBuf, String)> =
        library_closure(&info.needed, &lib_dir, &mut |file| readelf(arch, file))
            .with_context(|| format!("resolving the shared libraries of {}", executable.display()))?
            .into_iter()
            .map(|(name, file)| (file, format!("/lib/{gnu}/{name}")))
            .collect();
    if let Some(interpreter) = info.interpreter {
        let name = Path::new(&interpreter).file_name().context("program interpreter without a file name")?;
        let file = lib_dir.join(name);
        if !file.exists() {
            bail!("{} names the interpreter {interpreter}, not in {}", executable.display(), lib_dir.display());
        }
        libraries.insert((file, interpreter));
    }
    Ok(libraries)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// `aarch64-linux-gnu-readelf -W -l -d` of a cross-built rtid-probe, abridged.
    const READELF: &str = "
Elf file type is DYN (Position-Independent Executable file)
Entry point 0x1a340
There are 10 program headers, starting at offset 64

Program Headers:
  Type           Offset   VirtAddr           PhysAddr           FileSiz  MemSiz   Flg Align
  PHDR           0x000040 0x0000000000000040 0x0000000000000040 0x000230 0x000230 R   0x8
  INTERP         0x000270 0x0000000000000270 0x0000000000000270 0x00001b 0x00001b R   0x1
      [Requesting program interpreter: /lib/ld-linux-aarch64.so.1]
  LOAD           0x000000 0x0000000000000000 0x0000000000000000 0x019f14 0x019f14 R   0x10000

Dynamic section at offset 0x3c5f28 contains 31 entries:
  Tag        Type                         Name/Value
 0x0000000000000001 (NEEDED)             Shared library: [libgcc_s.so.1]
 0x0000000000000001 (NEEDED)             Shared library: [libc.so.6]
 0x0000000000000001 (NEEDED)             Shared library: [ld-linux-aarch64.so.1]
 0x000000000000000c (INIT)               0x19d60
 0x000000000000001d (RUNPATH)            Library runpath: [$ORIGIN]
";

    #[test]
    fn needed_libraries_and_the_interpreter_are_read_from_readelf() {
        assert_eq!(
            parse_readelf(READELF),
            DynamicInfo {
                needed: vec!["libgcc_s.so.1".into(), "libc.so.6".into(), "ld-linux-aarch64.so.1".into()],
                interpreter: Some("/lib/ld-linux-aarch64.so.1".into()),
            }
        );
        // A static executable or a library without an interpreter.
        let library = " 0x0000000000000001 (NEEDED)             Shared library: [ld-linux-aarch64.so.1]\n 0x000000000000000e (SONAME)             Library soname: [libc.so.6]\n";
        assert_eq!(
            parse_readelf(library),
            DynamicInfo { needed: vec!["ld-linux-aarch64.so.1".into()], interpreter: None }
        );
        assert_eq!(parse_readelf("There is no dynamic section in this file.\n"), DynamicInfo::default());
    }

    #[test]
    fn libraries_are_resolved_transitively_once_each() {
        let lib_dir = std::env::temp_dir().join(format!("rtid-xtask-closure-{}", std::process::id()));
        fs::create_dir_all(&lib_dir).unwrap();
        let graph: HashMap<&str, &[&str]> = HashMap::from([
            ("libgcc_s.so.1", &["libc.so.6"][..]),
            ("libc.so.6", &["ld-linux-aarch64.so.1"][..]),
            ("ld-linux-aarch64.so.1", &[][..]),
        ]);
        for name in graph.keys() {
            fs::write(lib_dir.join(name), b"").unwrap();
        }
        let mut reads = Vec::new();
        let mut read = |file: &Path| {
            let name = file.file_name().unwrap().to_str().unwrap().to_owned();
            reads.push(name.clone());
            Ok(DynamicInfo { needed: graph[name.as_str()].iter().map(|&n| n.to_owned()).collect(), interpreter: None })
        };
        let roots = ["libgcc_s.so.1".to_owned(), "libc.so.6".to_owned()];
        let closure = library_closure(&roots, &lib_dir, &mut read).unwrap();
        assert_eq!(
            closure.keys().map(String::as_str).collect::<Vec<_>>(),
            ["ld-linux-aarch64.so.1", "libc.so.6", "libgcc_s.so.1"]
        );
        assert_eq!(closure["libc.so.6"], lib_dir.join("libc.so.6"));
        let missing = library_closure(&["libssl.so.3".to_owned()], &lib_dir, &mut read).unwrap_err();
        assert!(format!("{missing:#}").contains("libssl.so.3 is needed but not in"), "{missing:#}");
        reads.sort();
        assert_eq!(reads, ["ld-linux-aarch64.so.1", "libc.so.6", "libgcc_s.so.1"], "each library read once");
        let _ = fs::remove_dir_all(&lib_dir);
    }

    #[test]
    fn the_linker_is_set_for_the_cross_target_only() {
        assert_eq!(env_triple("aarch64-unknown-linux-gnu"), "AARCH64_UNKNOWN_LINUX_GNU");
        let command = cargo(Arch::Arm64, "build");
        let args: Vec<_> = command.get_args().map(|arg| arg.to_str().unwrap()).collect();
        assert_eq!(args, ["build", "--target", "aarch64-unknown-linux-gnu"]);
        let envs: HashMap<_, _> =
            command.get_envs().map(|(key, value)| (key.to_str().unwrap(), value.and_then(|v| v.to_str()))).collect();
        assert_eq!(envs["CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER"], Some("aarch64-linux-gnu-gcc"));
        assert_eq!(envs["CC_aarch64_unknown_linux_gnu"], Some("aarch64-linux-gnu-gcc"));
        assert!(!envs.keys().any(|key| key.starts_with("CARGO_BUILD_")), "nothing that would reach nested builds");
        // This host (x86_64) builds its own architecture without --target.
        if Arch::host() == Some(Arch::X86_64) {
            let host = cargo(Arch::X86_64, "build");
            assert_eq!(host.get_args().count(), 1);
            assert!(!host.get_envs().any(|(key, _)| key.to_str().unwrap().contains("LINKER")));
        }
    }

    #[test]
    fn elf_headers_name_their_machine() {
        let mut header = [0u8; 20];
        header[..6].copy_from_slice(b"\x7fELF\x02\x01");
        header[18..20].copy_from_slice(&183u16.to_le_bytes());
        assert_eq!(elf_machine(&header), Some(elf_machine_of(Arch::Arm64)));
        assert_eq!(elf_machine(&header[..19]), None);
        assert_eq!(elf_machine(b"#!/bin/sh\n0123456789"), None);
    }
}
