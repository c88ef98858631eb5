//! The `cudaimg` binary: all work happens in [`cudaimg::cli`].

fn main() -> std::process::ExitCode {
    cudaimg::cli::main()
}
