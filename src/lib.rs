//! candle-gru: PyTorch-trained GRUs on candle, with PyTorch's numbers.
//!
//! A whole model trained in PyTorch (Embedding -> 2-layer bidirectional batch-first GRU -> Linear),
//! saved with `torch.save({"model": model.state_dict(), "epoch": 1}, "model.pt")`, run on a
//! ragged batch of token ids, as PyTorch's `pack_padded_sequence` would:
//!
//! ```
//! use candle_gru::candle_core::{DType, Device, Module, Tensor};
//! use candle_gru::weights::ModuleKind;
//! use candle_gru::{core::pad_sequences, Gru, WeightFile};
//!
//! # fn main() -> anyhow::Result<()> {
//! let dev = Device::Cpu;
//! // Any checkpoint: safetensors, torch.save (zip or legacy), a whole pickled model, TorchScript.
//! let file = WeightFile::open(candle_gru::models_dir().join("walkthrough/model.pt"))?;
//! let vb = file.var_builder(DType::F32, &dev); // `embed.weight` finds `model.embed.weight`
//! let shape = |n: &str| file.info(n).map(|t| t.shape.clone()).unwrap_or_default();
//! let (e, h) = (shape("embed.weight"), shape("head.weight"));
//! let embed = candle_gru::candle_nn::embedding(e[0], e[1], vb.pp("embed"))?;
//! let config = file.select(ModuleKind::Gru, Some("rnn"))?.config; // sizes from the file
//! let rnn = Gru::new(config, vb.pp("rnn"))?.with_batch_first(true); // not stored in a state_dict
//! let head = candle_gru::candle_nn::linear(h[1], h[0], vb.pp("head"))?;
//!
//! let seqs = [vec![4u32, 1, 1, 7, 2, 9], vec![3, 3, 12]];
//! let seqs: Vec<Tensor> = seqs.iter().map(|s| Tensor::new(s.as_slice(), &dev)).collect::<Result<_, _>>()?;
//! let (ids, lengths) = pad_sequences(&seqs, true, 0.0)?; // (B, T) and [6, 3]
//! let (_, h_n) = rnn.forward_with_lengths(&embed.forward(&ids)?, &lengths, None)?;
//! let n = h_n.dim(0)?; // torch.cat([h_n[-2], h_n[-1]], dim=1): last layer, both directions
//! let logits = head.forward(&Tensor::cat(&[h_n.get(n - 2)?, h_n.get(n - 1)?], 1)?)?;
//! assert_eq!(logits.argmax(1)?.to_vec1::<u32>()?, [0, 2]); // what PyTorch predicts
//! # Ok(())
//! # }
//! ```
//!
//! This facade re-exports the workspace's crates:
//! - [`core`] (`gru-core`): `Gru`, `GruCell`, streaming, `pad_sequences`, device selection;
//! - [`weights`] (`gru-weights`): loading PyTorch checkpoints of every kind, without Python;
//! - [`verify`] (`gru-verify`): parity against PyTorch reference cases;
//! - [`candle_core`] and [`candle_nn`]: the exact candle versions it is built on.

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
