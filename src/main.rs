//! The `flint` binary: see `flint --help`. All logic lives in `flint_driver::cli`.

fn main() -> std::process::ExitCode {
    flint_driver::cli::main()
}
