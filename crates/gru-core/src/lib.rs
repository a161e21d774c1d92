//! PyTorch-exact `nn.GRU` and `nn.GRUCell` on candle tensors.
//!
//! - [`Gru`]: any `input_size`, `hidden_size`, `num_layers`, `bias`, `batch_first`,
//!   `bidirectional`; optional `h0`; unbatched input; variable-length batches
//!   ([`Gru::forward_with_lengths`]); streaming ([`Gru::forward_chunk`]).
//! - [`GruCell`]: one step, batched or not.
//! - [`DeviceSpec`]: `cpu`, `cuda[:N]`, `metal[:N]`, `auto`.
//!
//! Weights carry PyTorch's names and layouts (gates r|z|n, reset gate applied to `W_hn h + b_hn`),
//! so a `state_dict` saved with `safetensors` loads as it is. f32, f64, f16 and bf16 weights are
//! supported; half types compute in f32 and round the results once.

mod activation;
mod cell;
mod config;
mod cpu;
mod cuda;
mod device;
mod error;
mod finite;
mod gru;
mod layer;
mod packing;
mod params;
mod quantized;
mod stepwise;
mod stream;

pub use cell::GruCell;
pub use config::GruConfig;
pub use cpu::{check_cpu_level_env, cpu_level, cpu_levels, cpu_threads};
pub use device::{device, device_name, DeviceSpec};
pub use error::{GruError, Result};
pub use finite::first_non_finite;
pub use gru::Gru;
pub use layer::Kernel;
pub use packing::{lengths_from_tensor, pad_sequences};
pub use params::{ParamNames, ParamShapes};
pub use quantized::{QuantizedGruWeights, QuantizedLinear, WeightScheme};
pub use stream::GruState;

/// The CUDA kernel source and its launch plans (public for the host-C++ harness test and
/// `scripts/nvrtc_check.py`'s callers; available without the `cuda` feature).
pub use cuda::source as kernel_source;
