//! The KubeSolo OS init's last stage (`fragments/kubesolo-init/stages/90-kubesolo.sh`), run
//! unchanged by the host's static busybox in a private mount namespace where a stand-in is
//! `/usr/local/bin/kubesolo`: it announces the boot only for a program this machine can
//! run, and otherwise fails the stage (the init's emergency path) instead of letting PID 1
//! die on the exec; a KubeSolo that exits makes it reboot. No kernel, no QEMU.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use crate::common::{run, scratch, tiny_elf, EM_AARCH64, EM_X86_64};

const BUSYBOX: &str = "/bin/busybox";

/// Whether the stage can be run here: busybox, and an unprivileged mount namespace to put
/// the stand-in at `/usr/local/bin/kubesolo`. In CI (`KSBUILD_REQUIRE_SANDBOX`) both must be.
fn skip() -> bool {
    let why = if !Path::new(BUSYBOX).exists() {
        format!("{BUSYBOX} (Debian busybox-static) is missing")
    } else {
        let probe = Command::new("unshare").args(["-r", "-m", "true"]).output();
        match probe {
            Ok(o) if o.status.success() => return false,
            Ok(o) => format!(
                "`unshare -r -m` fails here (no user namespaces?): {}",
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            Err(e) => format!("cannot run unshare (util-linux): {e}"),
        }
    };
    if std::env::var_os("KSBUILD_REQUIRE_SANDBOX").is_some() {
        panic!("{why} (KSBUILD_REQUIRE_SANDBOX is set)");
    }
    eprintln!("SKIP: {why}");
    true
}

/// Runs the stage with `usr_local` mounted at `/usr/local`; the console lines go to stdout.
fn run_stage(usr_local: &Path) -> Output {
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("fragments/kubesolo-init");
    let script = r#"
mount --bind "$1" /usr/local || exit 99
. "$2/lib/functions.sh"
ks_log() { echo "kubesolo-os: [$STAGE] $*"; }
STAGE=90-kubesolo KS_SHELL=0 KS_SLOT=A KS_DATA_DEV=/dev/vda4 KS_REBOOT="echo reboot requested"
. "$2/stages/90-kubesolo.sh"
echo "stage returned $?"
"#;
    run(Command::new("unshare")
        .args(["-r", "-m", BUSYBOX, "sh", "-c", script, "sh"])
        .arg(usr_local)
        .arg(init))
}

#[test]
fn the_init_announces_the_boot_only_for_a_kubesolo_this_machine_can_run() {
    if skip() {
        return;
    }
    let host = std::env::consts::ARCH;
    let (native, foreign, foreign_name) = match host {
        "x86_64" => (EM_X86_64, EM_AARCH64, "aarch64"),
        "aarch64" => (EM_AARCH64, EM_X86_64, "x86_64"),
        other => {
            eprintln!("SKIP: no stand-in ELF for {other}");
            return;
        }
    };
    let kubesolo = "/usr/local/bin/kubesolo";
    let elf = |machine| Some(tiny_elf(machine));
    let script = |text: &str| Some(text.as_bytes().to_vec());
    let fails = |reason: &str| Some(format!("{kubesolo} {reason}"));
    // (case, contents, mode, the reason the stage must give; None: it boots)
    #[rustfmt::skip]
    let cases = [
        ("native ELF", elf(native), 0o755, None),
        ("foreign ELF", elf(foreign), 0o755,
         fails(&format!("is an ELF for {foreign_name}, but this machine is {host}"))),
        ("script", script("#!/bin/sh\nexit 42\n"), 0o755, None),
        ("script without its interpreter", script("#!/no/such/sh -e\nexit 42\n"), 0o755,
         fails("is a script for the interpreter /no/such/sh, which is not an executable file")),
        ("not executable", elf(native), 0o644, fails("is not an executable file")),
        ("missing", None, 0o755, fails("is missing")),
        ("neither", script("MZ not for this kernel"), 0o755,
         fails("is neither an ELF executable nor a script")),
    ];
    for (case, contents, mode, failure) in cases {
        let tmp = scratch();
        let bin = tmp.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        if let Some(bytes) = contents {
            let file = bin.join("kubesolo");
            fs::write(&file, bytes).unwrap();
            fs::set_permissions(&file, fs::Permissions::from_mode(mode)).unwrap();
        }
        let out = run_stage(tmp.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let all = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
        assert_ne!(out.status.code(), Some(99), "{case}: cannot mount: {all}");
        match failure {
            None => {
                // The stage announced the boot and ran the program; when it exited, the
                // stage said so and rebooted.
                assert!(
                    stdout.contains("kubesolo-os: [90-kubesolo] KUBESOLO-OS BOOT OK arch="),
                    "{case}: {all}"
                );
                assert!(
                    stdout.contains("kubesolo-os: [90-kubesolo] KubeSolo exited with status ")
                        && stdout.contains("reboot requested\n"),
                    "{case}: {all}"
                );
                if case == "script" {
                    assert!(stdout.contains("exited with status 42;"), "{case}: {all}");
                }
            }
            Some(reason) => {
                assert!(
                    stdout.contains(&format!(
                        "kubesolo-os: [90-kubesolo] KUBESOLO-OS BOOT FAILED: {reason}\n"
                    )),
                    "{case}: {all}"
                );
                assert!(!stdout.contains("BOOT OK"), "{case}: {all}");
                // The stage returned (the init then runs its emergency path); nothing was exec'd.
                assert!(stdout.ends_with("stage returned 1\n"), "{case}: {all}");
                assert_eq!(out.status.code(), Some(0), "{case}: {all}");
            }
        }
    }
}
