//! Nix 2.8 derivations: the ATerm `.drv` format (strict parser and byte-exact writer),
//! `hashDerivationModulo`, output paths, `.drv` paths and `nix show-derivation` JSON.
//! Pure: no I/O — the writer fills a `Vec<u8>` or an `io::Write`, and the hashes of input
//! derivations come through a closure.
//!
//! # Strings
//!
//! Nix's strings are raw bytes. Every string here is a Rust `String`, and [`Derivation::from_aterm`]
//! rejects a `.drv` that is not UTF-8 (with the byte offset). Real Nix can write such a file
//! (from a `.nix` file with raw non-UTF-8 bytes in a string literal); ksbuild's derivations
//! never need one, and UTF-8 keeps env, args and JSON simple.
//!
//! # Quoting, exactly as Nix 2.8 writes it
//!
//! `builder`, `args` and the env keys and values are escaped (`"` `\` LF CR TAB become
//! `\"` `\\` `\n` `\r` `\t`; every other byte is written raw). Output names, store paths,
//! fixed-output hash fields and **`system`** are written between quotes *without* escaping
//! (Nix's `printUnquotedString`). A `system` containing `"` therefore yields a `.drv` that
//! Nix writes but cannot read back; [`Derivation::to_aterm`] reproduces those bytes (and so
//! the `.drv` path Nix computes), and [`Derivation::from_aterm`] rejects them, as Nix does.
//!
//! The parser accepts exactly what the writer produces: re-serialising a parsed derivation
//! gives the input back byte for byte, and anything that would not (unsorted or duplicate
//! keys, escapes in unescaped fields, raw LF/CR/TAB in escaped ones, non-hex fixed hashes,
//! whitespace, a trailing newline) is an error naming the byte offset and what was expected.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::io;

use serde_json::{Map, Value};

use super::hash::{from_hex, Hash, HashAlgo, HashError};
use super::store_path::{
    output_path_name, FileIngestionMethod, StoreDir, StorePath, StorePathError,
};

/// Why bytes are not a derivation, or why a derivation cannot be hashed or given paths.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DerivationError {
    /// The bytes do not follow the ATerm grammar of a `.drv`.
    #[error("invalid derivation at byte {offset}: expected {expected}, found {found}")]
    Syntax {
        /// Where the unexpected input starts.
        offset: usize,
        /// What the grammar allows there.
        expected: String,
        /// A short, escaped excerpt of what is there (or `end of input`).
        found: String,
    },
    /// A backslash escape Nix never writes.
    #[error("invalid derivation at byte {offset}: unknown escape `\\{escape}` (Nix writes only `\\\"`, `\\\\`, `\\n`, `\\r`, `\\t`)")]
    UnknownEscape {
        /// Offset of the backslash.
        offset: usize,
        /// The character after the backslash, escaped for display.
        escape: String,
    },
    /// A string that Nix would have written differently (so it would not round-trip).
    #[error("invalid derivation at byte {offset}: {reason}")]
    NonCanonicalString {
        /// Offset of the offending byte.
        offset: usize,
        /// What is wrong and how Nix writes it.
        reason: &'static str,
    },
    /// A string is not UTF-8 (see the module documentation).
    #[error("invalid derivation at byte {offset}: string is not UTF-8 (ksbuild keeps derivation strings UTF-8)")]
    NotUtf8 {
        /// Offset of the first byte that is not valid UTF-8.
        offset: usize,
        /// The decoding error.
        #[source]
        source: std::str::Utf8Error,
    },
    /// Keys of a sorted collection are out of order or repeated.
    #[error("invalid derivation at byte {offset}: {what} `{key}` does not come after `{previous}` (Nix writes them sorted, without duplicates)")]
    NotSorted {
        /// Offset of the out-of-order key.
        offset: usize,
        /// Which collection (`output`, `input derivation`, `env key`, …).
        what: &'static str,
        /// The key found.
        key: String,
        /// The key before it.
        previous: String,
    },
    /// A path field is not a store path in this store directory.
    #[error("invalid derivation at byte {offset}: bad store path")]
    StorePath {
        /// Offset of the string holding the path.
        offset: usize,
        /// Why it is not a store path.
        #[source]
        source: StorePathError,
    },
    /// An output tuple has an unknown hash algorithm.
    #[error("invalid derivation at byte {offset}: output `{output}` has a bad hash algorithm")]
    BadHashAlgo {
        /// Offset of the hash algorithm string.
        offset: usize,
        /// The output's name.
        output: String,
        /// The parse error.
        #[source]
        source: HashError,
    },
    /// An output tuple's path, hash algorithm and hash do not fit together.
    #[error("invalid derivation at byte {offset}: output `{output}`: {reason}")]
    BadOutput {
        /// Offset of the offending field.
        offset: usize,
        /// The output's name.
        output: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The derivation's name (env `name`, or `name` in `__json`) is missing.
    #[error("derivation has no `name` in its env (nor a string `name` in a valid `__json`)")]
    MissingName,
    /// The derivation has no outputs.
    #[error("derivation `{name}` has no outputs")]
    NoOutputs {
        /// The derivation's name, or `?` if it has none.
        name: String,
    },
    /// Fixed and non-fixed outputs are mixed, or the fixed output is not the only one or not `out`.
    #[error("derivation `{name}`: a fixed-output derivation must have exactly one output, named `out`, and it alone may have a hash")]
    FixedOutputLayout {
        /// The derivation's name, or `?` if it has none.
        name: String,
    },
    /// The path stored for a fixed output is not the one its hash gives.
    #[error("fixed output of `{name}` is `{found}`, but its hash gives `{expected}`")]
    FixedOutputPathMismatch {
        /// The derivation's name.
        name: String,
        /// The path computed from the hash.
        expected: String,
        /// The path in the derivation.
        found: String,
    },
    /// A store path cannot be made for this name (Nix's store-path name rules).
    #[error("cannot make a store path named `{name}`")]
    MakePath {
        /// The name of the path (`<drv>-<output>` or `<drv>.drv`).
        name: String,
        /// Why.
        #[source]
        source: StorePathError,
    },
}

/// The expected hash of a fixed output: how the content is hashed, and the hash.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FixedOutputHash {
    /// Flat (file bytes) or recursive (NAR).
    pub method: FileIngestionMethod,
    /// The expected digest.
    pub hash: Hash,
}

impl FixedOutputHash {
    /// The `hashAlgo` field of the output tuple: `r:sha256` for recursive, `sha256` for flat
    /// (Nix's `printMethodAlgo`).
    pub fn method_algo(&self) -> String {
        match self.method {
            FileIngestionMethod::Recursive => format!("r:{}", self.hash.algo()),
            FileIngestionMethod::Flat => self.hash.algo().to_string(),
        }
    }
}

/// One output of a derivation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// The output's store path; `None` while masked or not yet computed (written as `""`).
    pub path: Option<StorePath>,
    /// The expected hash, for the single output of a fixed-output derivation.
    pub fixed: Option<FixedOutputHash>,
}

/// A Nix derivation, as stored in a `.drv` file. Every collection that Nix writes sorted is a
/// `BTreeMap`/`BTreeSet`, so the order in memory is the order on disk.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Derivation {
    /// Outputs by name.
    pub outputs: BTreeMap<String, Output>,
    /// Input derivations (`.drv` paths) and which of their outputs are used.
    pub input_derivations: BTreeMap<StorePath, BTreeSet<String>>,
    /// Input sources: store paths used directly (path literals, `builtins.toFile`, …).
    pub input_sources: BTreeSet<StorePath>,
    /// The platform, e.g. `x86_64-linux`. Written unescaped (see the module documentation).
    pub system: String,
    /// The program to run.
    pub builder: String,
    /// Its arguments, in order.
    pub args: Vec<String>,
    /// The environment of the builder.
    pub env: BTreeMap<String, String>,
}

/// Input derivations as they appear in the hashed ATerm: keyed by the hex of their modulo
/// hash instead of their path.
type ModuloInputs = BTreeMap<String, BTreeSet<String>>;

impl Derivation {
    /// Parses a `.drv` file strictly (see the module documentation); `store_dir` is the
    /// store the paths in it must belong to.
    pub fn from_aterm(bytes: &[u8], store_dir: &StoreDir) -> Result<Derivation, DerivationError> {
        Parser {
            bytes,
            pos: 0,
            store_dir,
        }
        .derivation()
    }

    /// The `.drv` file's bytes, exactly as Nix 2.8 writes them (no trailing newline).
    pub fn to_aterm(&self, store_dir: &StoreDir) -> Vec<u8> {
        let mut out = Vec::with_capacity(1024);
        self.write_aterm_to(&mut out, store_dir, None);
        out
    }

    /// Writes [`Derivation::to_aterm`]'s bytes to `w`.
    pub fn write_aterm(&self, w: &mut impl io::Write, store_dir: &StoreDir) -> io::Result<()> {
        w.write_all(&self.to_aterm(store_dir))
    }

