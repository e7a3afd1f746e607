//! Cross-checks `compat::derivation` against real Nix 2.8. `nix-instantiate --store
//! <scratch>/root` writes `.drv` files into a private chroot store (paths are still
//! `/nix/store/…`, the bytes live under `<scratch>/root/nix/store`, and `/nix` is not
//! touched). Every derivation and its whole input closure must then parse and re-serialise
//! byte for byte, give the `.drv` path Nix wrote, give back its output paths when they are
//! recomputed from the masked derivation, and give exactly `nix show-derivation`'s JSON.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use ksbuild::compat::derivation::{show_derivation_json, Derivation, DerivationError};
use ksbuild::compat::{Hash, StoreDir, StorePath};

use crate::common::{nix, run, run_ok, scratch, skip_without_nix};

/// `fixtures.nix` of nix-formats.md §5a, verbatim.
const FIXTURES_NIX: &str = r##"# Busybox-independent fixtures: builders are plain strings, so nothing but
# ./script.sh (exact bytes given in the doc) is imported into the store.
let system = "x86_64-linux"; in rec {
  simple = derivation {
    name = "simple"; inherit system; builder = "/bin/sh";
    args = [ "-c" "echo hi > $out" ];
    FOO = "bar"; NUM = 42; BOOL = true; FALSE = false; NULLV = null;
    LIST = [ "a" "b" 3 ]; FLOAT = 1.5;
    QUOTE = "has \"quotes\" and \\ backslash\nand newline\ttab";
  };
  fixedFlat = derivation {
    name = "fixed-flat"; inherit system; builder = "/bin/sh";
    args = [ "-c" "printf hello > $out" ];
    outputHashAlgo = "sha256"; outputHashMode = "flat";
    outputHash = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
  };
  fixedRec = derivation {
    name = "fixed-rec"; inherit system; builder = "/bin/sh";
    args = [ "-c" "mkdir $out && printf hello > $out/f" ];
    outputHashAlgo = "sha256"; outputHashMode = "recursive";
    outputHash = "sha256-oXrRHZyHzNnIZMfEaXjY/Xck0qL62ktH+jE71iyavNc=";
  };
  dependent = derivation {
    name = "dependent"; inherit system; builder = "/bin/sh";
    script = ./script.sh;
    args = [ "-c" "cat ${simple} ${fixedFlat} > $out; sh $script x" ];
  };
  multi = derivation {
    name = "multi"; inherit system; builder = "/bin/sh";
    outputs = [ "out" "dev" ];
    args = [ "-c" "echo out > $out; echo dev > $dev" ];
  };
  usesDev = derivation {
    name = "uses-dev"; inherit system; builder = "/bin/sh";
    args = [ "-c" "cat ${multi.dev} ${multi.out} > $out" ];
  };
}
"##;

/// `script.sh` of §5a (mode 0755); it becomes `/nix/store/2n3bhmy2…-script.sh`.
const SCRIPT_SH: &str = "#!/bin/sh\necho \"script ran with $1\"\n";

