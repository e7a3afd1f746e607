//! `ksbuild vm TARGET [-- QEMU-ARGS…]`: realises a target and boots its image under QEMU
//! on a writable copy, its serial console on the terminal; exit codes for scripts.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

use super::drv_cmd::{instantiate, project_root};
use super::realise_cmd::realise_quietly;
use super::{CliError, Context};
use crate::graph::output_paths;
use crate::vm::{self, Guest, IsoMedia, Kind, Machine, Outcome, RunOptions, Session, Slot};

/// The target whose `data.img` is the ISO's persistent data disk.
const DATA_DISK_TARGET: &str = "data-disk";

/// Exit code: QEMU ended before the console printed an expected text.
const EXIT_UNMET: u8 = 3;
/// Exit code: `--timeout` passed (as `timeout(1)`).
const EXIT_TIMEOUT: u8 = 124;

/// Options of `ksbuild vm`.
#[derive(Debug, Args)]
#[command(after_help = "\
Exit codes: 0 the guest ended (QEMU exited 0) or every `--expect` text was printed; \
1 an error (not a bootable image, QEMU or firmware missing, a folder holding another image, \
QEMU failing); 3 QEMU ended before an `--expect` text was printed; 124 `--timeout` passed; \
128+N ksbuild got signal N. QEMU is stopped in every case.

In QEMU's console, Ctrl-A X ends QEMU, Ctrl-A C switches to its monitor.")]
pub struct VmArgs {
    /// The target to boot: an output holding `disk.img` (GPT, UEFI), `sdcard.img` (Raspberry
    /// Pi, on QEMU's raspi3b) or `kubesolo.iso`; realised first.
    target: String,
    /// Keep the VM's state in DIR between runs (created if missing): the image's writable
    /// copy (its data partition, A/B state), the ISO's data disk [default: a temporary
    /// folder, removed afterwards].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Start afresh: replace the copies kept in `--dir` (image and data disk) with new ones.
    #[arg(long, requires = "dir")]
    fresh: bool,
    /// Boot this A/B slot: GRUB images get `active_slot=SLOT` and `boot_success=1` in the
    /// copy's grubenv; the Pi boots that boot partition [default: what the image's state
    /// says].
    #[arg(long, value_name = "A|B")]
    slot: Option<Slot>,
    /// Stop QEMU after this many seconds (exit 124).
    #[arg(long, value_name = "SECONDS")]
    timeout: Option<f64>,
    /// Exit 0 once the console has printed TEXT (its line finished), then stop QEMU: a
    /// power cut for the guest. Repeated: each in turn, in order.
    #[arg(long, value_name = "TEXT")]
    expect: Vec<String>,
    /// ISO: boot under OVMF (UEFI) instead of SeaBIOS.
    #[arg(long)]
    uefi: bool,
    /// ISO: attach it as a disk (as a USB stick), not as a CD-ROM.
    #[arg(long)]
    as_disk: bool,
    /// QEMU's accelerator (`-accel`).
    #[arg(long, value_name = "NAME", default_value = "tcg")]
    accel: String,
    /// Let the guest reboot; by default QEMU ends when it reboots, as when it powers off.
    #[arg(long)]
    reboot: bool,
    /// Arguments for QEMU, after ksbuild's (e.g. `-- -nic user` for a network).
    #[arg(last = true, value_name = "QEMU-ARGS")]
    qemu_args: Vec<String>,
}

/// The output directory of a realised target with its printed store path.
fn output(
    ctx: &Context,
    store: &crate::store::Store,
    target: &str,
) -> Result<Vec<(String, PathBuf)>, CliError> {
    let (_, lowered) = instantiate(ctx, store, &[target.to_string()])?;
    Ok(output_paths(&lowered.nodes[target])
        .values()
        .map(|p| (store.print(p), store.physical_path(p)))
        .collect())
}

