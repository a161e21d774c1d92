//! The error type of gru-core: every variant names the argument or tensor at fault.

use candle_core::DType;

/// Errors from building or running a GRU.
#[derive(Debug, thiserror::Error)]
pub enum GruError {
    /// A configuration value PyTorch would reject too.
    #[error("invalid GRU config: {field} {reason}")]
    Config { field: &'static str, reason: String },

    /// A tensor (weight, input, h0) whose shape is not the one required.
    #[error("`{}`: expected shape {expected:?}, found {found:?}", shown(name))]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },

    /// A tensor whose dtype is not the one required.
    #[error(
        "`{}`: expected dtype {expected:?}, found {found:?}{hint}",
        shown(name)
    )]
    DType {
        name: String,
        expected: DType,
        found: DType,
        hint: &'static str,
    },

    /// An argument that is malformed in a way a shape or dtype does not describe.
    #[error("`{}`: {reason}", shown(name))]
    Argument { name: String, reason: String },

    /// Variable-length batch lengths that PyTorch's `pack_padded_sequence` rejects too.
    #[error("`lengths`: {0}")]
    Lengths(String),

    /// A device that cannot be used: not compiled in, not present, or not parsable.
    #[error("device `{}`: {reason}", shown(device))]
    Device { device: String, reason: String },

    /// A broken internal invariant: a bug of this crate, not a fault of the caller's input.
    #[error("internal error (a bug of gru-core): {0}")]
    Internal(String),

    /// An error from candle itself.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, GruError>;

/// A name as an error shows it: names come from files and arguments, and a control character
/// in one (a newline, an escape sequence) must not cut or forge the one-line message.
fn shown(name: &str) -> std::borrow::Cow<'_, str> {
    if name.chars().any(char::is_control) {
        name.escape_debug().to_string().into()
    } else {
        name.into()
    }
}

/// So that `?` works inside a candle `Module::forward`: candle's own errors come back as they
/// were, the others are wrapped (their message and source kept).
impl From<GruError> for candle_core::Error {
    fn from(e: GruError) -> Self {
        match e {
            GruError::Candle(e) => e,
            other => candle_core::Error::wrap(other),
        }
    }
}

impl GruError {
    pub(crate) fn arg(name: impl Into<String>, reason: impl Into<String>) -> Self {
        GruError::Argument {
            name: name.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn shape(name: impl Into<String>, expected: &[usize], found: &[usize]) -> Self {
        GruError::Shape {
            name: name.into(),
            expected: expected.to_vec(),
            found: found.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_control_characters_stay_on_one_line() {
        let e = GruError::Shape {
            name: "rnn.weight\nPASS\x1b[2J".into(),
            expected: vec![3],
            found: vec![4],
        };
        assert_eq!(
            e.to_string(),
            "`rnn.weight\\nPASS\\u{1b}[2J`: expected shape [3], found [4]"
        );
        let e = GruError::arg("plain.name", "is odd");
        assert_eq!(e.to_string(), "`plain.name`: is odd");
    }
}
