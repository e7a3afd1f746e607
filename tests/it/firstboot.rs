//! KubeSolo OS first-boot configuration (`fragments/kubesolo-init/stages/35-firstboot.sh` and
//! `lib/firstboot.awk`): the stage run unchanged by the host's static busybox against a
//! temporary directory standing in for the root (`KS_ROOT`), with the file given directly
//! (`KS_FIRSTBOOT_DIR`) instead of on the EFI partition — what is written where, with which
//! modes, what is reported for bad input, and that it applies once; then the small x86_64
//! image under QEMU with the file on its EFI partition: applied on the first boot (console,
//! and the data partition read back with `debugfs`), not again on the second, and a malformed
//! file that boots anyway.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{kernel_store, run, run_ok, scratch};
use crate::images;

const BUSYBOX: &str = "/bin/busybox";

fn init_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fragments/kubesolo-init")
}

/// Whether the host has Debian's static busybox (the rootfs's); in CI
/// (`KSBUILD_REQUIRE_SANDBOX`) it must.
fn skip() -> bool {
    if Path::new(BUSYBOX).exists() {
        return false;
    }
    let why = format!("{BUSYBOX} (Debian busybox-static) is missing");
    if std::env::var_os("KSBUILD_REQUIRE_SANDBOX").is_some() {
        panic!("{why} (KSBUILD_REQUIRE_SANDBOX is set)");
    }
    eprintln!("SKIP: {why}");
    true
}

/// Runs the stage with `root` as the root and `src` holding `kubesolo-config.toml`; the
/// console lines go to stdout, then `stage returned N`.
fn run_stage(root: &Path, src: &Path, nopersist: bool) -> Output {
    let script = r#"
. "$1/lib/functions.sh"
ks_log() { echo "kubesolo-os: [$STAGE] $*"; }
STAGE=35-firstboot
. "$1/stages/35-firstboot.sh"
echo "stage returned $?"
"#;
    run(Command::new(BUSYBOX)
        .args(["sh", "-c", script, "sh"])
        .arg(init_dir())
        .env_clear()
        .env("PATH", "/usr/bin:/bin:/usr/sbin:/sbin")
        .env("KS_ROOT", root)
        .env("KS_INIT_LIB", init_dir().join("lib"))
        .env("KS_FIRSTBOOT_DIR", src)
        .env("KS_NOPERSIST", if nopersist { "1" } else { "0" }))
}

/// The console lines of a stage run that returned 0 (it never fails the boot).
fn console(out: &Output) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(stdout.ends_with("stage returned 0\n"), "{stdout}{stderr}");
    assert!(stderr.is_empty(), "the stage wrote to stderr: {stderr}");
    stdout
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJxcGk1mZ8JAl7fvtsD1H1SvUQDxvPz+2kuJ7Nr5tb3T root@admin";
const PUBKEY: &str = "updates-1:JkHbPx7Na7q+RHZWu0BMZ5BiA2BMHtoR7ohq2BgBhR0=";

/// A configuration that sets everything once, written as users write TOML (comments, CRLF
/// from a Windows editor, a multi-line array, dotted keys, a literal multi-line string).
fn valid_config() -> String {
    format!(
        "# written on Windows\r\n\
         hostname = \"node-7\"  # the node name\r\n\
         network.dns = [\"10.0.2.3\", \"2001:4860:4860::8888\"]\r\n\
         network.ntp = ['ntp.example.org', \"192.0.2.123\"]\r\n\
         \r\n\
         [interface.eth0]\r\n\
         address = \"10.0.2.50/24\"\r\n\
         gateway = \"10.0.2.2\"\r\n\
         [interface.\"eth1.100\"]\r\n\
         [interface.eth2]\r\n\
         dhcp = true\r\n\
         [ssh]\r\n\
         authorized_keys = [\r\n  \"{KEY}\", # admin\r\n]\r\n\
         [kubesolo]\r\n\
         config = '''\r\n\
         apiserver-extra-sans:\r\n  - \"node-7.example.org\"\r\n# a comment inside stays\r\n\
         '''\r\n\
         [update]\r\n\
         server = \"https://updates.example.org/os\"\r\n\
         channel = \"stable\"\r\n\
         public_keys = [\"{PUBKEY}\"]\r\n\
         health_port = 6443\r\n"
    )
}

