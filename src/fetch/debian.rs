//! Debian archive indexes and dependency closures: parsing `Packages` files and
//! `Release` checksums, and resolving the complete closure of a package list
//! (Depends/Pre-Depends, alternatives, versions, virtual packages, the Essential set) the
//! way `apt-get install --no-install-recommends` does into an empty system. Pure: callers
//! fetch the files.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::debian_version::DebVersion;

/// A version relation in a dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relation {
    /// `<<`
    Lt,
    /// `<=`
    Le,
    /// `=`
    Eq,
    /// `>=`
    Ge,
    /// `>>`
    Gt,
}

impl Relation {
    fn holds(self, have: &DebVersion, want: &DebVersion) -> bool {
        let o = have.cmp(want);
        match self {
            Relation::Lt => o.is_lt(),
            Relation::Le => o.is_le(),
            Relation::Eq => o.is_eq(),
            Relation::Ge => o.is_ge(),
            Relation::Gt => o.is_gt(),
        }
    }
}

/// One alternative of a dependency: `name[:arch] [(rel version)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    /// Package (or virtual package) name.
    pub name: String,
    /// A version constraint.
    pub version: Option<(Relation, DebVersion)>,
}

/// A binary package entry of a `Packages` index.
#[derive(Debug, Clone)]
pub struct Package {
    /// Name.
    pub name: String,
    /// Version as written.
    pub version_text: String,
    /// Parsed version.
    pub version: DebVersion,
    /// Architecture (`amd64`, `arm64`, `all`).
    pub architecture: String,
    /// `Essential: yes`.
    pub essential: bool,
    /// The `Priority` field.
    pub priority: String,
    /// Pre-Depends then Depends, each an OR-group.
    pub depends: Vec<Vec<Dep>>,
    /// Provides: name and optional version.
    pub provides: Vec<(String, Option<DebVersion>)>,
    /// Pool path.
    pub filename: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
    /// Which mirror (`debian`, `debian-security`) the entry came from.
    pub mirror: String,
}

/// Why an index or a closure is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DebianError {
    /// A malformed field.
    #[error("malformed index entry for `{package}`: {reason}")]
    Malformed { package: String, reason: String },
    /// A requested or needed package does not exist.
    #[error("no package `{name}` in the index{}", needed_by.as_ref().map(|n| format!(" (needed by `{n}`)")).unwrap_or_default())]
    Missing {
        name: String,
        needed_by: Option<String>,
    },
    /// No alternative of a dependency can be satisfied.
    #[error("`{package}` depends on `{dependency}`, which nothing in the index satisfies")]
    Unsatisfiable { package: String, dependency: String },
}

fn parse_relation(text: &str) -> Option<(Relation, DebVersion)> {
    let text = text.trim();
    let (rel, rest) = [
        ("<<", Relation::Lt),
        ("<=", Relation::Le),
        (">=", Relation::Ge),
        (">>", Relation::Gt),
        ("=", Relation::Eq),
        ("<", Relation::Le),
        (">", Relation::Ge),
    ]
    .iter()
    .find_map(|(p, r)| text.strip_prefix(p).map(|rest| (*r, rest)))?;
    Some((rel, DebVersion::parse(rest)?))
}

/// Parses a `Depends`-style field.
pub fn parse_depends(field: &str) -> Option<Vec<Vec<Dep>>> {
    let mut groups = Vec::new();
    for group in field.split(',').map(str::trim).filter(|g| !g.is_empty()) {
        let mut alts = Vec::new();
        for alt in group.split('|').map(str::trim) {
            let (name_part, version) = match alt.split_once('(') {
                Some((n, v)) => (n.trim(), Some(parse_relation(v.trim_end_matches(')'))?)),
                None => (alt, None),
            };
            // `foo:any` / `foo:native` qualify multi-arch; native closures ignore them.
            let name = name_part
                .split_once(':')
                .map(|(n, _)| n)
                .unwrap_or(name_part)
                .trim();
            if name.is_empty() {
                return None;
            }
            alts.push(Dep {
                name: name.to_string(),
                version,
            });
        }
        groups.push(alts);
    }
    Some(groups)
}

