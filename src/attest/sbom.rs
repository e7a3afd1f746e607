//! Software bills of materials: what ships in a target, written as SPDX 2.3 JSON or
//! CycloneDX 1.5 JSON. Pure: the CLI gathers the components from the store and the locks;
//! this module writes them sorted, with the document's time and identity taken from the
//! facts (`SOURCE_DATE_EPOCH`, the `.drv` hash), so the same facts give the same bytes.

use serde_json::{json, Value};

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

fn sorted(bill: &Bill) -> (Vec<Component>, Vec<File>, Vec<Relationship>) {
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

/// The bill as an SPDX 2.3 JSON document.
pub fn to_spdx(bill: &Bill) -> Value {
    let (components, files, relationships) = sorted(bill);
    let packages: Vec<Value> = components
        .iter()
        .map(|c| {
            let mut p = json!({
                "SPDXID": format!("SPDXRef-{}", c.id),
                "name": c.name,
            });
            if let Some(v) = &c.version {
                p["versionInfo"] = json!(v);
            }
            p["supplier"] = json!(c
                .supplier
                .as_ref()
                .map_or("NOASSERTION".to_string(), |s| format!("Organization: {s}")));
            p["downloadLocation"] = json!(c.download.as_deref().unwrap_or("NOASSERTION"));
            p["filesAnalyzed"] = json!(false);
            if let Some(sha) = &c.sha256 {
                p["checksums"] = json!([{ "algorithm": "SHA256", "checksumValue": sha }]);
            }
            p["licenseConcluded"] = json!("NOASSERTION");
            p["licenseDeclared"] = json!(c.license.as_deref().unwrap_or("NOASSERTION"));
            p["copyrightText"] = json!("NOASSERTION");
            if !c.notes.is_empty() {
                p["comment"] = json!(c
                    .notes
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join("\n"));
            }
            if let Some(purl) = &c.purl {
                p["externalRefs"] = json!([{
                    "referenceCategory": "PACKAGE-MANAGER",
                    "referenceType": "purl",
                    "referenceLocator": purl,
                }]);
            }
            p["primaryPackagePurpose"] = json!(match c.kind {
                Kind::Build => "OPERATING-SYSTEM",
                Kind::Kernel => "OPERATING-SYSTEM",
                Kind::Download => "ARCHIVE",
                Kind::Debian => "LIBRARY",
                Kind::Firmware => "FIRMWARE",
            });
            p
        })
        .collect();
    let files: Vec<Value> = files
        .iter()
        .map(|f| {
            json!({
                "SPDXID": format!("SPDXRef-{}", f.id),
                "fileName": format!("./{}", f.name),
                "checksums": [
                    { "algorithm": "SHA1", "checksumValue": f.sha1 },
                    { "algorithm": "SHA256", "checksumValue": f.sha256 },
                ],
                "licenseConcluded": "NOASSERTION",
                "copyrightText": "NOASSERTION",
            })
        })
        .collect();
    let mut rels = vec![json!({
        "spdxElementId": "SPDXRef-DOCUMENT",
        "relationshipType": "DESCRIBES",
        "relatedSpdxElement": format!("SPDXRef-{}", bill.root),
    })];
    rels.extend(relationships.iter().map(|(a, r, b)| {
        json!({
            "spdxElementId": format!("SPDXRef-{a}"),
            "relationshipType": match r {
                Relation::Contains => "CONTAINS",
                Relation::GeneratedFrom => "GENERATED_FROM",
            },
            "relatedSpdxElement": format!("SPDXRef-{b}"),
        })
    }));
    json!({
        "spdxVersion": "SPDX-2.3",
        "dataLicense": "CC0-1.0",
        "SPDXID": "SPDXRef-DOCUMENT",
        "name": bill.target,
        "documentNamespace": format!("urn:ksbuild:spdx:{}-{}", bill.drv_hash, id(&bill.target)),
        "creationInfo": {
            "created": utc(bill.created),
            "creators": [format!("Tool: ksbuild-{}", bill.tool_version)],
        },
        "packages": packages,
        "files": files,
        "relationships": rels,
    })
}

/// The bill as a CycloneDX 1.5 JSON document.
pub fn to_cyclonedx(bill: &Bill) -> Value {
    let (components, files, relationships) = sorted(bill);
    let h = bill.drv_hash.as_bytes();
    let hex: String = h.iter().take(16).map(|b| format!("{:02x}", b)).collect();
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    );
    let component = |c: &Component| {
        let mut v = json!({
            "type": match c.kind {
                Kind::Build => "operating-system",
                Kind::Kernel => "operating-system",
                Kind::Download => "application",
                Kind::Debian => "library",
                Kind::Firmware => "firmware",
            },
            "bom-ref": c.id,
            "name": c.name,
        });
        if let Some(ver) = &c.version {
            v["version"] = json!(ver);
        }
        if let Some(s) = &c.supplier {
            v["supplier"] = json!({ "name": s });
        }
        if let Some(sha) = &c.sha256 {
            v["hashes"] = json!([{ "alg": "SHA-256", "content": sha }]);
        }
        if let Some(l) = &c.license {
            v["licenses"] = json!([{ "expression": l }]);
        }
        if let Some(p) = &c.purl {
            v["purl"] = json!(p);
        }
        if let Some(d) = &c.download {
            v["externalReferences"] = json!([{ "type": "distribution", "url": d }]);
        }
        if !c.notes.is_empty() {
            v["properties"] = json!(c
                .notes
                .iter()
                .map(|(k, val)| json!({ "name": format!("ksbuild:{k}"), "value": val }))
                .collect::<Vec<_>>());
        }
        v
    };
    let root = components.iter().find(|c| c.id == bill.root);
    let mut list: Vec<Value> = components
        .iter()
        .filter(|c| c.id != bill.root)
        .map(component)
        .collect();
    list.extend(files.iter().map(|f| {
        json!({
            "type": "file",
            "bom-ref": f.id,
            "name": f.name,
            "hashes": [
                { "alg": "SHA-1", "content": f.sha1 },
                { "alg": "SHA-256", "content": f.sha256 },
            ],
        })
    }));
    let mut deps: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for (a, _, b) in &relationships {
        deps.entry(a.as_str()).or_default().push(b.as_str());
    }
    json!({
        "bomFormat": "CycloneDX",
        "specVersion": "1.5",
        "serialNumber": format!("urn:uuid:{uuid}"),
        "version": 1,
        "metadata": {
            "timestamp": utc(bill.created),
            "tools": { "components": [{ "type": "application", "name": "ksbuild", "version": bill.tool_version }] },
            "component": root.map(component),
        },
        "components": list,
        "dependencies": deps.iter().map(|(a, bs)| json!({ "ref": a, "dependsOn": bs })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_704_067_200), "2024-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }

    #[test]
    fn debian_licenses() {
        let dep5 = "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\nFiles: *\nCopyright: x\nLicense: GPL-2+\n\nFiles: lib/*\nLicense: LGPL-2.1+\n\nLicense: GPL-2+\n text\n";
        assert_eq!(
            debian_license(dep5).as_deref(),
            Some("GPL-2.0-or-later AND LGPL-2.1-or-later")
        );
        // An unknown short name, an expression, or free text: no guess.
        assert_eq!(
            debian_license(&dep5.replace("LGPL-2.1+", "public-domain")),
            None
        );
        assert_eq!(
            debian_license(&dep5.replace("LGPL-2.1+", "GPL-2+ or BSD-3-clause")),
            None
        );
        assert_eq!(
            debian_license("This package was debianized by …\n\nGPL\n"),
            None
        );
    }

    #[test]
    fn changing_one_component_changes_exactly_its_entry() {
        let c = |name: &str, version: &str| Component {
            id: id(&format!("deb-{name}")),
            kind: Kind::Debian,
            name: name.into(),
            version: Some(version.into()),
            download: None,
            sha256: Some("00".into()),
            purl: Some(format!("pkg:deb/debian/{name}@{version}?arch=arm64")),
            supplier: Some("Debian".into()),
            license: None,
            notes: vec![],
        };
        let bill = |libc: &str| Bill {
            target: "t".into(),
            root: "t".into(),
            drv_hash: "h".into(),
            created: 0,
            components: vec![c("zlib1g", "1"), c("libc6", libc), c("t", "1")],
            files: vec![],
            relationships: vec![("t".into(), Relation::Contains, "deb-libc6".into())],
            tool_version: "0".into(),
        };
        let (a, b) = (to_spdx(&bill("2.36")), to_spdx(&bill("2.37")));
        let (pa, pb) = (
            a["packages"].as_array().unwrap(),
            b["packages"].as_array().unwrap(),
        );
        assert_eq!(pa.len(), pb.len());
        let differing: Vec<&Value> = pa
            .iter()
            .zip(pb)
            .filter(|(x, y)| x != y)
            .map(|(x, _)| x)
            .collect();
        assert_eq!(differing.len(), 1);
        assert_eq!(differing[0]["name"], "libc6");
        let mut a2 = a.clone();
        a2["packages"] = Value::Null;
        let mut b2 = b.clone();
        b2["packages"] = Value::Null;
        assert_eq!(a2, b2, "nothing else changes");
    }

    #[test]
    fn ids_are_spdx_idstrings() {
        assert_eq!(
            id("deb-libc6_2.36+deb12u1:arm64"),
            "deb-libc6-2.36-deb12u1-arm64"
        );
    }
}
