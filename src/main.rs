//! The `tessera` binary: parse the command line, dispatch.

/// mimalloc rather than glibc's malloc: per request, the token endpoint's allocations cost
/// glibc about half as much again as the signature itself (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tessera::cli::main()
}
