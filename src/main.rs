//! The `sekimori` binary: everything lives in the library; `cli::run` parses arguments,
//! runs the command and turns the outcome into an exit code.

fn main() -> std::process::ExitCode {
    sekimori::cli::run()
}
