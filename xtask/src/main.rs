//! `cargo xtask`: rtid's developer tasks.
//!
//! - `setup`: install the toolchains, packages and tools the build and tests need (idempotent).
//! - `build`: build the `rtid` binary with its embedded eBPF object (`--arch arm64`: cross build).
//! - `test`: unit and integration tests on this host, then the BPF LSM suite in a VM.
//! - `vm-test`: only the VM suites, inside qemu running Debian's kernels.
//! - `bench`: rtid's cost on opens, connects and fork+exec.

mod bench;
mod command;
mod cross;
mod kernels;
mod setup;
mod test;
mod vm;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "rtid developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what the build and tests need (rustup toolchains, LLVM 22, bpf-linker, qemu, a VM kernel, mounts).
    Setup,
    /// Build the rtid binary (with the eBPF object embedded).
    Build {
        #[arg(long)]
        release: bool,
        /// Build for this architecture (default: the host's); arm64 cross-builds with Debian's cross gcc.
        #[arg(long, value_enum)]
        arch: Option<kernels::Arch>,
    },
    /// Run every test, as root: host (unit + integration) and VM (BPF LSM backend).
    Test {
        /// Passed to the test harnesses: test name filters, libtest flags (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run only the VM suites: BPF LSM on each Debian kernel, the fallback with BPF LSM off.
    VmTest {
        /// Only this kernel (a version from the list: 6.1, 6.12, for either architecture).
        #[arg(long)]
        kernel: Option<String>,
        /// Only kernels of this architecture (default: amd64); arm64 boots in qemu-system-aarch64.
        #[arg(long, value_enum)]
        arch: Option<kernels::Arch>,
        /// Only this suite (on every kernel, or on --kernel).
        #[arg(long, value_enum)]
        suite: Option<vm::Suite>,
        /// Passed to the suite inside the VM: test name filters, libtest flags.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure rtid's overhead (a benchmark, not a test), as root.
    Bench {
        /// Also run the benchmark inside the VM (emulated: compare ratios, not times).
        #[arg(long)]
        vm: bool,
        /// Passed to rtid-bench (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
}

fn main() {
    // Print the error chain, not a Debug dump with a backtrace (RUST_BACKTRACE
    // is often set here): a failed task should say what failed in one line.
    if let Err(error) = run(Cli::parse().task) {
        eprintln!("xtask: error: {error:#}");
        std::process::exit(1);
    }
}

fn run(task: Task) -> anyhow::Result<()> {
    match task {
        Task::Setup => setup::run(),
        Task::Build { release, arch } => match arch.filter(|&arch| cross::is_cross(arch)) {
            Some(arch) => cross::build_rtid(arch, release).map(|binary| println!("built {}", binary.display())),
            None => command::build_rtid(release),
        },
        Task::Test { args } => test::run(&args),
        Task::VmTest { kernel, arch, suite, args } => {
            vm::run(&vm::select_passes(kernel.as_deref(), arch, suite)?, &args).map(drop)
        }
        Task::Bench { vm, args } => bench::run(&args, vm),
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::{Cli, Task};
    use crate::kernels::Arch;

    fn parse(args: &[&str]) -> Task {
        Cli::try_parse_from(std::iter::once("xtask").chain(args.iter().copied())).unwrap().task
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn test_passes_filters_and_libtest_flags_through() {
        let Task::Test { args } = parse(&["test", "--", "--exact", "files::deny"]) else { panic!() };
        assert_eq!(args, ["--exact", "files::deny"]);
        let Task::Test { args } = parse(&["test", "network"]) else { panic!() };
        assert_eq!(args, ["network"]);
    }

    #[test]
    fn build_and_vm_test_take_an_architecture() {
        let Task::Build { arch, release } = parse(&["build", "--arch", "arm64"]) else { panic!() };
        assert_eq!((arch, release), (Some(Arch::Arm64), false));
        let Task::Build { arch, .. } = parse(&["build"]) else { panic!() };
        assert_eq!(arch, None);
        let Task::VmTest { arch, kernel, .. } = parse(&["vm-test", "--arch", "aarch64", "--kernel", "6.1"]) else {
            panic!()
        };
        assert_eq!((arch, kernel.as_deref()), (Some(Arch::Arm64), Some("6.1")));
    }

    #[test]
    fn bench_takes_its_own_flag_and_passes_the_rest_through() {
        let Task::Bench { vm, args } = parse(&["bench", "--vm", "--", "--iterations", "10"]) else { panic!() };
        assert!(vm);
        assert_eq!(args, ["--iterations", "10"]);
    }
}
