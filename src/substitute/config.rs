//! Where the settings of substitution and of where builds run come from, as Nix users
//! expect: the command line (`--substituters`, `--trusted-public-keys`, `--system-features`,
//! `--builders`), then `~/.config/ksbuild/config.toml` (`$XDG_CONFIG_HOME` honoured), then
//! Nix's own `nix.conf` (`$NIX_CONF_DIR/nix.conf`, else `/etc/nix/nix.conf`). Each setting
//! is taken whole from the first of these that sets it (an empty value counts:
//! `substituters =` in `nix.conf` turns them off); the `extra-` forms
//! (`extra-substituters`, `extra-trusted-public-keys`, `extra-system-features`) add to
//! their own file's value — for `system-features`, as in Nix, to the default when the file
//! does not set it.
//!
//! The settings of where builds run: `system-features` (what this machine offers to
//! derivations' `requiredSystemFeatures`), `builders` (remote builders, Nix's syntax, kept
//! unparsed here) and `builders-use-substitutes`.
//!
//! The default is **no substituters**: unlike Nix, ksbuild never reaches out to a cache
//! nobody named (Nix's built-in `https://cache.nixos.org` is not assumed). The parsers are
//! pure; [`Settings::discover`] reads the files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::compat::signing::PublicKey;

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A configuration file could not be read.
    #[error("cannot read `{path}`")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// `config.toml` is not valid TOML or has a wrongly typed key.
    #[error("`{path}` is not a valid ksbuild configuration: {reason}")]
    Toml { path: PathBuf, reason: String },
    /// A trusted key that is not `name:base64(32 bytes)`.
    #[error("trusted public key `{key}` (from {origin}) is not `name:base64`: {source}")]
    BadKey {
        key: String,
        origin: String,
        #[source]
        source: crate::compat::signing::SigningError,
    },
    /// A substituter URL of a scheme ksbuild cannot read.
    #[error("substituter `{url}` (from {origin}) is not a `file://`, `http://` or `https://` URL")]
    BadUrl { url: String, origin: String },
    /// A Boolean setting of `nix.conf` that is neither true nor false.
    #[error("`{key} = {value}` (in {origin}) is not a Boolean")]
    BadBool {
        key: String,
        value: String,
        origin: String,
    },
}

impl ConfigError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            ConfigError::Toml { .. } => Some(
                "write `substituters = [\"https://…\"]`, `trusted-public-keys = [\"name:base64…\"]`, \
                 `system-features = [\"kvm\", …]`, `builders = \"ssh://…\"`, `builders-use-substitutes = true`"
                    .into(),
            ),
            ConfigError::BadBool { key, .. } => Some(format!("write `{key} = true` or `{key} = false`")),
            ConfigError::BadKey { .. } => Some(
                "a public key looks like `cache.example.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=` \
                 (`ksbuild key generate` or `nix-store --generate-binary-cache-key` make one)"
                    .into(),
            ),
            ConfigError::BadUrl { url, .. } if url.starts_with("s3://") => Some(
                "read an S3 bucket through its HTTP path-style URL (`https://ENDPOINT/BUCKET`) with anonymous read"
                    .into(),
            ),
            ConfigError::BadUrl { .. } => {
                Some("use `file:///absolute/dir` or `http(s)://host/path`".into())
            }
            ConfigError::Read { .. } => None,
        }
    }
}

/// One setting as written, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin<T> {
    /// The value.
    pub value: T,
    /// Where it came from (`--substituters`, a file's path).
    pub origin: String,
}

/// Nix's default `builders` when `nix.conf` is in `nix_conf_dir`: the machines file beside
/// it (`@/etc/nix/machines`), used only if it exists.
pub fn default_builders(nix_conf_dir: &Path) -> String {
    format!("@{}", nix_conf_dir.join("machines").display())
}

