//! The `tessera` binary: parse the command line, dispatch.

fn main() -> std::process::ExitCode {
    tessera::cli::main()
}
