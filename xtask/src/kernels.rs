//! The kernels the VM suites boot: Debian's own builds, fetched as packages
//! with a private apt state (the host's apt lists, /boot and installed
//! packages stay as they are) and unpacked into a cache directory.
//!
//! Fleets run several kernels at once, so rtid is proven on each of them: the
//! distribution's release kernel (6.1 on Debian 12) and the LTS kernel its
//! backports carry (6.12), both with BPF LSM in their default LSM list; and
//! the release kernel for arm64, whose guests also get Debian's arm64
//! busybox-static from the same private apt (see [`ensure_busybox`]).

use std::{fs, path::PathBuf, process::Command};

use anyhow::Context;

use crate::command::{checked, output};

/// A CPU architecture rtid is built for and the VM can emulate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Arch {
    #[value(name = "amd64", alias = "x86_64")]
    X86_64,
    #[value(name = "arm64", alias = "aarch64")]
    Arm64,
}

impl Arch {
    /// The architecture this xtask runs on, if it is one of these.
    pub fn host() -> Option<Arch> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Arch::X86_64),
            "aarch64" => Some(Arch::Arm64),
            _ => None,
        }
    }

    /// Debian's name for it (package suffixes, apt architecture).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The Rust target triple of a Linux glibc build for it.
    pub fn rust_target(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-unknown-linux-gnu",
            Arch::Arm64 => "aarch64-unknown-linux-gnu",
        }
    }

    /// The qemu system emulator for it.
    pub fn qemu(self) -> &'static str {
        match self {
            Arch::X86_64 => "qemu-system-x86_64",
            Arch::Arm64 => "qemu-system-aarch64",
        }
    }

    /// qemu's machine and CPU arguments: the default PC for x86_64; for arm64
    /// the generic `virt` board with every CPU feature TCG emulates. Debian's
    /// arm64 kernel signs return addresses (pointer authentication) in every
    /// function, and TCG's QARMA5 makes that slow: `pauth-impdef` keeps
    /// pointer authentication with qemu's own cheaper algorithm (the daemon
    /// started in 89 s with plain `max`, 32 s with it).
    pub fn qemu_machine(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &["-accel", "tcg"],
            Arch::Arm64 => &["-M", "virt", "-cpu", "max,pauth-impdef=on", "-accel", "tcg"],
        }
    }

    /// The serial console the kernel writes to (qemu's stdout with -nographic).
    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }
}

/// Where a kernel package comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Suite {
    /// The distribution's own suites (release, updates, security).
    Release,
    /// `<codename>-backports`.
    Backports,
}

/// One kernel the VM suites boot.
#[derive(Clone, Copy, Debug)]
pub struct VmKernel {
    /// Its major.minor version, the name reports use (`vm 6.12 lsm: ...`).
    pub version: &'static str,
    pub arch: Arch,
    suite: Suite,
    /// Whether BPF LSM programs attach. Every kernel here lists `bpf` in its
    /// default LSMs, but an LSM program attaches through a BPF trampoline on
    /// the kernel's `bpf_lsm_*` function, which needs ftrace direct calls
    /// (CONFIG_DYNAMIC_FTRACE_WITH_DIRECT_CALLS): arm64 has them from Linux
    /// 6.4, so on Debian's arm64 6.1 LSM programs load and then fail to attach.
    pub bpf_lsm: bool,
}

/// Every kernel `cargo xtask vm-test` boots, oldest first per architecture.
pub const VM_KERNELS: [VmKernel; 4] = [
    VmKernel { version: "6.1", arch: Arch::X86_64, suite: Suite::Release, bpf_lsm: true },
    VmKernel { version: "6.12", arch: Arch::X86_64, suite: Suite::Backports, bpf_lsm: true },
    // Debian 12's arm64 kernels (linux-image-arm64), booted on qemu's `virt` board.
    VmKernel { version: "6.1", arch: Arch::Arm64, suite: Suite::Release, bpf_lsm: false },
    VmKernel { version: "6.12", arch: Arch::Arm64, suite: Suite::Backports, bpf_lsm: true },
];

