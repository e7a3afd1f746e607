//! `ksbuild instantiate` and `ksbuild show-derivation`: lowering `derivations/*.toml` to
//! `.drv` files in the store, and showing them as `nix show-derivation` does.

use std::collections::BTreeMap;
use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use super::{out_line, CliError, Context};
use crate::compat::derivation::show_derivation_json;
use crate::model::{lower, Lowered, Project};
use crate::store::Store;

/// Finds the project root: `--project`, else the nearest ancestor of the current
/// directory holding `derivations/`.
pub fn project_root(ctx: &Context) -> Result<PathBuf, CliError> {
    if let Some(p) = &ctx.project {
        return Ok(p.clone());
    }
    let cwd = std::env::current_dir().map_err(|e| CliError::Io {
        action: "read the current directory",
        source: e,
    })?;
    cwd.ancestors()
        .find(|d| d.join("derivations").is_dir())
        .map(Path::to_path_buf)
        .ok_or_else(|| CliError::Usage {
            message: format!(
                "no ksbuild project around `{}` (no `derivations/` folder)",
                cwd.display()
            ),
            hint: Some("run ksbuild inside the project, or pass `--project DIR`".into()),
        })
}

/// Loads the project, lowers `targets`, and writes the sources and `.drv` files to the store.
pub fn instantiate(
    ctx: &Context,
    store: &Store,
    targets: &[String],
) -> Result<(Project, Lowered), CliError> {
    let t0 = std::time::Instant::now();
    let project = Project::load_for(&project_root(ctx)?, targets)?;
    ctx.timing("load the project", t0);
    instantiate_project(ctx, store, project, targets)
}

/// Lowers `targets` of a loaded project, and writes the sources and `.drv` files to the store.
pub fn instantiate_project(
    ctx: &Context,
    store: &Store,
    project: Project,
    targets: &[String],
) -> Result<(Project, Lowered), CliError> {
    let (lowered, _) = lower_project(ctx, store, &project, targets)?;
    Ok((project, lowered))
}

/// Lowers `targets` through the evaluation cache ([`crate::model::eval_cache`]): read back
/// when neither the project's definitions, nor its path inputs, nor ksbuild changed since
/// the same targets were lowered; else `load` loads the project (and may pin downloads
/// first), and the result is kept for the next time.
pub fn lower_cached(
    ctx: &Context,
    store: &Store,
    targets: &[String],
    load: impl FnOnce() -> Result<Project, CliError>,
) -> Result<Lowered, CliError> {
    use crate::model::eval_cache;
    let t0 = std::time::Instant::now();
    let root = project_root(ctx)?;
    let key = eval_cache::Key::new(
        &store.var_dir().join("eval"),
        &root,
        store.store_dir(),
        targets,
    )
    .ok();
    if let Some(hit) = key
        .as_ref()
        .and_then(|k| eval_cache::load(k, &root, store.store_dir()))
    {
        if sources_hold(store, &root, &hit) {
            ctx.timing("read the evaluation cache", t0);
            let t0 = std::time::Instant::now();
            import_sources(store, &hit.sources)?;
            ctx.timing("sources (cached)", t0);
            write_drvs(ctx, store, &hit.lowered)?;
            return Ok(hit.lowered);
        }
    }
    let before = key
        .as_ref()
        .and_then(|_| eval_cache::Snapshot::take(&root).ok());
    ctx.timing("miss the evaluation cache", t0);
    let project = load()?;
    let (lowered, sources) = lower_project(ctx, store, &project, targets)?;
    // Kept only if no file changed while it was lowered (a pin written by `load` counts).
    if let (Some(key), Some(before)) = (key, before) {
        if before.still_holds(&root) {
            let _ = eval_cache::save(&key, &before, store.store_dir(), &lowered, &sources);
        }
    }
    Ok(lowered)
}

/// Whether the path inputs of a cached lowering still lead where they led and still hold
/// what they held (hashed again where the stat cache of source hashes says they changed).
fn sources_hold(store: &Store, root: &Path, hit: &crate::model::eval_cache::Hit) -> bool {
    hit.lowered
        .path_inputs
        .iter()
        .all(|(written, full)| crate::model::confine_to_project(root, written).as_ref() == Ok(full))
        && hit.sources.iter().all(|s| {
            store
                .source_path(&s.full, &s.name)
                .is_ok_and(|p| p == s.path)
        })
}

/// Copies the sources a lowering imported into the store (those not there yet).
fn import_sources(
    store: &Store,
    sources: &[crate::model::eval_cache::Source],
) -> Result<(), CliError> {
    // A source that changed since it was hashed is refused by `copy_source`.
    for s in sources {
        store.copy_source(&s.full, &s.name, s.path.clone())?;
    }
    Ok(())
}