#[test]
fn first_boot_configuration_is_applied_once_to_the_data_partition() {
    if skip() {
        return;
    }
    let tmp = scratch();
    let (root, src) = (tmp.path().join("root"), tmp.path().join("esp"));
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(&src).unwrap();
    let file = src.join("kubesolo-config.toml");
    fs::write(&file, valid_config()).unwrap();
    let sha = run_ok(Command::new("sha256sum").arg(&file))[..64].to_string();
    let log = console(&run_stage(&root, &src, false));
    let etc = root.join("etc/kubesolo");
    let read = |p: &Path| {
        fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}\nconsole:\n{log}", p.display()))
    };
    assert!(!log.contains("] ignored"), "{log}");
    let line = format!(
        "kubesolo-os: [35-firstboot] first-boot configuration applied from {}:/kubesolo-config.toml (sha256 {}…): ",
        src.display(),
        &sha[..16]
    );
    assert!(log.contains(&line), "{log}");
    for part in [
        "hostname node-7",
        "interfaces eth0 10.0.2.50/24 via 10.0.2.2, eth1.100 dhcp, eth2 dhcp",
        "dns 10.0.2.3 2001:4860:4860::8888",
        "ntp ntp.example.org 192.0.2.123 (recorded, no ntpd)",
        "ssh keys: 1 in /mnt/data/root/.ssh/authorized_keys (recorded, no SSH server in this rootfs)",
        "kubesolo config /etc/kubesolo/config.yaml",
        "update.conf (channel health-port public-key server)",
        "; 0 ignored\n",
    ] {
        assert!(log.contains(part), "`{part}` missing in:\n{log}");
    }
    assert_eq!(read(&etc.join("hostname")), "node-7\n");
    assert_eq!(
        read(&etc.join("network.conf")),
        "eth0 static 10.0.2.50/24 10.0.2.2\neth1.100 dhcp\neth2 dhcp\n"
    );
    assert_eq!(
        read(&etc.join("resolv.conf")),
        "nameserver 10.0.2.3\nnameserver 2001:4860:4860::8888\n"
    );
    assert_eq!(
        read(&etc.join("ntp-servers")),
        "ntp.example.org\n192.0.2.123\n"
    );
    // Verbatim, but for the newline right after ''' (dropped) and CRLF line ends
    // (normalised to LF, as TOML allows).
    assert_eq!(
        read(&etc.join("config.yaml")),
        "apiserver-extra-sans:\n  - \"node-7.example.org\"\n# a comment inside stays\n"
    );
    assert_eq!(mode(&etc.join("config.yaml")), 0o600);
    assert_eq!(
        read(&etc.join("update.conf")),
        format!(
            "server = https://updates.example.org/os\nchannel = stable\npublic-key = {PUBKEY}\nhealth-port = 6443\n"
        )
    );
    let ssh = root.join("mnt/data/root/.ssh");
    assert_eq!(read(&ssh.join("authorized_keys")), format!("{KEY}\n"));
    assert_eq!(mode(&ssh.join("authorized_keys")), 0o600);
    assert_eq!(mode(&ssh), 0o700);
    let state = root.join("mnt/data/var/lib/kubesolo-os");
    let done = read(&state.join("firstboot.done"));
    assert!(done.starts_with(&format!("sha256={sha}\n")), "{done}");
    assert!(done.contains("\nignored=0\n"), "{done}");
    // The working copy (which may hold secrets) is gone.
    assert!(!root.join("run/kubesolo-firstboot").exists());

    // The second boot reads nothing, even a changed file, and keeps what the first wrote.
    fs::write(&file, "hostname = \"other\"\n").unwrap();
    let log = console(&run_stage(&root, &src, false));
    assert!(
        log.contains(&format!(
            "kubesolo-os: [35-firstboot] first-boot configuration: already applied ({}:/kubesolo-config.toml, sha256 {}…); not read again",
            src.display(),
            &sha[..16]
        )),
        "{log}"
    );
    assert_eq!(read(&etc.join("hostname")), "node-7\n");
    assert_eq!(read(&state.join("firstboot.done")), done);

    // The documented example applies whole.
    let root2 = tmp.path().join("root2");
    let src2 = tmp.path().join("esp2");
    fs::create_dir_all(&src2).unwrap();
    fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fragments/kubesolo-config.example.toml"),
        src2.join("kubesolo-config.toml"),
    )
    .unwrap();
    let log = console(&run_stage(&root2, &src2, true));
    assert!(
        log.contains("; 0 ignored (kubesolo.nopersist: for this boot only)\n"),
        "{log}"
    );
    for f in [
        "hostname",
        "network.conf",
        "resolv.conf",
        "ntp-servers",
        "config.yaml",
        "update.conf",
    ] {
        assert!(root2.join("etc/kubesolo").join(f).is_file(), "{f}: {log}");
    }
}

