use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_gru::core::pad_sequences;
use candle_gru::weights::ModuleKind;
use candle_gru::{Gru, WeightFile};

/// Embedding -> 2-layer bidirectional batch-first GRU -> Linear, as trained in PyTorch.
pub struct Classifier {
    embed: candle_nn::Embedding,
    rnn: Gru,
    head: candle_nn::Linear,
}

impl Classifier {
    /// Loads `torch.save({"model": model.state_dict(), "epoch": 1}, path)` (any checkpoint
    /// `WeightFile` reads works the same); every size comes from the file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let file = WeightFile::open(path)?;
        // One VarBuilder over the whole file; `embed.weight` resolves to `model.embed.weight`.
        let vb = file.var_builder(DType::F32, device);
        let shape = |name: &str| -> Result<Vec<usize>> {
            Ok(file.info(name).context(name.to_string())?.shape.clone())
        };
        let e = shape("embed.weight")?;
        let embed = candle_nn::embedding(e[0], e[1], vb.pp("embed"))?;
        // input_size, hidden_size, num_layers, bias, bidirectional: inferred from the weights.
        let config = file.select(ModuleKind::Gru, Some("rnn"))?.config;
        // batch_first is not stored in a state_dict: say it, as in nn.GRU(batch_first=True).
        let rnn = Gru::new(config, vb.pp("rnn"))?.with_batch_first(true);
        let h = shape("head.weight")?;
        let head = candle_nn::linear(h[1], h[0], vb.pp("head"))?;
        Ok(Self { embed, rnn, head })
    }

    /// Token ids of any lengths -> logits `(B, classes)`.
    pub fn logits(&self, sequences: &[Vec<u32>], device: &Device) -> Result<Tensor> {
        let seqs = sequences
            .iter()
            .map(|s| Tensor::new(s.as_slice(), device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        // pad_sequence(seqs, batch_first=True), plus the lengths.
        let (ids, lengths) = pad_sequences(&seqs, true, 0.0)?;
        let x = self.embed.forward(&ids)?; // (B, T, E)
                                           // pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False) -> GRU.
        let (_, h_n) = self.rnn.forward_with_lengths(&x, &lengths, None)?;
        // h_n is (num_layers * 2, B, H): torch.cat([h_n[-2], h_n[-1]], dim=1) is the last
        // layer's forward and reverse final states.
        let n = h_n.dim(0)?;
        let last = Tensor::cat(&[h_n.get(n - 2)?, h_n.get(n - 1)?], 1)?;
        Ok(self.head.forward(&last)?)
    }
}

/// The batch `scripts/make_walkthrough_model.py` ran PyTorch on.
pub const SEQUENCES: [&[u32]; 4] = [
    &[4, 1, 1, 7, 2, 9],
    &[3, 3, 12],
    &[2, 5, 2, 2, 8, 1, 2, 6, 11],
    &[1],
];