/// Lowers `targets` of `project` and writes the sources and `.drv` files to the store;
/// the lowered graph and the sources it imported.
fn lower_project(
    ctx: &Context,
    store: &Store,
    project: &Project,
    targets: &[String],
) -> Result<(Lowered, Vec<crate::model::eval_cache::Source>), CliError> {
    let t0 = std::time::Instant::now();
    // Each repository file is hashed once per evaluation, however many derivations use
    // it; it is copied into the store only once the whole evaluation has succeeded, so a
    // failed one leaves nothing behind (but for the stat cache of source hashes).
    let mut imported: BTreeMap<(PathBuf, String), crate::compat::StorePath> = BTreeMap::new();
    let mut import = |path: &Path, name: &str| -> Result<crate::compat::StorePath, String> {
        let key = (path.to_path_buf(), name.to_string());
        if let Some(p) = imported.get(&key) {
            return Ok(p.clone());
        }
        let p = store.source_path(path, name).map_err(|e| e.to_string())?;
        imported.insert(key, p.clone());
        Ok(p)
    };
    let lowered = lower(project, store.store_dir(), targets, &mut import)?;
    let sources: Vec<_> = imported
        .into_iter()
        .map(|((full, name), path)| crate::model::eval_cache::Source { full, name, path })
        .collect();
    import_sources(store, &sources)?;
    ctx.timing("lower (with source imports)", t0);
    write_drvs(ctx, store, &lowered)?;
    Ok((lowered, sources))
}

/// Writes the texts and `.drv` files of `lowered` that are not in the store yet.
fn write_drvs(ctx: &Context, store: &Store, lowered: &Lowered) -> Result<(), CliError> {
    let t0 = std::time::Instant::now();
    // Lowering computed every path: those already valid (usually all) cost one stat.
    for (path, contents) in &lowered.texts {
        if !store.is_valid(path)? {
            store.add_text(path.name(), contents.as_bytes(), &Default::default())?;
        }
    }
    // A path is valid only with its references, and a .drv refers to the .drvs of the
    // nodes it depends on (`Lowerer::finish` checks it): from the dependents down, one
    // valid .drv answers for all below it (a graph lowered again costs a stat per target,
    // not one per derivation, and no cached derivation is parsed).
    let mut valid: std::collections::HashSet<&str> = Default::default();
    for key in lowered.order.iter().rev() {
        let node = &lowered.nodes[key];
        if valid.contains(key.as_str()) || store.is_valid(&node.drv_path)? {
            valid.insert(key);
            valid.extend(node.deps.iter().map(String::as_str));
        }
    }
    // A .drv can be added once the .drvs it names are: level by level, each level's
    // files written on all CPUs (a fresh project writes one per derivation).
    let mut levels: Vec<Vec<&crate::model::Node>> = Vec::new();
    let mut level_of: BTreeMap<&crate::compat::StorePath, usize> = BTreeMap::new();
    for key in &lowered.order {
        let node = &lowered.nodes[key];
        // Two keys can lower to one .drv (the same `.deb` in two environments): write it
        // once, or two threads of this process would contend for its lock.
        if level_of.contains_key(&node.drv_path) || valid.contains(key.as_str()) {
            continue;
        }
        let level = node
            .drv
            .input_derivations
            .keys()
            .filter_map(|d| level_of.get(d).map(|l| l + 1))
            .max()
            .unwrap_or(0);
        level_of.insert(&node.drv_path, level);
        if levels.len() <= level {
            levels.resize_with(level + 1, Vec::new);
        }
        levels[level].push(node);
    }
    // One shared GC lock for all the .drv files, not one each (see `GcShared`).
    let _gc = store.lock_gc_shared()?;
    for level in &levels {
        crate::map_parallel(level, 8, |node| {
            store
                .add_derivation(
                    node.drv_path.name(),
                    &node.drv.to_aterm(store.store_dir()),
                    &node.drv.references(),
                )
                .map(|info| debug_assert_eq!(info.path, node.drv_path))
        })
        .into_iter()
        .collect::<Result<(), _>>()?;
    }
    ctx.timing("write the .drv files", t0);
    Ok(())
}

