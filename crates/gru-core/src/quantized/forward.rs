//! The recurrence of a dynamically quantized GRU, as `torch.quantized_gru` runs it on a CPU:
//! per layer and direction the input projection of the whole sequence in one linear call (one
//! input quantization over every valid step: PyTorch's `pre_compute_input`), then per step
//! `W_hh h` over the sequences still running (one quantization over their states), and the
//! gates of `GRUCell`: r = σ(gh_r + gi_r), z = σ(gh_z + gi_z), n = tanh(gi_n + gh_n r),
//! h' = (h - n) z + n, in f32 (both biases are inside the linears' outputs). Each direction's
//! steps run in `team` (its units split across threads when the call's work is large enough);
//! both directions of a layer at once when there are threads for both.

use super::dynamic::Linear;
use super::input::{quantize_row, InputQuant};
use super::team::{self, LayerOut, Linears, QuantizedRows};
use super::weights::QuantizedGruWeights;
use crate::cpu::team::SharedMut;
use crate::packing::LengthPlan;

/// The linears of every layer and direction, packed once when the model is built.
#[derive(Debug, Clone)]
pub(crate) struct Prepared {
    layers: Vec<Vec<(Linear, Linear)>>,
    reduce_range: bool,
    hidden: usize,
}

impl Prepared {
    pub fn new(w: &QuantizedGruWeights, hidden: usize) -> Self {
        Self {
            layers: w
                .layers
                .iter()
                .map(|dirs| {
                    dirs.iter()
                        .map(|(ih, hh)| (Linear::new(ih), Linear::new(hh)))
                        .collect()
                })
                .collect(),
            reduce_range: w.reduce_range,
            hidden,
        }
    }

    /// `x` `(T, B, I)` time-major, `h0` `(L * D, B, H)` (zeros when `None`). Returns `output`
    /// `(T, B, D * H)` (zero past each length) and `h_n` `(L * D, B, H)`.
    pub fn forward(
        &self,
        x: &[f32],
        (t_len, batch): (usize, usize),
        h0: Option<&[f32]>,
        plan: &LengthPlan,
    ) -> (Vec<f32>, Vec<f32>) {
        let hidden = self.hidden;
        let n_dirs = self.layers.first().map_or(1, Vec::len);
        let bh = batch * hidden;
        let mut h_n = vec![0.0f32; self.layers.len() * n_dirs * bh];
        // The output of the layer below (the model's input for the first).
        let mut below: Vec<f32> = Vec::new();
        let width = n_dirs * hidden;
        // Rows in PyTorch's packed order: time-major, and within a step the running sequences
        // longest first (`plan.perm[..plan.active[t]]`). The int8 products do not depend on a
        // row's position; the fp16 ones do (fbgemm's kernel for a row depends on it).
        let order = |t: usize| &plan.perm[..plan.active[t]];
        // xs[starts[t]..starts[t + 1]]: the rows of step t.
        let mut starts = Vec::with_capacity(t_len + 1);
        starts.push(0);
        for t in 0..t_len {
            starts.push(starts[t] + plan.active[t]);
        }
        for (k, dirs) in self.layers.iter().enumerate() {
            let input: &[f32] = if k == 0 { x } else { &below };
            let in_k = input.len() / (t_len * batch).max(1);
            let xs: Vec<&[f32]> = (0..t_len)
                .flat_map(|t| order(t).iter().map(move |&b| (t, b)))
                .map(|(t, b)| &input[(t * batch + b) * in_k..][..in_k])
                .collect();
            // One input quantization for both directions (PyTorch quantizes the same input
            // twice, to the same parameters); the fp16 kind has none.
            let q_in = match dirs.first() {
                Some((ih, _)) if !ih.is_fp16() => Linear::input_quant(&xs, self.reduce_range),
                _ => InputQuant::UNUSED,
            };
            // The int8 kind's input quantized once for both directions.
            let threads = crate::cpu::cpu_threads();
            let per_dir = if n_dirs == 2 { threads / 2 } else { threads }.max(1);
            let quantized = match dirs.first() {
                Some((Linear::Int8(ih), _)) => Some(quantize_rows(&xs, ih.k_padded(), q_in)),
                _ => None,
            };
            let mut out = vec![0.0f32; t_len * batch * width];
            let out_ptr = SharedMut(out.as_mut_ptr());
            // Each direction writes its part of `out` and returns its last state.
            let run = |d: usize| -> Vec<f32> {
                let lin = match (&dirs[d], &quantized) {
                    ((Linear::Int8(ih), Linear::Int8(hh)), Some((qa, sums))) => Linears::Int8 {
                        ih,
                        hh,
                        x: QuantizedRows { qa, sums, q: q_in },
                        reduce_range: self.reduce_range,
                    },
                    ((Linear::Float16(ih), Linear::Float16(hh)), _) => {
                        Linears::Float16 { ih, hh, x: &xs }
                    }
                    _ => unreachable!("one kind per model (QuantizedGruWeights checks it)"),
                };
                let dir = team::Direction {
                    lin,
                    starts: &starts,
                    hidden,
                    reverse: d == 1,
                };
                let h0 = h0.map(|h0| &h0[(k * n_dirs + d) * bh..][..bh]);
                let members = team::members(hidden, batch, t_len, per_dir);
                let out = LayerOut {
                    ptr: out_ptr,
                    width,
                    offset: d * hidden,
                };
                dir.run(h0, (t_len, batch), plan, members, out)
            };
            let results = if n_dirs == 2 && threads > 1 {
                let (f, b) = rayon::join(|| run(0), || run(1));
                vec![f, b]
            } else {
                (0..n_dirs).map(run).collect()
            };
            for (d, h) in results.into_iter().enumerate() {
                let slot = k * n_dirs + d;
                h_n[slot * bh..(slot + 1) * bh].copy_from_slice(&h);
            }
            below = out;
        }
        (below, h_n)
    }
}

/// Quantizes every row of `xs` as `q` (in `kp`-byte rows, zero past each row's length), and
/// returns them with their sums; rows split across the CPU's threads.
fn quantize_rows(xs: &[&[f32]], kp: usize, q: InputQuant) -> (Vec<u8>, Vec<i32>) {
    use rayon::prelude::*;
    const ROWS_PER_TASK: usize = 256;
    let inv = 1.0 / q.scale;
    let mut qa = vec![0u8; xs.len() * kp];
    let mut sums = vec![0i32; xs.len()];
    type Part<'a, 'b> = ((&'a [&'b [f32]], &'a mut [u8]), &'a mut [i32]);
    let run = |((xs, qa), sums): Part<'_, '_>| {
        for ((x, dst), sum) in xs.iter().zip(qa.chunks_mut(kp)).zip(sums) {
            *sum = quantize_row(x, inv, q.zero_point, dst);
        }
    };
    const N: usize = ROWS_PER_TASK;
    if xs.len() > N && crate::cpu::cpu_threads() > 1 {
        xs.par_chunks(N)
            .zip(qa.par_chunks_mut(N * kp))
            .zip(sums.par_chunks_mut(N))
            .for_each(run);
    } else {
        xs.chunks(N)
            .zip(qa.chunks_mut(N * kp))
            .zip(sums.chunks_mut(N))
            .for_each(run);
    }
    (qa, sums)
}