/// More variety than §5a: outputs, fixed-output hash forms, escapes, sources, dependencies.
const VARIETY_NIX: &str = r##"# Varied derivations for ksbuild's ATerm/hash-modulo cross-check. Plain `derivation`
# calls only (no nixpkgs); nothing here is ever built.
let
  system = "x86_64-linux";
  mk = attrs: derivation ({ inherit system; builder = "/bin/sh"; } // attrs);
  fixed = name: attrs: mk ({ inherit name; args = [ "-c" "printf hello > $out" ]; } // attrs);
  # Two fixed-output drvs with the same output but different builders: equal modulo hashes.
  fx = builder: mk { name = "fx"; inherit builder; outputHash = "sha256-LPJNul+wow4m6DsqxbninhsWHlwfp0JecwQzYpOLmCQ="; };
  twin = f: mk { name = "twin"; outputs = [ "out" "dev" ]; args = [ "${f}" ]; };
in rec {
  # Outputs declared out of order (nix-instantiate prints `<drv>!bin`), and only a non-`out` one.
  manyOutputs = mk { name = "many-outputs"; outputs = [ "bin" "out" "dev" "lib" ]; args = [ "-c" "true" ]; };
  onlyLib = mk { name = "only-lib"; outputs = [ "lib" ]; };

  # Fixed outputs: flat and recursive, md5/sha1/sha256/sha512, hex/nixbase32/SRI/prefixed notation.
  flatMd5Hex = fixed "flat-md5-hex" { outputHashAlgo = "md5"; outputHash = "5d41402abc4b2a76b9719d911017c592"; };
  flatSha1Hex = fixed "flat-sha1-hex" { outputHashAlgo = "sha1"; outputHash = "aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d"; };
  flatSha256Nix32 = fixed "flat-sha256-nix32" { outputHashAlgo = "sha256"; outputHashMode = "flat"; outputHash = "094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic"; };
  flatSha512Sri = fixed "flat-sha512-sri" { outputHash = "sha512-m3HSJL1i83hdltRq0+o9czGb+8KJDKra4t/3JRlnPKcjI8PZm6XBHXx6zG4UuMXaDEZjR1wuXDre9G9zvN7AQw=="; };
  recSha1Sri = fixed "rec-sha1-sri" { outputHashMode = "recursive"; outputHash = "sha1-qUqP5cyxm6YcTAhz05Hph5gvu9M="; };
  recSha256Prefixed = fixed "rec-sha256-prefixed" { outputHashMode = "recursive"; outputHash = "sha256:1mxwk8ndcfriz93lpnpslb928xzxv1w6ki67ck4dkk47khfx2ym1"; };
  recSha512Hex = fixed "rec-sha512-hex" { outputHashMode = "recursive"; outputHashAlgo = "sha512"; outputHash = "9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca72323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043"; };

  # Every escape, non-ASCII UTF-8, raw control bytes, odd keys and empty values.
  escapes = mk {
    name = "escapes";
    args = [ "-c" "printf '%s' \"$ESC\"" "tab\there" "cr\rhere" "nl\nhere" "q\"uote" "back\\slash" "dollar \${x}" "" ];
    ESC = "\" \\ \n \r \t";
    UTF8 = "é ñ 日本語 🦀";
    CTRL = builtins.fromJSON "\"bell\\u0007 esc\\u001b del\\u007f\"";
    "key with \"quotes\" and \\" = "v";
    "ключ" = "значение";
    EMPTY = "";
  };

  # Attribute types as env strings, and names with every allowed punctuation character.
  envTypes = mk { name = "env-types"; INT = 42; NEG = -7; FLOAT = 0.1; BOOL = true; NULL = null; LIST = [ 1 "a" [ 2 true ] ]; PATH = ./script.sh; DRV = base; };
  nameChars = mk { name = "a+b-1.0_x=y?z"; };

  # Input sources: builtins.toFile, path literals (a file and a directory), builtins.path.
  toFileSrc = mk { name = "to-file"; script = builtins.toFile "script.sh" "echo \"hi\"\n"; };
  pathLiterals = mk { name = "path-literals"; builder = "${./data}/bin/tool"; args = [ "${./data}/inner.txt" ./script.sh ]; };
  builtinsPath = mk { name = "builtins-path"; src = builtins.path { path = ./data; name = "custom-data"; }; };

  longArgs = mk { name = "long-args"; args = builtins.genList (i: "argument-number-${toString i}") 2000; };

  # Dependencies: non-default outputs, several outputs of one input, a diamond.
  devAndLib = mk { name = "dev-and-lib"; args = [ "-c" "${manyOutputs.dev} ${manyOutputs.lib}" ]; };
  binOnly = mk { name = "bin-only"; args = [ "${manyOutputs.bin}" "${onlyLib}" ]; };
  base = mk { name = "base"; };
  left = mk { name = "left"; dep = base; };
  right = mk { name = "right"; dep = base; };
  diamond = mk { name = "diamond"; inherit left right; src = toFileSrc; };

  # Depending on fixed-output drvs (their modulo hash is fixed:out:…), including two with
  # the same output built differently, and "twins" whose modulo hashes coincide: Nix merges
  # their output sets in the hashed ATerm.
  onFixed = mk { name = "on-fixed"; deps = [ flatMd5Hex flatSha1Hex flatSha256Nix32 flatSha512Sri recSha1Sri recSha256Prefixed recSha512Hex ]; };
  twins = mk { name = "twins"; args = [ "${(twin (fx "/bin/sh")).out}" "${(twin (fx "/bin/bash")).dev}" ]; };
  twinsReversed = mk { name = "twins-reversed"; args = [ "${(twin (fx "/bin/sh")).dev}" "${(twin (fx "/bin/bash")).out}" ]; };
  onFixedTwice = mk { name = "on-fixed-twice"; a = fx "/bin/sh"; b = fx "/bin/bash"; };

  # __structuredAttrs: the env holds only __json and the outputs.
  structured = mk { name = "structured"; __structuredAttrs = true; outputs = [ "out" "doc" ]; nested = { a = [ 1 2.5 true null "s" ]; }; dep = base; };
}
"##;

/// Every attribute of `VARIETY_NIX`.
const VARIETY_ATTRS: &[&str] = &[
    "manyOutputs",
    "onlyLib",
    "flatMd5Hex",
    "flatSha1Hex",
    "flatSha256Nix32",
    "flatSha512Sri",
    "recSha1Sri",
    "recSha256Prefixed",
    "recSha512Hex",
    "escapes",
    "envTypes",
    "nameChars",
    "toFileSrc",
    "pathLiterals",
    "builtinsPath",
    "longArgs",
    "devAndLib",
    "binOnly",
    "base",
    "left",
    "right",
    "diamond",
    "onFixed",
    "twins",
    "twinsReversed",
    "onFixedTwice",
    "structured",
];

/// A scratch directory with `.nix` files, the chroot store Nix instantiates them into, and
/// the derivations read back from it.
struct Instantiated {
    _scratch: crate::common::Scratch,
    dir: PathBuf,
    root: PathBuf,
    store_dir: StoreDir,
    drvs: BTreeMap<StorePath, Derivation>,
    modulo: BTreeMap<StorePath, Hash>,
}

impl Instantiated {
    fn new() -> Instantiated {
        let scratch = scratch();
        let dir = scratch.path().to_path_buf();
        let script = dir.join("script.sh");
        fs::write(&script, SCRIPT_SH).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        fs::create_dir_all(dir.join("data/bin")).unwrap();
        fs::write(dir.join("data/inner.txt"), "inner\n").unwrap();
        fs::write(dir.join("data/bin/tool"), "#!/bin/sh\necho tool\n").unwrap();
        fs::set_permissions(dir.join("data/bin/tool"), fs::Permissions::from_mode(0o755)).unwrap();
        fs::write(dir.join("fixtures.nix"), FIXTURES_NIX).unwrap();
        fs::write(dir.join("variety.nix"), VARIETY_NIX).unwrap();
        Instantiated {
            root: dir.join("root"),
            dir,
            _scratch: scratch,
            store_dir: StoreDir::default(),
            drvs: BTreeMap::new(),
            modulo: BTreeMap::new(),
        }
    }

    /// `nix-instantiate --store <root> <file> [-A <attr>]` (no `-A` when `attr` is empty):
    /// the `.drv` path. Nix prints `<drv>!<output>` when the first declared output is not `out`.
    fn instantiate(&self, file: &str, attr: &str) -> StorePath {
        let mut cmd = nix("nix-instantiate");
        cmd.arg("--store").arg(&self.root).arg(self.dir.join(file));
        if !attr.is_empty() {
            cmd.arg("-A").arg(attr);
        }
        let stdout = run_ok(&mut cmd);
        let line = stdout
            .lines()
            .next()
            .unwrap_or_else(|| panic!("no output for {attr}"));
        let path = line.split('!').next().unwrap();
        self.store_dir
            .parse_path(path)
            .unwrap_or_else(|e| panic!("{attr}: {e}"))
    }

    /// Where the bytes of `path` live in the chroot store.
    fn physical(&self, path: &StorePath) -> PathBuf {
        self.root.join("nix/store").join(path.to_string())
    }

    /// Reads `path` and, recursively, its input derivations. Each must re-serialise byte for
    /// byte and hash to its own `.drv` path.
    fn load(&mut self, path: &StorePath) {
        if self.drvs.contains_key(path) {
            return;
        }
        let bytes = fs::read(self.physical(path)).unwrap();
        let drv = Derivation::from_aterm(&bytes, &self.store_dir)
            .unwrap_or_else(|e| panic!("{path}: {e}\n{}", String::from_utf8_lossy(&bytes)));
        let again = drv.to_aterm(&self.store_dir);
        assert!(
            again == bytes,
            "{path} does not round-trip:\nnix:  {}\nours: {}",
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&again)
        );
        assert_eq!(&drv.drv_path(&self.store_dir).unwrap(), path, "drv path");
        let inputs: Vec<StorePath> = drv.input_derivations.keys().cloned().collect();
        self.drvs.insert(path.clone(), drv);
        for input in &inputs {
            self.load(input);
        }
    }

    fn modulo(&mut self, path: &StorePath) -> Result<Hash, DerivationError> {
        if let Some(h) = self.modulo.get(path) {
            return Ok(h.clone());
        }
        let drv = self.drvs[path].clone();
        let store_dir = self.store_dir.clone();
        let h = drv.hash_derivation_modulo(&store_dir, &mut |p: &StorePath| self.modulo(p))?;
        self.modulo.insert(path.clone(), h.clone());
        Ok(h)
    }

    /// Forgets every output path (and puts junk in the env entries of the outputs), then
    /// recomputes them; the result must be the derivation Nix wrote.
    fn check_output_paths(&mut self) {
        let store_dir = self.store_dir.clone();
        for (path, want) in self.drvs.clone() {
            let mut drv = want.clone();
            for (name, output) in &mut drv.outputs {
                output.path = None;
                drv.env.insert(name.clone(), "junk".to_string());
            }
            drv.fill_output_paths(&store_dir, &mut |p: &StorePath| self.modulo(p))
                .unwrap_or_else(|e| panic!("{path}: {e}"));
            assert_eq!(drv, want, "output paths of {path}");
        }
    }

    /// `nix show-derivation` of every loaded derivation at once must equal ours: the same
    /// values in the same key order, and the same text.
    fn check_show_derivation(&self) {
        let mut cmd = nix("nix");
        cmd.arg("show-derivation").arg("--store").arg(&self.root);
        for path in self.drvs.keys() {
            cmd.arg(self.store_dir.display(path));
        }
        let stdout = run_ok(&mut cmd);
        let theirs: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let ours = show_derivation_json(&self.store_dir, &self.drvs);
        assert_eq!(ours, theirs);
        // Value equality ignores key order; compare the serialisations for that.
        assert_eq!(
            serde_json::to_string(&ours).unwrap(),
            serde_json::to_string(&theirs).unwrap()
        );
        // Nix 2.8 pretty-prints with two spaces, like serde_json, and escapes control bytes as
        // `\u00XX` (serde_json writes `\b` and `\f` short, so no fixture uses those two).
        assert_eq!(
            serde_json::to_string_pretty(&ours).unwrap(),
            stdout.trim_end_matches('\n')
        );
    }

    /// Instantiates `attrs` of `file`, loads their closures and runs every check.
    fn check_all(&mut self, file: &str, attrs: &[&str]) -> BTreeMap<String, StorePath> {
        let mut top = BTreeMap::new();
        for attr in attrs {
            let path = self.instantiate(file, attr);
            self.load(&path);
            top.insert(attr.to_string(), path);
        }
        self.check_output_paths();
        self.check_show_derivation();
        top
    }
}

#[test]
fn reference_fixtures_match_nix() {
    if skip_without_nix() {
        return;
    }
    let mut s = Instantiated::new();
    let attrs = [
        "simple",
        "fixedFlat",
        "fixedRec",
        "dependent",
        "multi",
        "usesDev",
    ];
    let top = s.check_all("fixtures.nix", &attrs);
    // The drv paths recorded in nix-formats.md §5a: the reference and this Nix agree.
    let documented = [
        ("simple", "y5klq7iqv4aqzy4wlpg8ac9qpbr0cfsj-simple.drv"),
        (
            "fixedFlat",
            "hmrfk5bdsdm38bbn08ngfzm06mxspqk1-fixed-flat.drv",
        ),
        ("fixedRec", "kx53x8bxxxii4xj3y81130g9l3hmc27d-fixed-rec.drv"),
        (
            "dependent",
            "s9jzpcncm5snb3mgm7vh7qnx0r46dy3p-dependent.drv",
        ),
        ("multi", "yi91mzsi826p8fn6182iarh1n2vp28pi-multi.drv"),
        ("usesDev", "a0jb9hpdcxy7nqyfxbj65izxki6yn1wv-uses-dev.drv"),
    ];
    for (attr, base) in documented {
        assert_eq!(top[attr].to_string(), base, "{attr}");
    }
    assert_eq!(s.drvs.len(), 6);
}

#[test]
fn varied_derivations_match_nix() {
    if skip_without_nix() {
        return;
    }
    let mut s = Instantiated::new();
    let top = s.check_all("variety.nix", VARIETY_ATTRS);
    let drv = |attr: &str| &s.drvs[&top[attr]];

    let outputs: Vec<&str> = drv("manyOutputs")
        .outputs
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(outputs, ["bin", "dev", "lib", "out"]);
    assert_eq!(drv("manyOutputs").env["outputs"], "bin out dev lib");
    assert_eq!(drv("onlyLib").outputs.keys().collect::<Vec<_>>(), ["lib"]);

    // Whatever notation outputHash used, the output tuple holds hex; the env keeps the text.
    let nix32 = drv("flatSha256Nix32");
    let fixed = nix32.fixed_output().unwrap().unwrap();
    assert_eq!(
        fixed.hash.to_hex(),
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    assert_eq!(
        nix32.env["outputHash"],
        "094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic"
    );
    assert_eq!(
        drv("recSha1Sri")
            .fixed_output()
            .unwrap()
            .unwrap()
            .method_algo(),
        "r:sha1"
    );
    assert_eq!(
        drv("flatSha512Sri")
            .fixed_output()
            .unwrap()
            .unwrap()
            .method_algo(),
        "sha512"
    );

    assert_eq!(drv("escapes").env["ESC"], "\" \\ \n \r \t");
    assert_eq!(drv("escapes").env["CTRL"], "bell\u{7} esc\u{1b} del\u{7f}");
    assert_eq!(drv("escapes").env["ключ"], "значение");
    assert_eq!(drv("longArgs").args.len(), 2000);
    assert_eq!(drv("envTypes").input_sources.len(), 1);
    assert_eq!(drv("pathLiterals").input_sources.len(), 2);

    // The structured-attrs env has no `name`; it comes from `__json`.
    assert!(!drv("structured").env.contains_key("name"));
    assert_eq!(drv("structured").name().unwrap(), "structured");

    // The twins differ as drvs but share a modulo hash (their only input is a fixed output
    // built two ways), so `twins` hashes one input with both outputs merged.
    for attr in ["twins", "twinsReversed", "onFixedTwice"] {
        let inputs: Vec<StorePath> = drv(attr).input_derivations.keys().cloned().collect();
        assert_eq!(inputs.len(), 2, "{attr}");
        assert_eq!(s.modulo[&inputs[0]], s.modulo[&inputs[1]], "{attr}");
    }
}

#[test]
fn what_nix_writes_but_cannot_read_is_rejected() {
    if skip_without_nix() {
        return;
    }
    let s = Instantiated::new();
    // A string literal with raw non-UTF-8 bytes: Nix writes them into the .drv as they are.
    fs::write(
        s.dir.join("bytes.nix"),
        b"derivation { name = \"bytes\"; system = \"x\"; builder = \"/b\"; V = \"\xff\xfe\"; }\n",
    )
    .unwrap();
    // Nix writes `system` without escaping, so this .drv is not valid ATerm.
    fs::write(
        s.dir.join("system.nix"),
        "derivation { name = \"system\"; system = \"x\\\"y\"; builder = \"/b\"; }\n",
    )
    .unwrap();

    let bytes_drv = s.instantiate("bytes.nix", "");
    let bytes = fs::read(s.physical(&bytes_drv)).unwrap();
    let err = Derivation::from_aterm(&bytes, &s.store_dir).unwrap_err();
    let at = bytes.iter().position(|&b| b == 0xff).unwrap();
    assert!(
        matches!(err, DerivationError::NotUtf8 { offset, .. } if offset == at),
        "{err}"
    );

    // nix-instantiate writes that .drv, then fails reading it back:
    // `error: error parsing derivation '/nix/store/…-system.drv': error: expected string ','`.
    let out = run(nix("nix-instantiate")
        .arg("--store")
        .arg(&s.root)
        .arg(s.dir.join("system.nix")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "Nix 2.8 now reads back a .drv with a quote in `system`"
    );
    let quoted = stderr
        .split("error parsing derivation '")
        .nth(1)
        .unwrap_or_else(|| panic!("{stderr}"));
    let system_drv = s
        .store_dir
        .parse_path(quoted.split('\'').next().unwrap())
        .unwrap();
    let bytes = fs::read(s.physical(&system_drv)).unwrap();
    let err = Derivation::from_aterm(&bytes, &s.store_dir).unwrap_err();
    let at = bytes.windows(4).position(|w| w == b"\"x\"y").unwrap() + 3;
    assert!(
        matches!(err, DerivationError::Syntax { offset, .. } if offset == at),
        "{err}"
    );
    // The writer still reproduces Nix's bytes and .drv path from the parts.
    let mut drv = Derivation {
        system: "x\"y".into(),
        builder: "/b".into(),
        ..Derivation::default()
    };
    for (k, v) in [("name", "system"), ("system", "x\"y"), ("builder", "/b")] {
        drv.env.insert(k.into(), v.into());
    }
    drv.outputs.insert("out".into(), Default::default());
    drv.fill_output_paths(
        &s.store_dir,
        &mut |_: &StorePath| -> Result<Hash, DerivationError> { unreachable!("no inputs") },
    )
    .unwrap();
    assert_eq!(drv.to_aterm(&s.store_dir), bytes);
    assert_eq!(drv.drv_path(&s.store_dir).unwrap(), system_drv);
}