    /// The derivation's name: env `name`, or for `__structuredAttrs` derivations (whose env
    /// holds only `__json` and the outputs) the `name` attribute inside `__json`.
    pub fn name(&self) -> Result<Cow<'_, str>, DerivationError> {
        if let Some(name) = self.env.get("name") {
            return Ok(Cow::Borrowed(name));
        }
        let json = self.env.get("__json").ok_or(DerivationError::MissingName)?;
        let attrs: Value = serde_json::from_str(json).map_err(|_| DerivationError::MissingName)?;
        let name = attrs
            .get("name")
            .and_then(Value::as_str)
            .ok_or(DerivationError::MissingName)?;
        Ok(Cow::Owned(name.to_string()))
    }

    /// The system features a machine must offer to build this derivation: its
    /// `requiredSystemFeatures`, split on spaces, tabs and newlines — or, for
    /// `__structuredAttrs` derivations, the strings of that list inside `__json` (Nix's
    /// `ParsedDerivation::getRequiredSystemFeatures`). Empty when it requires none.
    pub fn required_system_features(&self) -> BTreeSet<String> {
        if let Some(text) = self.env.get("requiredSystemFeatures") {
            return text
                .split([' ', '\t', '\n', '\r'])
                .filter(|f| !f.is_empty())
                .map(String::from)
                .collect();
        }
        let Some(json) = self.env.get("__json") else {
            return BTreeSet::new();
        };
        let attrs: Value = serde_json::from_str(json).unwrap_or(Value::Null);
        attrs
            .get("requiredSystemFeatures")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect()
    }

    /// The fixed output's hash if this is a fixed-output derivation, `None` if it is
    /// input-addressed; an error if it has no outputs or mixes the two kinds (Nix's
    /// `Derivation::type`).
    pub fn fixed_output(&self) -> Result<Option<&FixedOutputHash>, DerivationError> {
        let name = || {
            self.name()
                .map(Cow::into_owned)
                .unwrap_or_else(|_| "?".to_string())
        };
        if self.outputs.is_empty() {
            return Err(DerivationError::NoOutputs { name: name() });
        }
        let mut fixed = self
            .outputs
            .iter()
            .filter_map(|(n, o)| Some((n, o.fixed.as_ref()?)));
        match fixed.next() {
            None => Ok(None),
            Some((n, hash)) if n == "out" && self.outputs.len() == 1 => Ok(Some(hash)),
            Some(_) => Err(DerivationError::FixedOutputLayout { name: name() }),
        }
    }

    /// Masks the outputs as Nix does before computing input-addressed output paths: every
    /// non-fixed output's path becomes `None` (written `""`) and the env entry of its name
    /// becomes `""` (added if missing).
    pub fn mask_outputs(&mut self) {
        for (name, output) in &mut self.outputs {
            if output.fixed.is_none() {
                output.path = None;
                self.env.insert(name.clone(), String::new());
            }
        }
    }

    /// Nix's `hashDerivationModulo`. For a fixed-output derivation:
    /// `sha256("fixed:out:<r:algo>:<hex>:<out path>")`, so that how a fixed output is built
    /// does not affect its dependents. Otherwise: SHA-256 of the ATerm in which each input
    /// derivation's path is replaced by the hex of *its* modulo hash (from `input_hash`),
    /// re-sorted by that hex, with the output sets of inputs whose hashes coincide merged.
    /// Output paths are hashed as they are; call [`Derivation::mask_outputs`] first for the
    /// hash that output paths are made from.
    ///
    /// Nix recomputes a fixed output's path from its hash and ignores the stored one; here a
    /// stored path that differs is an error ([`DerivationError::FixedOutputPathMismatch`])
    /// rather than silently hashing a corrupt derivation. Errors of `input_hash` pass through.
    pub fn hash_derivation_modulo<E>(
        &self,
        store_dir: &StoreDir,
        input_hash: &mut impl FnMut(&StorePath) -> Result<Hash, E>,
    ) -> Result<Hash, E>
    where
        E: From<DerivationError>,
    {
        if let Some(fixed) = self.fixed_output()? {
            let path = self.checked_fixed_output_path(store_dir, fixed)?;
            let fingerprint = format!(
                "fixed:out:{}:{}:{}",
                fixed.method_algo(),
                fixed.hash.to_hex(),
                store_dir.display(&path)
            );
            return Ok(Hash::sha256(fingerprint.as_bytes()));
        }
        let mut inputs = ModuloInputs::new();
        for (drv_path, outputs) in &self.input_derivations {
            let hex = input_hash(drv_path)?.to_hex();
            inputs
                .entry(hex)
                .or_default()
                .extend(outputs.iter().cloned());
        }
        let mut aterm = Vec::with_capacity(1024);
        self.write_aterm_to(&mut aterm, store_dir, Some(&inputs));
        Ok(Hash::sha256(&aterm))
    }

    /// Computes and sets every output path, and the env entries named after the outputs, as
    /// Nix's `derivationStrict` does: a fixed output gets its content-addressed path; otherwise
    /// the outputs are masked ([`Derivation::mask_outputs`]), the masked derivation's modulo
    /// hash `h` is taken, and output `o` gets `makeOutputPath(o, h, name)`.
    pub fn fill_output_paths<E>(
        &mut self,
        store_dir: &StoreDir,
        input_hash: &mut impl FnMut(&StorePath) -> Result<Hash, E>,
    ) -> Result<(), E>
    where
        E: From<DerivationError>,
    {
        let name = self.name()?.to_string();
        if let Some(fixed) = self.fixed_output()?.cloned() {
            let path = fixed_output_path(store_dir, &fixed, &name)?;
            self.env.insert("out".to_string(), store_dir.display(&path));
            if let Some(out) = self.outputs.get_mut("out") {
                out.path = Some(path);
            }
            return Ok(());
        }
        self.mask_outputs();
        let hash = self.hash_derivation_modulo(store_dir, input_hash)?;
        for (output_name, output) in &mut self.outputs {
            let path = store_dir
                .make_output_path(output_name, &hash, &name)
                .map_err(|source| DerivationError::MakePath {
                    name: output_path_name(&name, output_name),
                    source,
                })?;
            self.env
                .insert(output_name.clone(), store_dir.display(&path));
            output.path = Some(path);
        }
        Ok(())
    }

    /// The references of the `.drv` file itself: input derivations and input sources.
    pub fn references(&self) -> BTreeSet<StorePath> {
        let mut refs = self.input_sources.clone();
        refs.extend(self.input_derivations.keys().cloned());
        refs
    }

    /// The store path of the `.drv` file: a text path named `<name>.drv` over the ATerm,
    /// with [`Derivation::references`] as references.
    pub fn drv_path(&self, store_dir: &StoreDir) -> Result<StorePath, DerivationError> {
        let name = format!("{}.drv", self.name()?);
        let contents = Hash::sha256(&self.to_aterm(store_dir));
        store_dir
            .make_text_path(&name, &contents, &self.references())
            .map_err(|source| DerivationError::MakePath { name, source })
    }

    /// The JSON object `nix show-derivation` prints for this derivation (the value under its
    /// `.drv` path), keys in Nix's order: `outputs` (each with `path`, and `hashAlgo` and
    /// `hash` when fixed; an output without a path has no `path` key), `inputSrcs`,
    /// `inputDrvs`, `system`, `builder`, `args`, `env`.
    pub fn to_json(&self, store_dir: &StoreDir) -> Value {
        let mut outputs = Map::new();
        for (name, output) in &self.outputs {
            let mut o = Map::new();
            if let Some(path) = &output.path {
                o.insert("path".into(), store_dir.display(path).into());
            }
            if let Some(fixed) = &output.fixed {
                o.insert("hashAlgo".into(), fixed.method_algo().into());
                o.insert("hash".into(), fixed.hash.to_hex().into());
            }
            outputs.insert(name.clone(), Value::Object(o));
        }
        let input_sources: Vec<Value> = self
            .input_sources
            .iter()
            .map(|p| store_dir.display(p).into())
            .collect();
        let mut input_derivations = Map::new();
        for (path, outs) in &self.input_derivations {
            let outs: Vec<Value> = outs.iter().map(|o| o.as_str().into()).collect();
            input_derivations.insert(store_dir.display(path), outs.into());
        }
        let env: Map<String, Value> = self
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().into()))
            .collect();
        let mut obj = Map::new();
        obj.insert("outputs".into(), Value::Object(outputs));
        obj.insert("inputSrcs".into(), input_sources.into());
        obj.insert("inputDrvs".into(), Value::Object(input_derivations));
        obj.insert("system".into(), self.system.as_str().into());
        obj.insert("builder".into(), self.builder.as_str().into());
        obj.insert(
            "args".into(),
            self.args
                .iter()
                .map(|a| a.as_str())
                .collect::<Vec<_>>()
                .into(),
        );
        obj.insert("env".into(), Value::Object(env));
        Value::Object(obj)
    }

    /// The fixed output's path, checking it against the stored one (if any).
    fn checked_fixed_output_path(
        &self,
        store_dir: &StoreDir,
        fixed: &FixedOutputHash,
    ) -> Result<StorePath, DerivationError> {
        let name = self.name()?;
        let path = fixed_output_path(store_dir, fixed, &name)?;
        match self.outputs.get("out").and_then(|o| o.path.as_ref()) {
            Some(found) if *found != path => Err(DerivationError::FixedOutputPathMismatch {
                name: name.to_string(),
                expected: store_dir.display(&path),
                found: store_dir.display(found),
            }),
            _ => Ok(path),
        }
    }

    /// Nix's `Derivation::unparse` with `maskOutputs = false`; `inputs` replaces the input
    /// derivations when hashing modulo.
    fn write_aterm_to(
        &self,
        out: &mut Vec<u8>,
        store_dir: &StoreDir,
        inputs: Option<&ModuloInputs>,
    ) {
        use Quoting::{Escaped, Raw};
        out.extend_from_slice(b"Derive([");
        for (i, (name, output)) in self.outputs.iter().enumerate() {
            comma(out, i);
            out.push(b'(');
            write_string(out, name, Raw);
            out.push(b',');
            let path = output
                .path
                .as_ref()
                .map(|p| store_dir.display(p))
                .unwrap_or_default();
            write_string(out, &path, Raw);
            out.push(b',');
            let (algo, hash) = match &output.fixed {
                Some(f) => (f.method_algo(), f.hash.to_hex()),
                None => (String::new(), String::new()),
            };
            write_string(out, &algo, Raw);
            out.push(b',');
            write_string(out, &hash, Raw);
            out.push(b')');
        }
        out.extend_from_slice(b"],[");
        let mut write_input = |i: usize, key: &str, outputs: &BTreeSet<String>| {
            comma(out, i);
            out.push(b'(');
            write_string(out, key, Raw);
            out.push(b',');
            write_list(out, outputs.iter().map(String::as_str), Raw);
            out.push(b')');
        };
        match inputs {
            Some(inputs) => {
                for (i, (hex, outputs)) in inputs.iter().enumerate() {
                    write_input(i, hex, outputs);
                }
            }
            None => {
                for (i, (path, outputs)) in self.input_derivations.iter().enumerate() {
                    write_input(i, &store_dir.display(path), outputs);
                }
            }
        }
        out.extend_from_slice(b"],");
        let sources: Vec<String> = self
            .input_sources
            .iter()
            .map(|p| store_dir.display(p))
            .collect();
        write_list(out, sources.iter().map(String::as_str), Raw);
        out.push(b',');
        write_string(out, &self.system, Raw);
        out.push(b',');
        write_string(out, &self.builder, Escaped);
        out.push(b',');
        write_list(out, self.args.iter().map(String::as_str), Escaped);
        out.extend_from_slice(b",[");
        for (i, (key, value)) in self.env.iter().enumerate() {
            comma(out, i);
            out.push(b'(');
            write_string(out, key, Escaped);
            out.push(b',');
            write_string(out, value, Escaped);
            out.push(b')');
        }
        out.extend_from_slice(b"])");
    }
}

