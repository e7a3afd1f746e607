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
    etc_passwd_for(SANDBOX_UID, SANDBOX_GID, BUILD_DIR)
}

/// `/etc/passwd` of a build whose user is `uid`:`gid` in `build_dir` (a check's variation).
fn etc_passwd_for(uid: u32, gid: u32, build_dir: &str) -> String {
    format!(
        "root:x:0:0:Nix build user:{build_dir}:/noshell\n\
         nixbld:x:{uid}:{gid}:Nix build user:{build_dir}:/noshell\n\
         nobody:x:65534:65534:Nobody:/:/noshell\n"
    )
}

/// `/etc/group` of every build, byte for byte Nix 2.8's.
pub fn etc_group() -> String {
    etc_group_for(SANDBOX_GID)
}

/// `/etc/group` of a build whose group is `gid` (a check's variation).
fn etc_group_for(gid: u32) -> String {
    format!("root:x:0:\nnixbld:!:{gid}:\nnogroup:x:65534:\n")
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

/// Namespace steps that do not depend on the build, in an order they may be applied in
/// ahead of the rest: a PID 1 that the zygote clones before a build is known does them
/// while it waits, and skips them in the plan it then gets (they appear in every plan,
/// equal to these). None of them touches the root, the inputs or the build's files.
pub(crate) fn prelude() -> Vec<Step> {
    let mut steps = vec![
        Step::MakeMountsPrivate,
        Step::LoopbackUp,
        Step::SetHostname {
            name: "localhost".to_string(),
        },
        Step::SetDomainname {
            name: "(none)".to_string(),
        },
    ];
    steps.extend(DEVICES.iter().map(|d| Step::DetachTree {
        source: format!("/dev/{d}").into(),
    }));
    steps
}

/// Whether `name` looks like the base name of a store path: 32 characters of Nix's
/// base-32 alphabet, a dash, and a name.
pub(crate) fn is_store_path_name(name: &std::ffi::OsStr) -> bool {
    const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let name = name.as_encoded_bytes();
    name.len() > 33 && name[32] == b'-' && name[..32].iter().all(|c| NIX32.contains(c))
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

/// The environment of the builder, with Nix 2.8's precedence (`initEnv`/`initTmpDir`):
/// `PATH`, `HOME`, `NIX_STORE` and `NIX_BUILD_CORES` first, then the derivation's
/// variables (which may override those four), then `NIX_BUILD_TOP`, `TMPDIR`, `TEMPDIR`,
/// `TMP`, `TEMP`, `PWD`, `NIX_LOG_FD` and `TERM`, which the derivation cannot override.
/// `build_dir` is the build directory inside the sandbox ([`BUILD_DIR`] but in a check).
pub fn builder_environment(
    store_dir: &str,
    cores: u32,
    derivation_env: &BTreeMap<String, String>,
    build_dir: &str,
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
        env.insert(k.to_string(), build_dir.to_string());
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
    if let Some(dir) = &spec.variation.build_dir {
        let name = dir
            .strip_prefix("/tmp/")
            .or_else(|| dir.strip_prefix('/'))
            .unwrap_or_default();
        let plain = !name.is_empty() && name != "." && name != ".." && !name.contains('/');
        let store_top = spec.store_dir.split('/').nth(1).unwrap_or_default();
        if !plain || (RESERVED.contains(&name) && !dir.starts_with("/tmp/")) || name == store_top {
            return Err(invalid(
                "variation.build_dir",
                format!(
                    "`{dir}` must be `/NAME` or `/tmp/NAME`, one plain name that is not the \
                     store's or one of the sandbox's own ({})",
                    RESERVED.join(", ")
                ),
            ));
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

/// Where the inputs' mount points are, and so how the store directory inside is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreLayout {
    /// In `root_dir` on disk, which is bound at the store directory.
    OnDisk,
    /// In a `tmpfs`, the lower layer of an overlay whose upper layer is `root_dir`: no disk
    /// metadata per input (needs `work_dir`; without one, as `OnDisk`).
    Overlay,
    /// In `root_dir` on disk, where the store view's keeper has bound every input already:
    /// PID 1 attaches the view it is handed (see `views.rs`) and binds no input itself.
    View,
}

/// Where the bind of `root_dir`'s parent is attached for a moment while the overlay is
/// mounted (a top-level name of the new root that ksbuild never creates otherwise).
const LAYERS: &str = ".ksbuild-layers";

/// What an input is mounted with (in a store view too): read-only, `nosuid`, `nodev`.
pub(crate) const INPUT_FLAGS: RemountFlags = RemountFlags {
    read_only: true,
    nosuid: true,
    nodev: true,
    noexec: false,
};

/// The on-disk side of the store directory's overlay.
#[derive(Debug, Clone, PartialEq, Eq)]
struct OverlayLayers {
    /// The common parent of `root_dir` and the work directory.
    parent: PathBuf,
    /// `root_dir`'s name in it (the upper layer).
    upper_name: PathBuf,
    /// The work directory's name in it.
    work_name: PathBuf,
    /// The work directory.
    work_on_disk: PathBuf,
}

/// Checks that `work` is beside `root` (one mount holds both, as overlayfs requires).
fn overlay_layers(root: &Path, work: &Path) -> Result<OverlayLayers, SandboxError> {
    let (Some(parent), Some(upper_name), Some(work_name)) =
        (root.parent(), root.file_name(), work.file_name())
    else {
        return Err(invalid("work_dir", "root_dir and work_dir need a parent"));
    };
    if work.parent() != Some(parent) || upper_name == work_name {
        return Err(invalid(
            "work_dir",
            format!(
                "`{}` must be beside `{}`, in the same directory",
                work.display(),
                root.display()
            ),
        ));
    }
    Ok(OverlayLayers {
        parent: parent.to_path_buf(),
        upper_name: upper_name.into(),
        work_name: work_name.into(),
        work_on_disk: work.to_path_buf(),
    })
}

/// Plans a sandbox. `inspect` tells what each input's physical path is (the caller
/// answers with `lstat`); `devpts` says whether to mount a private `/dev/pts` (Nix does
/// when the host has `/dev/pts/ptmx`).
///
/// Layout: the new root is a `tmpfs` owned by the build user, mounted over `root_dir` in
/// the build's own mount namespace; only the store directory inside it is on disk:
/// `root_dir` itself, taken before the tmpfs hides it and bound at the store directory,
/// so that outputs stay on the store's filesystem and everything else costs no disk
/// metadata and vanishes with the namespace.
/// The inputs bound from one directory of the host into one directory of the new root,
/// under their own names (see [`Step::DetachTrees`]).
struct InputBatch {
    dir: PathBuf,
    target: PathBuf,
    /// Names, and whether each is a directory.
    entries: Vec<(String, bool)>,
}

pub(crate) fn plan(
    spec: &SandboxSpec,
    ids: &HostIds,
    inspect: &mut dyn FnMut(&Path) -> Result<InputKind, Errno>,
    devpts: bool,
    layout: StoreLayout,
) -> Result<Plan, SandboxError> {
    validate(spec)?;
    let overlay = match (&spec.work_dir, layout) {
        (Some(work), StoreLayout::Overlay) => Some(overlay_layers(&spec.root_dir, work)?),
        _ => None,
    };
    let view = layout == StoreLayout::View;
    let root = spec.root_dir.as_path();
    let variation = &spec.variation;
    let (uid, gid) = variation.ids.unwrap_or((SANDBOX_UID, SANDBOX_GID));
    let build_dir = variation.build_dir.as_deref().unwrap_or(BUILD_DIR);
    let build_relative = PathBuf::from(build_dir.trim_start_matches('/'));
    let build_at_top = !build_dir.starts_with("/tmp/");
    let mut host = Vec::new();
    let mut ns = Vec::new();

    // -- host side, as the invoking user (root or not), before any namespace exists -------
    if ids.invoker_is_root {
        host.push(Step::ClearSupplementaryGroups);
    }
    // The store directory on disk is `root_dir` itself (the tmpfs root hides it, and it is
    // bound at the store directory inside): 1775 root:nixbld as in Nix, so the build user
    // can create its outputs there and change nothing else. (No `nix/store` directories
    // on disk: each directory created and removed per build costs an inode allocation.)
    let store = Path::new(&spec.store_dir);
    let store_relative = store.strip_prefix("/").unwrap_or(store).to_path_buf();
    let store_on_disk = root.to_path_buf();
    host.push(Step::SetOwner {
        path: store_on_disk.clone(),
        uid: Some(ids.owner_uid),
        gid: Some(ids.build_gid),
    });
    host.push(Step::SetMode {
        path: store_on_disk.clone(),
        mode: 0o1775,
    });
    // Mount points of the inputs: with an overlay, in its tmpfs skeleton (created inside
    // the namespace, below); else in the store directory on disk.
    let mut bound_inputs = Vec::new();
    let mut batches: Vec<InputBatch> = Vec::new();
    let mut skeleton = Vec::new();
    // With a view, the inputs are in it already (see `views.rs`).
    for (physical, logical) in spec.inputs.iter().filter(|_| !view) {
        let relative = PathBuf::from(logical.trim_start_matches('/'));
        let on_disk = store_on_disk.join(relative.file_name().unwrap_or_default());
        let kind = inspect(physical).map_err(|errno| SandboxError::Step {
            step: Step::InspectInput {
                path: physical.clone(),
            },
            errno,
        })?;
        let copied = variation.shuffled_order && kind == InputKind::Directory;
        // An input bound under its own name from a directory of the host (a store path
        // from the store) joins that directory's batch: one lookup of each directory, not
        // one per input (a closure may hold thousands).
        let batched = match (physical.parent(), relative.parent(), physical.file_name()) {
            (Some(dir), Some(target), Some(name))
                if !copied
                    && !matches!(kind, InputKind::Symlink(_))
                    && !target.as_os_str().is_empty()
                    && relative.file_name() == Some(name) =>
            {
                name.to_str().map(|n| (dir, target, n))
            }
            _ => None,
        };
        if let Some((dir, target, name)) = batched {
            let at = match batches
                .iter()
                .position(|b| b.dir == dir && b.target == target)
            {
                Some(at) => at,
                None => {
                    batches.push(InputBatch {
                        dir: dir.to_path_buf(),
                        target: target.to_path_buf(),
                        entries: Vec::new(),
                    });
                    batches.len() - 1
                }
            };
            batches[at]
                .entries
                .push((name.to_string(), kind == InputKind::Directory));
            if overlay.is_none() {
                host.push(Step::CreateMountPoint {
                    source: physical.clone(),
                    target: on_disk,
                });
            }
            continue;
        }
        let mount_point = match (&kind, overlay.is_some()) {
            (InputKind::Symlink(link), true) => Step::CreateSymlink {
                target: link.clone(),
                path: relative.clone(),
            },
            (InputKind::Symlink(link), false) => Step::CreateSymlink {
                target: link.clone(),
                path: on_disk,
            },
            (InputKind::Directory, true) => Step::CreateDirectory {
                path: relative.clone(),
                mode: 0o755,
            },
            (InputKind::File, true) => Step::CreateFile {
                path: relative.clone(),
            },
            (_, false) => Step::CreateMountPoint {
                source: physical.clone(),
                target: on_disk,
            },
        };
        if overlay.is_some() {
            skeleton.push(mount_point);
        } else {
            host.push(mount_point);
        }
        if !matches!(kind, InputKind::Symlink(_)) {
            bound_inputs.push((physical.clone(), relative, copied));
        }
    }
    if overlay.is_some() {
        skeleton.extend(batches.iter().map(|b| Step::CreateMountPoints {
            dir: b.target.clone(),
            entries: b.entries.clone(),
        }));
    }
    // A directory of the build user's alone.
    let private_to_build_user = |host: &mut Vec<Step>, path: &Path| {
        host.push(Step::SetOwner {
            path: path.to_path_buf(),
            uid: Some(ids.build_uid),
            gid: Some(ids.build_gid),
        });
        host.push(Step::SetMode {
            path: path.to_path_buf(),
            mode: 0o700,
        });
    };
    if let Some(layers) = &overlay {
        // overlayfs's work directory belongs to the build user, whose filesystem ids PID 1
        // has when it mounts the overlay (the overlay acts on its layers with them).
        private_to_build_user(&mut host, &layers.work_on_disk);
    }
    private_to_build_user(&mut host, &spec.build_dir);

    // -- inside the namespaces, as PID 1 ---------------------------------------------------
    // 1. Take every host path the build needs while host paths can still be reached with
    //    this process's own (host) filesystem ids.
    ns.push(Step::MakeMountsPrivate);
    if !view {
        ns.push(Step::DetachTree {
            source: match &overlay {
                Some(layers) => layers.parent.clone(),
                None => store_on_disk.clone(),
            },
        });
    }
    for (physical, _, _) in &bound_inputs {
        ns.push(Step::DetachTree {
            source: physical.clone(),
        });
    }
    for b in &batches {
        ns.push(Step::DetachTrees {
            dir: b.dir.clone(),
            names: b.entries.iter().map(|(name, _)| name.clone()).collect(),
            restrict: Some(INPUT_FLAGS),
        });
    }
    ns.push(Step::DetachTree {
        source: spec.build_dir.clone(),
    });
    for d in DEVICES {
        ns.push(Step::DetachTree {
            source: format!("/dev/{d}").into(),
        });
    }
    // A time namespace is entered while this process's own filesystem ids (the owner of
    // its `/proc/self/timens_offsets`) are in force, before they become the build user's.
    if let Some(seconds) = variation.clocks_ahead {
        ns.push(Step::EnterTimeNamespace { seconds });
    }
    // 2. The new root: a tmpfs owned by the build user, 0750 as Nix's; from here on paths
    //    are relative to it, and files are created as the build user.
    ns.push(Step::MountTmpfs {
        target: root.to_path_buf(),
        options: format!("mode=0750,uid={uid},gid={gid}"),
    });
    ns.push(Step::ChangeDirectory {
        path: root.to_path_buf(),
    });
    ns.push(Step::SetFilesystemIds { uid, gid });
    let mut prefix = PathBuf::new();
    for c in store_relative.components() {
        prefix.push(c);
        ns.push(Step::CreateDirectory {
            path: prefix.clone(),
            mode: 0o755,
        });
    }
    if let Some(layers) = &overlay {
        // The store directory: the skeleton of mount points in the tmpfs, under `root_dir`
        // on disk. Its parent is bound for a moment at `LAYERS`, so that the upper and
        // work directories are reached on one mount (as overlayfs requires) once the tmpfs
        // hides `root_dir`; the overlay keeps its own private clones of its layers, so
        // that bind is detached and its mount point removed before anything else exists.
        ns.extend(skeleton);
        ns.push(Step::CreateDirectory {
            path: LAYERS.into(),
            mode: 0o700,
        });
        ns.push(Step::AttachTree {
            source: layers.parent.clone(),
            target: LAYERS.into(),
        });
        ns.push(Step::MountOverlay {
            target: store_relative.clone(),
            lower: store_relative.clone(),
            upper: Path::new(LAYERS).join(&layers.upper_name),
            work: Path::new(LAYERS).join(&layers.work_name),
        });
        ns.push(Step::DetachMount {
            target: LAYERS.into(),
        });
        ns.push(Step::RemoveDirectory {
            path: LAYERS.into(),
        });
    }
    let create_build_dir = Step::CreateDirectory {
        path: build_relative.clone(),
        mode: 0o700,
    };
    if build_at_top {
        ns.push(create_build_dir.clone());
    }
    ns.push(Step::CreateDirectory {
        path: "tmp".into(),
        mode: 0o1777,
    });
    if !build_at_top {
        ns.push(create_build_dir);
    }
    ns.push(Step::CreateDirectory {
        path: "etc".into(),
        mode: 0o755,
    });
    for (name, contents) in [
        ("etc/passwd", etc_passwd_for(uid, gid, build_dir)),
        ("etc/group", etc_group_for(gid)),
        ("etc/hosts", ETC_HOSTS.to_string()),
    ] {
        ns.push(Step::WriteFile {
            path: name.into(),
            mode: 0o644,
            contents,
        });
    }
    ns.push(Step::CreateDirectory {
        path: "dev".into(),
        mode: 0o755,
    });
    for d in DEVICES {
        ns.push(Step::CreateFile {
            path: format!("dev/{d}").into(),
        });
    }
    ns.push(Step::CreateDirectory {
        path: "dev/shm".into(),
        mode: 0o755,
    });
    if devpts {
        ns.push(Step::CreateDirectory {
            path: "dev/pts".into(),
            mode: 0o755,
        });
        ns.push(Step::CreateSymlink {
            target: "/dev/pts/ptmx".into(),
            path: "dev/ptmx".into(),
        });
    }
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        ns.push(Step::CreateSymlink {
            target: target.into(),
            path: format!("dev/{name}").into(),
        });
    }
    ns.push(Step::CreateDirectory {
        path: "proc".into(),
        mode: 0o555,
    });
    // 3. Attach what was taken: the store directory (rw, for the outputs), the inputs
    //    read-only, /build, and the device nodes read-only (I/O on a device does not need a
    //    writable mount, but chmod/chown of the host's node would), never nodev.
    let rw = RemountFlags {
        nosuid: true,
        nodev: true,
        ..RemountFlags::default()
    };
    if overlay.is_none() && !view {
        ns.push(Step::AttachTree {
            source: store_on_disk,
            target: store_relative.clone(),
        });
    }
    let remount_store = Step::Remount {
        target: store_relative.clone(),
        flags: rw,
    };
    if !view {
        ns.push(remount_store.clone());
    }
    for (physical, relative, copied) in bound_inputs {
        if copied {
            ns.push(Step::MountTmpfs {
                target: relative.clone(),
                options: format!("mode=0755,uid={uid},gid={gid}"),
            });
            ns.push(Step::CopyTree {
                source: physical,
                target: relative.clone(),
            });
        } else {
            ns.push(Step::AttachTree {
                source: physical,
                target: relative.clone(),
            });
        }
        ns.push(Step::Remount {
            target: relative,
            flags: INPUT_FLAGS,
        });
    }
    for b in batches {
        ns.push(Step::AttachTrees {
            source: b.dir,
            target: b.target,
            flags: INPUT_FLAGS,
            restrict_detached: true,
        });
    }
    if variation.shuffled_order {
        ns.push(Step::MountTmpfs {
            target: build_relative.clone(),
            options: format!("mode=0700,uid={uid},gid={gid}"),
        });
        ns.push(Step::CopyTree {
            source: spec.build_dir.clone(),
            target: build_relative.clone(),
        });
    } else {
        ns.push(Step::AttachTree {
            source: spec.build_dir.clone(),
            target: build_relative.clone(),
        });
        ns.push(Step::Remount {
            target: build_relative,
            flags: rw,
        });
    }
    for d in DEVICES {
        ns.push(Step::AttachTree {
            source: format!("/dev/{d}").into(),
            target: format!("dev/{d}").into(),
        });
        ns.push(Step::Remount {
            target: format!("dev/{d}").into(),
            flags: RemountFlags {
                read_only: true,
                nosuid: true,
                nodev: false,
                noexec: true,
            },
        });
    }
    ns.push(Step::MountTmpfs {
        target: "dev/shm".into(),
        options: "mode=1777".to_string(),
    });
    if devpts {
        ns.push(Step::MountDevpts {
            target: "dev/pts".into(),
            options: "newinstance,ptmxmode=0666,mode=0620".to_string(),
        });
    }
    ns.push(Step::MountProc {
        target: "proc".into(),
    });
    // 4. The tmpfs becomes `/`; the host's root is detached.
    ns.push(Step::PivotRoot {
        new_root: ".".into(),
    });
    ns.push(Step::DetachOldRoot);
    if view {
        // A view is attached once the old root is detached: detaching a tree costs the
        // kernel a walk of every mount of the namespace, a view's thousands included.
        ns.push(Step::AttachView {
            target: store_relative,
        });
        ns.push(remount_store);
    }
    // 5. Network, names, session, stdio.
    ns.push(Step::LoopbackUp);
    ns.push(Step::SetHostname {
        name: "localhost".to_string(),
    });
    ns.push(Step::SetDomainname {
        name: "(none)".to_string(),
    });
    // A varied name comes after the standard one, which a waiting PID 1 has set ahead.
    if let Some(name) = &spec.variation.hostname {
        ns.push(Step::SetHostname { name: name.clone() });
        ns.push(Step::SetDomainname { name: name.clone() });
    }
    ns.push(Step::NewSession);
    ns.push(Step::RedirectStdio);
    // 6. Privilege drop: group, then user; the credential change cleared the parent-death
    //    signal, so re-arm it; then the rest of Nix's process state, capabilities last.
    ns.push(Step::SetGroupId { gid });
    ns.push(Step::SetUserId { uid });
    ns.push(Step::NewSessionKeyring);
    ns.push(Step::ParentDeathSignal);
    ns.push(Step::NoNewPrivileges);
    ns.push(Step::SeccompFilter);
    if !spec.variation.aslr {
        ns.push(Step::DisableAddressRandomisation);
    }
    if spec.variation.old_kernel_release {
        ns.push(Step::ReportOldKernelRelease);
    }
    if let Some(count) = spec.variation.cpus {
        ns.push(Step::RestrictCpus { count });
    }
    ns.push(Step::LimitCoreDumps);
    if let Some(max) = spec.max_processes {
        ns.push(Step::LimitProcesses { max });
    }
    ns.push(Step::SetUmask {
        mask: spec.variation.umask.unwrap_or(0o022),
    });
    ns.push(Step::ChangeDirectory {
        path: build_dir.into(),
    });
    ns.push(Step::ResetSignals);
    ns.push(Step::DropCapabilities);

    let cores = spec.variation.cpus.unwrap_or(spec.cores);
    let env = builder_environment(&spec.store_dir, cores, &spec.env, build_dir)
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    Ok(Plan {
        host,
        id_maps: ids.map_files(uid, gid),
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

    pub(super) fn spec() -> SandboxSpec {
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
            work_dir: None,
            build_dir: "/s/build".into(),
            cores: 2,
            timeout: Some(Duration::from_secs(1)),
            max_silent_time: None,
            max_processes: None,
            variation: Default::default(),
            build_user: super::super::BuildUser::Auto,
            log: "/s/log".into(),
            store_view: None,
        }
    }

    /// The plan of [`spec`] with its mount points on disk and a private `/dev/pts`.
    fn plan_on_disk(root: bool) -> Plan {
        plan(&spec(), &ids(root), &mut inspect, true, StoreLayout::OnDisk).unwrap()
    }

    pub(super) fn ids(root: bool) -> HostIds {
        HostIds {
            build_uid: 4000,
            build_gid: 4000,
            owner_uid: if root { 0 } else { 4000 },
            invoker_is_root: root,
        }
    }

    pub(super) fn inspect(p: &Path) -> Result<InputKind, Errno> {
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
    fn with_a_view_no_input_is_planned_and_the_view_comes_after_the_old_root() {
        let mut inspected = 0;
        let mut counting = |p: &Path| {
            inspected += 1;
            inspect(p)
        };
        let p = plan(&spec(), &ids(false), &mut counting, true, StoreLayout::View).unwrap();
        assert_eq!(inspected, 0, "an input was inspected");
        let all: Vec<&Step> = p.host.iter().chain(&p.namespace).collect();
        assert!(!all.iter().any(|s| matches!(
            s,
            Step::CreateMountPoint { .. }
                | Step::CreateSymlink { .. }
                | Step::DetachTrees { .. }
                | Step::AttachTrees { .. }
                | Step::MountOverlay { .. }
        ) && !matches!(s, Step::CreateSymlink { path, .. } if path.starts_with("dev"))));
        let at = |pred: &dyn Fn(&Step) -> bool| p.namespace.iter().position(pred).unwrap();
        let view =
            at(&|s| matches!(s, Step::AttachView { target } if target == Path::new("nix/store")));
        let detach = at(&|s| *s == Step::DetachOldRoot);
        let remount =
            at(&|s| matches!(s, Step::Remount { target, .. } if target == Path::new("nix/store")));
        assert!(detach < view && view < remount, "{:?}", p.namespace);
        assert!(!p
            .namespace
            .iter()
            .any(|s| matches!(s, Step::DetachTree { source } if source == Path::new("/s/root"))));
    }

    #[test]
    fn the_prelude_is_in_every_plan_and_comes_first_where_it_matters() {
        let p = plan_on_disk(false);
        for step in prelude() {
            assert!(p.namespace.contains(&step), "{step} is not in the plan");
        }
        // What the prelude does early must not depend on anything before it in the plan
        // but making mounts private, which it does first.
        assert_eq!(p.namespace[0], Step::MakeMountsPrivate);
        assert_eq!(prelude()[0], Step::MakeMountsPrivate);
    }

    #[test]
    fn store_path_names_are_recognised() {
        use std::ffi::OsStr;
        assert!(is_store_path_name(OsStr::new(
            "71fc7s32zl20dc955bhghy5dvalm7ndz-busybox"
        )));
        for not in [
            "junk",
            "71fc7s32zl20dc955bhghy5dvalm7ndz-",
            "71fc7s32zl20dc955bhghy5dvalm7ndze-x",
            "71fc7s32zl20dc955bhghy5dvalm7ndu-x",
        ] {
            assert!(!is_store_path_name(OsStr::new(not)), "{not}");
        }
    }

    #[test]
    fn environment_has_nix_precedence() {
        let env = builder_environment("/nix/store", 2, &spec().env, BUILD_DIR);
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
        let p = plan_on_disk(true);
        assert_eq!(p.exec.argv, ["busybox", "sh", "-c", "true"]);
        assert_eq!(p.exec.path, "/nix/store/aaaa-busybox/bin/busybox");
        let mut sorted = p.exec.env.clone();
        sorted.sort();
        assert_eq!(p.exec.env, sorted, "envp is sorted like Nix's std::map");
    }

    #[test]
    fn steps_come_in_the_documented_order() {
        let p = plan_on_disk(true);
        assert!(p.host.iter().all(Step::is_host_step));
        let ns = &p.namespace;
        let private = position(ns, |s| matches!(s, Step::MakeMountsPrivate));
        let root_tmpfs = position(
            ns,
            |s| matches!(s, Step::MountTmpfs { target, .. } if target == Path::new("/s/root")),
        );
        let last_detach = ns
            .iter()
            .rposition(|s| matches!(s, Step::DetachTree { .. } | Step::DetachTrees { .. }))
            .unwrap();
        let fsids = position(ns, |s| matches!(s, Step::SetFilesystemIds { .. }));
        let first_create = position(ns, |s| matches!(s, Step::CreateDirectory { .. }));
        let last_mount = ns
            .iter()
            .rposition(|s| {
                matches!(
                    s,
                    Step::AttachTree { .. }
                        | Step::AttachTrees { .. }
                        | Step::Remount { .. }
                        | Step::MountProc { .. }
                        | Step::MountTmpfs { .. }
                        | Step::MountDevpts { .. }
                )
            })
            .unwrap();
        // Host paths are all taken before the tmpfs hides `root_dir` and before the
        // filesystem ids change; the skeleton is created after.
        assert!(last_detach < root_tmpfs && root_tmpfs < fsids && fsids < first_create);
        // Every detached tree is attached exactly once.
        for s in ns {
            if let Step::DetachTree { source } = s {
                assert_eq!(
                    ns.iter()
                        .filter(|a| matches!(a, Step::AttachTree { source: x, .. } if x == source))
                        .count(),
                    1,
                    "{source:?}"
                );
            }
        }
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
        // The store's inputs are taken as one batch, attached once, read-only.
        let batch = |s: &Step| matches!(s, Step::DetachTrees { dir, .. } if dir == Path::new("/s/nix/store"));
        assert_eq!(ns.iter().filter(|s| batch(s)).count(), 1);
        assert_eq!(
            ns[position(ns, batch)],
            Step::DetachTrees {
                dir: "/s/nix/store".into(),
                names: vec!["aaaa-busybox".into()],
                restrict: Some(INPUT_FLAGS),
            }
        );
        assert!(position(ns, batch) < root_tmpfs);
        assert_eq!(
            ns.iter()
                .filter(|s| matches!(s, Step::AttachTrees { .. }))
                .collect::<Vec<_>>(),
            [&Step::AttachTrees {
                source: "/s/nix/store".into(),
                target: "nix/store".into(),
                flags: INPUT_FLAGS,
                restrict_detached: true,
            }]
        );
        // Every attached input is followed by its read-only remount.
        for (i, s) in ns.iter().enumerate() {
            if let Step::AttachTree { source, target } = s {
                if source.starts_with("/s/nix/store") {
                    assert_eq!(
                        ns[i + 1],
                        Step::Remount {
                            target: target.clone(),
                            flags: INPUT_FLAGS,
                        }
                    );
                }
            }
        }
        // The symlink input is recreated, not bound.
        assert!(p.host.contains(&Step::CreateSymlink {
            target: "aaaa-busybox".into(),
            path: "/s/root/cccc-link".into()
        }));
        assert!(!ns
            .iter()
            .any(|s| matches!(s, Step::DetachTree { source } if source.ends_with("cccc-link"))));
    }

    #[test]
    fn with_the_overlay_no_mount_point_is_on_disk_and_the_layers_bind_is_gone_first() {
        let mut s = spec();
        s.work_dir = Some("/s/root.work".into());
        // Without permission to use it, or without a work directory, no overlay.
        let without = plan(&s, &ids(true), &mut inspect, true, StoreLayout::OnDisk).unwrap();
        assert!(!without
            .namespace
            .iter()
            .any(|s| matches!(s, Step::MountOverlay { .. })));
        assert_eq!(
            plan(
                &spec(),
                &ids(true),
                &mut inspect,
                true,
                StoreLayout::Overlay
            )
            .unwrap(),
            plan_on_disk(true)
        );
        let p = plan(&s, &ids(true), &mut inspect, true, StoreLayout::Overlay).unwrap();
        assert!(p.host.iter().all(Step::is_host_step));
        // On the host: nothing is created in `root_dir`; the work directory is the build
        // user's.
        assert!(!p.host.iter().any(|s| matches!(
            s,
            Step::CreateMountPoint { .. } | Step::CreateSymlink { .. } | Step::CreateFile { .. }
        )));
        assert!(p.host.contains(&Step::SetOwner {
            path: "/s/root.work".into(),
            uid: Some(4000),
            gid: Some(4000)
        }));
        let ns = &p.namespace;
        assert!(ns.contains(&Step::DetachTree {
            source: "/s".into()
        }));
        assert!(!ns.contains(&Step::DetachTree {
            source: "/s/root".into()
        }));
        let fsids = position(ns, |s| matches!(s, Step::SetFilesystemIds { .. }));
        let skeleton_dir = position(ns, |s| {
            *s == Step::CreateMountPoints {
                dir: "nix/store".into(),
                entries: vec![("aaaa-busybox".into(), true)],
            }
        });
        let skeleton_link = position(ns, |s| {
            *s == Step::CreateSymlink {
                target: "aaaa-busybox".into(),
                path: "nix/store/cccc-link".into(),
            }
        });
        let overlay = position(ns, |s| {
            *s == Step::MountOverlay {
                target: "nix/store".into(),
                lower: "nix/store".into(),
                upper: Path::new(LAYERS).join("root"),
                work: Path::new(LAYERS).join("root.work"),
            }
        });
        let detach = position(ns, |s| {
            *s == Step::DetachMount {
                target: LAYERS.into(),
            }
        });
        let removed = position(ns, |s| {
            *s == Step::RemoveDirectory {
                path: LAYERS.into(),
            }
        });
        let bound = position(
            ns,
            |s| matches!(s, Step::AttachTrees { target, .. } if target == Path::new("nix/store")),
        );
        let build = position(
            ns,
            |s| matches!(s, Step::CreateDirectory { path, .. } if path == Path::new("build")),
        );
        // The skeleton is complete before the overlay is mounted over it (a lower layer must
        // not change under an overlay), by the build user; the temporary bind is gone before
        // anything else of the root exists; the inputs are bound onto the merged store.
        assert!(fsids < skeleton_dir && skeleton_dir < overlay && skeleton_link < overlay);
        assert!(overlay < detach && detach + 1 == removed && removed < build);
        assert!(overlay < bound);
        // A work directory that is not beside `root_dir` is refused.
        s.work_dir = Some("/elsewhere/work".into());
        assert!(plan(&s, &ids(true), &mut inspect, true, StoreLayout::Overlay).is_err());
    }

    #[test]
    fn an_input_under_another_name_or_copied_is_bound_on_its_own() {
        let mut s = spec();
        s.inputs
            .push(("/s/other/dddd-x".into(), "/nix/store/eeee-y".into()));
        let p = plan(&s, &ids(true), &mut inspect, true, StoreLayout::OnDisk).unwrap();
        let ns = &p.namespace;
        let attach = position(ns, |s| {
            *s == Step::AttachTree {
                source: "/s/other/dddd-x".into(),
                target: "nix/store/eeee-y".into(),
            }
        });
        assert!(
            matches!(&ns[attach + 1], Step::Remount { target, flags } if target == Path::new("nix/store/eeee-y") && flags.read_only)
        );
        assert!(ns.contains(&Step::DetachTree {
            source: "/s/other/dddd-x".into()
        }));
        assert!(ns.contains(&Step::DetachTrees {
            dir: "/s/nix/store".into(),
            names: vec!["aaaa-busybox".into()],
            restrict: Some(INPUT_FLAGS),
        }));
        // A directory copied in shuffled order (a check's variation) is not bound at all.
        s.variation.shuffled_order = true;
        let p = plan(&s, &ids(true), &mut inspect, true, StoreLayout::OnDisk).unwrap();
        assert!(!p
            .namespace
            .iter()
            .any(|s| matches!(s, Step::DetachTrees { .. })));
        assert!(p.namespace.contains(&Step::CopyTree {
            source: "/s/nix/store/aaaa-busybox".into(),
            target: "nix/store/aaaa-busybox".into(),
        }));
    }

    #[test]
    fn only_root_clears_groups_and_the_store_is_group_writable() {
        let p = plan(
            &spec(),
            &ids(true),
            &mut inspect,
            false,
            StoreLayout::OnDisk,
        )
        .unwrap();
        assert_eq!(p.host[0], Step::ClearSupplementaryGroups);
        assert!(p.host.contains(&Step::SetMode {
            path: "/s/root".into(),
            mode: 0o1775
        }));
        assert!(p.host.contains(&Step::SetOwner {
            path: "/s/root".into(),
            uid: Some(0),
            gid: Some(4000)
        }));
        assert!(!p
            .host
            .iter()
            .any(|s| matches!(s, Step::CreateSymlink { path, .. } if path.ends_with("ptmx"))));
        let p = plan_on_disk(false);
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
            match plan(&s, &ids(true), &mut inspect, true, StoreLayout::OnDisk) {
                Err(SandboxError::InvalidSpec { field: f, .. }) => assert_eq!(f, field),
                other => panic!("expected InvalidSpec({field}), got {other:?}"),
            }
        }
    }

    #[test]
    fn a_missing_input_names_the_inspect_step() {
        let mut s = spec();
        s.inputs[0].0 = "/nonexistent/nix/store/aaaa-busybox".into();
        match plan(&s, &ids(true), &mut inspect, true, StoreLayout::OnDisk) {
            Err(SandboxError::Step {
                step: Step::InspectInput { path },
                errno: Errno::ENOENT,
            }) => assert_eq!(path, Path::new("/nonexistent/nix/store/aaaa-busybox")),
            other => panic!("{other:?}"),
        }
    }
}

#[cfg(test)]
mod variation_tests {
    use super::super::Variation;
    use super::tests::{ids, inspect, spec};
    use super::*;

    #[test]
    fn a_varied_plan_copies_directories_renames_and_remaps() {
        let mut s = spec();
        s.variation = Variation {
            ids: Some((30001, 30000)),
            build_dir: Some("/tmp/nix-build-check".into()),
            shuffled_order: true,
            clocks_ahead: Some(60),
            ..Variation::default()
        };
        let p = plan(&s, &ids(false), &mut inspect, true, StoreLayout::OnDisk).unwrap();
        let ns = &p.namespace;
        let input = Path::new("nix/store/aaaa-busybox");
        // The directory input is a shuffled copy on a tmpfs, read-only, never bound.
        let tmpfs = ns
            .iter()
            .position(|x| matches!(x, Step::MountTmpfs { target, .. } if target == input))
            .expect("a tmpfs for the input");
        assert!(matches!(&ns[tmpfs + 1], Step::CopyTree { target, .. } if target == input));
        assert!(matches!(&ns[tmpfs + 2],
            Step::Remount { target, flags } if target == input && flags.read_only));
        assert!(!ns
            .iter()
            .any(|x| matches!(x, Step::AttachTree { target, .. } if target == input)));
        // /build is renamed (after /tmp exists), on a tmpfs holding a copy of build_dir.
        let build = Path::new("tmp/nix-build-check");
        let tmp = ns
            .iter()
            .position(
                |x| matches!(x, Step::CreateDirectory { path, .. } if path == Path::new("tmp")),
            )
            .unwrap();
        let made = ns
            .iter()
            .position(|x| matches!(x, Step::CreateDirectory { path, .. } if path == build))
            .unwrap();
        assert!(tmp < made);
        assert!(ns.contains(&Step::CopyTree {
            source: "/s/build".into(),
            target: build.into()
        }));
        assert!(ns.contains(&Step::ChangeDirectory {
            path: "/tmp/nix-build-check".into()
        }));
        assert!(p
            .exec
            .env
            .contains(&"TMPDIR=/tmp/nix-build-check".to_string()));
        // The ids, everywhere they appear.
        assert!(ns.contains(&Step::SetUserId { uid: 30001 }));
        assert!(ns.contains(&Step::SetGroupId { gid: 30000 }));
        assert_eq!(p.id_maps[1].1, "30001 4000 1\n");
        assert!(ns
            .iter()
            .any(|x| matches!(x, Step::WriteFile { contents, .. }
            if contents.contains("nixbld:x:30001:30000:Nix build user:/tmp/nix-build-check:"))));
        // The time namespace is entered before the filesystem ids change.
        let time = ns
            .iter()
            .position(|x| *x == Step::EnterTimeNamespace { seconds: 60 })
            .unwrap();
        let fsids = ns
            .iter()
            .position(|x| matches!(x, Step::SetFilesystemIds { .. }))
            .unwrap();
        assert!(time < fsids);
    }

    #[test]
    fn a_build_dir_that_would_hide_the_sandbox_s_own_is_refused() {
        for bad in ["/proc", "/nix", "/a/b", "/tmp/", "build", "/tmp/.."] {
            let mut s = spec();
            s.variation.build_dir = Some(bad.into());
            let e = plan(&s, &ids(false), &mut inspect, true, StoreLayout::OnDisk).unwrap_err();
            assert!(
                e.to_string().contains("must be `/NAME` or `/tmp/NAME`"),
                "{bad}: {e}"
            );
        }
    }
}
