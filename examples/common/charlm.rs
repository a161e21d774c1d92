//! The shipped character-level language model (models/charlm): Embedding -> 2-layer GRU ->
//! Linear, generating greedily with a streaming GRU state. Shared by the `charlm` example and
//! the tests.

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::{DType, Device, IndexOp, Module, Tensor};
use candle_gru::{Gru, GruState, WeightFile};

pub struct CharLm {
    embed: candle_nn::Embedding,
    gru: Gru,
    head: candle_nn::Linear,
    vocab: Vec<char>,
    pub prompt: String,
    pub n_generate: usize,
}

impl CharLm {
    pub fn load(path: &Path) -> Result<Self> {
        let file = WeightFile::open(path)?;
        let meta = file.metadata();
        let vocab: Vec<char> = meta
            .get("vocab")
            .context("metadata `vocab`")?
            .chars()
            .collect();
        let dev = Device::Cpu;
        // The whole model through one VarBuilder; every size comes from the file.
        let vb = file.var_builder(DType::F32, &dev);
        let shape = |name: &str| -> Result<Vec<usize>> {
            Ok(file.info(name).context(name.to_string())?.shape.clone())
        };
        let (vocab_size, embed_dim) = match shape("embed.weight")?[..] {
            [v, e] => (v, e),
            ref s => anyhow::bail!("`embed.weight`: expected 2 dims, found {s:?}"),
        };
        let embed = candle_nn::embedding(vocab_size, embed_dim, vb.pp("embed"))?;
        let rnn = file.select(candle_gru::weights::ModuleKind::Gru, Some("rnn"))?;
        let gru = Gru::new(rnn.config, vb.pp("rnn"))?;
        let head_shape = shape("head.weight")?;
        let head = candle_nn::linear(head_shape[1], head_shape[0], vb.pp("head"))?;
        Ok(Self {
            embed,
            gru,
            head,
            vocab,
            prompt: meta.get("prompt").cloned().unwrap_or_default(),
            n_generate: meta
                .get("n_generate")
                .and_then(|s| s.parse().ok())
                .unwrap_or(200),
        })
    }

    fn next_id(&self, ids: &[u32], state: &mut GruState) -> Result<u32> {
        let ids = Tensor::new(ids, &Device::Cpu)?;
        let x = self.embed.forward(&ids)?.unsqueeze(1)?; // (T, 1, 16)
        let out = self.gru.forward_chunk(&x, state)?; // (T, 1, 64)
        let last = out.i((out.dim(0)? - 1, 0))?;
        let logits = self.head.forward(&last.unsqueeze(0)?)?.squeeze(0)?;
        Ok(logits.argmax(0)?.to_scalar::<u32>()?)
    }

    /// Feeds `prompt`, then `n` greedy steps, one character at a time through the same state.
    pub fn generate(&self, prompt: &str, n: usize) -> Result<String> {
        let ids: Vec<u32> = prompt
            .chars()
            .map(|c| {
                self.vocab
                    .iter()
                    .position(|&v| v == c)
                    .map(|i| i as u32)
                    .with_context(|| format!("character {c:?} is not in the vocabulary"))
            })
            .collect::<Result<_>>()?;
        let mut state = GruState::new();
        let mut id = self.next_id(&ids, &mut state)?;
        let mut text = String::new();
        for _ in 0..n {
            text.push(self.vocab[id as usize]);
            id = self.next_id(&[id], &mut state)?;
        }
        Ok(text)
    }
}