/// The settings in force.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Substituter URLs, in the order given (the caches' `Priority` orders them later).
    pub substituters: Vec<Origin<String>>,
    /// Keys whose signatures are trusted.
    pub trusted_public_keys: Vec<PublicKey>,
    /// `system-features`, where a layer sets it (else Nix's default:
    /// [`crate::graph::build::default_system_features`]); see [`Settings::system_features`].
    pub system_features: Option<Origin<SystemFeatures>>,
    /// `builders`, raw (Nix's syntax: `;`- or newline-separated machines, `@FILE`), where a
    /// layer sets it; an empty value counts (no remote builders).
    pub builders: Option<Origin<String>>,
    /// Nix's default `builders` (`@$NIX_CONF_DIR/machines`), in force when no layer sets
    /// it: Nix reads that file if it exists.
    pub default_builders: String,
    /// `builders-use-substitutes`, where a layer sets it (default false).
    pub builders_use_substitutes: Option<Origin<bool>>,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            substituters: Vec::new(),
            trusted_public_keys: Vec::new(),
            system_features: None,
            builders: None,
            default_builders: default_builders(Path::new("/etc/nix")),
            builders_use_substitutes: None,
        }
    }
}

/// `system-features` as one layer sets it: its own value (`None`: Nix's default) and what
/// `extra-system-features` adds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SystemFeatures {
    /// `system-features` (the last one written, in `nix.conf`).
    pub base: Option<Vec<String>>,
    /// `extra-system-features` written after it.
    pub extra: Vec<String>,
}

impl SystemFeatures {
    /// The features: `base` (or `default` if there is none) and `extra`.
    pub fn resolve(&self, default: &BTreeSet<String>) -> BTreeSet<String> {
        let base = match &self.base {
            Some(b) => b.iter().cloned().collect(),
            None => default.clone(),
        };
        base.into_iter().chain(self.extra.iter().cloned()).collect()
    }
}

impl Settings {
    /// The system features in force: the layer's that sets them, else `default` (Nix's,
    /// [`crate::graph::build::default_system_features`]).
    pub fn system_features(&self, default: &BTreeSet<String>) -> BTreeSet<String> {
        match &self.system_features {
            Some(f) => f.value.resolve(default),
            None => default.clone(),
        }
    }

    /// `builders` in force, raw: the layer's that sets it, else Nix's default.
    pub fn builders_spec(&self) -> &str {
        match &self.builders {
            Some(b) => &b.value,
            None => &self.default_builders,
        }
    }

    /// `builders-use-substitutes` in force (default false).
    pub fn builders_use_substitutes(&self) -> bool {
        self.builders_use_substitutes
            .as_ref()
            .is_some_and(|b| b.value)
    }
}

/// The raw (unparsed) values of one source, `None` where it does not set them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layer {
    /// Where the values come from.
    pub origin: String,
    /// `substituters`.
    pub substituters: Option<Vec<String>>,
    /// `trusted-public-keys`.
    pub trusted_public_keys: Option<Vec<String>>,
    /// `system-features` and `extra-system-features`.
    pub system_features: Option<SystemFeatures>,
    /// `builders`.
    pub builders: Option<String>,
    /// `builders-use-substitutes`.
    pub builders_use_substitutes: Option<bool>,
}

/// Splits a Nix list setting (whitespace-separated).
fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

