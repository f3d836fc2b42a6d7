// Empty library target: rtid-userspace lists this crate as a build-dependency
// so cargo rebuilds the eBPF object when it changes (aya-build builds the binary).
#![no_std]
