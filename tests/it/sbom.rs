//! `ksbuild sbom` on `rpi-image@small` (from the kernel tests' shared store, realised there
//! once): the SPDX document passes the real SPDX validator (`pyspdxtools` of the Python
//! `spdx-tools`, in a venv under `target/`), lists exactly the packages of the rootfs's lock
//! whose files are in the rootfs (worked out here independently, from the `.deb`s with the
//! `ar` and `tar` crates), and two runs give the same bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{kernel_store, ksbuild, run, run_ok, scratch};
use crate::images::{project, realise};

/// `pyspdxtools` in a venv under `target/` (made once, then reused). `None` (the test
/// skips, saying so) when PyPI cannot be reached and `KSBUILD_REQUIRE_NETWORK` is unset.
fn spdx_validator() -> Option<PathBuf> {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/spdx-tools-venv");
    let tool = venv.join("bin/pyspdxtools");
    if tool.is_file() {
        return Some(tool);
    }
    let made = run(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    let installed = made.status.success()
        && run(Command::new(venv.join("bin/pip")).args(["install", "-q", "spdx-tools"]))
            .status
            .success();
    if installed && tool.is_file() {
        return Some(tool);
    }
    let _ = fs::remove_dir_all(&venv);
    assert!(
        std::env::var_os("KSBUILD_REQUIRE_NETWORK").is_none(),
        "cannot install spdx-tools from PyPI into `{}` (KSBUILD_REQUIRE_NETWORK is set)",
        venv.display()
    );
    eprintln!(
        "SKIP: cannot install spdx-tools from PyPI (python3 -m venv + pip install spdx-tools)"
    );
    None
}

/// Whether `pyspdxtools` finds `file` valid; its report otherwise.
fn validate(tool: &Path, file: &Path) -> Result<(), String> {
    let out = run(Command::new(tool).arg("-i").arg(file));
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    if out.status.success() && !text.contains("invalid") {
        Ok(())
    } else {
        Err(text)
    }
}

/// The regular files of a `.deb`'s `data.tar.*` with their SHA-256 (read here with the
/// `tar` crate, not ksbuild's unpacker).
fn deb_files(deb: &Path) -> Vec<(String, String)> {
    let bytes = fs::read(deb).unwrap();
    assert_eq!(&bytes[..8], b"!<arch>\n", "{}", deb.display());
    let mut at = 8;
    while at + 60 <= bytes.len() {
        let header = &bytes[at..at + 60];
        let name = String::from_utf8_lossy(&header[..16])
            .trim_end()
            .trim_end_matches('/')
            .to_string();
        let size: usize = String::from_utf8_lossy(&header[48..58])
            .trim()
            .parse()
            .unwrap();
        let body = &bytes[at + 60..at + 60 + size];
        if name.starts_with("data.tar") {
            let reader: Box<dyn Read> = match name.as_str() {
                "data.tar.xz" => Box::new(xz2::read::XzDecoder::new(body)),
                "data.tar.gz" => Box::new(flate2::read::GzDecoder::new(body)),
                "data.tar.zst" => Box::new(zstd::stream::read::Decoder::new(body).unwrap()),
                "data.tar" => Box::new(body),
                other => panic!("{other} in {}", deb.display()),
            };
            let mut out = Vec::new();
            let mut archive = tar::Archive::new(reader);
            for entry in archive.entries().unwrap() {
                let mut entry = entry.unwrap();
                if entry.header().entry_type() != tar::EntryType::Regular {
                    continue;
                }
                let path = entry.path().unwrap().to_string_lossy().to_string();
                let mut data = Vec::new();
                entry.read_to_end(&mut data).unwrap();
                out.push((path, ksbuild::compat::Hash::sha256(&data).to_hex()));
            }
            return out;
        }
        at += 60 + size + size % 2;
    }
    panic!("no data.tar in {}", deb.display());
}

fn out_path(store: &Path, proj: &Path, target: &str) -> PathBuf {
    let json = run_ok(
        ksbuild(store)
            .arg("--project")
            .arg(proj)
            .args(["show-derivation", target]),
    );
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let p = v.as_object().unwrap().values().next().unwrap()["outputs"]["out"]["path"]
        .as_str()
        .unwrap()
        .to_string();
    store.join(p.trim_start_matches('/'))
}

/// An SPDX document's relationships: (from, type, to).
fn relationships(doc: &serde_json::Value) -> BTreeSet<(String, String, String)> {
    doc["relationships"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["spdxElementId"].as_str().unwrap().to_string(),
                r["relationshipType"].as_str().unwrap().to_string(),
                r["relatedSpdxElement"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_sbom_of_rpi_image_small_validates_and_lists_exactly_the_shipped_packages() {
    if crate::realise::skip_without_busybox() {
        return;
    }
    let Some(tool) = spdx_validator() else { return };
    let store = kernel_store();
    let tmp = scratch();
    let proj = project(tmp.path(), &store);
    if realise(&store, &proj, "rpi-image@small", &[]).is_none() {
        return;
    }
    let sbom = |args: &[&str]| {
        run_ok(
            ksbuild(&store)
                .arg("--project")
                .arg(&proj)
                .arg("sbom")
                .arg("rpi-image@small")
                .args(args),
        )
    };
    let t0 = std::time::Instant::now();
    let first = sbom(&[]);
    eprintln!("sbom: {:.1} s", t0.elapsed().as_secs_f64());
    let file = tmp.path().join("rpi.spdx.json");
    fs::write(&file, &first).unwrap();
    assert_eq!(first, sbom(&["--format", "spdx-json"]), "two runs differ");
    if let Err(report) = validate(&tool, &file) {
        panic!("pyspdxtools refuses the SBOM:\n{report}");
    }
    // The validator can fail: a document without its data licence is refused.
    let mut doc: serde_json::Value = serde_json::from_str(&first).unwrap();
    let broken = tmp.path().join("broken.spdx.json");
    let mut b = doc.clone();
    b.as_object_mut().unwrap().remove("dataLicense");
    fs::write(&broken, serde_json::to_string(&b).unwrap()).unwrap();
    assert!(
        validate(&tool, &broken).is_err(),
        "the validator accepts anything"
    );

    // The Debian packages listed, by purl.
    let listed: BTreeSet<String> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["externalRefs"][0]["referenceLocator"].as_str())
        .map(str::to_string)
        .collect();
    // Worked out independently: the locked packages of `userland-arm64` with a non-empty
    // file whose bytes are in the rootfs, and raspi-firmware of the image environment.
    let rootfs = out_path(&store, &proj, "rootfs-arm64");
    let mut in_rootfs = BTreeSet::new();
    for entry in walkdir::WalkDir::new(&rootfs) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() && entry.metadata().unwrap().len() > 0 {
            in_rootfs
                .insert(ksbuild::compat::Hash::sha256(&fs::read(entry.path()).unwrap()).to_hex());
        }
    }
    let lock: toml::Value =
        toml::from_str(&fs::read_to_string(proj.join("sandboxes/userland-arm64.lock")).unwrap())
            .unwrap();
    let real_store = store.join("nix/store");
    let store_files: Vec<String> = fs::read_dir(&real_store)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    let purl = |d: &toml::Value| {
        format!(
            "pkg:deb/debian/{}@{}?arch={}",
            d["name"].as_str().unwrap(),
            d["version"]
                .as_str()
                .unwrap()
                .replace(':', "%3A")
                .replace('+', "%2B"),
            d["architecture"].as_str().unwrap()
        )
    };
    let mut expected = BTreeSet::new();
    let mut not_shipped = Vec::new();
    for d in lock["deb"].as_array().unwrap() {
        let base = d["path"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap()
            .replace(['~', ':'], "_");
        let sha = d["sha256"].as_str().unwrap();
        let deb = store_files
            .iter()
            .map(|n| real_store.join(n))
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .ends_with(&format!("-{base}"))
                    && ksbuild::compat::Hash::sha256(&fs::read(p).unwrap()).to_hex() == sha
            })
            .unwrap_or_else(|| panic!("the .deb of {base} is not in the store"));
        if deb_files(&deb).iter().any(|(_, h)| in_rootfs.contains(h)) {
            expected.insert(purl(d));
        } else {
            not_shipped.push(purl(d));
        }
    }
    let image_lock: toml::Value =
        toml::from_str(&fs::read_to_string(proj.join("sandboxes/image.lock")).unwrap()).unwrap();
    let firmware = image_lock["deb"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"].as_str() == Some("raspi-firmware"))
        .unwrap();
    expected.insert(purl(firmware));
    assert_eq!(
        listed, expected,
        "not shipped (and so not listed): {not_shipped:?}"
    );
    for name in ["busybox-static", "libc6", "iptables", "nftables", "netbase"] {
        assert!(
            listed
                .iter()
                .any(|p| p.starts_with(&format!("pkg:deb/debian/{name}@"))),
            "{name} missing from {listed:?}"
        );
    }
    assert!(
        !not_shipped.is_empty(),
        "the rootfs took files of every locked package?"
    );

    // Relationships: image CONTAINS initramfs CONTAINS rootfs CONTAINS libc6.
    let rels = relationships(&doc);
    let has = |a: &str, t: &str, b: &str| {
        rels.iter()
            .any(|(x, y, z)| x == a && y == t && z.starts_with(b))
    };
    assert!(has(
        "SPDXRef-rpi-image-small",
        "CONTAINS",
        "SPDXRef-initramfs-rpi-small"
    ));
    assert!(has(
        "SPDXRef-initramfs-rpi-small",
        "CONTAINS",
        "SPDXRef-rootfs-arm64"
    ));
    assert!(has(
        "SPDXRef-rootfs-arm64",
        "CONTAINS",
        "SPDXRef-deb-libc6-"
    ));
    assert!(has(
        "SPDXRef-rootfs-arm64",
        "CONTAINS",
        "SPDXRef-kubesolo-arm64"
    ));
    assert!(has(
        "SPDXRef-rpi-image-small",
        "CONTAINS",
        "SPDXRef-deb-raspi-firmware-"
    ));
    assert!(has(
        "SPDXRef-kernel-rpi-small",
        "GENERATED_FROM",
        "SPDXRef-linux-source-6.12"
    ));
    // The kernel: its version and the hash of its `.config`.
    let packages: BTreeMap<String, &serde_json::Value> = doc["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["SPDXID"].as_str().unwrap().to_string(), p))
        .collect();
    let kernel = packages["SPDXRef-kernel-rpi-small"];
    let kernel_out = out_path(&store, &proj, "kernel-rpi@small");
    let modules: Vec<String> = fs::read_dir(kernel_out.join("lib/modules"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(
        kernel["versionInfo"].as_str(),
        modules.first().map(String::as_str)
    );
    let config =
        ksbuild::compat::Hash::sha256(&fs::read(kernel_out.join("config")).unwrap()).to_hex();
    assert!(kernel["comment"]
        .as_str()
        .unwrap()
        .contains(&format!("configSha256: {config}")));
    // The init's files, by hash.
    let init = fs::read(proj.join("fragments/kubesolo-init/init")).unwrap();
    let files = doc["files"].as_array_mut().unwrap();
    assert!(files.iter().any(|f| f["fileName"] == "./kubesolo-init/init"
        && f["checksums"][1]["checksumValue"] == ksbuild::compat::Hash::sha256(&init).to_hex()));
    assert_eq!(doc["creationInfo"]["created"], "2024-01-01T00:00:00Z");

    // CycloneDX: the same packages.
    let cdx: serde_json::Value =
        serde_json::from_str(&sbom(&["--format", "cyclonedx-json"])).unwrap();
    assert_eq!(cdx["bomFormat"], "CycloneDX");
    let cdx_purls: BTreeSet<String> = cdx["components"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["purl"].as_str().map(str::to_string))
        .collect();
    assert_eq!(cdx_purls, expected);

    // The image carries its own SBOM, written in its sandbox from its inputs by the same
    // writer: it validates, and it lists the same Debian packages and firmware, entry for
    // entry (version, SHA-256, licence, files shipped), nested the same way.
    let image = out_path(&store, &proj, "rpi-image@small");
    let carried = image.join("sbom.spdx.json");
    if let Err(report) = validate(&tool, &carried) {
        panic!("pyspdxtools refuses the image's own SBOM:\n{report}");
    }
    let inside: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&carried).unwrap()).unwrap();
    let outside: serde_json::Value = serde_json::from_str(&first).unwrap();
    let debian = |doc: &serde_json::Value| -> BTreeMap<String, serde_json::Value> {
        doc["packages"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["externalRefs"][0]["referenceLocator"].is_string())
            .map(|p| (p["SPDXID"].as_str().unwrap().to_string(), p.clone()))
            .collect()
    };
    assert_eq!(debian(&inside), debian(&outside));
    assert_eq!(
        inside["packages"].as_array().unwrap().len(),
        expected.len() + 4,
        "the image, its kernel, initramfs and rootfs besides the packages"
    );
    let inside_packages: BTreeMap<String, &serde_json::Value> = inside["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["SPDXID"].as_str().unwrap().to_string(), p))
        .collect();
    let kernel_inside = inside_packages["SPDXRef-kernel-rpi-small"];
    assert_eq!(
        kernel_inside["versionInfo"].as_str(),
        modules.first().map(String::as_str)
    );
    assert!(kernel_inside["comment"]
        .as_str()
        .unwrap()
        .contains(&format!("configSha256: {config}")));
    let rels_inside = relationships(&inside);
    for (a, b) in [
        ("SPDXRef-rpi-image-small", "SPDXRef-kernel-rpi-small"),
        ("SPDXRef-rpi-image-small", "SPDXRef-initramfs-rpi-small"),
        ("SPDXRef-initramfs-rpi-small", "SPDXRef-rootfs-arm64"),
    ] {
        assert!(
            rels_inside.contains(&(a.into(), "CONTAINS".into(), b.into())),
            "{a} CONTAINS {b}: {rels_inside:?}"
        );
    }
    for p in debian(&inside).keys() {
        let parent = if p.starts_with("SPDXRef-deb-raspi-firmware-") {
            "SPDXRef-rpi-image-small"
        } else {
            "SPDXRef-rootfs-arm64"
        };
        assert!(
            rels_inside.contains(&(parent.into(), "CONTAINS".into(), p.clone())),
            "{parent} CONTAINS {p}"
        );
    }
    assert_eq!(inside["creationInfo"]["created"], "2024-01-01T00:00:00Z");
    assert_eq!(inside["name"], "rpi-image-small");
}