/// The settings ksbuild reads of `nix.conf` text: `substituters`, `trusted-public-keys`,
/// `system-features` and their `extra-` forms (Nix's legacy names `binary-caches` and
/// `binary-cache-public-keys` too), `builders` and `builders-use-substitutes`. Comments
/// (`#`) and other settings are ignored, as are `include` lines (ksbuild does not follow
/// them). Lines apply in order, as in Nix: `system-features` replaces what
/// `extra-system-features` lines before it added.
pub fn parse_nix_conf(text: &str, origin: &str) -> Result<Layer, ConfigError> {
    let mut base: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut extra: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut system_features: Option<SystemFeatures> = None;
    let mut builders = None;
    let mut builders_use_substitutes = None;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), words(raw));
        match key {
            "system-features" => {
                system_features = Some(SystemFeatures {
                    base: Some(value),
                    extra: Vec::new(),
                });
            }
            "extra-system-features" => {
                system_features
                    .get_or_insert_with(SystemFeatures::default)
                    .extra
                    .extend(value);
            }
            "builders" => builders = Some(raw.trim().to_string()),
            "builders-use-substitutes" => {
                // Nix's `BaseSetting<bool>::set`.
                builders_use_substitutes = Some(match raw.trim() {
                    "true" | "yes" | "1" => true,
                    "false" | "no" | "0" => false,
                    other => {
                        return Err(ConfigError::BadBool {
                            key: key.into(),
                            value: other.into(),
                            origin: origin.into(),
                        })
                    }
                });
            }
            "substituters" | "binary-caches" => {
                base.insert("s", value);
            }
            "trusted-public-keys" | "binary-cache-public-keys" => {
                base.insert("k", value);
            }
            "extra-substituters" | "extra-binary-caches" => {
                extra.entry("s").or_default().extend(value);
            }
            "extra-trusted-public-keys" | "extra-binary-cache-public-keys" => {
                extra.entry("k").or_default().extend(value);
            }
            _ => {}
        }
    }
    let merged = |k: &str| -> Option<Vec<String>> {
        match (base.get(k), extra.get(k)) {
            (None, None) => None,
            (b, e) => Some(
                b.into_iter()
                    .flatten()
                    .chain(e.into_iter().flatten())
                    .cloned()
                    .collect(),
            ),
        }
    };
    Ok(Layer {
        origin: origin.to_string(),
        substituters: merged("s"),
        trusted_public_keys: merged("k"),
        system_features,
        builders,
        builders_use_substitutes,
    })
}

/// The settings of ksbuild's `config.toml`: `substituters`, `trusted-public-keys`,
/// `system-features` and `extra-system-features`, each a list of strings or one
/// whitespace-separated string; `builders`, a string in Nix's syntax or a list of machines
/// (joined with `;`); `builders-use-substitutes`, a Boolean.
pub fn parse_ksbuild_config(text: &str, path: &Path) -> Result<Layer, ConfigError> {
    let table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Toml {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let list = |key: &str| -> Result<Option<Vec<String>>, ConfigError> {
        let bad = || ConfigError::Toml {
            path: path.to_path_buf(),
            reason: format!("`{key}` must be a list of strings or one string"),
        };
        match table.get(key) {
            None => Ok(None),
            Some(toml::Value::String(s)) => Ok(Some(words(s))),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(String::from).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(bad()),
        }
    };
    let bad = |key: &str, what: &str| ConfigError::Toml {
        path: path.to_path_buf(),
        reason: format!("`{key}` must be {what}"),
    };
    let system_features = match (list("system-features")?, list("extra-system-features")?) {
        (None, None) => None,
        (base, extra) => Some(SystemFeatures {
            base,
            extra: extra.unwrap_or_default(),
        }),
    };
    let builders = match table.get("builders") {
        None => None,
        Some(toml::Value::String(s)) => Some(s.clone()),
        Some(toml::Value::Array(items)) => Some(
            items
                .iter()
                .map(|v| v.as_str())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| bad("builders", "a string or a list of strings"))?
                .join(";"),
        ),
        Some(_) => return Err(bad("builders", "a string or a list of strings")),
    };
    let builders_use_substitutes = match table.get("builders-use-substitutes") {
        None => None,
        Some(toml::Value::Boolean(b)) => Some(*b),
        Some(_) => return Err(bad("builders-use-substitutes", "`true` or `false`")),
    };
    Ok(Layer {
        origin: format!("`{}`", path.display()),
        substituters: list("substituters")?,
        trusted_public_keys: list("trusted-public-keys")?,
        system_features,
        builders,
        builders_use_substitutes,
    })
}

