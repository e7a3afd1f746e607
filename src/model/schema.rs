//! The TOML schema of `derivations/*.toml` and `derivations/_project.toml`, deserialised
//! with source spans so that every error can point into the file. Pure: parses text.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use toml::Spanned;

/// `derivations/_project.toml`: values every derivation shares.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectFile {
    /// Default `system` of every derivation.
    pub system: Option<Spanned<String>>,
    /// Environment added to every build derivation (a derivation's own `env` wins).
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
}

/// One `derivations/NAME.toml`: either a build (`builder`, …) or a download (`[fetch]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DerivationFile {
    /// Store name of the outputs [default: the target name].
    pub name: Option<Spanned<String>>,
    /// Platform [default: the project's `system`].
    pub system: Option<Spanned<String>>,
    /// Program to run; `${input}` refers to an input's store path.
    pub builder: Option<Spanned<String>>,
    /// Arguments of the builder.
    #[serde(default)]
    pub args: Vec<Spanned<String>>,
    /// Environment of the builder.
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    /// Output names [default: `["out"]`].
    pub outputs: Option<Spanned<Vec<Spanned<String>>>>,
    /// Build environment from `sandboxes/` (pinned Debian tree).
    pub environment: Option<Spanned<String>>,
    /// Named inputs.
    #[serde(default)]
    pub inputs: BTreeMap<String, Spanned<InputSpec>>,
    /// What a machine must offer to build this derivation (`["big-parallel"]`, `["kvm"]`):
    /// Nix's `requiredSystemFeatures`, written into the `.drv` as Nix's `derivation`
    /// writes a list (the words joined by single spaces).
    #[serde(rename = "required-system-features")]
    pub required_system_features: Option<Spanned<Vec<Spanned<String>>>>,
    /// A download instead of a build.
    pub fetch: Option<Spanned<FetchSpec>>,
    /// Variants: targets `NAME@VARIANT` that override some keys of this one.
    #[serde(default)]
    pub variants: BTreeMap<String, VariantSpec>,
}

/// A variant of a derivation (`[variants.NAME]`): the same file with some keys overridden,
/// built as target `FILE@NAME` (e.g. a kernel with a small configuration for CI).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VariantSpec {
    /// Store name [default: the base name + `-` + the variant name].
    pub name: Option<Spanned<String>>,
    /// Replaces the base `args`.
    pub args: Option<Vec<Spanned<String>>>,
    /// Added to (and replacing entries of) the base `env`.
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    /// Added to (and replacing entries of) the base `[inputs]`.
    #[serde(default)]
    pub inputs: BTreeMap<String, Spanned<InputSpec>>,
    /// Replaces the base `required-system-features`.
    #[serde(rename = "required-system-features")]
    pub required_system_features: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A fixed-output download.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchSpec {
    /// `https://`, `http://`, `file://` or `mirror://NAME/…`.
    pub url: Spanned<String>,
    /// Expected hash: SRI, or nix32/hex with or without an `algo:` prefix. Left out, the
    /// download is pinned on first fetch into `derivations/pins.lock` (or by `ksbuild pin`).
    pub hash: Option<Spanned<String>>,
    /// Store name [default: the URL's last segment].
    pub name: Option<Spanned<String>>,
    /// Hash the NAR of the result rather than the file's bytes.
    #[serde(default)]
    pub recursive: bool,
    /// Unpack the download: `"deb"` or `"tar"` (implies a recursive hash of the tree).
    pub unpack: Option<Spanned<String>>,
    /// Make the downloaded file executable (flat downloads only).
    #[serde(default)]
    pub executable: bool,
}

