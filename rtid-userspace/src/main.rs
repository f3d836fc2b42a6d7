//! The `rtid` binary: daemon and CLI (see `rtid --help`).

fn main() -> std::process::ExitCode {
    rtid_userspace::cli::main()
}
