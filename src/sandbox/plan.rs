//! The plan of a sandbox: from a [`SandboxSpec`] to the typed steps the init process and
//! PID 1 apply, the id maps, and the builder's `argv` and environment. Pure: the kind of
//! each input comes from a closure, so the whole plan is tested here without a kernel.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use serde::{Deserialize, Serialize};

use super::error::SandboxError;
use super::step::{RemountFlags, Step};
use super::user_ns::HostIds;
use super::SandboxSpec;

/// The build user inside the sandbox, as in Nix.
pub const SANDBOX_UID: u32 = 1000;
/// The build group inside the sandbox, as in Nix.
pub const SANDBOX_GID: u32 = 100;
/// The build directory inside the sandbox (Nix's `sandbox-build-dir`).
pub const BUILD_DIR: &str = "/build";
/// `$HOME` of every build.
pub const HOME_DIR: &str = "/homeless-shelter";

/// Device nodes bound from the host into `/dev`, as in Nix (minus `/dev/kvm`, which Nix
/// adds only for derivations that require the `kvm` system feature).
const DEVICES: [&str; 6] = ["full", "null", "random", "tty", "urandom", "zero"];

/// Top-level names of the sandbox's root that ksbuild creates itself; the store directory
/// must not start with one of them.
const RESERVED: [&str; 5] = ["build", "dev", "etc", "proc", "tmp"];

/// `/etc/passwd` of every build, byte for byte Nix 2.8's.
pub fn etc_passwd() -> String {
    format!(
        "root:x:0:0:Nix build user:{BUILD_DIR}:/noshell\n\
         nixbld:x:{SANDBOX_UID}:{SANDBOX_GID}:Nix build user:{BUILD_DIR}:/noshell\n\
         nobody:x:65534:65534:Nobody:/:/noshell\n"
    )
}

/// `/etc/group` of every build, byte for byte Nix 2.8's.
pub fn etc_group() -> String {
    format!("root:x:0:\nnixbld:!:{SANDBOX_GID}:\nnogroup:x:65534:\n")
}

/// `/etc/hosts` of every build, byte for byte Nix 2.8's.
pub const ETC_HOSTS: &str = "127.0.0.1 localhost\n::1 localhost\n";

/// What an input's physical path is (after [`Step::InspectInput`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InputKind {
    /// A directory (or a symlink to one): bound onto an empty directory.
    Directory,
    /// Anything else that is not a symlink: bound onto an empty file.
    File,
    /// A symlink store path: recreated as the same symlink, not bound.
    Symlink(PathBuf),
}

/// The builder's program, `argv` and environment (`KEY=value`, sorted by key).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ExecSpec {
    /// The builder path, resolved inside the sandbox.
    pub path: String,
    /// `argv`, starting with the builder's base name as Nix passes it.
    pub argv: Vec<String>,
    /// `envp`.
    pub env: Vec<String>,
}

/// Everything the init process needs: sent to it as one JSON line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Plan {
    /// Steps applied on the host by the init process, before the namespaces exist.
    pub host: Vec<Step>,
    /// `(file under /proc/<pid>/, contents)`, written by the init process in this order.
    pub id_maps: Vec<(String, String)>,
    /// Steps applied by PID 1 inside the namespaces, in order; `exec` follows.
    pub namespace: Vec<Step>,
    /// The builder.
    pub exec: ExecSpec,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SandboxError {
    SandboxError::InvalidSpec {
        field,
        reason: reason.into(),
    }
}

/// An absolute path made only of normal components (no `.`, `..`, or empty name), not `/`.
fn check_absolute_normal(path: &Path, field: &'static str) -> Result<(), SandboxError> {
    let mut components = path.components();
    if components.next() != Some(Component::RootDir) {
        return Err(invalid(
            field,
            format!("`{}` is not absolute", path.display()),
        ));
    }
    let mut any = false;
    for c in components {
        match c {
            Component::Normal(_) => any = true,
            _ => {
                return Err(invalid(
                    field,
                    format!("`{}` is not a normalised path", path.display()),
                ))
            }
        }
    }
    if !any {
        return Err(invalid(field, "`/` is not allowed"));
    }
    Ok(())
}

