//! Error type: every variant that touches disk names the file and what was wrong.

use std::path::PathBuf;

/// Errors from reading, writing or validating a dataset.
///
/// Display strings start with the offending file, then the field/column and
/// what was expected, so a CLI can print them as-is. A wrapped I/O or JSON error
/// is part of the message and not also the `source()`, so that an error chain
/// (anyhow's `Caused by:`) does not print it twice.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file system refused an operation (`action` says which).
    #[error("{}: I/O error while {action}: {error}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        error: std::io::Error,
    },
    /// A required file or directory does not exist.
    #[error("{}: missing {what}", path.display())]
    Missing { path: PathBuf, what: String },
    /// A JSON file could not be parsed into the expected structure.
    #[error("{}: invalid JSON for {what}: {error}", path.display())]
    Json {
        path: PathBuf,
        what: String,
        error: serde_json::Error,
    },
    /// `info.json` declares a format version this crate does not read.
    #[error(
        "{}: unsupported codebase_version {found:?}: only \"v3.0\" (LeRobotDataset v3) is supported; \
         convert older datasets with LeRobot's v3.0 conversion script",
        path.display()
    )]
    Version { path: PathBuf, found: String },
    /// The parquet/arrow layer failed (`action` says whether reading or writing).
    #[error("{}: parquet {action} failed: {message}", path.display())]
    Parquet {
        path: PathBuf,
        action: &'static str,
        message: String,
    },
    /// A column is missing, has the wrong type/shape, or holds bad values.
    #[error("{}: column `{column}`: {problem}", path.display())]
    Column {
        path: PathBuf,
        column: String,
        problem: String,
    },
    /// Any other inconsistency inside a file or between files.
    #[error("{}: {problem}", path.display())]
    Invalid { path: PathBuf, problem: String },
    /// Another writer (another process) has the dataset open.
    #[error("{}: another process is writing this dataset (a controller run or a conversion into it?); one writer at a time", path.display())]
    InUse { path: PathBuf },
    /// `DatasetWriter::create` was pointed at a non-empty directory.
    #[error("{}: directory exists and is not empty; refusing to create a dataset there", path.display())]
    NotEmpty { path: PathBuf },
    /// An in-memory [`crate::Episode`] is inconsistent (no file involved yet;
    /// the writer wraps this into [`DatasetError::Invalid`] naming the dataset dir).
    #[error("episode field `{field}`: {problem}")]
    Episode {
        field: &'static str,
        problem: String,
    },
}

impl DatasetError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        error: std::io::Error,
    ) -> Self {
        Self::Io {
            path: path.into(),
            action,
            error,
        }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn column(
        path: impl Into<PathBuf>,
        column: impl Into<String>,
        problem: impl Into<String>,
    ) -> Self {
        Self::Column {
            path: path.into(),
            column: column.into(),
            problem: problem.into(),
        }
    }

    pub(crate) fn parquet(
        path: impl Into<PathBuf>,
        action: &'static str,
        err: impl std::fmt::Display,
    ) -> Self {
        Self::Parquet {
            path: path.into(),
            action,
            message: err.to_string(),
        }
    }
}
