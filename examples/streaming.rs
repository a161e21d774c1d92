//! The README's streaming walkthrough: a whole PyTorch model (Linear -> GRU -> GRUCell -> Linear)
//! fed its frames in chunks of 1, 4 and 7, the state carried between chunks; every chunking gives
//! PyTorch's output for the whole sequence at once (`tests/models.rs` checks it against
//! models/streaming/expected.safetensors).
//!
//!     cargo run --release --example streaming

#[path = "common/streaming.rs"]
mod streaming;

use candle_core::{Device, Tensor};
use candle_gru::WeightFile;

fn main() -> anyhow::Result<()> {
    let device = Device::Cpu;
    let dir = candle_gru::models_dir().join("streaming");
    let model = streaming::Streamer::load(&dir.join("model.pt"), &device)?;
    let expected = WeightFile::open(dir.join("expected.safetensors"))?;
    let frames = expected.load("frames", &device)?; // (B, T, features)
    let torch = expected.load("logits", &device)?; // PyTorch, the whole sequence at once
    for chunk in [1, 4, 7] {
        let mut state = streaming::StreamState::default();
        let mut outs = Vec::new();
        for t0 in (0..frames.dim(1)?).step_by(chunk) {
            let n = chunk.min(frames.dim(1)? - t0);
            outs.push(model.forward_chunk(&frames.narrow(1, t0, n)?, &mut state)?);
        }
        let ours = Tensor::cat(&outs, 1)?;
        let diff = (ours - &torch)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f32>()?;
        println!("chunks of {chunk}: max |ours - PyTorch| = {diff:.2e}");
    }
    Ok(())
}
