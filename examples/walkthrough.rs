//! The README's walkthrough: a whole PyTorch model (Embedding -> bidirectional GRU -> Linear),
//! saved as `torch.save({"model": model.state_dict(), "epoch": 1}, "model.pt")`, run on a ragged
//! batch of token ids. `cargo run --release --example walkthrough` prints the logits, which equal
//! PyTorch's (`tests/models.rs` checks them against models/walkthrough/expected.safetensors).

#[path = "common/walkthrough.rs"]
mod walkthrough;

use candle_core::Device;

fn main() -> anyhow::Result<()> {
    let device = Device::Cpu;
    let path = candle_gru::models_dir().join("walkthrough/model.pt");
    let model = walkthrough::Classifier::load(&path, &device)?;
    let batch: Vec<Vec<u32>> = walkthrough::SEQUENCES.iter().map(|s| s.to_vec()).collect();
    let logits = model.logits(&batch, &device)?;
    println!("logits:\n{logits}");
    println!("classes: {:?}", logits.argmax(1)?.to_vec1::<u32>()?);
    Ok(())
}
