//! The `lodge` binary: see `lodge --help`.

fn main() -> std::process::ExitCode {
    lodge_host::cli::main()
}
