//! The `flint` binary: see `flint --help`; the command line lives in the `flint_cli`
//! library beside it.

fn main() -> std::process::ExitCode {
    flint_cli::main()
}
