//! One error type for the whole crate. Every message is meant to be printed as a single line
//! by the CLI, so each names the thing that is wrong (a path, a flag, a shape).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file that cannot be read as what it should hold (a dataset, a metrics log).
    #[error("{0}")]
    Data(String),
    /// A bad flag value or an inconsistent combination of flags.
    #[error("{0}")]
    Config(String),
    /// A checkpoint that is missing, corrupt, or of another architecture.
    #[error("{0}")]
    Checkpoint(String),
    /// A training run that cannot go on (e.g. a non-finite loss).
    #[error("{0}")]
    Train(String),
    /// A failed GPU allocation or kernel launch (the message names the kernel and shape).
    #[error("{0}")]
    Gpu(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
