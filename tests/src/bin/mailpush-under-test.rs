//! The `mailpush` command line, linked into the test package so `cargo test` always
//! rebuilds it with the current code before the end-to-end tests spawn it. It is the
//! same entry point as the shipped binary (`mailpush::cli::main`).

fn main() -> std::process::ExitCode {
    mailpush::cli::main()
}