/// One entry of `[inputs]`.
#[derive(Debug, Clone)]
pub enum InputSpec {
    /// Another derivation (target name) and which output.
    Derivation {
        target: String,
        output: Option<String>,
    },
    /// A file or folder of the repository, relative to the project root.
    Path { path: String, name: Option<String> },
    /// An inline download.
    Fetch(Box<FetchSpec>),
    /// The unpacked tree of a locked environment (`sandboxes/NAME.toml`), as data: e.g.
    /// another architecture's binaries to copy into an image, not a tree to run in.
    Environment { name: String },
    /// The locked `.deb` files of an environment (all, or those of `packages`), their store
    /// paths separated by spaces in the lock's order: e.g. what an image's SBOM is made of.
    Debs {
        environment: String,
        packages: Option<Vec<String>>,
    },
}

impl InputSpec {
    /// Whether the input is made from an environment's lock (and so needs the static
    /// busybox that unpacks environments).
    pub fn names_environment(&self) -> bool {
        matches!(self, InputSpec::Environment { .. } | InputSpec::Debs { .. })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct InputTable {
    drv: Option<String>,
    environment: Option<String>,
    debs: Option<String>,
    packages: Option<Vec<String>>,
    output: Option<String>,
    path: Option<String>,
    name: Option<String>,
    url: Option<Spanned<String>>,
    hash: Option<Spanned<String>>,
    #[serde(default)]
    recursive: bool,
    unpack: Option<Spanned<String>>,
    #[serde(default)]
    executable: bool,
}

impl<'de> Deserialize<'de> for InputSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct InputVisitor;
        impl<'de> Visitor<'de> for InputVisitor {
            type Value = InputSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a derivation name, or a table with `drv`, `path`, `url`, `environment` or `debs`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<InputSpec, E> {
                Ok(InputSpec::Derivation {
                    target: v.to_string(),
                    output: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<InputSpec, A::Error> {
                let t = InputTable::deserialize(de::value::MapAccessDeserializer::new(map))?;
                let kinds = [
                    t.drv.is_some(),
                    t.path.is_some(),
                    t.url.is_some(),
                    t.environment.is_some(),
                    t.debs.is_some(),
                ]
                .iter()
                .filter(|b| **b)
                .count();
                if kinds != 1 {
                    return Err(de::Error::custom(
                        "an input table needs exactly one of `drv` (a derivation), `path` (a repository file), `url` (a download), `environment` (a locked tree, as data) or `debs` (an environment's locked .deb files)",
                    ));
                }
                let fetch_only =
                    t.hash.is_some() || t.unpack.is_some() || t.recursive || t.executable;
                if let Some(environment) = t.debs {
                    if fetch_only || t.name.is_some() || t.output.is_some() {
                        return Err(de::Error::custom("a `debs` input takes only `packages`"));
                    }
                    return Ok(InputSpec::Debs {
                        environment,
                        packages: t.packages,
                    });
                }
                if t.packages.is_some() {
                    return Err(de::Error::custom("`packages` is only for `debs` inputs"));
                }
                if let Some(name) = t.environment {
                    if fetch_only || t.name.is_some() || t.output.is_some() {
                        return Err(de::Error::custom(
                            "an `environment` input takes no other keys",
                        ));
                    }
                    return Ok(InputSpec::Environment { name });
                }
                if let Some(target) = t.drv {
                    if t.path.is_some() || fetch_only || t.name.is_some() {
                        return Err(de::Error::custom("a `drv` input takes only `output`"));
                    }
                    return Ok(InputSpec::Derivation {
                        target,
                        output: t.output,
                    });
                }
                if t.output.is_some() {
                    return Err(de::Error::custom("`output` is only for `drv` inputs"));
                }
                if let Some(path) = t.path {
                    if fetch_only {
                        return Err(de::Error::custom("a `path` input takes only `name`"));
                    }
                    return Ok(InputSpec::Path { path, name: t.name });
                }
                let Some(url) = t.url else {
                    return Err(de::Error::custom("a download needs `url`"));
                };
                Ok(InputSpec::Fetch(Box::new(FetchSpec {
                    url,
                    hash: t.hash,
                    name: t.name.map(|n| Spanned::new(0..0, n)),
                    recursive: t.recursive,
                    unpack: t.unpack,
                    executable: t.executable,
                })))
            }
        }
        deserializer.deserialize_any(InputVisitor)
    }
}
