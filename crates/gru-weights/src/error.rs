//! The error type of gru-weights: each variant names the file or the tensor at fault.

use std::path::PathBuf;

use candle_core::DType;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file is not a valid safetensors / PyTorch zip file.
    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },

    /// The file's container is malformed (zip, safetensors): `source` keeps the parser's error.
    #[error("{}: {what}: {source}", path.display())]
    Format {
        path: PathBuf,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The file cannot be opened, examined or mapped: `source` keeps the `io::Error` (so a caller
    /// can match `io::ErrorKind::NotFound`).
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A GRU tensor whose shape does not fit the GRU it belongs to.
    #[error("`{name}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A GRU tensor that is not a float tensor.
    #[error("`{name}`: dtype {found:?} is not a float type (expected F32, F64, F16 or BF16)")]
    DType { name: String, found: DType },

    /// A GRU tensor that is missing, unpaired, or holds NaN/Inf.
    #[error("`{name}`: {reason}")]
    Tensor { name: String, reason: String },

    /// No GRU, several GRUs and no prefix, or a prefix that matches nothing.
    #[error("{0}")]
    Select(String),

    #[error(transparent)]
    Gru(#[from] gru_core::GruError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, WeightsError>;

impl From<WeightsError> for candle_core::Error {
    fn from(e: WeightsError) -> Self {
        match e {
            WeightsError::Candle(e) => e,
            WeightsError::Gru(e) => e.into(),
            other => candle_core::Error::wrap(other),
        }
    }
}

impl WeightsError {
    pub(crate) fn format(
        path: &std::path::Path,
        what: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        WeightsError::Format {
            path: path.to_path_buf(),
            what: what.into(),
            source: Box::new(source),
        }
    }

    pub(crate) fn io(path: &std::path::Path, action: &'static str, source: std::io::Error) -> Self {
        WeightsError::Io {
            path: path.to_path_buf(),
            action,
            source,
        }
    }

    pub(crate) fn file(path: &std::path::Path, reason: impl Into<String>) -> Self {
        WeightsError::File {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}
