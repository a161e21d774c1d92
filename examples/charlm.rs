//! Greedy text from the shipped character-level GRU language model, as PyTorch generates it.
//!
//!     cargo run --release --example charlm -- [PROMPT]

#[path = "common/charlm.rs"]
mod charlm;

fn main() -> anyhow::Result<()> {
    let lm = charlm::CharLm::load(&candle_gru::models_dir().join("charlm/charlm.safetensors"))?;
    let prompt = std::env::args().nth(1).unwrap_or_else(|| lm.prompt.clone());
    let text = lm.generate(&prompt, lm.n_generate)?;
    println!("{prompt}{text}");
    Ok(())
}