impl Settings {
    /// The settings of `layers`, highest precedence first: each setting from the first
    /// layer that sets it. Keys are parsed and URLs checked here.
    pub fn from_layers(layers: &[Layer]) -> Result<Settings, ConfigError> {
        let mut settings = Settings::default();
        if let Some(layer) = layers.iter().find(|l| l.substituters.is_some()) {
            for url in layer.substituters.iter().flatten() {
                let known = ["file://", "http://", "https://"];
                if !known.iter().any(|s| url.starts_with(s)) {
                    return Err(ConfigError::BadUrl {
                        url: url.clone(),
                        origin: layer.origin.clone(),
                    });
                }
                settings.substituters.push(Origin {
                    value: url.clone(),
                    origin: layer.origin.clone(),
                });
            }
        }
        if let Some(layer) = layers.iter().find(|l| l.trusted_public_keys.is_some()) {
            for key in layer.trusted_public_keys.iter().flatten() {
                let parsed = PublicKey::parse(key).map_err(|source| ConfigError::BadKey {
                    key: key.clone(),
                    origin: layer.origin.clone(),
                    source,
                })?;
                settings.trusted_public_keys.push(parsed);
            }
        }
        let first = |f: &dyn Fn(&Layer) -> bool| layers.iter().find(|l| f(l));
        settings.system_features = first(&|l| l.system_features.is_some()).map(|l| Origin {
            value: l.system_features.clone().unwrap_or_default(),
            origin: l.origin.clone(),
        });
        settings.builders = first(&|l| l.builders.is_some()).map(|l| Origin {
            value: l.builders.clone().unwrap_or_default(),
            origin: l.origin.clone(),
        });
        settings.builders_use_substitutes =
            first(&|l| l.builders_use_substitutes.is_some()).map(|l| Origin {
                value: l.builders_use_substitutes.unwrap_or_default(),
                origin: l.origin.clone(),
            });
        Ok(settings)
    }

    /// The settings of the command line (`cli`, a layer whose origin names the flags) over
    /// ksbuild's `config.toml` over `nix.conf`, read from where the environment says.
    pub fn discover(cli: Layer) -> Result<Settings, ConfigError> {
        let mut layers = vec![cli];
        let config_dir = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        if let Some(file) = config_dir.map(|d| d.join("ksbuild/config.toml")) {
            if let Some(text) = read_if_present(&file)? {
                layers.push(parse_ksbuild_config(&text, &file)?);
            }
        }
        let nix_conf_dir = match std::env::var_os("NIX_CONF_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir),
            None => PathBuf::from("/etc/nix"),
        };
        let nix_conf = nix_conf_dir.join("nix.conf");
        if let Some(text) = read_if_present(&nix_conf)? {
            layers.push(parse_nix_conf(&text, &format!("`{}`", nix_conf.display()))?);
        }
        let mut settings = Settings::from_layers(&layers)?;
        settings.default_builders = default_builders(&nix_conf_dir);
        Ok(settings)
    }
}

