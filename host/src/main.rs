//! The `lodge` binary: see `lodge --help`.

// mimalloc rather than glibc's malloc: fewer instructions per request on the
// hot path, and no more memory once its transparent huge pages are off
// (`no_thp`; measured in docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    lodge_host::cli::main()
}
