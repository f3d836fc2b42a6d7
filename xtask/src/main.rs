//! `cargo xtask`: rtid's developer tasks.
//!
//! - `setup`: install toolchains and packages the build and tests need (idempotent).
//! - `build`: build the `rtid` binary with its embedded eBPF object.
//! - `test`: unit and integration tests on this host, then the BPF LSM suite in a VM.
//! - `vm-test`: only the BPF LSM suite, inside qemu running Debian's kernel.
//! - `bench`: the cost of rtid on opens, connects and fork+exec.

mod bench;
mod command;
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
    /// Install what the build and tests need (rustup toolchains, LLVM 22, bpf-linker, qemu, a VM kernel).
    Setup,
    /// Build the rtid binary (with the eBPF object embedded).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Run every test: host (fallback backend) and VM (BPF LSM backend).
    Test {
        /// Extra arguments for the host test run (test name filters).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Run the BPF LSM test suite inside a VM booting Debian's kernel.
    VmTest {
        /// Test name filter passed to the suite inside the VM.
        filter: Option<String>,
    },
    /// Measure rtid's overhead (a benchmark, not a test).
    Bench {
        /// Iterations per measurement.
        #[arg(long, default_value_t = 20000)]
        iterations: u32,
        /// Also run the table inside the VM (emulated: compare ratios, not times).
        #[arg(long)]
        vm: bool,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Build { release } => command::build_rtid(release),
        Task::Test { args } => test::run(&args),
        Task::VmTest { filter } => vm::run(filter.as_deref()),
        Task::Bench { iterations, vm } => bench::run(iterations, vm),
    }
}
