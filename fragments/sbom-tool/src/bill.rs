//! The bill of materials and its SPDX 2.3 JSON form, with nothing but `std`: shared by
//! `ksbuild sbom` (as `attest::bill`) and this crate, the tool that writes each image's
//! `sbom.spdx.json` inside its sandbox (built by Debian bookworm's rustc 1.63 — so this
//! file keeps to the Rust 1.63 language and std). The same bill gives
//! the same bytes: components, files and relationships are written sorted, with the
//! document's time and identity taken from the bill.

/// What a component is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The target itself, or a derivation built into it (initramfs, rootfs, agent).
    Build,
    /// A kernel.
    Kernel,
    /// A download (KubeSolo, kernel sources).
    Download,
    /// A Debian package.
    Debian,
    /// Firmware (a Debian package whose files the image carries as they are).
    Firmware,
}

/// One component (an SPDX package, a CycloneDX component).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Component {
    /// Unique id, `[A-Za-z0-9.-]` (becomes `SPDXRef-<id>` and the `bom-ref`).
    pub id: String,
    /// What it is.
    pub kind: Kind,
    /// Name.
    pub name: String,
    /// Version, if known.
    pub version: Option<String>,
    /// Where it comes from (a URL), if anywhere.
    pub download: Option<String>,
    /// Hex SHA-256 of the downloaded file.
    pub sha256: Option<String>,
    /// Package URL.
    pub purl: Option<String>,
    /// Supplier (an organisation's name).
    pub supplier: Option<String>,
    /// Declared licence (an SPDX expression), if the package says.
    pub license: Option<String>,
    /// Facts that have no field of their own (`key: value` lines, sorted).
    pub notes: Vec<(String, String)>,
}

/// A file of ksbuild's own fragments.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct File {
    /// Unique id, `[A-Za-z0-9.-]`.
    pub id: String,
    /// Name, e.g. `kubesolo-init/init`.
    pub name: String,
    /// Hex SHA-1 (SPDX requires it).
    pub sha1: String,
    /// Hex SHA-256.
    pub sha256: String,
}

/// How two elements relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Relation {
    /// The first holds the second.
    Contains,
    /// The first was built from the second (a kernel from its sources).
    GeneratedFrom,
}

/// A relationship: from, how, to (ids).
pub type Relationship = (String, Relation, String);

/// A bill of materials.
#[derive(Debug, Clone)]
pub struct Bill {
    /// The target.
    pub target: String,
    /// The id of the target's component.
    pub root: String,
    /// The nixbase32 hash part of the target's `.drv` (the document's identity).
    pub drv_hash: String,
    /// Seconds since the epoch (`SOURCE_DATE_EPOCH`).
    pub created: u64,
    /// Components.
    pub components: Vec<Component>,
    /// Files.
    pub files: Vec<File>,
    /// Relationships by id.
    pub relationships: Vec<Relationship>,
    /// ksbuild's version.
    pub tool_version: String,
}

/// Debian's licence short names (DEP-5) that have an SPDX identifier.
const DEBIAN_LICENSES: [(&str, &str); 24] = [
    ("gpl-1", "GPL-1.0-only"),
    ("gpl-1+", "GPL-1.0-or-later"),
    ("gpl-2", "GPL-2.0-only"),
    ("gpl-2+", "GPL-2.0-or-later"),
    ("gpl-3", "GPL-3.0-only"),
    ("gpl-3+", "GPL-3.0-or-later"),
    ("lgpl-2", "LGPL-2.0-only"),
    ("lgpl-2+", "LGPL-2.0-or-later"),
    ("lgpl-2.1", "LGPL-2.1-only"),
    ("lgpl-2.1+", "LGPL-2.1-or-later"),
    ("lgpl-3", "LGPL-3.0-only"),
    ("lgpl-3+", "LGPL-3.0-or-later"),
    ("bsd-2-clause", "BSD-2-Clause"),
    ("bsd-3-clause", "BSD-3-Clause"),
    ("bsd-4-clause", "BSD-4-Clause"),
    ("expat", "MIT"),
    ("mit", "MIT"),
    ("isc", "ISC"),
    ("zlib", "Zlib"),
    ("apache-2.0", "Apache-2.0"),
    ("mpl-2.0", "MPL-2.0"),
    ("cc0-1.0", "CC0-1.0"),
    ("gfdl-1.3+", "GFDL-1.3-or-later"),
    ("unicode-dfs-2016", "Unicode-DFS-2016"),
];

