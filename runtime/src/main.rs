fn main() -> std::process::ExitCode {
    mailpush::cli::main()
}
