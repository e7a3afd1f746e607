//! Where the substituters and trusted keys come from, as Nix users expect: the command line
//! (`--substituters`, `--trusted-public-keys`), then `~/.config/ksbuild/config.toml`
//! (`$XDG_CONFIG_HOME` honoured), then Nix's own `nix.conf` (`$NIX_CONF_DIR/nix.conf`, else
//! `/etc/nix/nix.conf`). Each setting is taken whole from the first of these that sets it
//! (an empty value counts: `substituters =` in `nix.conf` turns them off); `nix.conf`'s
//! `extra-substituters`/`extra-trusted-public-keys` add to its own values.
//!
//! The default is **no substituters**: unlike Nix, ksbuild never reaches out to a cache
//! nobody named (Nix's built-in `https://cache.nixos.org` is not assumed). The parsers are
//! pure; [`Settings::discover`] reads the files.

use std::collections::BTreeMap;
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
}

impl ConfigError {
    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            ConfigError::Toml { .. } => Some(
                "write `substituters = [\"https://…\"]` and `trusted-public-keys = [\"name:base64…\"]`"
                    .into(),
            ),
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

/// The substitution settings in force.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Substituter URLs, in the order given (the caches' `Priority` orders them later).
    pub substituters: Vec<Origin<String>>,
    /// Keys whose signatures are trusted.
    pub trusted_public_keys: Vec<PublicKey>,
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
}

/// Splits a Nix list setting (whitespace-separated).
fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(String::from).collect()
}

/// The substitution settings of `nix.conf` text: `substituters`, `trusted-public-keys`
/// and their `extra-` forms (Nix's legacy names `binary-caches` and
/// `binary-cache-public-keys` too). Comments (`#`) and other settings are ignored, as are
/// `include` lines (ksbuild does not follow them).
pub fn parse_nix_conf(text: &str, origin: &str) -> Layer {
    let mut base: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut extra: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), words(value));
        match key {
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
    Layer {
        origin: origin.to_string(),
        substituters: merged("s"),
        trusted_public_keys: merged("k"),
    }
}

/// The substitution settings of ksbuild's `config.toml`: `substituters` and
/// `trusted-public-keys`, each a list of strings or one whitespace-separated string.
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
    Ok(Layer {
        origin: format!("`{}`", path.display()),
        substituters: list("substituters")?,
        trusted_public_keys: list("trusted-public-keys")?,
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
        let nix_conf = match std::env::var_os("NIX_CONF_DIR").filter(|d| !d.is_empty()) {
            Some(dir) => PathBuf::from(dir).join("nix.conf"),
            None => PathBuf::from("/etc/nix/nix.conf"),
        };
        if let Some(text) = read_if_present(&nix_conf)? {
            layers.push(parse_nix_conf(&text, &format!("`{}`", nix_conf.display())));
        }
        Settings::from_layers(&layers)
    }
}

/// The text of `file`, or `None` if it does not exist.
fn read_if_present(file: &Path) -> Result<Option<String>, ConfigError> {
    match std::fs::read_to_string(file) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
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
        }
    }

    #[test]
    fn nix_conf_settings_and_extras() {
        let l = parse_nix_conf(
            "# comment\nsandbox = true\nsubstituters = http://a  file:///b # trailing\nextra-substituters = http://c\nextra-trusted-public-keys = k1\n",
            "nix.conf",
        );
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
        let empty = parse_nix_conf("substituters =\n", "nix.conf");
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
