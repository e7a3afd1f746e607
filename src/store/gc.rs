//! GC roots and garbage collection, and the sweep of leftovers from interrupted
//! operations. Does I/O.
//!
//! Roots are symlinks in `gcroots/`: direct ones point at a store path; indirect ones in
//! `gcroots/auto/` point at a link elsewhere (such as `./result`), which keeps its target
//! alive while it exists and points into the store — Nix's auto roots. The collector holds
//! the GC lock exclusively; everything that adds or builds holds it shared, so nothing in
//! use by a running operation is ever deleted.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use serde::Serialize;

use super::{fsutil, metadata, Result, Store, StoreError};
use crate::compat::{Hash, StorePath};

/// What a collection did (or would do, for a dry run).
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GcReport {
    /// Paths deleted (or that would be), in deletion order, as printed paths.
    pub deleted: Vec<String>,
    /// Sum of their NAR sizes.
    pub freed_nar_bytes: u64,
    /// Number of live paths kept.
    pub kept: usize,
    /// Whether nothing was actually deleted.
    pub dry_run: bool,
}

/// Creates the link and registers it as an indirect root.
pub fn add_indirect_root(store: &Store, link: &Path, path: &StorePath) -> Result<()> {
    let link = if link.is_absolute() {
        link.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(StoreError::io("read", "."))?
            .join(link)
    };
    match fs::symlink_metadata(&link) {
        Ok(m) if m.file_type().is_symlink() => {
            fs::remove_file(&link).map_err(StoreError::io("replace", &link))?
        }
        Ok(_) => {
            return Err(StoreError::Refused(format!(
                "`{}` exists and is not a symlink; refusing to replace it with a GC root",
                link.display()
            )))
        }
        Err(_) => {}
    }
    // Create the new link beside the old name and rename it into place atomically.
    let tmp = link.with_file_name(format!(
        ".{}.ksbuild-tmp-{}",
        link.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = fs::remove_file(&tmp);
    std::os::unix::fs::symlink(store.physical_path(path), &tmp)
        .map_err(StoreError::io("create the symlink", &tmp))?;
    fs::rename(&tmp, &link).map_err(StoreError::io("create the symlink", &link))?;
    let key = Hash::sha256(link.as_os_str().as_encoded_bytes()).to_nix32();
    let auto = store.gcroots_dir().join("auto").join(&key[..32]);
    let _ = fs::remove_file(&auto);
    std::os::unix::fs::symlink(&link, &auto)
        .map_err(StoreError::io("register the GC root", &auto))?;
    Ok(())
}

/// The store path a root symlink currently designates, if any.
fn resolve_into_store(store: &Store, link: &Path) -> Option<StorePath> {
    let target = fs::read_link(link).ok()?;
    let target = if target.is_absolute() {
        target
    } else {
        link.parent()?.join(target)
    };
    store.parse_user_path(&target).ok()
}

/// Finds the roots; removes indirect roots whose link is gone or no longer points into the store.
fn find_roots(store: &Store) -> Result<BTreeSet<StorePath>> {
    let mut roots = BTreeSet::new();
    let dir = store.gcroots_dir();
    for entry in walkdir::WalkDir::new(&dir).min_depth(1).follow_links(false) {
        let entry = entry.map_err(|e| StoreError::Io {
            action: "list",
            path: dir.clone(),
            source: e
                .into_io_error()
                .unwrap_or_else(|| std::io::Error::other("walk failed")),
        })?;
        if !entry.path_is_symlink() {
            continue;
        }
        let indirect = entry.path().parent() == Some(dir.join("auto").as_path());
        if indirect {
            let Ok(link) = fs::read_link(entry.path()) else {
                continue;
            };
            match resolve_into_store(store, &link) {
                Some(p) => {
                    roots.insert(p);
                }
                None => {
                    // The link was removed or retargeted: the root is stale.
                    let _ = fs::remove_file(entry.path());
                }
            }
        } else if let Some(p) = resolve_into_store(store, entry.path()) {
            roots.insert(p);
        }
    }
    Ok(roots)
}

/// Closure of the roots, keeping the derivers of live paths (Nix's `keep-derivations`).
fn live_set(store: &Store, roots: BTreeSet<StorePath>) -> Result<BTreeSet<StorePath>> {
    let mut live = BTreeSet::new();
    let mut todo: Vec<StorePath> = roots.into_iter().collect();
    while let Some(p) = todo.pop() {
        if live.contains(&p) {
            continue;
        }
        let Some(info) = store.query_path_info(&p)? else {
            continue;
        };
        todo.extend(info.references.iter().cloned());
        if let Some(d) = info.deriver {
            todo.push(d);
        }
        live.insert(p);
    }
    Ok(live)
}

/// Collects garbage.
pub fn collect(store: &Store, dry_run: bool) -> Result<GcReport> {
    let _lock = store.lock_gc_exclusive()?;
    // Only what ksbuild itself left half-done goes (its staging, and the entries its
    // `pending/` markers name): an unregistered entry without a marker belongs to someone
    // else — Nix, sharing the root — and is never touched (`store verify` lists it).
    if !dry_run {
        sweep_leftovers(store)?;
    }
    let roots = find_roots(store)?;
    let live = live_set(store, roots)?;
    let mut dead: BTreeMap<StorePath, BTreeSet<StorePath>> = BTreeMap::new();
    let mut sizes = BTreeMap::new();
    for p in store.valid_paths()? {
        if live.contains(&p) {
            continue;
        }
        let info = store.path_info(&p)?;
        sizes.insert(p.clone(), info.nar_size);
        dead.insert(p, info.references);
    }
    // Delete referrers before what they refer to, so an interrupted collection never leaves
    // a valid path whose references are gone.
    let order = referrers_first(&dead);
    let mut report = GcReport {
        kept: live.len(),
        dry_run,
        ..GcReport::default()
    };
    for p in order {
        let printed = store.print(&p);
        if !dry_run {
            store.observer().deleting(&printed);
            let _path_lock = store.lock_path(&p)?;
            let marker = store.mark_pending(&p)?;
            metadata::remove(store, &p)?;
            fsutil::remove_tree(&store.physical_path(&p))?;
            fs::remove_file(&marker).map_err(StoreError::io("remove", &marker))?;
        }
        report.freed_nar_bytes += sizes.get(&p).copied().unwrap_or(0);
        report.deleted.push(printed);
    }
    Ok(report)
}

fn referrers_first(dead: &BTreeMap<StorePath, BTreeSet<StorePath>>) -> Vec<StorePath> {
    // Post-order over references gives references before referrers; reverse it.
    let mut order = Vec::new();
    let mut state: BTreeMap<&StorePath, bool> = BTreeMap::new();
    for start in dead.keys() {
        let mut stack = vec![(start, false)];
        while let Some((p, expanded)) = stack.pop() {
            if expanded {
                order.push(p.clone());
                continue;
            }
            if state.contains_key(p) {
                continue;
            }
            state.insert(p, true);
            stack.push((p, true));
            for r in dead.get(p).into_iter().flatten() {
                if r != p && dead.contains_key(r) && !state.contains_key(r) {
                    stack.push((r, false));
                }
            }
        }
    }
    order.reverse();
    order
}

/// Removes what interrupted operations left behind: staging and build directories,
/// temporary records, and the store entries named by `pending/` markers that have no
/// record. Only called while holding the GC lock exclusively, i.e. while no other ksbuild
/// process uses the store. Costs a listing of four almost empty directories.
pub fn sweep_leftovers(store: &Store) -> Result<()> {
    for dir in [store.tmp_dir(), store.builds_dir()] {
        for entry in fs::read_dir(&dir).map_err(StoreError::io("list", &dir))? {
            let path = entry.map_err(StoreError::io("list", &dir))?.path();
            fsutil::remove_tree(&path)?;
            store.observer().recovered(&path);
        }
    }
    // Per-path lock files of earlier versions (paths are now locked by a byte of
    // `paths.lock`).
    let locks = store.locks_dir();
    for entry in fs::read_dir(&locks).map_err(StoreError::io("list", &locks))? {
        let path = entry.map_err(StoreError::io("list", &locks))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if !matches!(name.as_deref(), Some("gc.lock" | "paths.lock")) {
            fsutil::remove_tree(&path)?;
        }
    }
    let pending = store.pending_dir();
    for entry in fs::read_dir(&pending).map_err(StoreError::io("list", &pending))? {
        let marker = entry.map_err(StoreError::io("list", &pending))?.path();
        let name = marker
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Ok(p) = StorePath::from_base_name(&name) {
            if !store.is_valid(&p)? {
                let entry = store.physical_path(&p);
                if fs::symlink_metadata(&entry).is_ok() {
                    fsutil::remove_tree(&entry)?;
                    store.observer().recovered(&entry);
                }
            }
        }
        fs::remove_file(&marker).map_err(StoreError::io("remove", &marker))?;
    }
    Ok(())
}
