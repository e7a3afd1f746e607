//! Software bills of materials: what ships in a target, written as SPDX 2.3 JSON or
//! CycloneDX 1.5 JSON. Pure: the CLI gathers the components from the store and the locks;
//! the bill and its SPDX form are in `attest::bill` (shared with the tool that writes each
//! image's SBOM in its sandbox); this module adds CycloneDX. Both are written sorted, with
//! the document's time and identity taken from the facts (`SOURCE_DATE_EPOCH`, the `.drv`
//! hash), so the same facts give the same bytes.

use serde_json::{json, Value};

pub use super::bill::*;

/// The bill as an SPDX 2.3 JSON document ([`spdx_json`], parsed).
pub fn to_spdx(bill: &Bill) -> Value {
    serde_json::from_str(&spdx_json(bill)).expect("spdx_json writes JSON")
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

    /// The std-only writer writes what serde_json's pretty printer writes for the same
    /// document: sorted keys, its escapes, empty lists.
    #[test]
    fn the_spdx_text_is_serde_json_s_pretty_form() {
        let mut odd = debian_component("a\"b\\c", "1:2+3", "arm64", "ff", Kind::Firmware);
        odd.notes = vec![
            ("filesShipped".into(), "x y".into()),
            ("control".into(), "tab\there\u{1}\u{8}\u{c}\r é ✓".into()),
        ];
        let bill = Bill {
            target: "rpi-image@small".into(),
            root: "t".into(),
            drv_hash: "h".into(),
            created: 1_700_000_000,
            components: vec![
                odd.clone(),
                Component {
                    id: "t".into(),
                    kind: Kind::Build,
                    ..odd
                },
            ],
            files: vec![File {
                id: "f".into(),
                name: "kubesolo-init/init".into(),
                sha1: "01".into(),
                sha256: "02".into(),
            }],
            relationships: vec![("t".into(), Relation::Contains, "f".into())],
            tool_version: "0.1.0".into(),
        };
        for bill in [
            bill.clone(),
            Bill {
                files: vec![],
                relationships: vec![],
                ..bill
            },
        ] {
            let text = spdx_json(&bill);
            let value: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::to_string_pretty(&value).unwrap() + "\n", text);
        }
    }

    #[test]
    fn ids_are_spdx_idstrings() {
        assert_eq!(
            id("deb-libc6_2.36+deb12u1:arm64"),
            "deb-libc6-2.36-deb12u1-arm64"
        );
    }
}