/// `nix show-derivation`'s whole output for these derivations: one object keyed by `.drv`
/// path (sorted, as Nix prints them), each value [`Derivation::to_json`].
pub fn show_derivation_json<'a>(
    store_dir: &StoreDir,
    derivations: impl IntoIterator<Item = (&'a StorePath, &'a Derivation)>,
) -> Value {
    let sorted: BTreeMap<&StorePath, &Derivation> = derivations.into_iter().collect();
    let obj: Map<String, Value> = sorted
        .into_iter()
        .map(|(path, drv)| (store_dir.display(path), drv.to_json(store_dir)))
        .collect();
    Value::Object(obj)
}

/// The content-addressed path of a fixed output named `name`.
fn fixed_output_path(
    store_dir: &StoreDir,
    fixed: &FixedOutputHash,
    name: &str,
) -> Result<StorePath, DerivationError> {
    store_dir
        .make_fixed_output_path(fixed.method, &fixed.hash, name, &BTreeSet::new(), false)
        .map_err(|source| DerivationError::MakePath {
            name: name.to_string(),
            source,
        })
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// Nix's `printString`: `"` `\` LF CR TAB escaped.
    Escaped,
    /// Nix's `printUnquotedString`: bytes written as they are.
    Raw,
}

fn comma(out: &mut Vec<u8>, index: usize) {
    if index > 0 {
        out.push(b',');
    }
}

fn write_string(out: &mut Vec<u8>, s: &str, quoting: Quoting) {
    out.push(b'"');
    match quoting {
        Quoting::Raw => out.extend_from_slice(s.as_bytes()),
        Quoting::Escaped => {
            for &b in s.as_bytes() {
                match b {
                    b'"' => out.extend_from_slice(b"\\\""),
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    _ => out.push(b),
                }
            }
        }
    }
    out.push(b'"');
}

fn write_list<'a>(out: &mut Vec<u8>, items: impl Iterator<Item = &'a str>, quoting: Quoting) {
    out.push(b'[');
    for (i, item) in items.enumerate() {
        comma(out, i);
        write_string(out, item, quoting);
    }
    out.push(b']');
}

/// A string read from the ATerm with the offset of its opening quote.
struct Spanned {
    offset: usize,
    text: String,
}

/// A cursor over the `.drv` bytes.
struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    store_dir: &'a StoreDir,
}

impl Parser<'_> {
    fn derivation(mut self) -> Result<Derivation, DerivationError> {
        use Quoting::{Escaped, Raw};
        let mut drv = Derivation::default();
        self.expect(b"Derive([")?;
        let outputs = self.list_items(b"],[", |p| p.output())?;
        check_sorted(&outputs, "output", |(name, _)| name)?;
        drv.outputs = outputs
            .into_iter()
            .map(|(name, output)| (name.text, output))
            .collect();

        let inputs = self.list_items(b"],", |p| {
            p.expect(b"(")?;
            let path = p.string(Raw)?;
            let drv_path = p.store_path(&path)?;
            p.expect(b",[")?;
            let outputs = p.list_items(b"])", |p| p.string(Raw))?;
            check_sorted(&outputs, "output of an input derivation", |s| s)?;
            Ok((
                path,
                drv_path,
                outputs.into_iter().map(|s| s.text).collect(),
            ))
        })?;
        check_sorted(&inputs, "input derivation", |(path, _, _)| path)?;
        drv.input_derivations = inputs
            .into_iter()
            .map(|(_, path, outputs)| (path, outputs))
            .collect();

        self.expect(b"[")?;
        let sources = self.list_items(b"],", |p| p.string(Raw))?;
        check_sorted(&sources, "input source", |s| s)?;
        drv.input_sources = sources
            .iter()
            .map(|s| self.store_path(s))
            .collect::<Result<_, _>>()?;

        drv.system = self.string(Raw)?.text;
        self.expect(b",")?;
        drv.builder = self.string(Escaped)?.text;
        self.expect(b",[")?;
        drv.args = self
            .list_items(b"],[", |p| p.string(Escaped))?
            .into_iter()
            .map(|s| s.text)
            .collect();

        let env = self.list_items(b"])", |p| {
            p.expect(b"(")?;
            let key = p.string(Escaped)?;
            p.expect(b",")?;
            let value = p.string(Escaped)?;
            p.expect(b")")?;
            Ok((key, value.text))
        })?;
        check_sorted(&env, "env key", |(key, _)| key)?;
        drv.env = env
            .into_iter()
            .map(|(key, value)| (key.text, value))
            .collect();

        if self.pos != self.bytes.len() {
            return Err(self.syntax(
                self.pos,
                "end of input (Nix writes no trailing newline)".to_string(),
            ));
        }
        Ok(drv)
    }

    /// `("name","path","hashAlgo","hash")`.
    fn output(&mut self) -> Result<(Spanned, Output), DerivationError> {
        self.expect(b"(")?;
        let name = self.string(Quoting::Raw)?;
        self.expect(b",")?;
        let path = self.string(Quoting::Raw)?;
        self.expect(b",")?;
        let algo = self.string(Quoting::Raw)?;
        self.expect(b",")?;
        let hash = self.string(Quoting::Raw)?;
        self.expect(b")")?;
        let bad = |offset, reason| DerivationError::BadOutput {
            offset,
            output: name.text.clone(),
            reason,
        };
        let fixed = match (algo.text.is_empty(), hash.text.is_empty()) {
            (true, true) => None,
            (true, false) => return Err(bad(hash.offset, "it has a hash but no hash algorithm")),
            (false, true) => {
                return Err(bad(
                    algo.offset,
                    "floating content-addressed outputs (a hash algorithm without a hash) are not supported",
                ))
            }
            (false, false) => {
                let (method, algo_name) = match algo.text.strip_prefix("r:") {
                    Some(rest) => (FileIngestionMethod::Recursive, rest),
                    None => (FileIngestionMethod::Flat, algo.text.as_str()),
                };
                let hash_algo = HashAlgo::from_name(algo_name).map_err(|source| {
                    DerivationError::BadHashAlgo { offset: algo.offset, output: name.text.clone(), source }
                })?;
                let is_lower_hex = hash.text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                let digest = from_hex(&hash.text)
                    .filter(|_| is_lower_hex)
                    .and_then(|digest| Hash::new(hash_algo, digest))
                    .ok_or_else(|| {
                        bad(hash.offset, "the hash must be lower-case hex of the algorithm's length, as Nix writes it")
                    })?;
                Some(FixedOutputHash { method, hash: digest })
            }
        };
        let path = if path.text.is_empty() {
            if fixed.is_some() {
                return Err(bad(path.offset, "a fixed output must have a path"));
            }
            None
        } else {
            Some(self.store_path(&path)?)
        };
        Ok((name, Output { path, fixed }))
    }

    fn store_path(&self, s: &Spanned) -> Result<StorePath, DerivationError> {
        self.store_dir
            .parse_path(&s.text)
            .map_err(|source| DerivationError::StorePath {
                offset: s.offset,
                source,
            })
    }

    /// Items separated by `,` until `close`; the opening `[` has been consumed.
    fn list_items<T>(
        &mut self,
        close: &'static [u8],
        mut item: impl FnMut(&mut Self) -> Result<T, DerivationError>,
    ) -> Result<Vec<T>, DerivationError> {
        // Items never start with `]`, so a `]` commits to the closing bytes, and `expect`
        // then reports the exact byte where they differ.
        let mut items = Vec::new();
        if self.bytes.get(self.pos) == close.first() {
            self.expect(close)?;
            return Ok(items);
        }
        loop {
            items.push(item(self)?);
            if self.bytes.get(self.pos) == Some(&b',') {
                self.pos += 1;
            } else if self.bytes.get(self.pos) == close.first() {
                self.expect(close)?;
                return Ok(items);
            } else {
                let expected = format!("`,` or `{}`", close.escape_ascii());
                return Err(self.syntax(self.pos, expected));
            }
        }
    }

    /// A quoted string, validated against how Nix would have written it.
    fn string(&mut self, quoting: Quoting) -> Result<Spanned, DerivationError> {
        let offset = self.pos;
        self.expect(b"\"")?;
        let mut text = Vec::new();
        loop {
            match self.bytes.get(self.pos) {
                None => return Err(self.syntax(self.pos, "`\"` closing the string".to_string())),
                Some(b'"') => break,
                Some(b'\\') if quoting == Quoting::Raw => {
                    return Err(DerivationError::NonCanonicalString {
                        offset: self.pos,
                        reason: "this field (an output name, store path, hash or `system`) is written without escapes, so it cannot contain `\\`",
                    })
                }
                Some(b'\\') => {
                    let unescaped = match self.bytes.get(self.pos + 1) {
                        Some(b'"') => b'"',
                        Some(b'\\') => b'\\',
                        Some(b'n') => b'\n',
                        Some(b'r') => b'\r',
                        Some(b't') => b'\t',
                        Some(&other) => {
                            return Err(DerivationError::UnknownEscape {
                                offset: self.pos,
                                escape: [other].escape_ascii().to_string(),
                            })
                        }
                        None => return Err(self.syntax(self.pos + 1, "an escaped character".to_string())),
                    };
                    text.push(unescaped);
                    self.pos += 2;
                }
                Some(b'\n' | b'\r' | b'\t') if quoting == Quoting::Escaped => {
                    return Err(DerivationError::NonCanonicalString {
                        offset: self.pos,
                        reason: "raw line feed, carriage return or tab: Nix writes them as `\\n`, `\\r`, `\\t`",
                    })
                }
                Some(&b) => {
                    text.push(b);
                    self.pos += 1;
                }
            }
        }
        // Escapes are ASCII, so the raw bytes are UTF-8 exactly when the unescaped text is;
        // checking the raw bytes gives the offset in the file.
        let raw = &self.bytes[offset + 1..self.pos];
        std::str::from_utf8(raw).map_err(|source| DerivationError::NotUtf8 {
            offset: offset + 1 + source.valid_up_to(),
            source,
        })?;
        self.pos += 1;
        let text = String::from_utf8(text).map_err(|e| DerivationError::NotUtf8 {
            offset: offset + 1,
            source: e.utf8_error(),
        })?;
        Ok(Spanned { offset, text })
    }

    /// Consumes `literal`, or reports the first byte where the input differs from it.
    fn expect(&mut self, literal: &[u8]) -> Result<(), DerivationError> {
        let rest = &self.bytes[self.pos..];
        if rest.starts_with(literal) {
            self.pos += literal.len();
            return Ok(());
        }
        let same = rest.iter().zip(literal).take_while(|(a, b)| a == b).count();
        let expected = format!("`{}`", literal[same..].escape_ascii());
        Err(self.syntax(self.pos + same, expected))
    }

    fn syntax(&self, offset: usize, expected: String) -> DerivationError {
        let found = match self.bytes.get(offset..) {
            Some(rest) if !rest.is_empty() => {
                let excerpt = &rest[..rest.len().min(24)];
                let more = if rest.len() > excerpt.len() {
                    "…"
                } else {
                    ""
                };
                format!("`{}{more}`", excerpt.escape_ascii())
            }
            _ => "end of input".to_string(),
        };
        DerivationError::Syntax {
            offset,
            expected,
            found,
        }
    }
}