/// Parses a `Packages` index from `mirror`.
pub fn parse_packages(text: &str, mirror: &str) -> Result<Vec<Package>, DebianError> {
    let mut out = Vec::new();
    for stanza in text.split("\n\n").filter(|s| !s.trim().is_empty()) {
        let mut fields: HashMap<&str, String> = HashMap::new();
        let mut last: Option<&str> = None;
        for line in stanza.lines() {
            if line.starts_with(' ') || line.starts_with('\t') {
                if let Some(k) = last {
                    if let Some(v) = fields.get_mut(k) {
                        v.push('\n');
                        v.push_str(line.trim());
                    }
                }
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k, v.trim().to_string());
                last = Some(k);
            }
        }
        let name = fields.get("Package").cloned().unwrap_or_default();
        let bad = |reason: &str| DebianError::Malformed {
            package: name.clone(),
            reason: reason.to_string(),
        };
        let get = |k: &str| {
            fields
                .get(k)
                .cloned()
                .ok_or_else(|| bad(&format!("no `{k}`")))
        };
        let version_text = get("Version")?;
        let version = DebVersion::parse(&version_text).ok_or_else(|| bad("bad `Version`"))?;
        let mut depends = Vec::new();
        for key in ["Pre-Depends", "Depends"] {
            if let Some(f) = fields.get(key) {
                depends.extend(parse_depends(f).ok_or_else(|| bad(&format!("bad `{key}`")))?);
            }
        }
        let provides = match fields.get("Provides") {
            Some(f) => parse_depends(f)
                .ok_or_else(|| bad("bad `Provides`"))?
                .into_iter()
                .flatten()
                .map(|d| (d.name, d.version.map(|(_, v)| v)))
                .collect(),
            None => Vec::new(),
        };
        out.push(Package {
            name: get("Package")?,
            version_text,
            version,
            architecture: get("Architecture")?,
            essential: fields.get("Essential").is_some_and(|v| v == "yes"),
            priority: fields
                .get("Priority")
                .cloned()
                .unwrap_or_else(|| "optional".into()),
            depends,
            provides,
            filename: get("Filename")?,
            size: get("Size")?.parse().map_err(|_| bad("bad `Size`"))?,
            sha256: get("SHA256")?,
            mirror: mirror.to_string(),
        });
    }
    Ok(out)
}

/// The SHA-256 and size of each file listed in a `Release`/`InRelease` file.
pub fn release_checksums(release: &str) -> BTreeMap<String, (String, u64)> {
    let mut out = BTreeMap::new();
    let mut in_sha256 = false;
    for line in release.lines() {
        if line.starts_with("SHA256:") {
            in_sha256 = true;
            continue;
        }
        if !line.starts_with(' ') {
            in_sha256 = false;
            continue;
        }
        if in_sha256 {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if let [sum, size, path] = parts.as_slice() {
                if let Ok(size) = size.parse() {
                    out.insert(path.to_string(), (sum.to_string(), size));
                }
            }
        }
    }
    out
}

/// All packages of the configured suites, with the candidate (highest) version of each.
#[derive(Debug, Default)]
pub struct Index {
    candidates: BTreeMap<String, Package>,
    providers: BTreeMap<String, Vec<String>>,
}

fn priority_rank(p: &str) -> u8 {
    match p {
        "required" => 0,
        "important" => 1,
        "standard" => 2,
        "optional" => 3,
        _ => 4,
    }
}

