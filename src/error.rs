//! The library's error type.
//!
//! Errors fall in two families, and the binary maps them to exit codes:
//! what the user handed us was wrong (bad input data, bad parameters, a damaged artifact: exit 2),
//! or something failed underneath (I/O, the GPU: exit 1). [`Error::is_user_error`] tells which.

use std::fmt;
use std::path::{Path, PathBuf};

/// `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in the input a problem sits: a file, and optionally a row and a column.
///
/// Rows are reported twice: the global row number over all inputs in the order they were read
/// (what `ids` defaults to) and the row number within the file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// (global row, row within the file), both 0-based.
    pub row: Option<(u64, u64)>,
    pub column: Option<String>,
}

impl Location {
    pub fn file(file: impl AsRef<Path>) -> Self {
        Location {
            file: file.as_ref().to_path_buf(),
            row: None,
            column: None,
        }
    }
    pub fn with_column(mut self, column: impl Into<String>) -> Self {
        self.column = Some(column.into());
        self
    }
    pub fn with_row(mut self, global: u64, in_file: u64) -> Self {
        self.row = Some((global, in_file));
        self
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((global, local)) = self.row {
            write!(f, ": row {global} (row {local} of this file)")?;
        }
        if let Some(column) = &self.column {
            write!(f, ", column `{column}`")?;
        }
        Ok(())
    }
}

/// Everything that can go wrong in vecbuild's library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input data is unusable: the message says what is wrong, the location where.
    #[error("{at}: {reason}")]
    Input { at: Location, reason: String },

    /// A parameter is out of range or inconsistent with the data.
    #[error("invalid parameter: {0}")]
    Param(String),

    /// An artifact cannot be used: damaged, truncated, or from a newer vecbuild.
    #[error("{path}: artifact section `{section}`: {reason}")]
    Artifact {
        path: PathBuf,
        section: String,
        reason: String,
    },

    /// An operating-system I/O failure on a named file.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The requested GPU cannot be used.
    #[error("GPU: {0}")]
    Gpu(String),

    /// The caller raised the cancel flag.
    #[error("cancelled")]
    Cancelled,
}

impl Error {
    pub fn input(at: Location, reason: impl Into<String>) -> Self {
        Error::Input {
            at,
            reason: reason.into(),
        }
    }

    pub fn param(msg: impl Into<String>) -> Self {
        Error::Param(msg.into())
    }

    pub fn artifact(
        path: impl AsRef<Path>,
        section: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::Artifact {
            path: path.as_ref().to_path_buf(),
            section: section.into(),
            reason: reason.into(),
        }
    }

    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.as_ref().to_path_buf(),
            source,
        }
    }

    /// True when the user can fix this by changing the input, the parameters or the artifact
    /// (the binary exits with code 2 for these).
    pub fn is_user_error(&self) -> bool {
        match self {
            Error::Input { .. } | Error::Param(_) | Error::Artifact { .. } | Error::Gpu(_) => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::PermissionDenied
                    | std::io::ErrorKind::IsADirectory
            ),
            Error::Cancelled => false,
        }
    }
}
