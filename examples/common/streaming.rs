use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Module, Tensor};
use candle_gru::core::GruState;
use candle_gru::weights::ModuleKind;
use candle_gru::{Gru, GruCell, WeightFile};

/// Linear -> 2-layer batch-first GRU -> GRUCell -> Linear, fed one chunk of frames at a time.
pub struct Streamer {
    inp: candle_nn::Linear,
    rnn: Gru,
    cell: GruCell,
    out: candle_nn::Linear,
}

/// What a stream carries from one chunk to the next: the GRU's state and the cell's.
#[derive(Default)]
pub struct StreamState {
    rnn: GruState,
    cell: GruState,
}

impl Streamer {
    /// Loads `torch.save(model.state_dict(), path)`; every size comes from the file.
    pub fn load(path: &Path, device: &Device) -> Result<Self> {
        let file = WeightFile::open(path)?;
        let vb = file.var_builder(DType::F32, device);
        let linear = |name: &str| -> Result<candle_nn::Linear> {
            let w = &file
                .info(&format!("{name}.weight"))
                .context(name.to_string())?
                .shape;
            Ok(candle_nn::linear(w[1], w[0], vb.pp(name))?)
        };
        let rnn = file.select(ModuleKind::Gru, Some("rnn"))?.config;
        let cell = file.select(ModuleKind::GruCell, Some("cell"))?.config;
        Ok(Self {
            inp: linear("inp")?,
            // batch_first is not stored in a state_dict: say it, as in nn.GRU(batch_first=True).
            rnn: Gru::new(rnn, vb.pp("rnn"))?.with_batch_first(true),
            cell: GruCell::from_config(cell, vb.pp("cell"))?,
            out: linear("out")?,
        })
    }

    /// The next `T` frames of every stream in the batch, `(B, T, features)`, -> their logits
    /// `(B, T, classes)`, continuing from `state` (fresh: the streams' first frames).
    pub fn forward_chunk(&self, frames: &Tensor, state: &mut StreamState) -> Result<Tensor> {
        let x = self.inp.forward(frames)?.tanh()?;
        let y = self.rnn.forward_chunk(&x, &mut state.rnn)?; // (B, T, H), state carried
        let mut logits = Vec::new();
        for t in 0..y.dim(1)? {
            // One step of the cell, its state carried the same way.
            let h = self
                .cell
                .forward_state(&y.get_on_dim(1, t)?, &mut state.cell)?;
            logits.push(self.out.forward(&h)?);
        }
        Ok(Tensor::stack(&logits, 1)?)
    }
}