/// The licences a Debian `copyright` file declares, as an SPDX expression (`A AND B`,
/// sorted): only for machine-readable files (DEP-5, with a `Format:` header) whose every
/// `Files:` paragraph names one licence that has an SPDX identifier; else `None` (the SBOM
/// then says NOASSERTION rather than guess).
pub fn debian_license(copyright: &str) -> Option<String> {
    let mut paragraphs = copyright.split("\n\n").filter(|p| !p.trim().is_empty());
    let header = paragraphs.next()?;
    if !header.lines().any(|l| l.starts_with("Format:")) {
        return None;
    }
    let mut ids = std::collections::BTreeSet::new();
    for p in paragraphs {
        if !p.lines().any(|l| l.starts_with("Files:")) {
            continue;
        }
        let name = p
            .lines()
            .find_map(|l| l.strip_prefix("License:"))?
            .trim()
            .to_ascii_lowercase();
        let id = DEBIAN_LICENSES.iter().find(|(d, _)| *d == name)?.1;
        ids.insert(id);
    }
    if ids.is_empty() {
        return None;
    }
    Some(ids.into_iter().collect::<Vec<_>>().join(" AND "))
}

/// Makes `text` an id: characters outside `[A-Za-z0-9.-]` become `-`.
pub fn id(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// `YYYY-MM-DDThh:mm:ssZ` for seconds since the epoch (proleptic Gregorian, UTC).
pub fn utc(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

pub fn sorted(bill: &Bill) -> (Vec<Component>, Vec<File>, Vec<Relationship>) {
    let mut c = bill.components.clone();
    c.sort();
    c.dedup_by(|a, b| a.id == b.id);
    let mut f = bill.files.clone();
    f.sort();
    f.dedup_by(|a, b| a.id == b.id);
    let mut r = bill.relationships.clone();
    r.sort();
    r.dedup();
    (c, f, r)
}

/// A derivation's output as a component: the target itself, or what was built into it
/// (initramfs, rootfs, agent), with its store path.
pub fn build_component(name: &str, store_path: &str) -> Component {
    Component {
        id: id(name),
        kind: Kind::Build,
        name: name.to_string(),
        version: None,
        download: None,
        sha256: None,
        purl: None,
        supplier: None,
        license: None,
        notes: vec![("storePath".to_string(), store_path.to_string())],
    }
}

/// A Debian package as a component: id `deb-NAME-VERSION-ARCH`, a `purl`, Debian as the
/// supplier. (Its download location is no host: the archive is each machine's
/// configuration, and the purl and SHA-256 identify the file.)
pub fn debian_component(
    name: &str,
    version: &str,
    architecture: &str,
    sha256: &str,
    kind: Kind,
) -> Component {
    Component {
        id: id(&format!("deb-{name}-{version}-{architecture}")),
        kind,
        name: name.to_string(),
        version: Some(version.to_string()),
        download: None,
        sha256: Some(sha256.to_string()),
        purl: Some(format!(
            "pkg:deb/debian/{name}@{}?arch={architecture}",
            version.replace(':', "%3A").replace('+', "%2B")
        )),
        supplier: Some("Debian".to_string()),
        license: None,
        notes: Vec::new(),
    }
}

/// A JSON value, written as `serde_json`'s pretty printer writes a value whose objects
/// are sorted maps (two-space indent, keys in byte order).
enum Json {
    Bool(bool),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(&'static str, Json)>),
}

fn s(text: &str) -> Json {
    Json::Str(text.to_string())
}

impl Json {
    fn write(&self, out: &mut String, indent: usize) {
        match self {
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Str(text) => write_string(out, text),
            Json::Arr(items) if items.is_empty() => out.push_str("[]"),
            Json::Obj(fields) if fields.is_empty() => out.push_str("{}"),
            Json::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    push_indent(out, indent + 2);
                    item.write(out, indent + 2);
                }
                out.push('\n');
                push_indent(out, indent);
                out.push(']');
            }
            Json::Obj(fields) => {
                let mut sorted: Vec<&(&str, Json)> = fields.iter().collect();
                sorted.sort_by(|a, b| a.0.cmp(b.0));
                out.push('{');
                for (i, (key, value)) in sorted.into_iter().enumerate() {
                    out.push_str(if i == 0 { "\n" } else { ",\n" });
                    push_indent(out, indent + 2);
                    write_string(out, key);
                    out.push_str(": ");
                    value.write(out, indent + 2);
                }
                out.push('\n');
                push_indent(out, indent);
                out.push('}');
            }
        }
    }
}

fn push_indent(out: &mut String, n: usize) {
    for _ in 0..n {
        out.push(' ');
    }
}

fn write_string(out: &mut String, text: &str) {
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The bill as an SPDX 2.3 JSON document (pretty, ending in a newline).
pub fn spdx_json(bill: &Bill) -> String {
    let (components, files, relationships) = sorted(bill);
    let packages = components
        .iter()
        .map(|c| {
            let mut p = vec![
                ("SPDXID", Json::Str(format!("SPDXRef-{}", c.id))),
                ("name", s(&c.name)),
                (
                    "supplier",
                    Json::Str(match &c.supplier {
                        Some(supplier) => format!("Organization: {supplier}"),
                        None => "NOASSERTION".to_string(),
                    }),
                ),
                (
                    "downloadLocation",
                    s(c.download.as_deref().unwrap_or("NOASSERTION")),
                ),
                ("filesAnalyzed", Json::Bool(false)),
                ("licenseConcluded", s("NOASSERTION")),
                (
                    "licenseDeclared",
                    s(c.license.as_deref().unwrap_or("NOASSERTION")),
                ),
                ("copyrightText", s("NOASSERTION")),
                (
                    "primaryPackagePurpose",
                    s(match c.kind {
                        Kind::Build | Kind::Kernel => "OPERATING-SYSTEM",
                        Kind::Download => "ARCHIVE",
                        Kind::Debian => "LIBRARY",
                        Kind::Firmware => "FIRMWARE",
                    }),
                ),
            ];
            if let Some(v) = &c.version {
                p.push(("versionInfo", s(v)));
            }
            if let Some(sha) = &c.sha256 {
                p.push((
                    "checksums",
                    Json::Arr(vec![Json::Obj(vec![
                        ("algorithm", s("SHA256")),
                        ("checksumValue", s(sha)),
                    ])]),
                ));
            }
            if !c.notes.is_empty() {
                let lines: Vec<String> = c.notes.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                p.push(("comment", Json::Str(lines.join("\n"))));
            }
            if let Some(purl) = &c.purl {
                p.push((
                    "externalRefs",
                    Json::Arr(vec![Json::Obj(vec![
                        ("referenceCategory", s("PACKAGE-MANAGER")),
                        ("referenceType", s("purl")),
                        ("referenceLocator", s(purl)),
                    ])]),
                ));
            }
            Json::Obj(p)
        })
        .collect();
    let files = files
        .iter()
        .map(|f| {
            Json::Obj(vec![
                ("SPDXID", Json::Str(format!("SPDXRef-{}", f.id))),
                ("fileName", Json::Str(format!("./{}", f.name))),
                (
                    "checksums",
                    Json::Arr(vec![
                        Json::Obj(vec![
                            ("algorithm", s("SHA1")),
                            ("checksumValue", s(&f.sha1)),
                        ]),
                        Json::Obj(vec![
                            ("algorithm", s("SHA256")),
                            ("checksumValue", s(&f.sha256)),
                        ]),
                    ]),
                ),
                ("licenseConcluded", s("NOASSERTION")),
                ("copyrightText", s("NOASSERTION")),
            ])
        })
        .collect();
    let relationship = |a: String, how: &str, b: String| {
        Json::Obj(vec![
            ("spdxElementId", Json::Str(a)),
            ("relationshipType", s(how)),
            ("relatedSpdxElement", Json::Str(b)),
        ])
    };
    let mut rels = vec![relationship(
        "SPDXRef-DOCUMENT".to_string(),
        "DESCRIBES",
        format!("SPDXRef-{}", bill.root),
    )];
    rels.extend(relationships.iter().map(|(a, r, b)| {
        relationship(
            format!("SPDXRef-{a}"),
            match r {
                Relation::Contains => "CONTAINS",
                Relation::GeneratedFrom => "GENERATED_FROM",
            },
            format!("SPDXRef-{b}"),
        )
    }));
    let doc = Json::Obj(vec![
        ("spdxVersion", s("SPDX-2.3")),
        ("dataLicense", s("CC0-1.0")),
        ("SPDXID", s("SPDXRef-DOCUMENT")),
        ("name", s(&bill.target)),
        (
            "documentNamespace",
            Json::Str(format!(
                "urn:ksbuild:spdx:{}-{}",
                bill.drv_hash,
                id(&bill.target)
            )),
        ),
        (
            "creationInfo",
            Json::Obj(vec![
                ("created", Json::Str(utc(bill.created))),
                (
                    "creators",
                    Json::Arr(vec![Json::Str(format!(
                        "Tool: ksbuild-{}",
                        bill.tool_version
                    ))]),
                ),
            ]),
        ),
        ("packages", Json::Arr(packages)),
        ("files", Json::Arr(files)),
        ("relationships", Json::Arr(rels)),
    ]);
    let mut out = String::new();
    doc.write(&mut out, 0);
    out.push('\n');
    out
}