#[test]
fn bad_first_boot_settings_are_reported_one_by_one_and_the_rest_applies() {
    if skip() {
        return;
    }
    let tmp = scratch();
    let (root, src) = (tmp.path().join("root"), tmp.path().join("esp"));
    fs::create_dir_all(&src).unwrap();
    let config = format!(
        "hostname = \"Node_7\"\n\
         [network]\n\
         dns = [\"10.0.2.3\", \"10.0.2.300\"]\n\
         ntp = \"pool.ntp.org\"\n\
         [interface.eth0]\n\
         address = \"10.0.2.50\"\n\
         gateway = \"10.0.2.2\"\n\
         [interface.eth1]\n\
         address = \"192.168.7.2/24\"\n\
         dhcp = \"yes\"\n\
         [interface.averyveryverylongname]\n\
         [ssh]\n\
         authorized_keys = [\"{KEY}\", \"not a key\"]\n\
         [kubesolo]\n\
         config = \"\"\"\n\
         a: 1\n\
         \"\"\"\n\
         colour = 'blue'\n\
         [update\n\
         server = \"https://ignored.example.org\"\n\
         [update]\n\
         server = \"ftp://updates.example.org\"\n\
         channel = \"stable\"\n\
         public_keys = [\"updates-1:tooshort\"]\n\
         health_timeout = 2.5\n\
         [[extra]]\n\
         name = \"unterminated\n\
         = 3\n"
    );
    fs::write(src.join("kubesolo-config.toml"), config).unwrap();
    let log = console(&run_stage(&root, &src, false));
    let p = "kubesolo-os: [35-firstboot] ignored";
    for want in [
        "hostname (line 1): \"Node_7\" is not a valid host name (lowercase letters, digits and -, labels of 1 to 63 separated by dots, 64 at most: Kubernetes uses it as the node name)",
        "network.dns (line 3): \"10.0.2.300\" is not an IPv4 or IPv6 address",
        "network.ntp (line 4): expected an array of strings, got a string",
        "interface.eth0.address (line 6): \"10.0.2.50\" is not an IPv4 address with a prefix length (e.g. 192.168.1.10/24)",
        "interface.eth1.dhcp (line 10): expected true or false, got a string",
        "interface.averyveryverylongname (line 11): \"averyveryverylongname\" is not an interface name (1 to 15 letters, digits, _ . -)",
        "ssh.authorized_keys (line 13): entry 2 is not an OpenSSH public key line",
        "kubesolo.config (line 15): multi-line basic strings (\"\"\"…\"\"\") are not supported: use a literal '''…''' (verbatim)",
        "kubesolo.colour (line 18): unknown setting (known: hostname, network.dns",
        "line 19: bad table header: expected `]` after the table name; the keys under it are ignored",
        "server (line 20): under the invalid table header of line 19",
        "update.server (line 22): \"ftp://updates.example.org\" is not an http:// or https:// URL",
        "update.public_keys (line 24): entry 1 is not a public key in Nix's format (NAME:BASE64 of 32 bytes)",
        "update.health_timeout (line 25): only decimal integers are supported (no floats, dates or _)",
        "line 26: arrays of tables ([[…]]) are not supported",
        "name (line 27): under the invalid table header of line 26",
        "line 28: `=` cannot start a key (bare keys are letters, digits, _ and -; quote others)",
        "interface.eth0.gateway (line 7): a gateway without a valid address: the interface is not configured",
    ] {
        assert!(log.contains(&format!("{p} {want}")), "`{want}` missing in:\n{log}");
    }
    let ignored = log.lines().filter(|l| l.starts_with(p)).count();
    assert_eq!(ignored, 18, "{log}");
    assert!(
        log.contains("…): interfaces eth1 192.168.7.2/24; dns 10.0.2.3; ssh keys: 1 in")
            && log.contains("; update.conf (channel); 18 ignored\n"),
        "{log}"
    );
    let etc = root.join("etc/kubesolo");
    assert!(!etc.join("hostname").exists());
    assert!(!etc.join("config.yaml").exists());
    assert!(!etc.join("ntp-servers").exists());
    assert_eq!(
        fs::read_to_string(etc.join("network.conf")).unwrap(),
        "eth1 static 192.168.7.2/24 -\n"
    );
    assert_eq!(
        fs::read_to_string(etc.join("update.conf")).unwrap(),
        "channel = stable\n"
    );
    let done =
        fs::read_to_string(root.join("mnt/data/var/lib/kubesolo-os/firstboot.done")).unwrap();
    assert!(done.contains("\nignored=18\n"), "{done}");

    // Not TOML at all, nothing, or too much: the boot goes on.
    for (case, bytes, want) in [
        (
            "binary",
            (0..=255u8).cycle().take(4096).collect::<Vec<u8>>(),
            "ignored kubesolo-config.toml: not a text file (480 control characters); nothing of it applies",
        ),
        (
            "unterminated",
            b"[kubesolo]\nconfig = '''\na: 1\n".to_vec(),
            "ignored line 2: unterminated value (a ''' string or an array never closed)",
        ),
        (
            "too large",
            vec![b'#'; 300_000],
            "kubesolo-config.toml on ",
        ),
    ] {
        let root = tmp.path().join(format!("root-{case}"));
        fs::write(src.join("kubesolo-config.toml"), bytes).unwrap();
        let log = console(&run_stage(&root, &src, false));
        assert!(log.contains(want), "{case}: `{want}` missing in:\n{log}");
        if case == "too large" {
            assert!(
                log.contains("is 300000 bytes, more than 256 KiB: not read"),
                "{log}"
            );
        }
    }
    fs::remove_file(src.join("kubesolo-config.toml")).unwrap();
    let log = console(&run_stage(&tmp.path().join("root-none"), &src, false));
    assert!(
        log.contains(&format!(
            "first-boot configuration: none (no kubesolo-config.toml on {})",
            src.display()
        )),
        "{log}"
    );
    // Nothing recorded: a file put there later is still applied, once.
    assert!(!tmp
        .path()
        .join("root-none/mnt/data/var/lib/kubesolo-os/firstboot.done")
        .exists());
}