fn check_no_nul(s: &str, field: &'static str) -> Result<(), SandboxError> {
    if s.contains('\0') {
        return Err(invalid(field, format!("{s:?} contains a NUL byte")));
    }
    Ok(())
}

/// `root` joined with the absolute `inside` path.
fn under(root: &Path, inside: &str) -> PathBuf {
    root.join(inside.trim_start_matches('/'))
}

/// The environment of the builder, with Nix 2.8's precedence (`initEnv`/`initTmpDir`):
/// `PATH`, `HOME`, `NIX_STORE` and `NIX_BUILD_CORES` first, then the derivation's
/// variables (which may override those four), then `NIX_BUILD_TOP`, `TMPDIR`, `TEMPDIR`,
/// `TMP`, `TEMP`, `PWD`, `NIX_LOG_FD` and `TERM`, which the derivation cannot override.
pub fn builder_environment(
    store_dir: &str,
    cores: u32,
    derivation_env: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_string(), "/path-not-set".to_string());
    env.insert("HOME".to_string(), HOME_DIR.to_string());
    env.insert("NIX_STORE".to_string(), store_dir.to_string());
    env.insert("NIX_BUILD_CORES".to_string(), cores.to_string());
    for (k, v) in derivation_env {
        env.insert(k.clone(), v.clone());
    }
    for k in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
        env.insert(k.to_string(), BUILD_DIR.to_string());
    }
    env.insert("NIX_LOG_FD".to_string(), "2".to_string());
    env.insert("TERM".to_string(), "xterm-256color".to_string());
    env
}

/// `argv` of the builder: its base name (as Nix passes it), then the arguments.
fn builder_argv(builder: &str, args: &[String]) -> Vec<String> {
    let base = builder.rsplit('/').next().unwrap_or(builder);
    std::iter::once(base.to_string())
        .chain(args.iter().cloned())
        .collect()
}

fn validate(spec: &SandboxSpec) -> Result<(), SandboxError> {
    if spec.builder.is_empty() {
        return Err(invalid("builder", "empty"));
    }
    check_no_nul(&spec.builder, "builder")?;
    for a in &spec.args {
        check_no_nul(a, "args")?;
    }
    for (k, v) in &spec.env {
        if k.is_empty() || k.contains('=') {
            return Err(invalid("env", format!("{k:?} is not a variable name")));
        }
        check_no_nul(k, "env")?;
        check_no_nul(v, "env")?;
    }
    let store = Path::new(&spec.store_dir);
    check_absolute_normal(store, "store_dir")?;
    if let Some(Component::Normal(first)) = store.components().nth(1) {
        if RESERVED.iter().any(|r| first == *r) {
            return Err(invalid(
                "store_dir",
                format!(
                    "`{}` would hide the sandbox's own `/{}`",
                    spec.store_dir,
                    first.to_string_lossy()
                ),
            ));
        }
    }
    let mut seen = BTreeSet::new();
    for (_, logical) in &spec.inputs {
        check_absolute_normal(Path::new(logical), "inputs")?;
        check_no_nul(logical, "inputs")?;
        if Path::new(logical).parent() != Some(store) {
            return Err(invalid(
                "inputs",
                format!(
                    "`{logical}` is not a store path directly under `{}`",
                    spec.store_dir
                ),
            ));
        }
        if !seen.insert(logical.as_str()) {
            return Err(invalid("inputs", format!("`{logical}` is given twice")));
        }
    }
    if !spec.root_dir.is_absolute() || !spec.build_dir.is_absolute() {
        return Err(invalid(
            "root_dir",
            "root_dir and build_dir must be absolute paths",
        ));
    }
    Ok(())
}

