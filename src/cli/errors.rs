//! The CLI's error type: every library error, rendered by miette with a `hint:`.

use std::process::ExitCode;

use miette::Diagnostic;

use crate::compat::hash::HashError;
use crate::store::StoreError;

/// An error that ends a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// From the store layer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// In the project's TOML files.
    #[error(transparent)]
    Model(Box<crate::model::ModelError>),
    /// From booting a VM.
    #[error(transparent)]
    Vm(#[from] crate::vm::VmError),
    /// A hash given on the command line.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// Terminal or pipe I/O.
    #[error("cannot {action}")]
    Io {
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A usage error with a suggestion.
    #[error("{message}")]
    Usage {
        message: String,
        hint: Option<String>,
    },
    /// The command ran and found problems (already printed); exit non-zero.
    #[error("{0}")]
    Failed(String),
}

impl From<crate::model::ModelError> for CliError {
    fn from(e: crate::model::ModelError) -> Self {
        CliError::Model(Box::new(e))
    }
}

impl CliError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(1)
    }
}

impl Diagnostic for CliError {
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        match self {
            CliError::Model(e) => e.source_code(),
            _ => None,
        }
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = miette::LabeledSpan> + '_>> {
        match self {
            CliError::Model(e) => e.labels(),
            _ => None,
        }
    }
    fn help<'a>(&'a self) -> Option<Box<dyn std::fmt::Display + 'a>> {
        let hint = match self {
            CliError::Model(e) => return e.help(),
            CliError::Store(e) => e.hint(),
            CliError::Vm(e) => e.hint(),
            CliError::Hash(_) => {
                Some("hashes look like `sha256-<base64>` or `sha256:<nix32 or hex>`".to_string())
            }
            CliError::Usage { hint, .. } => hint.clone(),
            CliError::Io { .. } | CliError::Failed(_) => None,
        };
        hint.map(|h| Box::new(h) as Box<dyn std::fmt::Display>)
    }
}