/// `ksbuild vm`.
pub fn run(ctx: &Context, args: VmArgs) -> Result<ExitCode, CliError> {
    if let Some(t) = args.timeout {
        if !(t.is_finite() && t > 0.0) {
            return Err(CliError::Usage {
                message: format!("`--timeout {t}`: not a number of seconds"),
                hint: Some("e.g. `--timeout 120`".into()),
            });
        }
    }
    let code = realise_quietly(ctx, std::slice::from_ref(&args.target))?;
    if code != ExitCode::SUCCESS {
        return Ok(code);
    }
    let store = ctx.open_store()?;
    let outputs = output(ctx, &store, &args.target)?;
    let mut found = None;
    let mut first_error = None;
    for (printed, dir) in &outputs {
        match vm::recognise(&args.target, printed, dir) {
            Ok(image) => {
                found = Some((printed.clone(), image));
                break;
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let Some((printed, image)) = found else {
        return Err(first_error
            .map(CliError::from)
            .unwrap_or_else(|| CliError::Failed(format!("`{}` has no outputs", args.target))));
    };
    let origin = format!(
        "{printed}/{}",
        image.file.file_name().unwrap_or_default().to_string_lossy()
    );
    if args.slot.is_some() && image.kind == Kind::Iso {
        return Err(vm::VmError::NoSlots("ISO".into()).into());
    }
    if (args.uefi || args.as_disk) && image.kind != Kind::Iso {
        return Err(CliError::Usage {
            message: format!(
                "`--uefi` and `--as-disk` are for ISOs; `{}` is a {}",
                args.target,
                image.kind.describe()
            ),
            hint: Some("leave them out".into()),
        });
    }
    // The ISO's data disk: the `data-disk` target's, if the project has one.
    let mut data_source: Option<(String, PathBuf)> = None;
    if image.kind == Kind::Iso {
        let declared = project_root(ctx)?
            .join(format!("derivations/{DATA_DISK_TARGET}.toml"))
            .is_file();
        if declared {
            let code = realise_quietly(ctx, &[DATA_DISK_TARGET.to_string()])?;
            if code != ExitCode::SUCCESS {
                return Ok(code);
            }
            data_source = output(ctx, &store, DATA_DISK_TARGET)?
                .into_iter()
                .map(|(printed, dir)| (format!("{printed}/data.img"), dir.join("data.img")))
                .find(|(_, f)| f.is_file());
        }
        if data_source.is_none() {
            ctx.note(&format!(
                "warning: no `{DATA_DISK_TARGET}` target with a `data.img`: the ISO boots without a persistent data disk"
            ));
        }
    }

    // What the host must have, told before anything is copied.
    let missing = vm::missing(image.kind, args.uefi);
    if !missing.is_empty() {
        return Err(vm::VmError::Missing(missing).into());
    }

    let session = Session::start()?;
    let state = vm::StateDir::open(args.dir.as_deref())?;
    if args.fresh {
        state.clear()?;
    }
    let on = |made: bool| match (state.is_temporary(), made) {
        (true, _) => "a temporary copy".to_string(),
        (false, true) => format!("a new copy in `{}`", state.path().display()),
        (false, false) => format!("the copy kept in `{}`", state.path().display()),
    };
    // The Pi's kernel files, copied out of the SD card: kept until QEMU ends.
    let mut pi_boot = None;
    let (guest, what) = match image.kind {
        Kind::Uefi(arch) => {
            let (disk, made) = state.image_copy(&image.file, &origin)?;
            if let Some(slot) = args.slot {
                vm::set_grub_slot(&disk, slot)?;
            }
            let slot = vm::grub_slot(&disk)?;
            (
                Guest::Uefi { arch, disk },
                format!("slot {}, on {}", slot.name(), on(made)),
            )
        }
        Kind::RaspberryPi => {
            let (sdcard, made) = state.image_copy(&image.file, &origin)?;
            let boot = tempfile::Builder::new()
                .prefix("ksbuild-vm-pi-")
                .tempdir()
                .map_err(|e| CliError::Io {
                    action: "create a temporary folder",
                    source: e,
                })?;
            let (kernel, slot) = vm::pi_kernel(&sdcard, args.slot, boot.path())?;
            pi_boot = Some(boot);
            (
                Guest::RaspberryPi { sdcard, kernel },
                format!("slot {}, on {}", slot.name(), on(made)),
            )
        }
        Kind::Iso => {
            let data_disk = match &data_source {
                Some((origin, file)) => Some(state.data_disk(file, origin)?.0),
                None => None,
            };
            let on = match (&data_disk, state.is_temporary()) {
                (None, _) => "no data disk".to_string(),
                (Some(_), true) => "a temporary data disk".to_string(),
                (Some(d), false) => format!("the data disk `{}`", d.display()),
            };
            (
                Guest::Iso {
                    iso: image.file.clone(),
                    media: if args.as_disk {
                        IsoMedia::Disk
                    } else {
                        IsoMedia::Cdrom
                    },
                    uefi: args.uefi,
                    data_disk,
                },
                format!(
                    "{} under {}, with {on}",
                    if args.as_disk { "as a disk" } else { "as a CD" },
                    if args.uefi { "OVMF" } else { "SeaBIOS" }
                ),
            )
        }
    };
    let mut machine = Machine::new(guest).with_extra(args.qemu_args.iter().cloned());
    machine.accel = args.accel.clone();
    machine.reboot = args.reboot;
    if let Some(signal) = session.interrupted() {
        return Ok(ExitCode::from(128 + signal as u8));
    }
    ctx.note(&format!(
        "booting `{}` ({}: `{origin}`), {what}; Ctrl-A X ends QEMU",
        args.target,
        image.kind.describe()
    ));
    ctx.note(&format!("+ {}", machine.display()));
    let options = RunOptions {
        expect: args.expect.clone(),
        timeout: args.timeout.map(Duration::from_secs_f64),
    };
    let outcome = session.run(&machine, &options, &mut std::io::stdout().lock())?;
    drop(pi_boot);
    drop(state);
    finish(ctx, &args, outcome)
}

/// The exit code and the last word of a run.
fn finish(ctx: &Context, args: &VmArgs, outcome: Outcome) -> Result<ExitCode, CliError> {
    let seconds = args.timeout.unwrap_or_default();
    match outcome {
        Outcome::Expected { after } => {
            ctx.note(&format!(
                "\nksbuild vm: the console printed {} after {:.1}s; QEMU stopped",
                quoted(&args.expect),
                after.as_secs_f64()
            ));
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Ended {
            status,
            unmet: Some(text),
        } => {
            eprintln!(
                "\nerror: QEMU ended ({}: the guest powered off, rebooted or crashed) before the console printed `{text}`",
                describe(status)
            );
            Ok(ExitCode::from(EXIT_UNMET))
        }
        Outcome::Ended {
            status,
            unmet: None,
        } if status.success() => {
            ctx.note("\nksbuild vm: QEMU ended (the guest powered off or rebooted)");
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Ended { status, .. } => Err(CliError::Failed(format!(
            "QEMU failed ({}); its messages are above",
            describe(status)
        ))),
        Outcome::TimedOut { unmet } => {
            let why = match unmet {
                Some(text) if !args.expect.is_empty() => {
                    format!(" before the console printed `{text}`")
                }
                _ => String::new(),
            };
            eprintln!("\nerror: `--timeout {seconds}` passed{why}; QEMU stopped");
            Ok(ExitCode::from(EXIT_TIMEOUT))
        }
        Outcome::Interrupted { signal } => {
            eprintln!("\nksbuild vm: interrupted by signal {signal}; QEMU stopped");
            Ok(ExitCode::from(128u8.saturating_add(signal as u8)))
        }
    }
}

fn quoted(texts: &[String]) -> String {
    texts
        .iter()
        .map(|t| format!("`{t}`"))
        .collect::<Vec<_>>()
        .join(", then ")
}

fn describe(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "ended".into(),
    }
}
