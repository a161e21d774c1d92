//! The shipped bidirectional GRU classifier (models/classifier): packed variable-length batch ->
//! [h_n forward; h_n reverse] of the last layer -> Linear -> class.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_gru::weights::ModuleKind;
use candle_gru::{Gru, WeightFile};

pub struct Classifier {
    gru: Gru,
    head: candle_nn::Linear,
}

impl Classifier {
    pub fn load(path: &Path) -> Result<Self> {
        let file = WeightFile::open(path)?;
        // The whole model through one VarBuilder; the sizes come from the file.
        let vb = file.var_builder(DType::F32, &Device::Cpu);
        let config = file.select(ModuleKind::Gru, Some("gru"))?.config;
        let gru = Gru::new(config, vb.pp("gru"))?;
        let head_shape = &file.info("head.weight").context("head.weight")?.shape;
        let head = candle_nn::linear(head_shape[1], head_shape[0], vb.pp("head"))?;
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
