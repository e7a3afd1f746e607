//! `store verify`: checks every valid path's presence and references, and optionally
//! re-hashes its contents. Does I/O.

use serde::Serialize;

use super::{dump, Result, Store, StoreError};

/// One problem found with one path.
#[derive(Debug, Clone, Serialize)]
pub struct Damage {
    /// The printed store path.
    pub path: String,
    /// What is wrong, in words.
    pub problem: String,
}

/// The result of a verification.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VerifyReport {
    /// Number of valid paths checked.
    pub checked: usize,
    /// Whether contents were re-hashed.
    pub checked_contents: bool,
    /// Every problem found.
    pub damaged: Vec<Damage>,
    /// Entries of the store directory that ksbuild did not register and is not
    /// registering (another tool's, such as Nix's `.links` or a path Nix added to a shared
    /// root), as physical paths. ksbuild leaves them alone; they are not damage.
    pub foreign: Vec<String>,
}

/// Verifies the store.
pub fn verify(store: &Store, check_contents: bool) -> Result<VerifyReport> {
    let _gc = store.lock_gc_shared()?;
    let mut report = VerifyReport {
        checked_contents: check_contents,
        ..VerifyReport::default()
    };
    for path in store.valid_paths()? {
        report.checked += 1;
        let printed = store.print(&path);
        let mut damage = |problem: String| {
            report.damaged.push(Damage {
                path: printed.clone(),
                problem,
            })
        };
        let info = match store.query_path_info(&path) {
            Ok(Some(info)) => info,
            Ok(None) => continue, // deleted meanwhile
            Err(e) => {
                damage(e.to_string());
                continue;
            }
        };
        let physical = store.physical_path(&path);
        if std::fs::symlink_metadata(&physical).is_err() {
            damage(format!(
                "registered but missing from `{}`",
                physical.display()
            ));
            continue;
        }
        for r in &info.references {
            if r != &path && !store.is_valid(r)? {
                damage(format!(
                    "references `{}`, which is not valid",
                    store.print(r)
                ));
            }
        }
        if check_contents {
            match dump::nar_hash_path(&physical) {
                Ok((hash, size)) => {
                    if hash != info.nar_hash {
                        damage(format!(
                            "contents changed: NAR hash is {}, expected {}",
                            hash.to_sri(),
                            info.nar_hash.to_sri()
                        ));
                    } else if size != info.nar_size {
                        damage(format!(
                            "contents changed: NAR size is {size}, expected {}",
                            info.nar_size
                        ));
                    }
                }
                Err(StoreError::UnsupportedFileType { path, kind }) => {
                    damage(format!("contains `{}`, a {kind}", path.display()));
                }
                Err(e) => damage(format!("cannot be read: {e}")),
            }
        }
    }
    report.foreign = foreign_entries(store)?
        .into_iter()
        .map(|p| p.display().to_string())
        .collect();
    Ok(report)
}

/// Entries of the store directory without a record and without a `pending/` marker (which
/// names an entry ksbuild is registering or deleting): what some other tool put there.
pub fn foreign_entries(store: &Store) -> Result<Vec<std::path::PathBuf>> {
    let real = store.real_store_dir();
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(&real).map_err(StoreError::io("list", &real))? {
        let entry = entry.map_err(StoreError::io("list", &real))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = match crate::compat::StorePath::from_base_name(&name) {
            Ok(p) => store.is_valid(&p)? || store.pending_dir().join(&name).exists(),
            Err(_) => false,
        };
        if !ours {
            foreign.push(entry.path());
        }
    }
    foreign.sort();
    Ok(foreign)
}
