//! Writes the shared verification vectors: `cargo run --example vectors -- tests/vectors`.
//!
//! The files are `jwks.json` (the published keys) and `vectors.json` (tokens, the time and
//! settings to verify them with, and the expected verdicts). The output is deterministic; the
//! drift test in `tests/api/vectors.rs` fails when the committed files differ from it.

use std::path::PathBuf;
use std::process::ExitCode;

#[path = "vectors/generate.rs"]
mod generate;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), None) = (args.next(), args.next()) else {
        eprintln!("usage: cargo run --example vectors -- <output folder, e.g. tests/vectors>");
        return ExitCode::from(2);
    };
    let dir = PathBuf::from(dir);
    let files = match generate::generate() {
        Ok(files) => files,
        Err(e) => {
            eprintln!("vectors: cannot generate: {e}");
            return ExitCode::FAILURE;
        }
    };
    let write = |name: &str, text: &str| -> std::io::Result<()> {
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(name), text)
    };
    if let Err(e) = write("jwks.json", &files.jwks).and_then(|()| write("vectors.json", &files.vectors)) {
        eprintln!("vectors: cannot write to {}: {e}", dir.display());
        return ExitCode::FAILURE;
    }
    println!("wrote {} and {}", dir.join("jwks.json").display(), dir.join("vectors.json").display());
    ExitCode::SUCCESS
}