impl Index {
    /// Builds an index of `packages` for architecture `arch` (plus `all`); the highest
    /// version of each name is its candidate, as apt chooses with default pins.
    pub fn new(packages: Vec<Package>, arch: &str) -> Index {
        let mut candidates: BTreeMap<String, Package> = BTreeMap::new();
        for p in packages
            .into_iter()
            .filter(|p| p.architecture == arch || p.architecture == "all")
        {
            match candidates.get(&p.name) {
                Some(existing) if existing.version >= p.version => {}
                _ => {
                    candidates.insert(p.name.clone(), p);
                }
            }
        }
        let mut providers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for p in candidates.values() {
            for (v, _) in &p.provides {
                providers.entry(v.clone()).or_default().push(p.name.clone());
            }
        }
        // apt prefers Essential, then higher Priority, among several providers.
        for list in providers.values_mut() {
            list.sort_by_key(|n| {
                let p = &candidates[n];
                (!p.essential, priority_rank(&p.priority), n.clone())
            });
        }
        Index {
            candidates,
            providers,
        }
    }

    /// The candidate of `name`.
    pub fn get(&self, name: &str) -> Option<&Package> {
        self.candidates.get(name)
    }

    /// Names of the Essential packages.
    pub fn essential(&self) -> Vec<String> {
        self.candidates
            .values()
            .filter(|p| p.essential)
            .map(|p| p.name.clone())
            .collect()
    }

    /// Whether `dep` is satisfied by the selected package `name`.
    fn satisfies(&self, name: &str, dep: &Dep) -> bool {
        let Some(p) = self.candidates.get(name) else {
            return false;
        };
        if p.name == dep.name {
            return dep
                .version
                .as_ref()
                .is_none_or(|(rel, v)| rel.holds(&p.version, v));
        }
        p.provides.iter().any(|(prov, pv)| {
            prov == &dep.name
                && match (&dep.version, pv) {
                    (None, _) => true,
                    (Some((rel, v)), Some(have)) => rel.holds(have, v),
                    (Some(_), None) => false,
                }
        })
    }

    /// The package that would satisfy `dep` if chosen now, preferring the real package.
    fn choose(&self, dep: &Dep) -> Option<String> {
        if let Some(p) = self.candidates.get(&dep.name) {
            if self.satisfies(&p.name, dep) {
                return Some(p.name.clone());
            }
        }
        self.providers
            .get(&dep.name)?
            .iter()
            .find(|n| self.satisfies(n, dep))
            .cloned()
    }

