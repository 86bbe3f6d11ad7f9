//! The `tessera` binary: parse the command line, dispatch.

/// mimalloc rather than glibc's malloc: measured on the token endpoint, 115 to 136 µs of CPU
/// per token with it against 140 to 155 µs without (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    tessera::cli::main()
}
