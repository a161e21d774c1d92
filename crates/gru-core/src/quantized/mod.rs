//! Dynamically quantized GRUs (`torch.ao.quantization.quantize_dynamic`), computed as PyTorch
//! computes them on an x86 CPU (the `fbgemm`/`x86` engine): each linear quantizes its f32 input
//! per call (`dynamic`), multiplies in integers, and turns the sum back into f32 in fbgemm's
//! order; the gates run in f32. The fp16 kind multiplies f32 inputs by f16 weights in f32.
//!
//! - [`weights`]: the packed weights, checked.
//! - [`input`]: a call's input quantized as fbgemm quantizes it.
//! - [`int8`], [`fp16`]: the packed products (AVX2 kernels, aarch64 `sdot` tiles for int8,
//!   portable loops elsewhere).
//! - [`dynamic`]: a linear's packed weights of either kind, and its input's quantization.
//! - [`forward`]: the recurrence over layers, directions and variable lengths.
//! - [`team`]: one direction's steps, its units split across threads; [`gates`]: a row's gates.

pub(crate) mod dynamic;
mod features;
pub(crate) mod forward;
mod fp16;
mod gates;
mod input;
mod int8;
mod team;
#[cfg(test)]
mod test_rng;
mod weights;

pub use weights::{QuantizedGruWeights, QuantizedLinear, WeightScheme};