/// The text of `file`, or `None` if it does not exist or this user may not read it.
fn read_if_present(file: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(file) {
        Ok(t) => Ok(Some(t)),
        // A home directory this user may not enter (a build user's `HOME=/root`, say) holds
        // no configuration for it: Nix skips what it cannot read, and so does this.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied
            ) =>
        {
            Ok(None)
        }
        Err(source) => Err(ConfigError::Read {
            path: file.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PK: &str = "test-cache-1:iupymam3IF0u5rC3XCju/ZHZuwmQEtAjlrv/thG1CN8=";
    const PK2: &str = "other-1:iupymam3IF0u5rC3XCju/ZHZuwmQEtAjlrv/thG1CN8=";

    fn layer(origin: &str, s: Option<&[&str]>, k: Option<&[&str]>) -> Layer {
        let own = |v: &[&str]| v.iter().map(|x| x.to_string()).collect();
        Layer {
            origin: origin.into(),
            substituters: s.map(own),
            trusted_public_keys: k.map(own),
            ..Default::default()
        }
    }

    #[test]
    fn nix_conf_settings_and_extras() {
        let l = parse_nix_conf(
            "# comment\nsandbox = true\nsubstituters = http://a  file:///b # trailing\nextra-substituters = http://c\nextra-trusted-public-keys = k1\n",
            "nix.conf",
        )
        .unwrap();
        assert_eq!(
            l.substituters,
            Some(vec![
                "http://a".into(),
                "file:///b".into(),
                "http://c".into()
            ])
        );
        assert_eq!(l.trusted_public_keys, Some(vec!["k1".into()]));
        // An empty value is a value: no substituters.
        let empty = parse_nix_conf("substituters =\n", "nix.conf").unwrap();
        assert_eq!(empty.substituters, Some(vec![]));
        assert_eq!(empty.trusted_public_keys, None);
    }

    #[test]
    fn ksbuild_config_takes_lists_or_strings() {
        let p = Path::new("config.toml");
        let l = parse_ksbuild_config(
            "substituters = [\"file:///x\"]\ntrusted-public-keys = \"a b\"\n",
            p,
        )
        .unwrap();
        assert_eq!(l.substituters, Some(vec!["file:///x".into()]));
        assert_eq!(l.trusted_public_keys, Some(vec!["a".into(), "b".into()]));
        let e = parse_ksbuild_config("substituters = 3\n", p).unwrap_err();
        assert!(e.to_string().contains("`substituters` must be"), "{e}");
    }

    #[test]
    fn each_setting_comes_from_the_first_layer_that_sets_it() {
        let cases: &[(&[Layer], &[&str], &[&str])] = &[
            (&[], &[], &[]),
            (
                &[
                    layer("cli", Some(&["http://cli"]), None),
                    layer("config", Some(&["http://cfg"]), Some(&[PK2])),
                    layer("nix.conf", Some(&["http://nix"]), Some(&[PK])),
                ],
                &["http://cli"],
                &["other-1"],
            ),
            (
                &[
                    layer("cli", None, None),
                    layer("config", Some(&[]), None),
                    layer("nix.conf", Some(&["http://nix"]), Some(&[PK])),
                ],
                &[],
                &["test-cache-1"],
            ),
        ];
        for (layers, urls, keys) in cases {
            let s = Settings::from_layers(layers).unwrap();
            let got: Vec<&str> = s.substituters.iter().map(|o| o.value.as_str()).collect();
            assert_eq!(&got, urls);
            let got: Vec<&str> = s.trusted_public_keys.iter().map(|k| k.name()).collect();
            assert_eq!(&got, keys);
        }
    }

    #[test]
    fn bad_urls_and_keys_name_their_origin() {
        let e = Settings::from_layers(&[layer("`--substituters`", Some(&["s3://b"]), None)])
            .unwrap_err();
        assert!(e.to_string().contains("from `--substituters`"), "{e}");
        assert!(e.hint().unwrap().contains("path-style"));
        let e = Settings::from_layers(&[layer("nix.conf", None, Some(&["nocolon"]))]).unwrap_err();
        assert!(e.to_string().contains("nocolon"), "{e}");
    }
}

#[cfg(test)]
mod build_settings_tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn nix_conf_system_features_apply_in_order_over_the_default() {
        let default = set(&["benchmark", "big-parallel", "nixos-test"]);
        #[rustfmt::skip]
        let table: &[(&str, Option<&[&str]>)] = &[
            ("sandbox = true\n", None),
            ("system-features = kvm\n", Some(&["kvm"])),
            ("system-features =\n", Some(&[])),
            // `extra-` adds to the default when the file does not set the base (Nix).
            ("extra-system-features = kvm gpu\n", Some(&["benchmark", "big-parallel", "gpu", "kvm", "nixos-test"])),
            ("system-features = a\nextra-system-features = b\n", Some(&["a", "b"])),
            // A later `system-features` replaces what came before.
            ("extra-system-features = b\nsystem-features = a # c\n", Some(&["a"])),
        ];
        for (text, expected) in table {
            let layer = parse_nix_conf(text, "nix.conf").unwrap();
            let got = layer.system_features.as_ref().map(|f| f.resolve(&default));
            assert_eq!(got, expected.map(set), "{text:?}");
        }
    }

    #[test]
    fn nix_conf_builders_are_kept_raw() {
        let l = parse_nix_conf(
            "builders = ssh://a x86_64-linux - 2 1 big-parallel ; ssh://b # c\nbuilders-use-substitutes = true\n",
            "nix.conf",
        )
        .unwrap();
        assert_eq!(
            l.builders.as_deref(),
            Some("ssh://a x86_64-linux - 2 1 big-parallel ; ssh://b")
        );
        assert_eq!(l.builders_use_substitutes, Some(true));
        let l = parse_nix_conf("builders =\nbuilders-use-substitutes = no\n", "n").unwrap();
        assert_eq!(l.builders.as_deref(), Some(""));
        assert_eq!(l.builders_use_substitutes, Some(false));
        let e = parse_nix_conf("builders-use-substitutes = maybe\n", "`nix.conf`").unwrap_err();
        assert!(
            e.to_string()
                .contains("`builders-use-substitutes = maybe` (in `nix.conf`)"),
            "{e}"
        );
        assert!(e.hint().unwrap().contains("= true"));
    }

    #[test]
    fn ksbuild_config_build_settings() {
        let p = Path::new("config.toml");
        let l = parse_ksbuild_config(
            "system-features = [\"kvm\"]\nextra-system-features = \"gpu\"\nbuilders = [\"ssh://a\", \"ssh://b x86_64-linux\"]\nbuilders-use-substitutes = true\n",
            p,
        )
        .unwrap();
        assert_eq!(
            l.system_features,
            Some(SystemFeatures {
                base: Some(vec!["kvm".into()]),
                extra: vec!["gpu".into()]
            })
        );
        assert_eq!(l.builders.as_deref(), Some("ssh://a;ssh://b x86_64-linux"));
        assert_eq!(l.builders_use_substitutes, Some(true));
        let l = parse_ksbuild_config("builders = \"@/etc/nix/machines\"\n", p).unwrap();
        assert_eq!(l.builders.as_deref(), Some("@/etc/nix/machines"));
        for (text, key) in [
            ("builders = 1\n", "`builders` must be"),
            (
                "builders-use-substitutes = \"yes\"\n",
                "`builders-use-substitutes` must be",
            ),
            ("system-features = 1\n", "`system-features` must be"),
        ] {
            let e = parse_ksbuild_config(text, p).unwrap_err();
            assert!(e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn build_settings_come_from_the_first_layer_that_sets_them() {
        let default = set(&["benchmark", "big-parallel", "nixos-test"]);
        let cli = Layer {
            origin: "the command line".into(),
            system_features: Some(SystemFeatures {
                base: Some(vec!["kvm".into()]),
                extra: vec![],
            }),
            ..Default::default()
        };
        let config = Layer {
            origin: "config.toml".into(),
            builders: Some("ssh://cfg".into()),
            system_features: Some(SystemFeatures {
                base: None,
                extra: vec!["gpu".into()],
            }),
            ..Default::default()
        };
        let nix_conf = Layer {
            origin: "nix.conf".into(),
            builders: Some("ssh://nix".into()),
            builders_use_substitutes: Some(true),
            ..Default::default()
        };
        let s = Settings::from_layers(&[cli, config.clone(), nix_conf.clone()]).unwrap();
        assert_eq!(s.system_features(&default), set(&["kvm"]));
        assert_eq!(s.builders_spec(), "ssh://cfg");
        assert_eq!(s.builders.as_ref().unwrap().origin, "config.toml");
        assert!(s.builders_use_substitutes());
        let s = Settings::from_layers(&[config, nix_conf]).unwrap();
        assert_eq!(
            s.system_features(&default),
            set(&["benchmark", "big-parallel", "gpu", "nixos-test"])
        );
        // Nothing set: Nix's defaults, the machines file not explicitly set.
        let s = Settings::from_layers(&[]).unwrap();
        assert_eq!(s.system_features(&default), default);
        assert_eq!(s.builders, None);
        assert_eq!(s.builders_spec(), "@/etc/nix/machines");
        assert!(!s.builders_use_substitutes());
    }
}
