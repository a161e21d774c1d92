//! The error type of gru-weights: each variant names the file or the tensor at fault.

use std::path::PathBuf;

use candle_core::DType;

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file is not a valid safetensors / PyTorch zip file.
    #[error("{}: {reason}", shown(path))]
    File { path: PathBuf, reason: String },

    /// The file's container is malformed (zip, safetensors): `source` keeps the parser's error.
    #[error("{}: {what}: {source}", shown(path))]
    Format {
        path: PathBuf,
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The file cannot be opened, examined or mapped: `source` keeps the `io::Error` (so a caller
    /// can match `io::ErrorKind::NotFound`).
    #[error("{}: cannot {action}: {source}", shown(path))]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },

    /// A GRU tensor whose shape does not fit the GRU it belongs to.
    #[error("`{}`: expected shape {expected:?}, found {found:?}", name.escape_debug())]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A GRU tensor that is not a float tensor.
    #[error("`{}`: dtype {found:?} is not a float type (expected F32, F64, F16 or BF16)", name.escape_debug())]
    DType { name: String, found: DType },

    /// A GRU tensor that is missing, unpaired, or holds NaN/Inf.
    #[error("`{}`: {reason}", name.escape_debug())]
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

/// A path as errors show it: control characters (a newline in a file name) escaped, so that an
/// error stays one line and nothing in a name reaches the terminal raw.
fn shown(path: &std::path::Path) -> String {
    path.display().to_string().escape_debug().to_string()
}
