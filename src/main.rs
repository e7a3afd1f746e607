//! The `ksbuild` binary: everything is in the library; see `ksbuild::cli`.

fn main() -> std::process::ExitCode {
    // The sandbox re-executes this binary as its init process; that must happen before
    // anything else (clap, threads) runs.
    if std::env::args_os().nth(1).as_deref() == Some(ksbuild::sandbox::INIT_ARG.as_ref()) {
        ksbuild::sandbox::init_main();
    }
    if std::env::args_os().nth(1).as_deref() == Some(ksbuild::sandbox::ZYGOTE_ARG.as_ref()) {
        ksbuild::sandbox::zygote_main();
    }
    if std::env::args_os().nth(1).as_deref() == Some(ksbuild::sandbox::VIEWS_ARG.as_ref()) {
        ksbuild::sandbox::views_main();
    }
    ksbuild::cli::main()
}
