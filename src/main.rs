//! The `cudaimg` binary: the command line and nothing below it. Arguments become settings,
//! settings become one session, and each command runs on the libraries under `crates/`;
//! this is the only layer that prints, draws bars, or maps errors to exit codes.

// Output goes through `cli::emit` (stdout) and `note!` (stderr), which handle a closed pipe;
// the print macros would panic there.
#![warn(clippy::print_stdout, clippy::print_stderr)]

mod cli;
mod error;

fn main() -> std::process::ExitCode {
    cli::main()
}
