//! The shipped bidirectional GRU classifier (models/classifier): packed variable-length batch ->
//! [h_n forward; h_n reverse] of the last layer -> Linear -> class.

use std::path::Path;

use anyhow::Result;
use candle_core::{Device, Module, Tensor};
use candle_gru::{Gru, WeightFile};

pub struct Classifier {
    gru: Gru,
    head: candle_nn::Linear,
}

impl Classifier {
    pub fn load(path: &Path) -> Result<Self> {
        let file = WeightFile::open(path)?;
        let dev = Device::Cpu;
        let (gru, _) = file.gru(Some("gru"), None, &dev)?;
        let head = candle_nn::Linear::new(
            file.load("head.weight", &dev)?,
            Some(file.load("head.bias", &dev)?),
        );
        Ok(Self {
            gru: gru.with_batch_first(true),
            head,
        })
    }

    /// `x` `(B, T, 4)` padded, one length per row -> logits `(B, 3)`.
    pub fn logits(&self, x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let (_, h_n) = self.gru.forward_with_lengths(x, lengths, None)?;
        let layers = h_n.dim(0)?;
        let feats = Tensor::cat(&[h_n.get(layers - 2)?, h_n.get(layers - 1)?], 1)?;
        Ok(self.head.forward(&feats)?)
    }
}
