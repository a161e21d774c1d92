//! The error type of gru-verify.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// A case file that is unreadable or breaks the reference case format.
    #[error(
        "{}: {reason}",
        path.display().to_string().escape_debug()
    )]
    Case { path: PathBuf, reason: String },

    #[error(transparent)]
    Weights(#[from] gru_weights::WeightsError),

    #[error(transparent)]
    Gru(#[from] gru_core::GruError),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, VerifyError>;

impl From<VerifyError> for candle_core::Error {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Candle(e) => e,
            VerifyError::Gru(e) => e.into(),
            VerifyError::Weights(e) => e.into(),
            other => candle_core::Error::wrap(other),
        }
    }
}