/// `ksbuild instantiate TARGET…`: prints each target's `.drv` path.
pub fn run_instantiate(ctx: &Context, targets: Vec<String>) -> Result<ExitCode, CliError> {
    let store = ctx.open_store()?;
    let lowered = lower_cached(ctx, &store, &targets, || {
        let t0 = std::time::Instant::now();
        let project = Project::load_for(&project_root(ctx)?, &targets)?;
        ctx.timing("load the project", t0);
        Ok(project)
    })?;
    // Never freed: the process's exit is instant, while freeing the tens of thousands of
    // strings and maps of a large graph one by one took 8% of an instantiation.
    let lowered = ManuallyDrop::new(lowered);
    for t in &targets {
        out_line(&store.print(&lowered.nodes[t].drv_path))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `ksbuild show-derivation [-r] TARGET…`: the JSON of `nix show-derivation`.
pub fn run_show(
    ctx: &Context,
    targets: Vec<String>,
    recursive: bool,
) -> Result<ExitCode, CliError> {
    let store = ctx.open_store()?;
    let (_, lowered) = instantiate(ctx, &store, &targets)?;
    let nodes: Vec<_> = if recursive {
        lowered
            .nodes
            .values()
            .map(|n| (&n.drv_path, &*n.drv))
            .collect()
    } else {
        targets
            .iter()
            .map(|t| (&lowered.nodes[t].drv_path, &*lowered.nodes[t].drv))
            .collect()
    };
    let json = show_derivation_json(store.store_dir(), nodes);
    let text = serde_json::to_string_pretty(&json).map_err(|e| CliError::Io {
        action: "encode JSON",
        source: e.into(),
    })?;
    out_line(&text)?;
    Ok(ExitCode::SUCCESS)
}

/// `ksbuild lock [NAME…]`: resolves environments to exact `.deb`s and writes their locks.
pub fn run_lock(ctx: &Context, names: Vec<String>) -> Result<ExitCode, CliError> {
    use crate::model::sandbox::{environment_names, load_environment, lock_path};
    let root = project_root(ctx)?;
    let names = if names.is_empty() {
        environment_names(&root)
    } else {
        names
    };
    if names.is_empty() {
        return Err(CliError::Usage {
            message: format!("no environments in `{}`", root.join("sandboxes").display()),
            hint: Some("declare one as `sandboxes/NAME.toml`".into()),
        });
    }
    let mirrors = crate::fetch::Mirrors::discover();
    for name in names {
        let env = load_environment(&root, &name)?;
        let progress = |m: &str| ctx.note(m);
        let lock = crate::fetch::lock::lock_environment(&name, &env, &mirrors, &progress).map_err(
            |e| CliError::Usage {
                message: format!("cannot lock `{name}`: {e}"),
                hint: e.hint(),
            },
        )?;
        let path = lock_path(&root, &name);
        std::fs::write(&path, lock.to_toml()).map_err(|e| CliError::Io {
            action: "write the lock file",
            source: e,
        })?;
        let bytes: u64 = lock.deb.iter().map(|d| d.size).sum();
        ctx.note(&format!(
            "locked `{name}`: {} packages, {:.1} MB{}",
            lock.deb.len(),
            bytes as f64 / 1e6,
            if lock.signature_checked {
                ", archive signature verified"
            } else {
                "; the archive signature was NOT checked (no gpgv or Debian keyring)"
            }
        ));
        out_line(&path.display().to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The target a download key belongs to: a `[fetch]` file's target, or `TARGET.INPUT`.
fn key_target(project: &Project, key: &str) -> Result<String, CliError> {
    if project.targets.contains_key(key) {
        return Ok(key.to_string());
    }
    match key.rsplit_once('.') {
        Some((target, _)) if project.targets.contains_key(target) => Ok(target.to_string()),
        _ => Ok(project.target(key)?.name.clone()),
    }
}

/// Pins `fetched` downloads (key, url, mode, content), then registers each content at the
/// output path its new pin gives. Returns the project, loaded for `targets`, with the new
/// pins.
fn pin_and_register(
    ctx: &Context,
    store: &Store,
    root: &Path,
    targets: &[String],
    fetched: Vec<(String, String, &'static str, crate::fetch::Prefetched)>,
) -> Result<Project, CliError> {
    let mut pins = crate::model::pins::Pins::load(root)?;
    for (key, url, mode, p) in &fetched {
        let sri = p.hash.to_sri();
        ctx.note(&format!("pinned `{key}`: {url} ({mode}) {sri}"));
        pins.set(url, mode, &sri);
    }
    pins.save(root).map_err(crate::model::ModelError::from)?;
    let project = Project::load_for(root, targets)?;
    let mut targets: Vec<String> = Vec::new();
    for (key, ..) in &fetched {
        targets.push(key_target(&project, key)?);
    }
    let mut import = |path: &Path, name: &str| -> Result<crate::compat::StorePath, String> {
        store.import_source(path, name).map_err(|e| e.to_string())
    };
    let lowered = lower(&project, store.store_dir(), &targets, &mut import)?;
    for (key, _, _, p) in &fetched {
        let info = p
            .register(store, &lowered.nodes[key])
            .map_err(|e| CliError::Usage {
                message: format!("cannot register `{key}`: {e}"),
                hint: e.hint(),
            })?;
        ctx.note(&format!("`{key}` is {}", store.print(&info.path)));
    }
    Ok(project)
}

/// Pins on first fetch every download among `targets` declared without a hash and not
/// pinned yet. Where one cannot be fetched, nothing is built: the error names each such
/// input and the command that provides it.
/// Returns the project, loaded again if pins were added.
pub fn ensure_pinned(
    ctx: &Context,
    store: &Store,
    targets: &[String],
) -> Result<Project, CliError> {
    let t0 = std::time::Instant::now();
    let root = project_root(ctx)?;
    let project = Project::load_for(&root, targets)?;
    ctx.timing("load the project", t0);
    let wanted: Vec<_> = crate::model::unpinned(&project, targets)?
        .into_iter()
        .filter(|u| u.pinned.is_none())
        .collect();
    if wanted.is_empty() {
        return Ok(project);
    }
    let mirrors = crate::fetch::Mirrors::discover();
    let mut fetched = Vec::new();
    let mut missing = Vec::new();
    for u in wanted {
        ctx.note(&format!("fetching `{}` to pin it: {}", u.key, u.url));
        match crate::fetch::prefetch(store, &u.url, u.mode, None, &mirrors) {
            Ok(p) => fetched.push((u.key, u.url, u.mode, p)),
            Err(e) => missing.push((u, e)),
        }
    }
    let project = if fetched.is_empty() {
        project
    } else {
        pin_and_register(ctx, store, &root, targets, fetched)?
    };
    if missing.is_empty() {
        return Ok(project);
    }
    let mut message = format!(
        "{} upstream input(s) are not pinned and cannot be fetched here; nothing was built:",
        missing.len()
    );
    for (u, e) in &missing {
        let reason = match e {
            crate::fetch::FetchError::AllFailed { attempts, .. } if !attempts.is_empty() => {
                attempts[attempts.len() - 1].1.clone()
            }
            other => other.to_string(),
        };
        message.push_str(&format!(
            "\n  - `{}`: {}\n    cannot be fetched: {reason}\n    provide it:  {}",
            u.key,
            u.url,
            crate::model::pins::pin_command(&u.key, &u.url)
        ));
    }
    Err(CliError::Usage {
        message,
        hint: Some(
            "`ksbuild pin TARGET FILE` hashes the file you downloaded elsewhere, records the hash in \
             `derivations/pins.lock` and adds it to the store; commit the lock so every checkout builds the same input"
                .into(),
        ),
    })
}

/// `ksbuild pin KEY [FILE]`: pins a download declared without a hash, from FILE (the file
/// its URL serves, obtained elsewhere) or by fetching its URL; re-pins if already pinned.
pub fn run_pin(ctx: &Context, key: String, file: Option<PathBuf>) -> Result<ExitCode, CliError> {
    let root = project_root(ctx)?;
    let project = Project::load(&root)?;
    let target = key_target(&project, &key)?;
    let all = crate::model::unpinned(&project, std::slice::from_ref(&target))?;
    let Some(u) = all.into_iter().find(|u| u.key == key) else {
        return Err(CliError::Usage {
            message: format!("`{key}` is not a download declared without a hash"),
            hint: Some(
                "pins are for `[fetch]` files or `url` inputs without `hash`; downloads with a hash are checked against it"
                    .into(),
            ),
        });
    };
    if let Some(f) = &file {
        if !f.is_file() {
            return Err(CliError::Usage {
                message: format!("`{}` is not a file", f.display()),
                hint: Some(format!("give the file that {} serves", u.url)),
            });
        }
    }
    let store = ctx.open_store()?;
    let mirrors = crate::fetch::Mirrors::discover();
    let p =
        crate::fetch::prefetch(&store, &u.url, u.mode, file.as_deref(), &mirrors).map_err(|e| {
            CliError::Usage {
                message: format!("cannot pin `{key}`: {e}"),
                hint: Some("download the file elsewhere and run `ksbuild pin KEY FILE`".into()),
            }
        })?;
    if let Some(old) = &u.pinned {
        if *old != p.hash.to_sri() {
            ctx.note(&format!("`{key}` was pinned to {old}; re-pinned"));
        }
    }
    pin_and_register(
        ctx,
        &store,
        &root,
        std::slice::from_ref(&target),
        vec![(u.key, u.url, u.mode, p)],
    )?;
    Ok(ExitCode::SUCCESS)
}