impl VmKernel {
    /// How reports name it: the version, followed by the architecture unless it is x86_64 (`6.1 arm64`).
    pub fn name(&self) -> String {
        match self.arch {
            Arch::X86_64 => self.version.to_owned(),
            Arch::Arm64 => format!("{} {}", self.version, self.arch.debian()),
        }
    }

    /// Where this kernel's package is unpacked.
    fn dir(&self) -> PathBuf {
        cache_dir().join(format!("linux-{}-{}", self.version, self.arch.debian()))
    }

    /// The unpacked kernel image, if it is there.
    pub fn image(&self) -> anyhow::Result<PathBuf> {
        let boot = self.dir().join("boot");
        let prefix = format!("vmlinuz-{}.", self.version);
        let found = fs::read_dir(&boot).ok().and_then(|entries| {
            entries.filter_map(Result::ok).map(|entry| entry.path()).find(|path| {
                path.file_name().and_then(|name| name.to_str()).is_some_and(|name| name.starts_with(&prefix))
            })
        });
        found.with_context(|| {
            format!(
                "no Linux {} kernel in {}: run `cargo xtask setup` (it fetches the VM kernels)",
                self.name(),
                boot.display()
            )
        })
    }

    /// Fetches and unpacks the kernel unless it is already there.
    /// Returns whether it had to be fetched.
    pub fn ensure(&self) -> anyhow::Result<bool> {
        if self.image().is_ok() {
            return Ok(false);
        }
        let apt = PrivateApt::new(self.arch)?;
        apt.update()?;
        let release = match self.suite {
            Suite::Release => None,
            Suite::Backports => Some(format!("{}-backports", apt.codename)),
        };
        // The metapackage (linux-image-amd64) names the versioned image package it pulls in.
        let metapackage = format!("linux-image-{}", self.arch.debian());
        let meta_deb = apt.download(&metapackage, release.as_deref())?;
        let depends = output(Command::new("dpkg-deb").arg("-f").arg(&meta_deb).arg("Depends"))
            .with_context(|| format!("reading the dependencies of {}", meta_deb.display()))?;
        let image = image_package(&depends)
            .with_context(|| format!("{metapackage} depends on no linux-image package: {depends}"))?;
        let image_deb = apt.download(&image, release.as_deref())?;
        let dir = self.dir();
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir)?;
        checked(Command::new("dpkg-deb").arg("-x").arg(&image_deb).arg(&dir))?;
        // Only the image is needed: the initramfs has no modules.
        let _ = fs::remove_dir_all(dir.join("lib"));
        let _ = fs::remove_dir_all(dir.join("usr"));
        let _ = fs::remove_file(&meta_deb);
        let _ = fs::remove_file(&image_deb);
        self.image().with_context(|| format!("{image} holds no Linux {} kernel", self.version))?;
        Ok(true)
    }
}

/// The cache of VM kernels: `RTID_VM_CACHE`, else /var/cache/rtid-vm.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("RTID_VM_CACHE").map_or_else(|| PathBuf::from("/var/cache/rtid-vm"), PathBuf::from)
}

/// A static busybox for a guest of `arch`, if it is there: the host's own
/// (busybox-static, installed by setup) for the host's architecture, else
/// Debian's busybox-static for `arch` unpacked into the cache.
pub fn busybox(arch: Arch) -> anyhow::Result<PathBuf> {
    let path = if Arch::host() == Some(arch) {
        PathBuf::from("/bin/busybox")
    } else {
        cache_dir().join(format!("busybox-{}", arch.debian())).join("bin/busybox")
    };
    anyhow::ensure!(
        path.exists(),
        "no busybox for {} guests at {}: run `cargo xtask setup`",
        arch.debian(),
        path.display()
    );
    Ok(path)
}

