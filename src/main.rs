//! The `ksbuild` binary: everything is in the library; see `ksbuild::cli`.

fn main() -> std::process::ExitCode {
    ksbuild::cli::main()
}
