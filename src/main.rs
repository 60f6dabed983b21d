//! The `sekimori` binary: everything lives in the library; `cli::run` parses arguments,
//! runs the command and turns the outcome into an exit code.

/// jemalloc instead of glibc's malloc: see `Cargo.toml` (memory across policy reloads).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    sekimori::cli::run()
}
