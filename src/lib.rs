//! candle-gru: PyTorch-trained GRUs on candle, with PyTorch's numbers.
//!
//! This facade re-exports the workspace's crates:
//! - [`core`] (`gru-core`): `Gru`, `GruCell`, streaming, device selection;
//! - [`weights`] (`gru-weights`): loading PyTorch state_dicts (safetensors, `.pt`);
//! - [`verify`] (`gru-verify`): parity against PyTorch reference cases.

pub use candle_core;
pub use candle_nn;
pub use gru_core as core;
pub use gru_verify as verify;
pub use gru_weights as weights;

pub use gru_core::{DeviceSpec, Gru, GruCell, GruConfig, GruError, GruState, Kernel};
pub use gru_weights::{load_gru, WeightFile};

/// The folder of the shipped models and reference cases (`models/` at the repository root).
pub fn models_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models")
}
