//! The `poac` command line; see `poac --help`.

fn main() -> std::process::ExitCode {
    poac::cli::main()
}
