//! The `cudaimg` binary: the command line and nothing below it. Arguments become settings,
//! settings become one session, and each command runs on the libraries under `crates/`;
//! this is the only layer that prints, draws bars, or maps errors to exit codes.

mod cli;
mod error;

fn main() -> std::process::ExitCode {
    cli::main()
}