/// `debugfs -R 'cat PATH'` of the ext4 filesystem at `offset` of `image`; None if missing.
fn ext4_file(image: &Path, offset: u64, path: &str) -> Option<String> {
    let out = run(Command::new("debugfs")
        .arg("-R")
        .arg(format!("cat {path}"))
        .arg(format!("{}?offset={offset}", image.display())));
    assert!(out.status.success(), "debugfs: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("File not found") {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).to_string())
}

/// The mode bits `debugfs stat` shows for `path`.
fn ext4_mode(image: &Path, offset: u64, path: &str) -> String {
    let stat = run_ok(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("stat {path}"))
            .arg(format!("{}?offset={offset}", image.display())),
    );
    let at = stat
        .find("Mode:")
        .unwrap_or_else(|| panic!("{path}: {stat}"));
    stat[at + 5..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The init's console lines of a boot, for the test's output.
fn show(log: &str) {
    for l in log.lines().filter(|l| l.contains("kubesolo-os: ")) {
        eprintln!("{l}");
    }
}

/// The machine (`ksbuild vm`'s) for `image` on x86_64 with a virtio NIC on user networking
/// (10.0.2.0/24, gateway 10.0.2.2), without its option ROM, so that the firmware boots the
/// disk.
fn x86_with_nic(image: &Path) -> ksbuild::vm::Machine {
    images::uefi(ksbuild::vm::Arch::X86_64, image).with_extra([
        "-netdev",
        "user,id=n0",
        "-device",
        "virtio-net-pci,netdev=n0,romfile=",
    ])
}

/// The small x86_64 image with `kubesolo-config.toml` on its EFI partition: the first boot
/// applies it (host name, a static address with a gateway, DNS, KubeSolo's config), the data
/// partition holds it afterwards, the second boot does not read it again but keeps the
/// host name and the address; a malformed file boots anyway, its bad settings named.
#[test]
fn the_x86_64_image_applies_its_first_boot_configuration_once() {
    let tmp = scratch();
    let store = kernel_store();
    let proj = images::project(tmp.path(), &store);
    let Some(out) = images::realise(&store, &proj, "disk-image@small", &[]) else {
        return;
    };
    if !images::qemu("qemu-system-x86_64") {
        return;
    }
    let parts = images::partitions(&out);
    let (esp, data) = (parts[0].2, parts[3].2);
    assert_eq!(
        (parts[0].1.as_str(), parts[3].1.as_str()),
        ("KSOLOEFI", "KSOLODATA")
    );
    let kubesolo_config = "# KubeSolo\napiserver-extra-sans:\n  - fb-node.example.org\n";
    let config = format!(
        "hostname = \"fb-node\"\n\
         [network]\n\
         dns = [\"10.0.2.3\"]\n\
         [interface.eth0]\n\
         address = \"10.0.2.50/24\"\n\
         gateway = \"10.0.2.2\"\n\
         [kubesolo]\n\
         config = '''\n{kubesolo_config}'''\n\
         [update]\n\
         server = \"https://updates.example.org/os\"\n\
         channel = \"edge\"\n"
    );
    let put = |image: &Path, text: &str| {
        let file = tmp.path().join("kubesolo-config.toml");
        fs::write(&file, text).unwrap();
        run_ok(
            images::mtools("mcopy", image, esp)
                .arg("-o")
                .arg(&file)
                .arg("::/kubesolo-config.toml"),
        );
    };
    let copy = images::writable_copy(&out.join("disk.img"), tmp.path());
    put(&copy, &config);
    let sha = {
        let file = tmp.path().join("kubesolo-config.toml");
        run_ok(Command::new("sha256sum").arg(&file))[..64].to_string()
    };

    let log = images::boot(&x86_with_nic(&copy), images::LIMIT);
    show(&log);
    images::assert_booted(&log, "x86_64", "A", "/dev/vda4");
    for want in [
        &format!(
            "kubesolo-os: [35-firstboot] first-boot configuration applied from /dev/vda1 (LABEL=KSOLOEFI):/kubesolo-config.toml (sha256 {}…): hostname fb-node; interfaces eth0 10.0.2.50/24 via 10.0.2.2; dns 10.0.2.3; kubesolo config /etc/kubesolo/config.yaml ({} bytes); update.conf (channel server); 0 ignored",
            &sha[..16],
            kubesolo_config.len()
        ),
        "kubesolo-os: [50-network] network: eth0 10.0.2.50/24 static via 10.0.2.2 (/etc/kubesolo/network.conf); dns 10.0.2.3",
        "kubesolo-os: [60-hostname] hostname: fb-node (/etc/kubesolo/hostname)",
    ] {
        assert!(log.contains(want), "`{want}` missing in:\n{log}");
    }
    // Recorded on the data partition.
    let file = |p: &str| ext4_file(&copy, data, p);
    assert_eq!(file("/etc/kubesolo/hostname").as_deref(), Some("fb-node\n"));
    assert_eq!(
        file("/etc/kubesolo/network.conf").as_deref(),
        Some("eth0 static 10.0.2.50/24 10.0.2.2\n")
    );
    assert_eq!(
        file("/etc/kubesolo/config.yaml").as_deref(),
        Some(kubesolo_config)
    );
    assert_eq!(ext4_mode(&copy, data, "/etc/kubesolo/config.yaml"), "0600");
    assert_eq!(
        file("/etc/kubesolo/update.conf").as_deref(),
        Some("server = https://updates.example.org/os\nchannel = edge\n")
    );
    let done = file("/var/lib/kubesolo-os/firstboot.done").expect("firstboot.done");
    assert!(done.starts_with(&format!("sha256={sha}\n")), "{done}");

    // The second boot reads nothing (even a changed file) and keeps the settings.
    put(&copy, "hostname = \"changed\"\n");
    let log = images::boot(&x86_with_nic(&copy), images::LIMIT);
    show(&log);
    images::assert_booted(&log, "x86_64", "A", "/dev/vda4");
    for want in [
        &format!(
            "kubesolo-os: [35-firstboot] first-boot configuration: already applied (/dev/vda1 (LABEL=KSOLOEFI):/kubesolo-config.toml, sha256 {}…); not read again",
            &sha[..16]
        ),
        "kubesolo-os: [50-network] network: eth0 10.0.2.50/24 static via 10.0.2.2 (/etc/kubesolo/network.conf)",
        "kubesolo-os: [60-hostname] hostname: fb-node (/etc/kubesolo/hostname)",
    ] {
        assert!(log.contains(want), "`{want}` missing in:\n{log}");
    }
    assert!(!log.contains("first-boot configuration applied"), "{log}");
    assert_eq!(file("/var/lib/kubesolo-os/firstboot.done"), Some(done));

    // A malformed file on a fresh copy: the boot goes on, each bad setting is named, the
    // good one applies, and an interface whose address was refused gets DHCP.
    let fresh = tmp.path().join("fresh");
    fs::create_dir_all(&fresh).unwrap();
    let copy = images::writable_copy(&out.join("disk.img"), &fresh);
    put(
        &copy,
        "hostname = \"ok-node\"\n\
         [interface.eth0]\n\
         address = \"10.0.2.500/24\"\n\
         [kubesolo]\n\
         config = '''\n\
         never closed\n",
    );
    let log = images::boot(&x86_with_nic(&copy), images::LIMIT);
    show(&log);
    images::assert_booted(&log, "x86_64", "A", "/dev/vda4");
    for want in [
        "kubesolo-os: [35-firstboot] ignored interface.eth0.address (line 3): \"10.0.2.500/24\" is not an IPv4 address with a prefix length (e.g. 192.168.1.10/24)",
        "kubesolo-os: [35-firstboot] ignored line 5: unterminated value (a ''' string or an array never closed)",
        "; 2 ignored",
        "kubesolo-os: [50-network] network: eth0 10.0.2.15/24 dhcp (/etc/kubesolo/network.conf)",
        "kubesolo-os: [60-hostname] hostname: ok-node (/etc/kubesolo/hostname)",
    ] {
        assert!(log.contains(want), "`{want}` missing in:\n{log}");
    }
    assert_eq!(ext4_file(&copy, data, "/etc/kubesolo/config.yaml"), None);
}
