use which::which;

/// Building this crate for the bpfel target needs bpf-linker: say so plainly
/// instead of letting rustc fail with a linker error.
fn main() {
    let bpf_linker = which("bpf-linker")
        .expect("bpf-linker not found on PATH: run `cargo xtask setup` (it builds bpf-linker against llvm-22)");
    println!("cargo:rerun-if-changed={}", bpf_linker.to_str().unwrap_or_default());
}