/// Plans a sandbox. `inspect` tells what each input's physical path is (the caller
/// answers with `lstat`); `devpts` says whether to mount a private `/dev/pts` (Nix does
/// when the host has `/dev/pts/ptmx`).
pub(crate) fn plan(
    spec: &SandboxSpec,
    ids: &HostIds,
    inspect: &mut dyn FnMut(&Path) -> Result<InputKind, Errno>,
    devpts: bool,
) -> Result<Plan, SandboxError> {
    validate(spec)?;
    let root = spec.root_dir.as_path();
    let mut host = Vec::new();
    let mut ns = Vec::new();

    // -- host side, as the invoking user (root or not), before any namespace exists -------
    if ids.invoker_is_root {
        host.push(Step::ClearSupplementaryGroups);
    }
    // `/`: 0750, group = the build group, as Nix's chroot root.
    host.push(Step::SetMode {
        path: root.to_path_buf(),
        mode: 0o750,
    });
    host.push(Step::SetOwner {
        path: root.to_path_buf(),
        uid: Some(ids.owner_uid),
        gid: Some(ids.build_gid),
    });
    // The store directory: parents 0755, the store itself 1775 root:nixbld as in Nix, so
    // the build user can create its outputs there and nothing else.
    let store = Path::new(&spec.store_dir);
    let mut prefix = root.to_path_buf();
    let depth = store.components().count() - 1;
    for (i, c) in store.components().skip(1).enumerate() {
        prefix.push(c);
        let last = i + 1 == depth;
        host.push(Step::CreateDirectory {
            path: prefix.clone(),
            mode: if last { 0o1775 } else { 0o755 },
        });
    }
    host.push(Step::SetOwner {
        path: prefix.clone(),
        uid: Some(ids.owner_uid),
        gid: Some(ids.build_gid),
    });
    let mut bound_inputs = Vec::new();
    for (physical, logical) in &spec.inputs {
        let target = under(root, logical);
        match inspect(physical).map_err(|errno| SandboxError::Step {
            step: Step::InspectInput {
                path: physical.clone(),
            },
            errno,
        })? {
            InputKind::Symlink(link) => host.push(Step::CreateSymlink {
                target: link,
                path: target,
            }),
            InputKind::Directory | InputKind::File => {
                host.push(Step::CreateMountPoint {
                    source: physical.clone(),
                    target: target.clone(),
                });
                bound_inputs.push((physical.clone(), target));
            }
        }
    }
    let build_target = under(root, BUILD_DIR);
    host.push(Step::CreateDirectory {
        path: build_target.clone(),
        mode: 0o700,
    });
    host.push(Step::SetOwner {
        path: spec.build_dir.clone(),
        uid: Some(ids.build_uid),
        gid: Some(ids.build_gid),
    });
    host.push(Step::SetMode {
        path: spec.build_dir.clone(),
        mode: 0o700,
    });
    host.push(Step::CreateDirectory {
        path: under(root, "/tmp"),
        mode: 0o1777,
    });
    host.push(Step::CreateDirectory {
        path: under(root, "/etc"),
        mode: 0o755,
    });
    for (name, contents) in [
        ("/etc/passwd", etc_passwd()),
        ("/etc/group", etc_group()),
        ("/etc/hosts", ETC_HOSTS.to_string()),
    ] {
        host.push(Step::WriteFile {
            path: under(root, name),
            mode: 0o644,
            contents,
        });
    }
    host.push(Step::CreateDirectory {
        path: under(root, "/dev"),
        mode: 0o755,
    });
    for d in DEVICES {
        host.push(Step::CreateFile {
            path: under(root, &format!("/dev/{d}")),
        });
    }
    host.push(Step::CreateDirectory {
        path: under(root, "/dev/shm"),
        mode: 0o755,
    });
    if devpts {
        host.push(Step::CreateDirectory {
            path: under(root, "/dev/pts"),
            mode: 0o755,
        });
        host.push(Step::CreateSymlink {
            target: "/dev/pts/ptmx".into(),
            path: under(root, "/dev/ptmx"),
        });
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        host.push(Step::CreateSymlink {
            target: target.into(),
            path: under(root, &format!("/dev/{name}")),
        });
    }
    host.push(Step::CreateDirectory {
        path: under(root, "/proc"),
        mode: 0o755,
    });

    // -- inside the namespaces, as PID 1 ---------------------------------------------------
    // Mounts first, while PID 1 still has every capability in its user namespace.
    ns.push(Step::MakeMountsPrivate);
    ns.push(Step::Bind {
        source: root.to_path_buf(),
        target: root.to_path_buf(),
    });
    ns.push(Step::Remount {
        target: root.to_path_buf(),
        flags: RemountFlags {
            nosuid: true,
            nodev: true,
            ..RemountFlags::default()
        },
    });
    let read_only = RemountFlags {
        read_only: true,
        nosuid: true,
        nodev: true,
        noexec: false,
    };
    for (physical, target) in bound_inputs {
        ns.push(Step::Bind {
            source: physical,
            target: target.clone(),
        });
        ns.push(Step::Remount {
            target,
            flags: read_only,
        });
    }
    ns.push(Step::Bind {
        source: spec.build_dir.clone(),
        target: build_target.clone(),
    });
    ns.push(Step::Remount {
        target: build_target,
        flags: RemountFlags {
            nosuid: true,
            nodev: true,
            ..RemountFlags::default()
        },
    });
    // Devices: read-only binds (I/O on a device node does not need a writable mount, but
    // chmod/chown of the host's node would), never nodev.
    for d in DEVICES {
        let target = under(root, &format!("/dev/{d}"));
        ns.push(Step::Bind {
            source: PathBuf::from(format!("/dev/{d}")),
            target: target.clone(),
        });
        ns.push(Step::Remount {
            target,
            flags: RemountFlags {
                read_only: true,
                nosuid: true,
                nodev: false,
                noexec: true,
            },
        });
    }
    ns.push(Step::MountTmpfs {
        target: under(root, "/dev/shm"),
        options: "mode=1777".to_string(),
    });
    if devpts {
        ns.push(Step::MountDevpts {
            target: under(root, "/dev/pts"),
            options: "newinstance,ptmxmode=0666,mode=0620".to_string(),
        });
    }
    ns.push(Step::MountProc {
        target: under(root, "/proc"),
    });
    ns.push(Step::PivotRoot {
        new_root: root.to_path_buf(),
    });
    ns.push(Step::DetachOldRoot);
    ns.push(Step::LoopbackUp);
    ns.push(Step::SetHostname {
        name: "localhost".to_string(),
    });
    ns.push(Step::SetDomainname {
        name: "(none)".to_string(),
    });
    ns.push(Step::NewSession);
    ns.push(Step::RedirectStdio);
    // Privilege drop: group first (setresgid needs CAP_SETGID, which the uid change would
    // not take away here — in this namespace uid 0 is unmapped — but order it as usual).
    ns.push(Step::SetGroupId { gid: SANDBOX_GID });
    ns.push(Step::SetUserId { uid: SANDBOX_UID });
    // The credential change cleared the parent-death signal: re-arm it.
    ns.push(Step::ParentDeathSignal);
    ns.push(Step::NoNewPrivileges);
    ns.push(Step::DisableAddressRandomisation);
    ns.push(Step::LimitCoreDumps);
    if let Some(max) = spec.max_processes {
        ns.push(Step::LimitProcesses { max });
    }
    ns.push(Step::SetUmask { mask: 0o022 });
    ns.push(Step::ChangeDirectory {
        path: BUILD_DIR.into(),
    });
    ns.push(Step::ResetSignals);
    ns.push(Step::DropCapabilities);

    let env = builder_environment(&spec.store_dir, spec.cores, &spec.env)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    Ok(Plan {
        host,
        id_maps: ids.map_files(),
        namespace: ns,
        exec: ExecSpec {
            path: spec.builder.clone(),
            argv: builder_argv(&spec.builder, &spec.args),
            env,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            builder: "/nix/store/aaaa-busybox/bin/busybox".into(),
            args: vec!["sh".into(), "-c".into(), "true".into()],
            env: BTreeMap::from([
                ("out".to_string(), "/nix/store/bbbb-out".to_string()),
                ("PATH".to_string(), "/drv-path".to_string()),
                ("TMPDIR".to_string(), "/drv-tmp".to_string()),
            ]),
            store_dir: "/nix/store".into(),
            inputs: vec![
                (
                    "/s/nix/store/aaaa-busybox".into(),
                    "/nix/store/aaaa-busybox".into(),
                ),
                (
                    "/s/nix/store/cccc-link".into(),
                    "/nix/store/cccc-link".into(),
                ),
            ],
            root_dir: "/s/root".into(),
            build_dir: "/s/build".into(),
            cores: 2,
            timeout: Some(Duration::from_secs(1)),
            max_silent_time: None,
            max_processes: None,
            build_user: super::super::BuildUser::Auto,
            log: "/s/log".into(),
        }
    }

    fn ids(root: bool) -> HostIds {
        HostIds {
            build_uid: 4000,
            build_gid: 4000,
            owner_uid: if root { 0 } else { 4000 },
            invoker_is_root: root,
        }
    }

    fn inspect(p: &Path) -> Result<InputKind, Errno> {
        if p.ends_with("cccc-link") {
            Ok(InputKind::Symlink("aaaa-busybox".into()))
        } else if p.exists() || p.starts_with("/s") {
            Ok(InputKind::Directory)
        } else {
            Err(Errno::ENOENT)
        }
    }

    fn position(steps: &[Step], pred: impl Fn(&Step) -> bool) -> usize {
        steps.iter().position(pred).expect("step present")
    }

    #[test]
    fn environment_has_nix_precedence() {
        let env = builder_environment("/nix/store", 2, &spec().env);
        let expected: BTreeMap<String, String> = [
            ("HOME", "/homeless-shelter"),
            ("NIX_BUILD_CORES", "2"),
            ("NIX_BUILD_TOP", "/build"),
            ("NIX_LOG_FD", "2"),
            ("NIX_STORE", "/nix/store"),
            ("PATH", "/drv-path"),
            ("PWD", "/build"),
            ("TEMP", "/build"),
            ("TEMPDIR", "/build"),
            ("TERM", "xterm-256color"),
            ("TMP", "/build"),
            ("TMPDIR", "/build"),
            ("out", "/nix/store/bbbb-out"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(env, expected);
    }

    #[test]
    fn etc_files_are_nix_s_bytes() {
        // Sizes observed in Nix 2.8's sandbox: passwd 130, group 41, hosts 34 bytes.
        assert_eq!(etc_passwd().len(), 130);
        assert_eq!(etc_group().len(), 41);
        assert_eq!(ETC_HOSTS.len(), 34);
        assert!(etc_passwd().contains("nixbld:x:1000:100:Nix build user:/build:/noshell\n"));
    }

    #[test]
    fn argv_starts_with_the_builder_base_name() {
        let p = plan(&spec(), &ids(true), &mut inspect, true).unwrap();
        assert_eq!(p.exec.argv, ["busybox", "sh", "-c", "true"]);
        assert_eq!(p.exec.path, "/nix/store/aaaa-busybox/bin/busybox");
        let mut sorted = p.exec.env.clone();
        sorted.sort();
        assert_eq!(p.exec.env, sorted, "envp is sorted like Nix's std::map");
    }

    #[test]
    fn steps_come_in_the_documented_order() {
        let p = plan(&spec(), &ids(true), &mut inspect, true).unwrap();
        assert!(p.host.iter().all(Step::is_host_step));
        assert!(p.namespace.iter().all(|s| !s.is_host_step()));
        let ns = &p.namespace;
        let private = position(ns, |s| matches!(s, Step::MakeMountsPrivate));
        let last_mount = ns
            .iter()
            .rposition(|s| {
                matches!(
                    s,
                    Step::Bind { .. }
                        | Step::Remount { .. }
                        | Step::MountProc { .. }
                        | Step::MountTmpfs { .. }
                        | Step::MountDevpts { .. }
                )
            })
            .unwrap();
        let pivot = position(ns, |s| matches!(s, Step::PivotRoot { .. }));
        let detach = position(ns, |s| matches!(s, Step::DetachOldRoot));
        let gid = position(ns, |s| matches!(s, Step::SetGroupId { .. }));
        let uid = position(ns, |s| matches!(s, Step::SetUserId { .. }));
        let pdeath = position(ns, |s| matches!(s, Step::ParentDeathSignal));
        let nnp = position(ns, |s| matches!(s, Step::NoNewPrivileges));
        let caps = position(ns, |s| matches!(s, Step::DropCapabilities));
        assert_eq!(private, 0);
        assert!(last_mount < pivot && pivot + 1 == detach);
        assert!(detach < gid && gid < uid && uid < pdeath && pdeath < nnp);
        assert_eq!(caps, ns.len() - 1, "capabilities go last, just before exec");
        // Every bind of an input is followed by its read-only remount.
        for (i, s) in ns.iter().enumerate() {
            if let Step::Bind { source, target } = s {
                if source.starts_with("/s/nix/store") {
                    assert_eq!(
                        ns[i + 1],
                        Step::Remount {
                            target: target.clone(),
                            flags: RemountFlags {
                                read_only: true,
                                nosuid: true,
                                nodev: true,
                                noexec: false
                            }
                        }
                    );
                }
            }
        }
        // The symlink input is recreated, not bound.
        assert!(p.host.contains(&Step::CreateSymlink {
            target: "aaaa-busybox".into(),
            path: "/s/root/nix/store/cccc-link".into()
        }));
        assert!(!ns
            .iter()
            .any(|s| matches!(s, Step::Bind { source, .. } if source.ends_with("cccc-link"))));
    }

    #[test]
    fn only_root_clears_groups_and_the_store_is_group_writable() {
        let p = plan(&spec(), &ids(true), &mut inspect, false).unwrap();
        assert_eq!(p.host[0], Step::ClearSupplementaryGroups);
        assert!(p.host.contains(&Step::CreateDirectory {
            path: "/s/root/nix/store".into(),
            mode: 0o1775
        }));
        assert!(p.host.contains(&Step::SetOwner {
            path: "/s/root/nix/store".into(),
            uid: Some(0),
            gid: Some(4000)
        }));
        assert!(!p
            .host
            .iter()
            .any(|s| matches!(s, Step::CreateSymlink { path, .. } if path.ends_with("ptmx"))));
        let p = plan(&spec(), &ids(false), &mut inspect, true).unwrap();
        assert!(!p.host.contains(&Step::ClearSupplementaryGroups));
    }

    #[test]
    fn bad_specs_are_refused() {
        type Edit = fn(&mut SandboxSpec);
        let cases: [(Edit, &str); 9] = [
            (|s| s.store_dir = "nix/store".into(), "store_dir"),
            (|s| s.store_dir = "/nix/../store".into(), "store_dir"),
            (|s| s.store_dir = "/".into(), "store_dir"),
            (|s| s.store_dir = "/tmp/store".into(), "store_dir"),
            (|s| s.inputs[0].1 = "/nix/store/../../etc".into(), "inputs"),
            (|s| s.inputs[0].1 = "/etc/passwd".into(), "inputs"),
            (|s| s.inputs[1].1 = s.inputs[0].1.clone(), "inputs"),
            (|s| s.args.push("a\0b".into()), "args"),
            (
                |s| {
                    s.env.insert("A=B".into(), "x".into());
                },
                "env",
            ),
        ];
        for (edit, field) in cases {
            let mut s = spec();
            edit(&mut s);
            match plan(&s, &ids(true), &mut inspect, true) {
                Err(SandboxError::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected InvalidSpec({field}), got {other:?}"),
            }
        }
    }

    #[test]
    fn a_missing_input_names_the_inspect_step() {
        let mut s = spec();
        s.inputs[0].0 = "/nonexistent/nix/store/aaaa-busybox".into();
        match plan(&s, &ids(true), &mut inspect, true) {
            Err(SandboxError::Step {
                step: Step::InspectInput { path },
                errno: Errno::ENOENT,
            }) => assert_eq!(path, Path::new("/nonexistent/nix/store/aaaa-busybox")),
            other => panic!("{other:?}"),
        }
    }
}
