//! Streaming: feed a unidirectional GRU a sequence in chunks of any sizes and get the same output
//! and `h_n` as one call over the whole sequence (real-time audio, sensors).

use candle_core::Tensor;

use crate::cell::GruCell;
use crate::error::{GruError, Result};
use crate::gru::Gru;

/// The hidden state carried between chunks: `(L, B, H)`, or `(L, H)` for unbatched chunks, of a
/// [`Gru`] (`forward_chunk`); `(B, H)` or `(H)` of a [`GruCell`] (`forward_state`). It
/// remembers the batch size of the chunks it was fed, and refuses a chunk of another one (the usual sign of a forgotten `with_batch_first(true)`).
#[derive(Debug, Clone, Default)]
pub struct GruState {
    h: Option<Tensor>,
    /// The batch size of the chunks fed so far (`Some(None)` for unbatched chunks). (The state
    /// itself is `(L, B, H)` in either layout: it may pass between GRUs of different layouts.)
    seen: Option<Option<usize>>,
}

impl GruState {
    /// A fresh state: the first chunk starts from zeros, as `forward(x, None)` does.
    pub fn new() -> Self {
        Self::default()
    }

    /// A state that starts from `h0` (same shape rules as `Gru::forward`'s `h0`).
    pub fn with_h0(h0: Tensor) -> Self {
        Self {
            h: Some(h0),
            seen: None,
        }
    }

    /// The state after the last chunk (`h_n` of everything fed so far); `None` before any chunk.
    pub fn h(&self) -> Option<&Tensor> {
        self.h.as_ref()
    }

    /// Refuses an input of `dims` whose batch size (`None`: unbatched) is not the one the state
    /// carries. `(arg, unit, unbatched)` name the argument and say how to show a batch size.
    fn check_batch(
        &self,
        (arg, unit, unbatched): (&str, &str, &str),
        dims: &[usize],
        batch: Option<usize>,
        hint: &str,
    ) -> Result<()> {
        match self.seen {
            Some(seen) if seen != batch => {
                let show = |b: Option<usize>| b.map_or(unbatched.into(), |b| format!("{b} {unit}"));
                let hint = if hint.is_empty() {
                    String::new()
                } else {
                    format!(": {hint}")
                };
                Err(GruError::arg(
                    arg,
                    format!(
                        "shape {dims:?} holds {}, the carried state {}{hint}",
                        show(batch),
                        show(seen)
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// Forgets the state: the next chunk starts a new sequence.
    pub fn reset(&mut self) {
        self.h = None;
        self.seen = None;
    }
}

impl Gru {
    /// Runs one chunk (`(T_chunk, B, I)`, batch-first or unbatched as configured) continuing
    /// from `state`, updates the state, and returns the chunk's output. Only unidirectional
    /// GRUs can stream: a reverse direction needs the whole sequence. A dynamically quantized
    /// GRU quantizes each call's input over that call: chunks give what PyTorch's quantized
    /// GRU gives for the same chunks, not one call's numbers over the whole sequence.
    pub fn forward_chunk(&self, chunk: &Tensor, state: &mut GruState) -> Result<Tensor> {
        if self.config().bidirectional {
            return Err(GruError::arg(
                "chunk",
                "a bidirectional GRU cannot stream: its reverse direction needs the whole sequence",
            ));
        }
        let batch_first = self.config().batch_first;
        // The batch size as this GRU reads the chunk (`None`: unbatched, `(T, I)`).
        let batch = match *chunk.dims() {
            [a, b, _] => Some(if batch_first { a } else { b }),
            _ => None,
        };
        let hint = if batch_first {
            "the chunks are read as (B, T, I) (`batch_first`)"
        } else {
            "the chunks are read as (T, B, I); if yours are (B, T, I), build the GRU with \
             `.with_batch_first(true)`"
        };
        state.check_batch(
            ("chunk", "streams", "an unbatched chunk"),
            chunk.dims(),
            batch,
            hint,
        )?;
        let (output, h_n) = self.forward(chunk, state.h.as_ref())?;
        state.h = Some(h_n);
        state.seen = Some(batch);
        Ok(output)
    }
}

impl GruCell {
    /// One step continuing from `state`, as `Gru::forward_chunk` continues a GRU: `input` `(B, I)`
    /// or `(I)`; the state holds `h` (zeros before the first step; `GruState::with_h0` to start
    /// elsewhere). Returns `h'`, which the state now holds.
    pub fn forward_state(&self, input: &Tensor, state: &mut GruState) -> Result<Tensor> {
        let batch = match *input.dims() {
            [b, _] => Some(b),
            _ => None,
        };
        state.check_batch(
            ("input", "rows", "an unbatched input"),
            input.dims(),
            batch,
            "",
        )?;
        let h = self.forward(input, state.h.as_ref())?;
        state.h = Some(h.clone());
        state.seen = Some(batch);
        Ok(h)
    }
}
