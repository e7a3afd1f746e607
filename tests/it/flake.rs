//! The project's `flake.nix` evaluates offline with real Nix 2.8.

use crate::common::{nix, run_ok, skip_without_nix};

#[test]
fn flake_evaluates_offline_and_reads_the_project() {
    if skip_without_nix() {
        return;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    // A `path:` flake copies the directory; point it at a copy without `target/`.
    let tmp = crate::common::scratch();
    let flake = tmp.path().join("flake");
    std::fs::create_dir_all(flake.join("derivations")).unwrap();
    for item in ["flake.nix", "Cargo.toml"] {
        run_ok(
            std::process::Command::new("cp")
                .arg(format!("{root}/{item}"))
                .arg(&flake),
        );
    }
    std::fs::write(flake.join("derivations/example.toml"), "").unwrap();
    std::fs::write(flake.join("derivations/_project.toml"), "").unwrap();
    let url = format!("path:{}#lib", flake.display());
    // A store of the test's own: an ordinary user without a Nix daemon cannot use /nix.
    let nix_store = tmp.path().join("nixroot");
    let json = run_ok(
        nix("nix")
            .args(["eval", "--json", "--store"])
            .arg(&nix_store)
            .arg(&url),
    );
    let lib: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(lib["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(lib["storeDir"], "/nix/store");
    assert_eq!(lib["targets"], serde_json::json!(["example"]));
}
