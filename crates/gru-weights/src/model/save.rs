//! Writing a `Gru` / `GruCell` back to safetensors under PyTorch's names, so that
//! `load -> save -> load` is identical and `load_state_dict` accepts the file.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use gru_core::{Gru, GruCell};

use crate::error::{Result, WeightsError};

fn save(named: Vec<(String, Tensor)>, prefix: &str, path: &Path) -> Result<()> {
    let prefix = prefix.trim_end_matches('.');
    let map: HashMap<String, Tensor> = named
        .into_iter()
        .map(|(k, v)| {
            let k = if prefix.is_empty() {
                k
            } else {
                format!("{prefix}.{k}")
            };
            (k, v)
        })
        .collect();
    crate::io::write::save_safetensors(&map, path)
}

/// Saves `gru` at `prefix` (empty for the root) in its own dtype.
///
/// A quantized GRU is refused: a float file of its dequantized weights would compute other
/// numbers (PyTorch's quantized GRU quantizes its inputs on every call).
pub fn save_gru(gru: &Gru, prefix: &str, path: impl AsRef<Path>) -> Result<()> {
    if let Some(q) = gru.quantized() {
        return Err(WeightsError::Select(format!(
            "the GRU is quantized ({}): a float file of its dequantized weights would not \
             compute what PyTorch's quantized GRU computes; keep the quantized file, which \
             `gru run` and `gru verify` read as it is",
            q.kind()
        )));
    }
    save(gru.named_tensors(), prefix, path.as_ref())
}

/// Saves `cell` at `prefix` in its own dtype.
/// A quantized cell is refused, as [`save_gru`] refuses a quantized GRU.
pub fn save_gru_cell(cell: &GruCell, prefix: &str, path: impl AsRef<Path>) -> Result<()> {
    if let Some(q) = cell.quantized() {
        return Err(WeightsError::Select(format!(
            "the GRUCell is quantized ({}): a float file of its dequantized weights would not \
             compute what PyTorch's quantized GRUCell computes; keep the quantized file",
            q.kind()
        )));
    }
    save(cell.named_tensors(), prefix, path.as_ref())
}
