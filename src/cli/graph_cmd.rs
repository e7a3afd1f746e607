//! `ksbuild graph`: the derivation graph of targets as a picture (DOT, SVG through
//! Graphviz's `dot`, or JSON), coloured by state, with last build times, and what changed
//! since an earlier realisation.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use clap::{Args, ValueEnum};

use super::drv_cmd::instantiate;
use super::{out, CliError, Context};
use crate::graph::picture::Picture;
use crate::graph::why;
use crate::store::history;

/// What `ksbuild graph` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Graphviz DOT.
    Dot,
    /// SVG, rendered by Graphviz's `dot` (Debian package `graphviz`).
    Svg,
    /// One JSON object: `nodes` (key, kind, state, drv, lastBuild, …) and `edges`.
    Json,
}

/// Options of `ksbuild graph`.
#[derive(Debug, Args)]
pub struct GraphArgs {
    /// Targets (files of `derivations/`, without `.toml`).
    #[arg(required = true)]
    targets: Vec<String>,
    /// What to write [default: from the extension of `-o` (`.svg`, `.json`, `.dot`/`.gv`),
    /// else `dot`].
    #[arg(long, value_enum)]
    format: Option<Format>,
    /// Outline in red the nodes an edit made since RESULT (a `result` link or an output
    /// path of an earlier realisation of the targets) makes rebuild: those whose `.drv` is
    /// none of those RESULT was built from, each with what changed (as `why-rebuild` says).
    /// May be given once per target.
    #[arg(long, value_name = "RESULT")]
    changed_since: Vec<PathBuf>,
    /// Write to FILE instead of stdout.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
}

/// The format asked for, else the one `-o`'s extension names, else DOT.
fn format_of(args: &GraphArgs) -> Format {
    if let Some(f) = args.format {
        return f;
    }
    let ext = args
        .output
        .as_deref()
        .and_then(Path::extension)
        .and_then(|e| e.to_str());
    match ext {
        Some("svg") => Format::Svg,
        Some("json") => Format::Json,
        _ => Format::Dot,
    }
}

/// `ksbuild graph`.
pub fn run(ctx: &Context, args: GraphArgs) -> Result<ExitCode, CliError> {
    let format = format_of(&args);
    let store = ctx.open_store()?;
    let mut earlier = Vec::new();
    for result in &args.changed_since {
        let path = store.parse_user_path(result).map_err(|e| CliError::Usage {
            message: format!("`--changed-since {}`: {e}", result.display()),
            hint: Some(
                "give a `result` link or an output path of an earlier `ksbuild realise`".into(),
            ),
        })?;
        earlier.push(why::earlier(&store, &path).map_err(|e| CliError::Usage {
            message: format!("`--changed-since {}`: {e}", result.display()),
            hint: e.hint(),
        })?);
    }
    let (_, lowered) = instantiate(ctx, &store, &args.targets)?;
    let mut valid = BTreeSet::new();
    for (key, node) in &lowered.nodes {
        if crate::graph::outputs_valid(&store, node)? {
            valid.insert(key.clone());
        }
    }
    let history = history::load_of(&store, |name| lowered.nodes.contains_key(name));
    let changed = (!earlier.is_empty())
        .then(|| why::changed_since(&store, &lowered, &args.targets, &earlier));
    let outputs: Vec<String> = earlier.iter().map(|e| e.output.clone()).collect();
    let picture = Picture::draw(
        &lowered,
        &args.targets,
        store.store_dir(),
        &valid,
        &history,
        changed.as_ref().map(|c| (outputs.as_slice(), c)),
    );
    let encode = |e: std::io::Error| CliError::Io {
        action: "write the graph",
        source: e,
    };
    let mut bytes = Vec::new();
    match format {
        Format::Json => picture.to_json(&mut bytes).map_err(encode)?,
        Format::Dot => picture.to_dot(&mut bytes).map_err(encode)?,
        Format::Svg => {
            picture.to_dot(&mut bytes).map_err(encode)?;
            bytes = render_svg(&bytes)?;
        }
    }
    match &args.output {
        Some(file) => std::fs::write(file, &bytes).map_err(|e| CliError::Usage {
            message: format!("cannot write `{}`: {e}", file.display()),
            hint: None,
        })?,
        None => out(&bytes)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Renders DOT as SVG with Graphviz's `dot`.
fn render_svg(dot: &[u8]) -> Result<Vec<u8>, CliError> {
    let child = Command::new("dot")
        .arg("-Tsvg")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::Usage {
                message: "`--format svg` needs Graphviz's `dot`, which is not on PATH".into(),
                hint: Some(
                    "install Graphviz (Debian: `apt-get install graphviz`), or write DOT with `--format dot` and render it elsewhere".into(),
                ),
            })
        }
        Err(e) => {
            return Err(CliError::Io {
                action: "run Graphviz's `dot`",
                source: e,
            })
        }
    };
    // Written from another thread: `dot` may write while it reads.
    let mut stdin = child.stdin.take();
    let rendered = std::thread::scope(|scope| {
        let writer = scope.spawn(move || stdin.as_mut().map(|s| s.write_all(dot)));
        let output = child.wait_with_output();
        (writer.join(), output)
    });
    let output = match rendered {
        (_, Err(e)) => {
            return Err(CliError::Io {
                action: "run Graphviz's `dot`",
                source: e,
            })
        }
        (_, Ok(o)) => o,
    };
    if !output.status.success() {
        return Err(CliError::Failed(format!(
            "Graphviz's `dot -Tsvg` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(output.stdout)
}
