//! `kubesolo-update`: the KubeSolo OS A/B update agent. The CLI edge: parses arguments,
//! runs one command of [`commands::Agent`], maps the outcome to the exit code (0 ok, 1
//! refused or failed, 2 usage).
//!
//! Tour: `bundle` (verify and write passes over `ustar`, `manifest`, `keys`), `bootenv` (the
//! boot-environment trait: GRUB over `grubenv`, the Pi over `autoboot`), `slot` (mounting
//! and power-cut-safe file writes; `blockdev` finds partitions, `sys` holds the syscalls),
//! `state` (state, config, keys, versions), `health`, `http`, `json`, `version`, `paths`
//! (the `KUBESOLO_UPDATE_ROOT` test hook).
#![deny(unsafe_code)]

mod autoboot;
mod base64;
mod blockdev;
mod bootenv;
mod bundle;
mod commands;
mod grubenv;
mod health;
mod http;
mod json;
mod keys;
mod manifest;
mod paths;
mod slot;
mod state;
mod sys;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod testutil;
mod ustar;
mod version;

use commands::Agent;
use paths::Paths;

const USAGE: &str = "\
kubesolo-update: KubeSolo OS A/B update agent

usage: kubesolo-update COMMAND [OPTIONS]

commands:
  status [--json]            slots, versions, pending update, boot environment, last result
  apply [--reboot] BUNDLE|URL  verify a signed update bundle and write it to the inactive slot
  healthcheck                check this boot; commit a trial boot or fall back
  rollback                   make the other slot the next boot (or cancel a pending update)
  reboot                     reboot (a pending slot is tried: `0 tryboot` on the Pi)
  help [COMMAND]             this text, or a command's

Exit status: 0 ok, 1 refused or failed, 2 usage. Test hook: KUBESOLO_UPDATE_ROOT=DIR runs
against DIR instead of / (no mounts, no reboots).
";

fn command_help(command: &str) -> Option<&'static str> {
    Some(match command {
        "status" => {
            "\
usage: kubesolo-update status [--json]

Shows the boot environment (grub or rpi), the booted and the next-boot slot, each slot's
version where known, a pending (applied, not committed) update, GRUB's active_slot,
boot_counter and boot_success or the Pi's autoboot.txt partitions and tryboot flag, and the
last result (e.g. `committed B 2`, `failed B 2: rolled back by the boot loader after 3 boots`).
--json prints one JSON object on stdout instead.
"
        }
        "apply" => {
            "\
usage: kubesolo-update apply [--reboot] BUNDLE|URL

Pass 1 reads the whole bundle (an uncompressed ustar: manifest, manifest.sig, files/...) and
verifies, in constant memory: the Ed25519 signature against the trusted keys
(/usr/share/kubesolo-update/keys/*, `public-key =` in /etc/kubesolo/update.conf), the
manifest's arch, track, boot and min-version, and each file's size and SHA-256; nothing else
may be in the archive. Any failure refuses the bundle with nothing written.
Pass 2 writes the inactive slot (never the running one): old files removed, each file
written to a temporary name, checked again, fsynced and renamed. Only then the boot
environment is flipped (GRUB: grubenv active_slot=<new> boot_counter=3 boot_success=0,
rewritten in place; Pi: autoboot.txt [tryboot] boot_partition=<new>).
URL: http:// only (no TLS in the agent; the signature protects the bundle). The download is
saved first under the state directory on the data partition
(/mnt/data/var/lib/kubesolo-update/download/), applied from there and removed.
--reboot reboots afterwards (as `kubesolo-update reboot`).
"
        }
        "healthcheck" => {
            "\
usage: kubesolo-update healthcheck

Run by the init after KubeSolo starts. Checks, for up to health-timeout seconds (default
120), that the process health-process (default `kubesolo`) is alive and, when configured,
that 127.0.0.1:health-port and the unix socket health-socket accept connections (settings in
/etc/kubesolo/update.conf). On a trial boot of a new slot: healthy commits it (GRUB
boot_success=1; Pi: autoboot.txt swapped, only when booted by tryboot from the new slot);
unhealthy records the failure and reboots so the boot loader falls back. After a fallback
it records the failed update (`last-result=failed ...`) and clears the pending update.
When it is done it writes its verdict to /run/kubesolo-update/healthcheck.done, for
whatever waits on it.
"
        }
        "rollback" => {
            "\
usage: kubesolo-update rollback

Makes the other slot the next boot, committed (GRUB active_slot=<other> boot_success=1;
Pi: autoboot.txt boot_partition=<other>). When an update was applied to the other slot but
has not booted, it is cancelled instead and the running slot stays the next boot.
"
        }
        "reboot" => {
            "\
usage: kubesolo-update reboot

Reboots now (sync, then reboot(2)). When an update is pending in the other slot on the Pi,
with LINUX_REBOOT_CMD_RESTART2 and \"0 tryboot\" so the firmware tries it once.
"
        }
        _ => return None,
    })
}

fn usage_error(msg: &str) -> ! {
    eprintln!("kubesolo-update: {}", msg);
    eprintln!("kubesolo-update: run `kubesolo-update help` for usage");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match args.first() {
        Some(c) => c.as_str(),
        None => {
            eprint!("{}", USAGE);
            std::process::exit(2)
        }
    };
    let rest = &args[1..];
    match command {
        "help" | "--help" | "-h" => {
            match rest.first() {
                Some(c) => match command_help(c) {
                    Some(h) => print!("{}", h),
                    None => usage_error(&format!("unknown command `{}`", c)),
                },
                None => print!("{}", USAGE),
            }
            std::process::exit(0)
        }
        "--version" => {
            println!("kubesolo-update {}", env!("CARGO_PKG_VERSION"));
            std::process::exit(0)
        }
        _ => {}
    }
    let help = match command_help(command) {
        Some(h) => h,
        None => usage_error(&format!("unknown command `{}`", command)),
    };
    if rest.iter().any(|a| a == "--help" || a == "-h") {
        print!("{}", help);
        std::process::exit(0)
    }
    let agent = Agent::new(Paths::from_env(), true);
    let flags: Vec<&str> = rest
        .iter()
        .filter(|a| a.starts_with("--"))
        .map(|a| a.as_str())
        .collect();
    let operands: Vec<&str> = rest
        .iter()
        .filter(|a| !a.starts_with("--"))
        .map(|a| a.as_str())
        .collect();
    let allowed: &[&str] = match command {
        "status" => &["--json"],
        "apply" => &["--reboot"],
        _ => &[],
    };
    if let Some(bad) = flags.iter().find(|f| !allowed.contains(f)) {
        usage_error(&format!("`{}` does not take `{}`", command, bad));
    }
    let want_operands = if command == "apply" { 1 } else { 0 };
    if operands.len() != want_operands {
        usage_error(&format!(
            "`{}` takes {} (got {})",
            command,
            if want_operands == 1 {
                "one BUNDLE or URL"
            } else {
                "no operands"
            },
            operands.len()
        ));
    }
    let outcome = match command {
        "status" => agent.status(flags.contains(&"--json")),
        "apply" => agent.apply(operands[0], flags.contains(&"--reboot")),
        "healthcheck" => {
            let outcome = agent.healthcheck();
            agent.mark_healthcheck_done(&outcome);
            outcome
        }
        "rollback" => agent.rollback(),
        "reboot" => agent.reboot(),
        _ => usage_error(&format!("unknown command `{}`", command)),
    };
    if let Err(e) = outcome {
        for line in e.lines() {
            eprintln!("kubesolo-update: error: {}", line);
        }
        std::process::exit(1)
    }
}