/// Fetches Debian's busybox-static for a foreign `arch` with the private apt
/// and unpacks it into the cache (it is never installed on the host), unless
/// it is already there. Returns whether it had to be fetched.
pub fn ensure_busybox(arch: Arch) -> anyhow::Result<bool> {
    if busybox(arch).is_ok() {
        return Ok(false);
    }
    anyhow::ensure!(Arch::host() != Some(arch), "no /bin/busybox: apt-get install busybox-static");
    let apt = PrivateApt::new(arch)?;
    apt.update()?;
    let deb = apt.download("busybox-static", None)?;
    let dir = cache_dir().join(format!("busybox-{}", arch.debian()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    checked(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&dir))?;
    let _ = fs::remove_file(&deb);
    busybox(arch)?;
    Ok(true)
}

/// The versioned image package in a metapackage's `Depends`
/// (`linux-image-6.12.95+deb12-amd64 (= 6.12.95-1~bpo12+1)`).
fn image_package(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|alternative| alternative.split_whitespace().next().unwrap_or(""))
        .find(|name| name.starts_with("linux-image-"))
        .map(str::to_owned)
}

/// apt with its own lists and download cache under [`cache_dir`], reading the
/// host's sources plus the backports suite of the host's release.
struct PrivateApt {
    dir: PathBuf,
    codename: String,
    arch: Arch,
}

impl PrivateApt {
    fn new(arch: Arch) -> anyhow::Result<PrivateApt> {
        let codename = os_release_codename()?;
        let dir = cache_dir().join(format!("apt-{}", arch.debian()));
        for sub in ["lists/partial", "archives/partial"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        let sources = host_sources();
        let (uri, signed_by) = sources
            .iter()
            .find(|source| source.suites.contains(&codename))
            .map(|source| (source.uri.clone(), source.signed_by.clone()))
            .with_context(|| format!("no apt source for {codename} in /etc/apt: cannot fetch the VM kernels"))?;
        let mut list = String::new();
        for source in &sources {
            list.push_str(&source.line(&source.uri));
        }
        let backports = AptSource { uri, suites: vec![format!("{codename}-backports")], signed_by };
        list.push_str(&backports.line(&backports.uri));
        fs::write(dir.join("sources.list"), list)?;
        Ok(PrivateApt { dir, codename, arch })
    }

    fn options(&self) -> Vec<String> {
        let dir = self.dir.display();
        vec![
            format!("-oDir::Etc::SourceList={dir}/sources.list"),
            "-oDir::Etc::SourceParts=/nonexistent".into(),
            format!("-oDir::State::Lists={dir}/lists"),
            format!("-oDir::Cache={dir}"),
            format!("-oDir::Cache::Archives={dir}/archives"),
            format!("-oAPT::Architecture={}", self.arch.debian()),
            format!("-oAPT::Architectures={}", self.arch.debian()),
            // Downloads land in root-owned cache directories.
            "-oAPT::Sandbox::User=root".into(),
            "-q".into(),
        ]
    }

    fn update(&self) -> anyhow::Result<()> {
        checked(Command::new("apt-get").args(self.options()).arg("update"))
    }

    /// Downloads `package` (from `release` if given) into the private cache.
    fn download(&self, package: &str, release: Option<&str>) -> anyhow::Result<PathBuf> {
        let archives = self.dir.join("archives");
        let spec = match release {
            Some(release) => format!("{package}/{release}"),
            None => package.to_owned(),
        };
        checked(Command::new("apt-get").args(self.options()).arg("download").arg(&spec).current_dir(&archives))?;
        let prefix = format!("{package}_");
        fs::read_dir(&archives)?
            .filter_map(Result::ok)
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name().and_then(|name| name.to_str()).is_some_and(|name| {
                    name.starts_with(&prefix) && name.ends_with(&format!("_{}.deb", self.arch.debian()))
                })
            })
            .with_context(|| format!("apt-get download {spec} left no .deb in {}", archives.display()))
    }
}

/// One `deb` source of the host's apt configuration.
#[derive(Debug, PartialEq, Eq)]
struct AptSource {
    uri: String,
    suites: Vec<String>,
    signed_by: Option<String>,
}

