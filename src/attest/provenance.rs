//! SLSA v1 build provenance as an in-toto Statement v1 (<https://slsa.dev/spec/v1.0/provenance>,
//! <https://github.com/in-toto/attestation/blob/main/spec/v1/statement.md>). Pure: the caller
//! gathers the facts (hashes of outputs, sources, downloads) and this module writes them,
//! sorted, with no clock: the same facts always give the same bytes.

use std::collections::BTreeMap;

use serde_json::{json, Value};

/// `_type` of an in-toto Statement v1.
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
/// `predicateType` of SLSA provenance v1.
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// The build type: a derivation realised by ksbuild in its sandbox.
pub const BUILD_TYPE: &str = "urn:ksbuild:build-type:derivation:v1";
/// The builder's id (the version goes into `builder.version`).
pub const BUILDER_ID: &str = "urn:ksbuild:builder:local-sandbox";

/// A file of an output: its name (relative to the output, `OUTPUT/…` for outputs other than
/// `out`; the store path's name when the output is a single file) and its SHA-256 (hex).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Subject {
    /// The name.
    pub name: String,
    /// Hex SHA-256 of the file's bytes.
    pub sha256: String,
}

/// A resolved dependency: a download or a source input.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dependency {
    /// The URL (downloads) or store path (sources).
    pub uri: String,
    /// Its name (the store path's name).
    pub name: String,
    /// Digests by algorithm: `sha256` of a downloaded file, `nixNarSha256` of a tree.
    pub digest: BTreeMap<String, String>,
    /// Extra facts (the store path, the environment whose lock pins it), sorted.
    pub annotations: BTreeMap<String, String>,
}

/// The project's revision, if it is a Git checkout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revision {
    /// A clean checkout at this commit.
    Clean(String),
    /// Not recorded, and why (not a Git checkout, uncommitted changes, …).
    Unknown(String),
}

/// Everything a statement says.
#[derive(Debug, Clone)]
pub struct Facts {
    /// The target's name.
    pub target: String,
    /// The project's revision.
    pub revision: Revision,
    /// The `.drv` store path (printed).
    pub drv_path: String,
    /// Hex SHA-256 of the `.drv` file's NAR serialisation.
    pub drv_nar_sha256: String,
    /// The platform (`system`).
    pub system: String,
    /// Outputs by name: printed store path.
    pub outputs: BTreeMap<String, String>,
    /// Files of the outputs.
    pub subjects: Vec<Subject>,
    /// Downloads and sources of the closure.
    pub dependencies: Vec<Dependency>,
    /// ksbuild's version.
    pub builder_version: String,
}

/// The in-toto statement for `facts`, lists sorted.
pub fn statement(facts: &Facts) -> Value {
    let mut subjects = facts.subjects.clone();
    subjects.sort();
    let mut deps = facts.dependencies.clone();
    deps.sort();
    let (commit, note) = match &facts.revision {
        Revision::Clean(c) => (Value::String(c.clone()), None),
        Revision::Unknown(why) => (Value::Null, Some(why.clone())),
    };
    let mut external = json!({ "target": facts.target, "gitCommit": commit });
    if let Some(note) = note {
        external["gitCommitNote"] = Value::String(note);
    }
    json!({
        "_type": STATEMENT_TYPE,
        "subject": subjects.iter().map(|s| json!({
            "name": s.name,
            "digest": { "sha256": s.sha256 },
        })).collect::<Vec<_>>(),
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": {
                    "derivation": facts.drv_path,
                    "derivationNarSha256": facts.drv_nar_sha256,
                    "outputs": facts.outputs,
                    "system": facts.system,
                },
                "resolvedDependencies": deps.iter().map(|d| {
                    let mut v = json!({ "uri": d.uri, "name": d.name, "digest": d.digest });
                    if !d.annotations.is_empty() {
                        v["annotations"] = json!(d.annotations);
                    }
                    v
                }).collect::<Vec<_>>(),
            },
            "runDetails": {
                "builder": {
                    "id": BUILDER_ID,
                    "version": { "ksbuild": facts.builder_version },
                },
                "metadata": { "invocationId": facts.drv_path },
            },
        },
    })
}

/// What a verifier needs from a statement: its subjects and outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The subjects.
    pub subjects: Vec<Subject>,
    /// The outputs by name (printed store paths).
    pub outputs: BTreeMap<String, String>,
    /// The target.
    pub target: String,
}

/// Reads the claims of a statement; the error says which field is wrong.
pub fn claims(statement: &Value) -> Result<Claims, String> {
    if statement["_type"] != STATEMENT_TYPE {
        return Err(format!("`_type` is not `{STATEMENT_TYPE}`"));
    }
    if statement["predicateType"] != PREDICATE_TYPE {
        return Err(format!("`predicateType` is not `{PREDICATE_TYPE}`"));
    }
    let subjects = statement["subject"]
        .as_array()
        .ok_or("`subject` is not a list")?
        .iter()
        .map(|s| {
            Some(Subject {
                name: s["name"].as_str()?.to_string(),
                sha256: s["digest"]["sha256"].as_str()?.to_string(),
            })
        })
        .collect::<Option<Vec<_>>>()
        .ok_or("a subject lacks `name` or `digest.sha256`")?;
    let internal = &statement["predicate"]["buildDefinition"]["internalParameters"];
    let outputs = internal["outputs"]
        .as_object()
        .ok_or("`internalParameters.outputs` is missing")?
        .iter()
        .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect::<Option<BTreeMap<_, _>>>()
        .ok_or("an output path is not a string")?;
    let target = statement["predicate"]["buildDefinition"]["externalParameters"]["target"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    Ok(Claims {
        subjects,
        outputs,
        target,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts() -> Facts {
        Facts {
            target: "t".into(),
            revision: Revision::Unknown("not a Git checkout".into()),
            drv_path: "/nix/store/x-t.drv".into(),
            drv_nar_sha256: "00".into(),
            system: "x86_64-linux".into(),
            outputs: [("out".into(), "/nix/store/y-t".into())].into(),
            subjects: vec![
                Subject {
                    name: "z".into(),
                    sha256: "1".into(),
                },
                Subject {
                    name: "a".into(),
                    sha256: "2".into(),
                },
            ],
            dependencies: vec![],
            builder_version: "0".into(),
        }
    }

    #[test]
    fn subjects_are_sorted_and_claims_read_back() {
        let s = statement(&facts());
        assert_eq!(s["subject"][0]["name"], "a");
        assert_eq!(
            s["predicate"]["buildDefinition"]["externalParameters"]["gitCommit"],
            Value::Null
        );
        let c = claims(&s).unwrap();
        assert_eq!(c.subjects.len(), 2);
        assert_eq!(c.outputs["out"], "/nix/store/y-t");
        let mut wrong = s.clone();
        wrong["predicateType"] = "x".into();
        assert!(claims(&wrong).unwrap_err().contains("predicateType"));
    }
}