/// Checks that the keys of `items` are strictly increasing by their bytes (Nix's `std::map`
/// and `std::set` order).
fn check_sorted<T>(
    items: &[T],
    what: &'static str,
    key: impl Fn(&T) -> &Spanned,
) -> Result<(), DerivationError> {
    for pair in items.windows(2) {
        let (previous, next) = (key(&pair[0]), key(&pair[1]));
        if next.text <= previous.text {
            return Err(DerivationError::NotSorted {
                offset: next.offset,
                what,
                key: next.text.clone(),
                previous: previous.text.clone(),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Golden values from real Nix 2.8 (`/work/shared/reference/nix-formats.md` §5 and its
    //! appendix). The structured-attrs, unescaped-`system` and twin-input drvs were made with
    //! `nix-instantiate --store $TMP/root x.nix -A <attr>` from the expressions quoted beside
    //! them; regenerate them the same way.

    use super::*;

    fn sd() -> StoreDir {
        StoreDir::default()
    }

    fn sp(full: &str) -> StorePath {
        sd().parse_path(full).unwrap()
    }

    fn parse(text: &str) -> Derivation {
        Derivation::from_aterm(text.as_bytes(), &sd()).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    const SIMPLE: &str = r#"Derive([("out","/nix/store/p9dhg4chjwbjbr9lvsy20bcpmn6x7vsy-simple","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo hi > $out"],[("BOOL","1"),("FALSE",""),("FLOAT","1.500000"),("FOO","bar"),("LIST","a b 3"),("NULLV",""),("NUM","42"),("QUOTE","has \"quotes\" and \\ backslash\nand newline\ttab"),("builder","/bin/sh"),("name","simple"),("out","/nix/store/p9dhg4chjwbjbr9lvsy20bcpmn6x7vsy-simple"),("system","x86_64-linux")])"#;
    const FIXED_FLAT: &str = r#"Derive([("out","/nix/store/34653kz58l0k6y6mhmzz5lih5l1yxhi9-fixed-flat","sha256","2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")],[],[],"x86_64-linux","/bin/sh",["-c","printf hello > $out"],[("builder","/bin/sh"),("name","fixed-flat"),("out","/nix/store/34653kz58l0k6y6mhmzz5lih5l1yxhi9-fixed-flat"),("outputHash","2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"),("outputHashAlgo","sha256"),("outputHashMode","flat"),("system","x86_64-linux")])"#;
    const FIXED_REC: &str = r#"Derive([("out","/nix/store/97zd2nmdfh8ki4x5yigpwh2xy3zz7rw3-fixed-rec","r:sha256","a17ad11d9c87ccd9c864c7c46978d8fd7724d2a2fada4b47fa313bd62c9abcd7")],[],[],"x86_64-linux","/bin/sh",["-c","mkdir $out && printf hello > $out/f"],[("builder","/bin/sh"),("name","fixed-rec"),("out","/nix/store/97zd2nmdfh8ki4x5yigpwh2xy3zz7rw3-fixed-rec"),("outputHash","sha256-oXrRHZyHzNnIZMfEaXjY/Xck0qL62ktH+jE71iyavNc="),("outputHashAlgo","sha256"),("outputHashMode","recursive"),("system","x86_64-linux")])"#;
    const DEPENDENT: &str = r#"Derive([("out","/nix/store/xqx6gymxp0r0rl95yn3dhb5iav0lj7gj-dependent","","")],[("/nix/store/hmrfk5bdsdm38bbn08ngfzm06mxspqk1-fixed-flat.drv",["out"]),("/nix/store/y5klq7iqv4aqzy4wlpg8ac9qpbr0cfsj-simple.drv",["out"])],["/nix/store/2n3bhmy228k00jiigq2diqz1krdrxixx-script.sh"],"x86_64-linux","/bin/sh",["-c","cat /nix/store/p9dhg4chjwbjbr9lvsy20bcpmn6x7vsy-simple /nix/store/34653kz58l0k6y6mhmzz5lih5l1yxhi9-fixed-flat > $out; sh $script x"],[("builder","/bin/sh"),("name","dependent"),("out","/nix/store/xqx6gymxp0r0rl95yn3dhb5iav0lj7gj-dependent"),("script","/nix/store/2n3bhmy228k00jiigq2diqz1krdrxixx-script.sh"),("system","x86_64-linux")])"#;
    const MULTI: &str = r#"Derive([("dev","/nix/store/mmfx3v51jxigdpdfwfnxgy919qz73qvh-multi-dev","",""),("out","/nix/store/p7ifmjbmlqcdf0shcbiil615vjk752wn-multi","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo out > $out; echo dev > $dev"],[("builder","/bin/sh"),("dev","/nix/store/mmfx3v51jxigdpdfwfnxgy919qz73qvh-multi-dev"),("name","multi"),("out","/nix/store/p7ifmjbmlqcdf0shcbiil615vjk752wn-multi"),("outputs","out dev"),("system","x86_64-linux")])"#;
    const USES_DEV: &str = r#"Derive([("out","/nix/store/i9a53r9xrkr7hsn5s55rvf9pxikq1gpj-uses-dev","","")],[("/nix/store/yi91mzsi826p8fn6182iarh1n2vp28pi-multi.drv",["dev","out"])],[],"x86_64-linux","/bin/sh",["-c","cat /nix/store/mmfx3v51jxigdpdfwfnxgy919qz73qvh-multi-dev /nix/store/p7ifmjbmlqcdf0shcbiil615vjk752wn-multi > $out"],[("builder","/bin/sh"),("name","uses-dev"),("out","/nix/store/i9a53r9xrkr7hsn5s55rvf9pxikq1gpj-uses-dev"),("system","x86_64-linux")])"#;

    /// §5a: (drv path, drv text, hashDerivationModulo hex), inputs before their dependents.
    const FIXTURES: [(&str, &str, &str); 6] = [
        (
            "/nix/store/y5klq7iqv4aqzy4wlpg8ac9qpbr0cfsj-simple.drv",
            SIMPLE,
            "0a63a1d352e68a9de2eea7b3dcc055319ac52a4c18aa55e93cfcda3f3677db63",
        ),
        (
            "/nix/store/hmrfk5bdsdm38bbn08ngfzm06mxspqk1-fixed-flat.drv",
            FIXED_FLAT,
            "3a61c39548bcc4cdffa72b14da6912e203acdab1d922b0fadf1aee2ceb5ca78c",
        ),
        (
            "/nix/store/kx53x8bxxxii4xj3y81130g9l3hmc27d-fixed-rec.drv",
            FIXED_REC,
            "7af11e2f25003e5fb3fd22be2f83609d89c85add25d9c9278dfb5e6c3a3123d4",
        ),
        (
            "/nix/store/s9jzpcncm5snb3mgm7vh7qnx0r46dy3p-dependent.drv",
            DEPENDENT,
            "7db876789aa19fed6b46277cfbf05a055d7a3a18d5f9e40846537bbcf736bd66",
        ),
        (
            "/nix/store/yi91mzsi826p8fn6182iarh1n2vp28pi-multi.drv",
            MULTI,
            "bc6b186e8bbe206a03c1ca390d9d91745db78be0452e8e2e2546a9cef6c6efb0",
        ),
        (
            "/nix/store/a0jb9hpdcxy7nqyfxbj65izxki6yn1wv-uses-dev.drv",
            USES_DEV,
            "113c4ee3c51443c4b92b66e6759b6cdcd5f87e2fcd102e8496761cfcb5c33cf7",
        ),
    ];

    /// A closure store of parsed derivations, and memoised modulo hashes over it.
    #[derive(Default)]
    struct Closure {
        drvs: BTreeMap<StorePath, Derivation>,
        memo: BTreeMap<StorePath, Hash>,
    }

    impl Closure {
        fn of(texts: &[(&str, &str)]) -> Closure {
            let mut c = Closure::default();
            for (path, text) in texts {
                c.drvs.insert(sp(path), parse(text));
            }
            c
        }

        fn modulo(&mut self, path: &StorePath) -> Result<Hash, DerivationError> {
            if let Some(h) = self.memo.get(path) {
                return Ok(h.clone());
            }
            let drv = self
                .drvs
                .get(path)
                .unwrap_or_else(|| panic!("{path} not in the closure"))
                .clone();
            let h = drv.hash_derivation_modulo(&sd(), &mut |p: &StorePath| self.modulo(p))?;
            self.memo.insert(path.clone(), h.clone());
            Ok(h)
        }
    }

    fn fixture_closure() -> Closure {
        Closure::of(&FIXTURES.map(|(path, text, _)| (path, text)))
    }

    #[test]
    fn golden_drvs_round_trip_and_give_nix_drv_paths() {
        for (path, text, _) in FIXTURES {
            let drv = parse(text);
            assert_eq!(String::from_utf8(drv.to_aterm(&sd())).unwrap(), text);
            let mut written = Vec::new();
            drv.write_aterm(&mut written, &sd()).unwrap();
            assert_eq!(written, text.as_bytes());
            assert_eq!(sd().display(&drv.drv_path(&sd()).unwrap()), path);
        }
    }

    #[test]
    fn golden_hash_derivation_modulo() {
        let mut closure = fixture_closure();
        for (path, _, hex) in FIXTURES {
            assert_eq!(closure.modulo(&sp(path)).unwrap().to_hex(), hex, "{path}");
        }
    }

    #[test]
    fn golden_output_paths_are_recomputed() {
        let mut closure = fixture_closure();
        for (path, text, _) in FIXTURES {
            let want = parse(text);
            let mut drv = want.clone();
            for (name, output) in &mut drv.outputs {
                output.path = None;
                drv.env.insert(name.clone(), "stale".to_string());
            }
            drv.fill_output_paths(&sd(), &mut |p: &StorePath| closure.modulo(p))
                .unwrap();
            assert_eq!(drv, want, "{path}");
        }
    }

    #[test]
    fn masked_aterm_of_simple() {
        let mut drv = parse(SIMPLE);
        drv.mask_outputs();
        let masked = r#"Derive([("out","","","")],[],[],"x86_64-linux","/bin/sh",["-c","echo hi > $out"],[("BOOL","1"),("FALSE",""),("FLOAT","1.500000"),("FOO","bar"),("LIST","a b 3"),("NULLV",""),("NUM","42"),("QUOTE","has \"quotes\" and \\ backslash\nand newline\ttab"),("builder","/bin/sh"),("name","simple"),("out",""),("system","x86_64-linux")])"#;
        assert_eq!(String::from_utf8(drv.to_aterm(&sd())).unwrap(), masked);
        // A masked drv parses too (empty paths are "deferred" outputs) and round-trips.
        assert_eq!(
            Derivation::from_aterm(masked.as_bytes(), &sd()).unwrap(),
            drv
        );
        let h = drv.hash_derivation_modulo(
            &sd(),
            &mut |_: &StorePath| -> Result<Hash, DerivationError> {
                unreachable!("simple has no inputs")
            },
        );
        let h = h.unwrap();
        assert_eq!(
            h.to_hex(),
            "45ba595a96da9bd5c922f17b7867f2b2f29d5155b813a1d6e61db79b1d1ef625"
        );
        assert_eq!(
            sd().make_output_path("out", &h, "simple")
                .unwrap()
                .to_string(),
            "p9dhg4chjwbjbr9lvsy20bcpmn6x7vsy-simple"
        );
    }

    #[test]
    fn show_derivation_json_of_dependent_is_byte_exact() {
        let want = r#"{
  "/nix/store/s9jzpcncm5snb3mgm7vh7qnx0r46dy3p-dependent.drv": {
    "outputs": {
      "out": {
        "path": "/nix/store/xqx6gymxp0r0rl95yn3dhb5iav0lj7gj-dependent"
      }
    },
    "inputSrcs": [
      "/nix/store/2n3bhmy228k00jiigq2diqz1krdrxixx-script.sh"
    ],
    "inputDrvs": {
      "/nix/store/hmrfk5bdsdm38bbn08ngfzm06mxspqk1-fixed-flat.drv": [
        "out"
      ],
      "/nix/store/y5klq7iqv4aqzy4wlpg8ac9qpbr0cfsj-simple.drv": [
        "out"
      ]
    },
    "system": "x86_64-linux",
    "builder": "/bin/sh",
    "args": [
      "-c",
      "cat /nix/store/p9dhg4chjwbjbr9lvsy20bcpmn6x7vsy-simple /nix/store/34653kz58l0k6y6mhmzz5lih5l1yxhi9-fixed-flat > $out; sh $script x"
    ],
    "env": {
      "builder": "/bin/sh",
      "name": "dependent",
      "out": "/nix/store/xqx6gymxp0r0rl95yn3dhb5iav0lj7gj-dependent",
      "script": "/nix/store/2n3bhmy228k00jiigq2diqz1krdrxixx-script.sh",
      "system": "x86_64-linux"
    }
  }
}"#;
        let drv = parse(DEPENDENT);
        let path = drv.drv_path(&sd()).unwrap();
        let json = show_derivation_json(&sd(), [(&path, &drv)]);
        assert_eq!(serde_json::to_string_pretty(&json).unwrap(), want);
    }

    #[test]
    fn json_of_fixed_outputs() {
        let flat = parse(FIXED_FLAT).to_json(&sd());
        assert_eq!(
            serde_json::to_string(&flat["outputs"]).unwrap(),
            r#"{"out":{"path":"/nix/store/34653kz58l0k6y6mhmzz5lih5l1yxhi9-fixed-flat","hashAlgo":"sha256","hash":"2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}}"#
        );
        let rec = parse(FIXED_REC).to_json(&sd());
        assert_eq!(rec["outputs"]["out"]["hashAlgo"], "r:sha256");
        // A masked output has no path key (Nix prints `{}` for a deferred output).
        let mut multi = parse(MULTI);
        multi.mask_outputs();
        assert_eq!(
            serde_json::to_string(&multi.to_json(&sd())["outputs"]).unwrap(),
            r#"{"dev":{},"out":{}}"#
        );
    }

    /// Builds a derivation as `derivationStrict` does, from its attributes.
    struct Attrs<'a> {
        name: &'a str,
        builder: &'a str,
        args: &'a [&'a str],
        env: &'a [(&'a str, &'a str)],
        outputs: &'a [&'a str],
        fixed: Option<FixedOutputHash>,
        inputs: &'a [(&'a str, &'a [&'a str])],
        sources: &'a [&'a str],
    }

    impl Attrs<'_> {
        fn instantiate(&self, system: &str, closure: &mut Closure) -> (StorePath, Derivation) {
            let mut drv = Derivation {
                system: system.to_string(),
                builder: self.builder.to_string(),
                args: self.args.iter().map(|a| a.to_string()).collect(),
                input_sources: self.sources.iter().map(|s| sp(s)).collect(),
                ..Derivation::default()
            };
            for (k, v) in [
                ("name", self.name),
                ("builder", self.builder),
                ("system", system),
            ] {
                drv.env.insert(k.to_string(), v.to_string());
            }
            for (k, v) in self.env {
                drv.env.insert(k.to_string(), v.to_string());
            }
            for o in self.outputs {
                drv.outputs.insert(
                    o.to_string(),
                    Output {
                        path: None,
                        fixed: self.fixed.clone(),
                    },
                );
            }
            for (path, outs) in self.inputs {
                drv.input_derivations
                    .insert(sp(path), outs.iter().map(|o| o.to_string()).collect());
            }
            drv.fill_output_paths(&sd(), &mut |p: &StorePath| closure.modulo(p))
                .unwrap();
            let path = drv.drv_path(&sd()).unwrap();
            closure.drvs.insert(path.clone(), drv.clone());
            (path, drv)
        }
    }

    fn outs(drv: &Derivation) -> Vec<String> {
        drv.outputs
            .values()
            .map(|o| sd().display(o.path.as_ref().unwrap()))
            .collect()
    }

    #[test]
    fn busybox_drvs_instantiated_from_attributes() {
        const BUSYBOX: &str = "/nix/store/71fc7s32zl20dc955bhghy5dvalm7ndz-busybox";
        const SCRIPT: &str = "/nix/store/2n3bhmy228k00jiigq2diqz1krdrxixx-script.sh";
        let bb = format!("{BUSYBOX}/bin/busybox");
        let sys = "x86_64-linux";
        let mut closure = Closure::default();
        let flat = |mode: FileIngestionMethod, hash: &str| {
            Some(FixedOutputHash {
                method: mode,
                hash: Hash::parse(hash).unwrap(),
            })
        };

        let (hello_drv, hello) = Attrs {
            name: "hello",
            builder: &bb,
            args: &["sh", "-c", "echo hello > $out"],
            env: &[
                ("FOO", "bar"),
                ("NUM", "42"),
                ("BOOL", "1"),
                ("FALSE", ""),
                ("NULLV", ""),
                ("LIST", "a b 3"),
                ("QUOTE", "has \"quotes\" and \\ backslash\nand newline\ttab"),
            ],
            outputs: &["out"],
            fixed: None,
            inputs: &[],
            sources: &[BUSYBOX],
        }
        .instantiate(sys, &mut closure);
        assert_eq!(
            String::from_utf8(hello.to_aterm(&sd())).unwrap(),
            r#"Derive([("out","/nix/store/9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello","","")],[],["/nix/store/71fc7s32zl20dc955bhghy5dvalm7ndz-busybox"],"x86_64-linux","/nix/store/71fc7s32zl20dc955bhghy5dvalm7ndz-busybox/bin/busybox",["sh","-c","echo hello > $out"],[("BOOL","1"),("FALSE",""),("FOO","bar"),("LIST","a b 3"),("NULLV",""),("NUM","42"),("QUOTE","has \"quotes\" and \\ backslash\nand newline\ttab"),("builder","/nix/store/71fc7s32zl20dc955bhghy5dvalm7ndz-busybox/bin/busybox"),("name","hello"),("out","/nix/store/9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello"),("system","x86_64-linux")])"#
        );
        assert_eq!(
            sd().display(&hello_drv),
            "/nix/store/lrh6nj4qz3arf1xf5zjyjg21k5z2ghrh-hello.drv"
        );
        assert_eq!(
            outs(&hello),
            ["/nix/store/9frz7rl3ni9y2yn0qscny8v1iq391zsh-hello"]
        );

        let hello_hex = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let (ff_drv, ff) = Attrs {
            name: "fixed-flat",
            builder: &bb,
            args: &["sh", "-c", "printf hello > $out"],
            env: &[
                ("outputHashAlgo", "sha256"),
                ("outputHashMode", "flat"),
                ("outputHash", &hello_hex["sha256:".len()..]),
            ],
            outputs: &["out"],
            fixed: flat(FileIngestionMethod::Flat, hello_hex),
            inputs: &[],
            sources: &[BUSYBOX],
        }
        .instantiate(sys, &mut closure);
        assert_eq!(
            sd().display(&ff_drv),
            "/nix/store/0hx07zvmlapllnhb0nmsrz7yzj11njlj-fixed-flat.drv"
        );
        assert_eq!(
            outs(&ff),
            ["/nix/store/34653kz58l0k6y6mhmzz5lih5l1yxhi9-fixed-flat"]
        );
        // Same modulo hash as the /bin/sh fixture: how a fixed output is built does not matter.
        assert_eq!(
            closure.modulo(&ff_drv).unwrap().to_hex(),
            "3a61c39548bcc4cdffa72b14da6912e203acdab1d922b0fadf1aee2ceb5ca78c"
        );

        let (fr_drv, fr) = Attrs {
            name: "fixed-rec",
            builder: &bb,
            args: &["sh", "-c", "mkdir $out && printf hello > $out/f"],
            env: &[
                ("outputHashAlgo", "sha256"),
                ("outputHashMode", "recursive"),
                (
                    "outputHash",
                    "sha256-oXrRHZyHzNnIZMfEaXjY/Xck0qL62ktH+jE71iyavNc=",
                ),
            ],
            outputs: &["out"],
            fixed: flat(
                FileIngestionMethod::Recursive,
                "sha256-oXrRHZyHzNnIZMfEaXjY/Xck0qL62ktH+jE71iyavNc=",
            ),
            inputs: &[],
            sources: &[BUSYBOX],
        }
        .instantiate(sys, &mut closure);
        assert_eq!(
            sd().display(&fr_drv),
            "/nix/store/qb0p3a57ql7lnrxzzpwxqxsiq2lbd7z4-fixed-rec.drv"
        );
        assert_eq!(
            outs(&fr),
            ["/nix/store/97zd2nmdfh8ki4x5yigpwh2xy3zz7rw3-fixed-rec"]
        );

        let hello_out = outs(&hello).remove(0);
        let ff_out = outs(&ff).remove(0);
        let script = format!(
            "mkdir $out && cat {hello_out} > $out/from-hello && cp $script $out/script.sh && {bb} sh $script arg1 > $out/ran && ln -s {hello_out} $out/hello-link && cat {ff_out} > $out/from-fixed"
        );
        let (hello_drv_s, ff_drv_s) = (sd().display(&hello_drv), sd().display(&ff_drv));
        let (dep_drv, dep) = Attrs {
            name: "dependent",
            builder: &bb,
            args: &["sh", "-c", &script],
            env: &[("script", SCRIPT)],
            outputs: &["out"],
            fixed: None,
            inputs: &[(&hello_drv_s, &["out"]), (&ff_drv_s, &["out"])],
            sources: &[BUSYBOX, SCRIPT],
        }
        .instantiate(sys, &mut closure);
        assert_eq!(
            sd().display(&dep_drv),
            "/nix/store/k90zqjs5x29993rk2ik6nhzcy2i8pyrm-dependent.drv"
        );
        assert_eq!(
            outs(&dep),
            ["/nix/store/axkrj5qgyiri6mvps8zsvqj51vyfjv8a-dependent"]
        );

        let (multi_drv, multi) = Attrs {
            name: "multi",
            builder: &bb,
            args: &["sh", "-c", "echo out > $out; echo dev > $dev"],
            env: &[("outputs", "out dev")],
            outputs: &["out", "dev"],
            fixed: None,
            inputs: &[],
            sources: &[BUSYBOX],
        }
        .instantiate(sys, &mut closure);
        assert_eq!(
            sd().display(&multi_drv),
            "/nix/store/vy74yjz33x936g35sxblaw7v5hz1b0wn-multi.drv"
        );
        assert_eq!(
            outs(&multi),
            [
                "/nix/store/svcvs4pc8hiqbvxd0wb3prgaxpbmqzk4-multi-dev",
                "/nix/store/h9zwmm8s32n616wgvwj0jjp1ppyy4yxn-multi"
            ]
        );

        let cat_dev = format!("cat {} > $out", outs(&multi)[0]);
        let multi_drv_s = sd().display(&multi_drv);
        let (uses_drv, uses) = Attrs {
            name: "uses-dev",
            builder: &bb,
            args: &["sh", "-c", &cat_dev],
            env: &[],
            outputs: &["out"],
            fixed: None,
            inputs: &[(&multi_drv_s, &["dev"])],
            sources: &[BUSYBOX],
        }
        .instantiate(sys, &mut closure);
        assert_eq!(
            sd().display(&uses_drv),
            "/nix/store/sqrcsvx3wp39q19kwffpvnmg04dmjidq-uses-dev.drv"
        );
        assert_eq!(
            outs(&uses),
            ["/nix/store/0mfmnn9ln738l3v3w644r1xppzxl4927-uses-dev"]
        );

        for (path, drv) in &closure.drvs {
            let text = drv.to_aterm(&sd());
            assert_eq!(
                &Derivation::from_aterm(&text, &sd()).unwrap(),
                drv,
                "{path}"
            );
        }
    }

    #[test]
    fn floats_nix_from_the_appendix() {
        let text = r#"Derive([("out","/nix/store/f57d3cqv0pxh0pgb3zfci78ngmbnsyj4-f","","")],[],[],"x","/b",[],[("F","1.500000"),("G","0.100000"),("H","100000000.000000"),("I","1.500000 1   x nested 2"),("J","0.000000"),("builder","/b"),("name","f"),("out","/nix/store/f57d3cqv0pxh0pgb3zfci78ngmbnsyj4-f"),("system","x")])"#;
        let drv = parse(text);
        assert_eq!(drv.to_aterm(&sd()), text.as_bytes());
        assert_eq!(
            sd().display(&drv.drv_path(&sd()).unwrap()),
            "/nix/store/z7kwxihr8s2pbd2s2yik4g8a8i2b6dm8-f.drv"
        );
        let mut again = drv.clone();
        again
            .fill_output_paths(
                &sd(),
                &mut |_: &StorePath| -> Result<Hash, DerivationError> { unreachable!() },
            )
            .unwrap();
        assert_eq!(again, drv);
    }

    /// `derivation { name = "st"; system = "x86_64-linux"; builder = "/b"; __structuredAttrs = true;
    /// x = [1 2 {a="b";}]; outputs = ["out" "lib"]; }`: the env holds only `__json` and the
    /// outputs, so the name comes from `__json`.
    #[test]
    fn structured_attrs_take_their_name_from_json() {
        let text = r#"Derive([("lib","/nix/store/2lsixmq7al8yqx3hfp1il620s6kg6caf-st-lib","",""),("out","/nix/store/zvdv0q6ka24j0cr8jd1j6c8qg11b9zyc-st","","")],[],[],"x86_64-linux","/b",[],[("__json","{\"builder\":\"/b\",\"name\":\"st\",\"outputs\":[\"out\",\"lib\"],\"system\":\"x86_64-linux\",\"x\":[1,2,{\"a\":\"b\"}]}"),("lib","/nix/store/2lsixmq7al8yqx3hfp1il620s6kg6caf-st-lib"),("out","/nix/store/zvdv0q6ka24j0cr8jd1j6c8qg11b9zyc-st")])"#;
        let drv = parse(text);
        assert_eq!(drv.name().unwrap(), "st");
        assert_eq!(drv.to_aterm(&sd()), text.as_bytes());
        assert_eq!(
            drv.drv_path(&sd()).unwrap().to_string(),
            "829ickfsj90szyl3zfj0gch0yhy0hnr8-st.drv"
        );
        let mut again = drv.clone();
        again
            .fill_output_paths(
                &sd(),
                &mut |_: &StorePath| -> Result<Hash, DerivationError> { unreachable!() },
            )
            .unwrap();
        assert_eq!(again, drv);
    }

    /// `derivation { name = "sysq"; system = "x\"y\\z\nw"; builder = "/b"; }`: Nix writes
    /// `system` unescaped, producing a `.drv` that it (and we) cannot read back.
    #[test]
    fn system_is_written_unescaped_like_nix() {
        let nix_wrote = "Derive([(\"out\",\"/nix/store/8nvhkgjn57z303pqxqmlvnph78km0sl9-sysq\",\"\",\"\")],[],[],\"x\"y\\z\nw\",\"/b\",[],[(\"builder\",\"/b\"),(\"name\",\"sysq\"),(\"out\",\"/nix/store/8nvhkgjn57z303pqxqmlvnph78km0sl9-sysq\"),(\"system\",\"x\\\"y\\\\z\\nw\")])";
        let mut closure = Closure::default();
        let system = "x\"y\\z\nw";
        let attrs = Attrs {
            name: "sysq",
            builder: "/b",
            args: &[],
            env: &[],
            outputs: &["out"],
            fixed: None,
            inputs: &[],
            sources: &[],
        };
        let (path, drv) = attrs.instantiate(system, &mut closure);
        assert_eq!(String::from_utf8(drv.to_aterm(&sd())).unwrap(), nix_wrote);
        assert_eq!(
            path.to_string(),
            "6msjdcis9hj9r0lmv9qlmqarhhhzn45s-sysq.drv"
        );
        let err = Derivation::from_aterm(nix_wrote.as_bytes(), &sd()).unwrap_err();
        let offset = nix_wrote.find("x\"y").unwrap() + 2;
        assert!(
            matches!(err, DerivationError::Syntax { offset: o, .. } if o == offset),
            "{err}"
        );
    }

    /// Two fixed-output drvs with the same output (builders `/bin/sh` and `/bin/bash`), two
    /// `twin` drvs (outputs `out`, `dev`) that differ only in which of them they use, and `c`
    /// using `twinA.out` and `twinB.dev`: the twins' modulo hashes coincide, and Nix 2.8
    /// *merges* their output sets (`["dev","out"]`) in `c`'s hashed ATerm.
    #[test]
    fn inputs_with_equal_modulo_hashes_are_merged() {
        let fx = |builder: &str| {
            format!(
                r#"Derive([("out","/nix/store/vmxnm1pb40j0a9pcnb9pb5cmvlz1v124-fx","sha256","2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")],[],[],"x86_64-linux","{builder}",[],[("builder","{builder}"),("name","fx"),("out","/nix/store/vmxnm1pb40j0a9pcnb9pb5cmvlz1v124-fx"),("outputHash","2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"),("outputHashAlgo","sha256"),("outputHashMode","flat"),("system","x86_64-linux")])"#
            )
        };
        let twin = |fx_drv: &str| {
            format!(
                r#"Derive([("dev","/nix/store/qgxr01jsbl0glay2xj4himl0qmkdacbq-twin-dev","",""),("out","/nix/store/bj880j71m8426gzya6z1v4d2y67lpjgd-twin","","")],[("{fx_drv}",["out"])],[],"x86_64-linux","/b",["/nix/store/vmxnm1pb40j0a9pcnb9pb5cmvlz1v124-fx"],[("builder","/b"),("dev","/nix/store/qgxr01jsbl0glay2xj4himl0qmkdacbq-twin-dev"),("name","twin"),("out","/nix/store/bj880j71m8426gzya6z1v4d2y67lpjgd-twin"),("outputs","out dev"),("system","x86_64-linux")])"#
            )
        };
        let fx_sh = "/nix/store/dzxnklf0qgs30wn092livpqlw6v2s1vp-fx.drv";
        let fx_bash = "/nix/store/1mah6y5v6ks4i59zbcgcfc4gk2x9609y-fx.drv";
        let c = r#"Derive([("out","/nix/store/3xz6jvzl93szyg3bv5k9xa0fplgs8prg-c","","")],[("/nix/store/i6v8k0bx65gnz83j3msmhsbssw9mnz1w-twin.drv",["dev"]),("/nix/store/rj4jagl0fg3j1lpda30np7f7f5dx9mv6-twin.drv",["out"])],[],"x86_64-linux","/b",["/nix/store/bj880j71m8426gzya6z1v4d2y67lpjgd-twin","/nix/store/qgxr01jsbl0glay2xj4himl0qmkdacbq-twin-dev"],[("builder","/b"),("name","c"),("out","/nix/store/3xz6jvzl93szyg3bv5k9xa0fplgs8prg-c"),("system","x86_64-linux")])"#;
        let texts = [
            (fx_sh, fx("/bin/sh")),
            (fx_bash, fx("/bin/bash")),
            (
                "/nix/store/rj4jagl0fg3j1lpda30np7f7f5dx9mv6-twin.drv",
                twin(fx_sh),
            ),
            (
                "/nix/store/i6v8k0bx65gnz83j3msmhsbssw9mnz1w-twin.drv",
                twin(fx_bash),
            ),
            (
                "/nix/store/88nvbimvjhykmkpy5y2zpxk33aa18ic6-c.drv",
                c.to_string(),
            ),
        ];
        let mut closure = Closure::of(&texts.each_ref().map(|(p, t)| (*p, t.as_str())));
        for (path, text) in &texts {
            assert_eq!(sd().display(&parse(text).drv_path(&sd()).unwrap()), *path);
            let want = parse(text);
            let mut drv = want.clone();
            drv.fill_output_paths(&sd(), &mut |p: &StorePath| closure.modulo(p))
                .unwrap();
            assert_eq!(drv, want, "{path}");
        }
        assert_eq!(
            closure.modulo(&sp(texts[2].0)).unwrap(),
            closure.modulo(&sp(texts[3].0)).unwrap()
        );
    }

    fn find(hay: &[u8], needle: &str) -> usize {
        hay.windows(needle.len())
            .position(|w| w == needle.as_bytes())
            .unwrap_or_else(|| panic!("no {needle}"))
    }

    fn rfind(hay: &[u8], needle: &str) -> usize {
        hay.windows(needle.len())
            .rposition(|w| w == needle.as_bytes())
            .unwrap_or_else(|| panic!("no {needle}"))
    }

    fn kind(e: &DerivationError) -> (&'static str, Option<usize>) {
        use DerivationError::*;
        match e {
            Syntax { offset, .. } => ("Syntax", Some(*offset)),
            UnknownEscape { offset, .. } => ("UnknownEscape", Some(*offset)),
            NonCanonicalString { offset, .. } => ("NonCanonicalString", Some(*offset)),
            NotUtf8 { offset, .. } => ("NotUtf8", Some(*offset)),
            NotSorted { offset, .. } => ("NotSorted", Some(*offset)),
            StorePath { offset, .. } => ("StorePath", Some(*offset)),
            BadHashAlgo { offset, .. } => ("BadHashAlgo", Some(*offset)),
            BadOutput { offset, .. } => ("BadOutput", Some(*offset)),
            MissingName => ("MissingName", None),
            NoOutputs { .. } => ("NoOutputs", None),
            FixedOutputLayout { .. } => ("FixedOutputLayout", None),
            FixedOutputPathMismatch { .. } => ("FixedOutputPathMismatch", None),
            MakePath { .. } => ("MakePath", None),
        }
    }

    #[test]
    fn required_system_features_are_read_as_nix_reads_them() {
        let with = |key: &str, value: &str| Derivation {
            outputs: BTreeMap::new(),
            input_derivations: BTreeMap::new(),
            input_sources: BTreeSet::new(),
            system: "x86_64-linux".into(),
            builder: "/bin/sh".into(),
            args: Vec::new(),
            env: BTreeMap::from([(key.to_string(), value.to_string())]),
        };
        let set = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        #[rustfmt::skip]
        let table: &[(&str, &str, &[&str])] = &[
            ("requiredSystemFeatures", "big-parallel", &["big-parallel"]),
            ("requiredSystemFeatures", "kvm big-parallel", &["big-parallel", "kvm"]),
            // Nix's `tokenizeString`: any run of spaces, tabs, newlines, returns.
            ("requiredSystemFeatures", " kvm\t\n big-parallel\r ", &["big-parallel", "kvm"]),
            ("requiredSystemFeatures", "kvm kvm", &["kvm"]),
            ("requiredSystemFeatures", "", &[]),
            ("other", "kvm", &[]),
            ("__json", r#"{"requiredSystemFeatures": ["kvm", "nixos-test"]}"#, &["kvm", "nixos-test"]),
            ("__json", r#"{"name": "x"}"#, &[]),
        ];
        for (key, value, expected) in table {
            assert_eq!(
                with(key, value).required_system_features(),
                set(expected),
                "{key} = {value:?}"
            );
        }
    }

    #[test]
    fn rejects_what_would_not_round_trip() {
        const P: &str = "/nix/store/p9dhg4chjwbjbr9lvsy20bcpmn6x7vsy-simple";
        const D1: &str = "/nix/store/hmrfk5bdsdm38bbn08ngfzm06mxspqk1-fixed-flat.drv";
        const D2: &str = "/nix/store/y5klq7iqv4aqzy4wlpg8ac9qpbr0cfsj-simple.drv";
        const S: &str = "/nix/store/2n3bhmy228k00jiigq2diqz1krdrxixx-script.sh";
        const HEX: &str = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";
        let out = format!(r#"("out","{P}","","")"#);
        let drv = |outputs: &str, inputs: &str, srcs: &str, system: &str, args: &str, env: &str| {
            format!(r#"Derive([{outputs}],[{inputs}],[{srcs}],"{system}","/b",[{args}],[{env}])"#)
                .into_bytes()
        };
        let base = drv(&out, "", "", "x", "", r#"("name","s")"#);
        assert!(Derivation::from_aterm(&base, &sd()).is_ok());
        let with = |mut bytes: Vec<u8>, tail: &[u8]| {
            bytes.extend_from_slice(tail);
            bytes
        };
        let fixed =
            |path: &str, algo: &str, hash: &str| format!(r#"("out","{path}","{algo}","{hash}")"#);
        let non_utf8 = {
            let mut b = drv(&out, "", "", "x", "", r#"("name","s\"X")"#);
            let i = find(&b, "X");
            b[i] = 0xff;
            b
        };

        // (what, input, error kind, where: a needle and which occurrence, plus a delta)
        type Row = (&'static str, Vec<u8>, &'static str, usize);
        let rows: Vec<Row> = vec![
            ("empty input", vec![], "Syntax", 0),
            ("other keyword", b"Derivation([".to_vec(), "Syntax", 5),
            (
                "truncated",
                base[..base.len() - 1].to_vec(),
                "Syntax",
                base.len() - 1,
            ),
            (
                "trailing newline",
                with(base.clone(), b"\n"),
                "Syntax",
                base.len(),
            ),
            (
                "trailing bytes",
                with(base.clone(), b"Derive"),
                "Syntax",
                base.len(),
            ),
            (
                "whitespace",
                drv(&format!(" {out}"), "", "", "x", "", ""),
                "Syntax",
                8,
            ),
            ("unquoted string", b"Derive([(out,".to_vec(), "Syntax", 9),
            (
                "missing separator",
                drv(&format!("{out}{out}"), "", "", "x", "", ""),
                "Syntax",
                8 + out.len(),
            ),
            (
                "unsorted outputs",
                drv(&format!(r#"{out},("dev","","","")"#), "", "", "x", "", ""),
                "NotSorted",
                10 + out.len(),
            ),
            (
                "duplicate outputs",
                drv(&format!("{out},{out}"), "", "", "x", "", ""),
                "NotSorted",
                10 + out.len(),
            ),
            (
                "unsorted input derivations",
                drv(
                    &out,
                    &format!(r#"("{D2}",["out"]),("{D1}",["out"])"#),
                    "",
                    "x",
                    "",
                    "",
                ),
                "NotSorted",
                find(
                    &drv(
                        &out,
                        &format!(r#"("{D2}",["out"]),("{D1}",["out"])"#),
                        "",
                        "x",
                        "",
                        "",
                    ),
                    D1,
                ) - 1,
            ),
            (
                "unsorted outputs of an input",
                drv(&out, &format!(r#"("{D1}",["out","dev"])"#), "", "x", "", ""),
                "NotSorted",
                find(
                    &drv(&out, &format!(r#"("{D1}",["out","dev"])"#), "", "x", "", ""),
                    "\"dev\"",
                ),
            ),
            (
                "duplicate input source",
                drv(&out, "", &format!(r#""{S}","{S}""#), "x", "", ""),
                "NotSorted",
                rfind(&drv(&out, "", &format!(r#""{S}","{S}""#), "x", "", ""), S) - 1,
            ),
            (
                "unsorted env",
                drv(&out, "", "", "x", "", r#"("name","s"),("builder","/b")"#),
                "NotSorted",
                find(
                    &drv(&out, "", "", "x", "", r#"("name","s"),("builder","/b")"#),
                    "\"builder\"",
                ),
            ),
            (
                "duplicate env key",
                drv(&out, "", "", "x", "", r#"("a","1"),("a","2")"#),
                "NotSorted",
                rfind(
                    &drv(&out, "", "", "x", "", r#"("a","1"),("a","2")"#),
                    "\"a\"",
                ),
            ),
            (
                "unknown escape",
                drv(&out, "", "", "x", "", r#"("name","a\x")"#),
                "UnknownEscape",
                find(&drv(&out, "", "", "x", "", r#"("name","a\x")"#), "\\x"),
            ),
            (
                "raw line feed in env",
                drv(&out, "", "", "x", "", "(\"name\",\"a\nb\")"),
                "NonCanonicalString",
                find(&drv(&out, "", "", "x", "", "(\"name\",\"a\nb\")"), "\n"),
            ),
            (
                "raw tab in args",
                drv(&out, "", "", "x", "\"a\tb\"", ""),
                "NonCanonicalString",
                find(&drv(&out, "", "", "x", "\"a\tb\"", ""), "\t"),
            ),
            (
                "escape in system",
                drv(&out, "", "", r"x\ty", "", ""),
                "NonCanonicalString",
                find(&drv(&out, "", "", r"x\ty", "", ""), "\\"),
            ),
            (
                "escaped quote in an output name",
                drv(r#"("o\"ut","","","")"#, "", "", "x", "", ""),
                "NonCanonicalString",
                11,
            ),
            (
                "not UTF-8",
                non_utf8.clone(),
                "NotUtf8",
                find(&non_utf8, "\"s\\\"") + 4,
            ),
            (
                "upper-case hex",
                drv(
                    &fixed(P, "sha256", &HEX.to_uppercase()),
                    "",
                    "",
                    "x",
                    "",
                    "",
                ),
                "BadOutput",
                find(
                    &drv(
                        &fixed(P, "sha256", &HEX.to_uppercase()),
                        "",
                        "",
                        "x",
                        "",
                        "",
                    ),
                    "\"2CF2",
                ),
            ),
            (
                "nixbase32 fixed hash",
                drv(
                    &fixed(
                        P,
                        "sha256",
                        "094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
                    ),
                    "",
                    "",
                    "x",
                    "",
                    "",
                ),
                "BadOutput",
                find(
                    &drv(
                        &fixed(
                            P,
                            "sha256",
                            "094qif9n4cq4fdg459qzbhg1c6wywawwaaivx0k0x8xhbyx4vwic",
                        ),
                        "",
                        "",
                        "x",
                        "",
                        "",
                    ),
                    "\"094q",
                ),
            ),
            (
                "hex too short",
                drv(&fixed(P, "sha256", &HEX[2..]), "", "", "x", "", ""),
                "BadOutput",
                find(
                    &drv(&fixed(P, "sha256", &HEX[2..]), "", "", "x", "", ""),
                    &format!("\"{}", &HEX[2..]),
                ),
            ),
            (
                "unknown hash algorithm",
                drv(&fixed(P, "r:sha3", HEX), "", "", "x", "", ""),
                "BadHashAlgo",
                find(
                    &drv(&fixed(P, "r:sha3", HEX), "", "", "x", "", ""),
                    "\"r:sha3",
                ),
            ),
            (
                "algorithm without hash (floating CA)",
                drv(&fixed("", "sha256", ""), "", "", "x", "", ""),
                "BadOutput",
                find(
                    &drv(&fixed("", "sha256", ""), "", "", "x", "", ""),
                    "\"sha256",
                ),
            ),
            (
                "hash without algorithm",
                drv(&fixed(P, "", HEX), "", "", "x", "", ""),
                "BadOutput",
                find(
                    &drv(&fixed(P, "", HEX), "", "", "x", "", ""),
                    &format!("\"{HEX}"),
                ),
            ),
            (
                "fixed output without path",
                drv(&fixed("", "sha256", HEX), "", "", "x", "", ""),
                "BadOutput",
                find(
                    &drv(&fixed("", "sha256", HEX), "", "", "x", "", ""),
                    "\"\",\"sha256",
                ),
            ),
            (
                "source outside the store",
                drv(&out, "", r#""/usr/bin/env""#, "x", "", ""),
                "StorePath",
                find(&drv(&out, "", r#""/usr/bin/env""#, "x", "", ""), "\"/usr"),
            ),
            (
                "bad store path hash",
                drv(
                    &out,
                    "",
                    r#""/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x""#,
                    "x",
                    "",
                    "",
                ),
                "StorePath",
                find(
                    &drv(
                        &out,
                        "",
                        r#""/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x""#,
                        "x",
                        "",
                        "",
                    ),
                    "\"/nix/store/eee",
                ),
            ),
            (
                "unterminated string",
                b"Derive([(\"out".to_vec(),
                "Syntax",
                13,
            ),
            (
                "dangling backslash",
                b"Derive([],[],[],\"x\",\"a\\".to_vec(),
                "Syntax",
                23,
            ),
        ];
        for (what, input, want_kind, want_offset) in rows {
            let err = Derivation::from_aterm(&input, &sd()).expect_err(what);
            assert_eq!(kind(&err), (want_kind, Some(want_offset)), "{what}: {err}");
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        for text in [DEPENDENT, USES_DEV, FIXED_REC] {
            for len in 0..text.len() {
                let err = Derivation::from_aterm(&text.as_bytes()[..len], &sd()).unwrap_err();
                let (_, offset) = kind(&err);
                assert!(offset.is_some_and(|o| o <= len), "prefix {len}: {err}");
            }
        }
    }

    #[test]
    fn errors_say_where_and_what() {
        let err = Derivation::from_aterm(b"Derive([(\"out\" ,", &sd()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid derivation at byte 14: expected `,`, found ` ,`"
        );
        let err = Derivation::from_aterm(format!("{SIMPLE}\n").as_bytes(), &sd()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "invalid derivation at byte {}: expected end of input (Nix writes no trailing newline), found `\\n`",
                SIMPLE.len()
            )
        );
    }

    #[test]
    fn hashing_needs_a_well_formed_derivation() {
        let no_inputs = &mut |_: &StorePath| -> Result<Hash, DerivationError> { unreachable!() };
        let mut drv = parse(SIMPLE);
        drv.env.remove("name");
        assert_eq!(drv.drv_path(&sd()), Err(DerivationError::MissingName));
        assert_eq!(
            drv.fill_output_paths(&sd(), no_inputs),
            Err(DerivationError::MissingName)
        );

        let mut drv = parse(SIMPLE);
        drv.outputs.clear();
        assert!(matches!(
            drv.hash_derivation_modulo(&sd(), no_inputs),
            Err(DerivationError::NoOutputs { .. })
        ));

        let mut drv = parse(FIXED_FLAT);
        drv.outputs.insert("dev".to_string(), Output::default());
        assert!(matches!(
            drv.hash_derivation_modulo(&sd(), no_inputs),
            Err(DerivationError::FixedOutputLayout { .. })
        ));

        let mut drv = parse(FIXED_FLAT);
        let fixed = drv.outputs.remove("out").unwrap();
        drv.outputs.insert("bin".to_string(), fixed);
        assert!(matches!(
            drv.fixed_output(),
            Err(DerivationError::FixedOutputLayout { .. })
        ));

        let mut drv = parse(FIXED_FLAT);
        drv.outputs.get_mut("out").unwrap().path =
            Some(sp("/nix/store/p9dhg4chjwbjbr9lvsy20bcpmn6x7vsy-simple"));
        assert!(matches!(
            drv.hash_derivation_modulo(&sd(), no_inputs),
            Err(DerivationError::FixedOutputPathMismatch { .. })
        ));

        let mut drv = parse(SIMPLE);
        drv.env.insert("name".to_string(), "bad name".to_string());
        assert!(matches!(
            drv.fill_output_paths(&sd(), no_inputs),
            Err(DerivationError::MakePath { .. })
        ));
    }

    #[test]
    fn closure_errors_pass_through() {
        #[derive(Debug, PartialEq)]
        enum Lookup {
            Missing(String),
            Drv(DerivationError),
        }
        impl From<DerivationError> for Lookup {
            fn from(e: DerivationError) -> Lookup {
                Lookup::Drv(e)
            }
        }
        let drv = parse(DEPENDENT);
        let got = drv.hash_derivation_modulo(&sd(), &mut |p: &StorePath| {
            Err(Lookup::Missing(p.to_string()))
        });
        assert_eq!(
            got,
            Err(Lookup::Missing(
                "hmrfk5bdsdm38bbn08ngfzm06mxspqk1-fixed-flat.drv".to_string()
            ))
        );
    }
}
