//! Load PyTorch GRU weights exactly as users export them.
//!
//! A whole model's `state_dict()` saved with `safetensors.torch.save_file` or `torch.save` (zip or
//! legacy, plain or inside a training checkpoint dict), a whole pickled model, a TorchScript
//! archive, a `torch.export` archive, a `torch.distributed.checkpoint` folder or a Hugging Face
//! sharded checkpoint is read without
//! Python and without running anything in it, and searched for `nn.GRU` and `nn.GRUCell` modules
//! at any depth; their configuration is inferred from names and shapes and every tensor is
//! checked against it. Weights trained under
//! weight norm or spectral norm are computed from their stored values on load.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let x = candle_core::Tensor::zeros((5, 1, 8), candle_core::DType::F32, &candle_core::Device::Cpu)?;
//! let file = gru_weights::WeightFile::open("checkpoint.pt")?;
//! let (gru, report) = file.gru(Some("encoder.rnn"), None, &candle_core::Device::Cpu)?;
//! let (output, h_n) = gru.forward(&x, None)?;
//! # Ok(()) }
//! ```

mod error;
mod file;
mod formats;
mod io;
mod model;
mod pickle;

pub use error::{Result, WeightsError};
pub use file::WeightFile;
pub use formats::container::{Format, TensorInfo};
pub use io::npy::read_npy;
pub use io::regular::{check_output_path, open_regular};
pub use io::write::{save_npy, save_safetensors, write_file};
pub use model::discover::{discover, Discovery, GruInfo, ModuleKind};
pub use model::load::{load_gru, LoadReport};
pub use model::save::{save_gru, save_gru_cell};
