//! The `vecbuild` command: parse, run, print the error chain, exit with 0 (success), 2 (bad
//! input or usage) or 1 (any other failure).

mod cli;

use clap::Parser;

/// Batches of vectors and Parquet pages are allocated and freed by the thousand: mimalloc keeps
/// freed memory for reuse where the system allocator returns it to the kernel and then pays a
/// page fault per page on the next batch.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            let user_error = err.chain().any(|e| {
                e.downcast_ref::<vecbuild::Error>()
                    .is_some_and(|e| e.is_user_error())
            });
            ExitCode::from(if user_error { 2 } else { 1 })
        }
    }
}