    /// The closure of `requested` (plus the Essential set when `with_essential`), in the
    /// order packages were selected. Mirrors apt: an OR-group already satisfied by a selected
    /// package adds nothing; otherwise its first satisfiable alternative is selected.
    pub fn resolve(
        &self,
        requested: &[String],
        with_essential: bool,
    ) -> Result<Vec<&Package>, DebianError> {
        let mut selected: BTreeSet<String> = BTreeSet::new();
        let mut order = Vec::new();
        let mut roots: Vec<String> = requested.to_vec();
        if with_essential {
            roots.extend(self.essential());
        }
        for root in &roots {
            if !self.candidates.contains_key(root) {
                return Err(DebianError::Missing {
                    name: root.clone(),
                    needed_by: None,
                });
            }
        }
        for root in roots {
            let mut queue: VecDeque<String> = VecDeque::from([root]);
            while let Some(name) = queue.pop_front() {
                if !selected.insert(name.clone()) {
                    continue;
                }
                order.push(name.clone());
                let p = &self.candidates[&name];
                for group in &p.depends {
                    if group.iter().any(|d| {
                        selected.iter().any(|s| self.satisfies(s, d))
                            || queue.iter().any(|q| self.satisfies(q, d))
                    }) {
                        continue;
                    }
                    let pick = group.iter().find_map(|d| self.choose(d)).ok_or_else(|| {
                        DebianError::Unsatisfiable {
                            package: name.clone(),
                            dependency: group
                                .iter()
                                .map(|d| match &d.version {
                                    Some((r, v)) => format!("{} ({r:?} {v})", d.name),
                                    None => d.name.clone(),
                                })
                                .collect::<Vec<_>>()
                                .join(" | "),
                        }
                    })?;
                    queue.push_back(pick);
                }
            }
        }
        Ok(order.iter().map(|n| &self.candidates[n]).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INDEX: &str = "Package: base-files\nVersion: 12.4\nArchitecture: amd64\nEssential: yes\nPriority: required\nPre-Depends: awk\nFilename: pool/b/base-files.deb\nSize: 10\nSHA256: aa\n\n\
Package: mawk\nVersion: 1.3.4-1\nArchitecture: amd64\nPriority: required\nProvides: awk\nFilename: pool/m/mawk.deb\nSize: 11\nSHA256: bb\n\n\
Package: gawk\nVersion: 1:5.2-1\nArchitecture: amd64\nPriority: optional\nProvides: awk\nDepends: libc6 (>= 2.34)\nFilename: pool/g/gawk.deb\nSize: 12\nSHA256: cc\n\n\
Package: libc6\nVersion: 2.36-9+deb12u4\nArchitecture: amd64\nPriority: optional\nFilename: pool/l/libc6.deb\nSize: 13\nSHA256: dd\n\n\
Package: libc6\nVersion: 2.36-9+deb12u10\nArchitecture: amd64\nPriority: optional\nFilename: pool/l/libc6-new.deb\nSize: 14\nSHA256: ee\n\n\
Package: tool\nVersion: 1.0\nArchitecture: all\nDepends: libc6 (>= 2.36), gawk | mawk, python3:any, nonexistent | libc6\nFilename: pool/t/tool.deb\nSize: 15\nSHA256: ff\n\n\
Package: python3\nVersion: 3.11.2-1\nArchitecture: amd64\nFilename: pool/p/python3.deb\nSize: 16\nSHA256: 11\n\n\
Package: broken\nVersion: 1\nArchitecture: amd64\nDepends: libc6 (>= 3)\nFilename: pool/x.deb\nSize: 1\nSHA256: 22\n\n\
Package: armonly\nVersion: 1\nArchitecture: arm64\nFilename: pool/a.deb\nSize: 1\nSHA256: 33\n";

    fn index() -> Index {
        Index::new(parse_packages(INDEX, "debian").unwrap(), "amd64")
    }

    #[test]
    fn candidates_are_the_highest_versions() {
        assert_eq!(
            index().get("libc6").unwrap().version_text,
            "2.36-9+deb12u10"
        );
        assert!(index().get("armonly").is_none());
    }

    #[test]
    fn resolves_like_apt() {
        let idx = index();
        let names = |v: Vec<&Package>| v.into_iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        // Essential pulls the virtual `awk`: the required-priority provider wins.
        assert_eq!(
            names(idx.resolve(&[], true).unwrap()),
            ["base-files", "mawk"]
        );
        // `gawk | mawk` picks gawk unless mawk is already selected.
        assert_eq!(
            names(idx.resolve(&["tool".into()], false).unwrap()),
            ["tool", "libc6", "gawk", "python3"]
        );
        assert_eq!(
            names(idx.resolve(&["mawk".into(), "tool".into()], false).unwrap()),
            ["mawk", "tool", "libc6", "python3"]
        );
        assert!(matches!(
            idx.resolve(&["broken".into()], false),
            Err(DebianError::Unsatisfiable { .. })
        ));
        assert!(matches!(
            idx.resolve(&["nope".into()], false),
            Err(DebianError::Missing { .. })
        ));
    }

    #[test]
    fn release_files_list_checksums() {
        let release = "Origin: Debian\nSHA256:\n 0123 100 main/binary-amd64/Packages.xz\n 4567 200 main/binary-arm64/Packages.xz\nMD5Sum:\n x 1 y\n";
        let sums = release_checksums(release);
        assert_eq!(
            sums["main/binary-amd64/Packages.xz"],
            ("0123".to_string(), 100)
        );
        assert_eq!(sums.len(), 2);
    }
}