impl AptSource {
    /// A one-line sources.list entry for the `main` component.
    fn line(&self, uri: &str) -> String {
        let options = self.signed_by.as_ref().map_or(String::new(), |keyring| format!("[signed-by={keyring}] "));
        self.suites.iter().map(|suite| format!("deb {options}{uri} {suite} main\n")).collect()
    }
}

fn os_release_codename() -> anyhow::Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|line| line.strip_prefix("VERSION_CODENAME="))
        .map(|codename| codename.trim_matches('"').to_owned())
        .filter(|codename| !codename.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME: the VM kernels come from a Debian release")
}

/// The host's binary (`deb`) sources, from sources.list and sources.list.d
/// in both the one-line and the deb822 format.
fn host_sources() -> Vec<AptSource> {
    let mut sources = Vec::new();
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut parts: Vec<PathBuf> = entries.filter_map(Result::ok).map(|entry| entry.path()).collect();
        parts.sort();
        files.extend(parts);
    }
    for file in files {
        let Ok(text) = fs::read_to_string(&file) else { continue };
        match file.extension().and_then(|extension| extension.to_str()) {
            Some("sources") => sources.extend(parse_deb822(&text)),
            _ if file.extension().is_none_or(|extension| extension == "list") => sources.extend(parse_one_line(&text)),
            _ => {}
        }
    }
    sources
}

fn parse_one_line(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for line in text.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("deb ") else { continue };
        let mut signed_by = None;
        let rest = match rest.trim_start().strip_prefix('[') {
            Some(options) => {
                let (options, after) = options.split_once(']').unwrap_or((options, ""));
                signed_by =
                    options.split_whitespace().find_map(|option| option.strip_prefix("signed-by=")).map(str::to_owned);
                after
            }
            None => rest,
        };
        let mut words = rest.split_whitespace();
        if let (Some(uri), Some(suite)) = (words.next(), words.next()) {
            sources.push(AptSource { uri: uri.to_owned(), suites: vec![suite.to_owned()], signed_by });
        }
    }
    sources
}

fn parse_deb822(text: &str) -> Vec<AptSource> {
    let mut sources = Vec::new();
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim().eq_ignore_ascii_case(name).then(|| value.trim().to_owned())
            })
        };
        let enabled = field("Enabled").is_none_or(|value| value != "no");
        let binary = field("Types").is_some_and(|types| types.split_whitespace().any(|kind| kind == "deb"));
        let (Some(uris), Some(suites)) = (field("URIs"), field("Suites")) else { continue };
        if !enabled || !binary {
            continue;
        }
        for uri in uris.split_whitespace() {
            sources.push(AptSource {
                uri: uri.to_owned(),
                suites: suites.split_whitespace().map(str::to_owned).collect(),
                signed_by: field("Signed-By"),
            });
        }
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_package_is_read_from_the_metapackage() {
        assert_eq!(
            image_package("linux-image-6.12.95+deb12-amd64 (= 6.12.95-1~bpo12+1)").as_deref(),
            Some("linux-image-6.12.95+deb12-amd64")
        );
        assert_eq!(
            image_package("foo, linux-image-6.1.0-47-amd64 (= 6.1.172-1)").as_deref(),
            Some("linux-image-6.1.0-47-amd64")
        );
        assert_eq!(image_package("libc6 (>= 2.36)"), None);
    }

    #[test]
    fn sources_are_read_in_both_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm\n";
        assert_eq!(
            parse_deb822(deb822),
            vec![AptSource {
                uri: "http://mirror.example/debian".into(),
                suites: vec!["bookworm".into(), "bookworm-updates".into()],
                signed_by: Some("/usr/share/keyrings/debian-archive-keyring.gpg".into()),
            }]
        );
        let one_line = "# comment\ndeb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\ndeb-src http://m.example/debian bookworm main\n";
        let parsed = parse_one_line(one_line);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].signed_by.as_deref(), Some("/k.gpg"));
        assert_eq!(parsed[0].line(&parsed[0].uri), "deb [signed-by=/k.gpg] http://m.example/debian bookworm main\n");
    }
}
