//! The shipped GRU classifier on its held-out set: accuracy, and agreement with PyTorch.
//!
//!     cargo run --release --example classify

#[path = "common/classifier.rs"]
mod classifier;

use candle_core::Device;
use candle_gru::{core::lengths_from_tensor, models_dir, WeightFile};

fn main() -> anyhow::Result<()> {
    let dir = models_dir().join("classifier");
    let model = classifier::Classifier::load(&dir.join("classifier.safetensors"))?;
    let data = WeightFile::open(dir.join("heldout.safetensors"))?;
    let x = data.load("input", &Device::Cpu)?;
    let lengths = lengths_from_tensor(&data.load("lengths", &Device::Cpu)?)?;
    let ours = model.logits(&x, &lengths)?.argmax(1)?.to_vec1::<u32>()?;
    let torch = data.load("predictions", &Device::Cpu)?.to_vec1::<i64>()?;
    let labels = data.load("labels", &Device::Cpu)?.to_vec1::<i64>()?;
    let agree = ours
        .iter()
        .zip(&torch)
        .filter(|(a, b)| **a as i64 == **b)
        .count();
    let correct = ours
        .iter()
        .zip(&labels)
        .filter(|(a, b)| **a as i64 == **b)
        .count();
    println!(
        "{} held-out sequences: accuracy {:.3}, same prediction as PyTorch for {agree}",
        ours.len(),
        correct as f64 / ours.len() as f64
    );
    Ok(())
}
