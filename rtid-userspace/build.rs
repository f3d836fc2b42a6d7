//! Builds the eBPF object (rtid-ebpf) with the pinned nightly and bpf-linker,
//! so a plain `cargo build` yields a `rtid` binary with its kernel programs embedded.

/// Pinned nightly whose LLVM matches the bpf-linker built on llvm-22 (see xtask setup).
const EBPF_TOOLCHAIN: &str = "nightly-2026-06-20";

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let ebpf_dir = format!("{manifest_dir}/../rtid-ebpf");
    println!("cargo:rerun-if-changed={manifest_dir}/../rtid-common/src");
    let ebpf = aya_build::Package { name: "rtid-ebpf", root_dir: &ebpf_dir, ..Default::default() };
    aya_build::build_ebpf([ebpf], aya_build::Toolchain::Custom(EBPF_TOOLCHAIN))
}
