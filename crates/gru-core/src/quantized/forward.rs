//! The recurrence of a dynamically quantized GRU, as `torch.quantized_gru` runs it on a CPU:
//! per layer and direction the input projection of the whole sequence in one linear call (one
//! input quantization over every valid step: PyTorch's `pre_compute_input`), then per step
//! `W_hh h` over the sequences still running (one quantization over their states), and the
//! gates of `GRUCell`: r = σ(gh_r + gi_r), z = σ(gh_z + gi_z), n = tanh(gi_n + gh_n r),
//! h' = (h - n) z + n, in f32 (both biases are inside the linears' outputs).

use rayon::prelude::*;

use super::dynamic::Linear;
use super::gates::gates;
use super::input::{quantize_row, InputQuant};
use super::team::{self, LayerOut, QuantizedRows};
use super::weights::QuantizedGruWeights;
use crate::cpu::team::SharedMut;
use crate::packing::LengthPlan;

/// Floats of input projections (32 MB) up to which a whole sequence's are computed in one call
/// (one parallel GEMM); past it, in blocks of about `GI_BLOCK` just ahead of the steps that
/// read them, so that they never leave the cache. On a Zen 3 (2 threads) the large grid config
/// (78 MB of them) ran ~10% faster blocked, the long one (24 MB) ~30% slower.
const GI_WHOLE: usize = 8 << 20;
const GI_BLOCK: usize = 1 << 17;

/// Gate values of one step from which their rows are split across the CPU's threads.
const PAR_GATES: usize = 1 << 14;

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

    /// Whether the steps fork and join the thread pool (the fp16 kind's products split by
    /// columns per step); the int8 kind's steps run in teams of their own threads.
    pub fn steps_use_pool(&self) -> bool {
        self.layers.iter().flatten().any(|(ih, _)| ih.is_fp16())
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
            // The int8 kind: the layer's input quantized once, each direction's steps run by a
            // team of threads (or one), both directions at once when there are threads for both.
            let threads = crate::cpu::cpu_threads();
            let per_dir = if n_dirs == 2 { threads / 2 } else { threads }.max(1);
            let quantized = match dirs.first() {
                Some((Linear::Int8(ih), _)) => Some(quantize_rows(&xs, ih.k_padded(), q_in)),
                _ => None,
            };
            let mut out = vec![0.0f32; t_len * batch * width];
            let out_ptr = SharedMut(out.as_mut_ptr());
            // Each direction's output, unless written into `out` already, and last state.
            let run = |d: usize| -> (Option<Vec<f32>>, Vec<f32>) {
                let (ih, hh) = &dirs[d];
                let h0 = h0.map(|h0| &h0[(k * n_dirs + d) * bh..][..bh]);
                if let (Linear::Int8(ih), Linear::Int8(hh), Some((qa, sums))) = (ih, hh, &quantized)
                {
                    let rows = QuantizedRows {
                        qa,
                        sums,
                        starts: &starts,
                        q: q_in,
                    };
                    let dir = team::Direction {
                        ih,
                        hh,
                        hidden,
                        reduce_range: self.reduce_range,
                        reverse: d == 1,
                    };
                    let members = team::members(hidden, batch, t_len, per_dir);
                    let out = LayerOut {
                        ptr: out_ptr,
                        width,
                        offset: d * hidden,
                    };
                    return (None, dir.run(&rows, h0, (t_len, batch), plan, members, out));
                }
                let input = Input {
                    xs: &xs,
                    starts: &starts,
                    q: q_in,
                };
                let (o, h) = self.direction(ih, hh, &input, h0, (t_len, batch), d == 1, plan);
                (Some(o), h)
            };
            let results = if n_dirs == 2 && threads > 1 {
                let (f, b) = rayon::join(|| run(0), || run(1));
                vec![f, b]
            } else {
                (0..n_dirs).map(run).collect()
            };
            // Directions side by side in each row of the layer's output, as PyTorch lays them.
            for (d, (o, h)) in results.into_iter().enumerate() {
                if let Some(o) = o {
                    for (dst, src) in out.chunks_mut(width).zip(o.chunks(hidden)) {
                        dst[d * hidden..(d + 1) * hidden].copy_from_slice(src);
                    }
                }
                let slot = k * n_dirs + d;
                h_n[slot * bh..(slot + 1) * bh].copy_from_slice(&h);
            }
            below = out;
        }
        (below, h_n)
    }
}

impl Prepared {
    /// One direction of one layer over the valid rows of `input` (in packed order): its output
    /// `(T, B, H)` (zero past each length) and last state `(B, H)`.
    #[allow(clippy::too_many_arguments)]
    fn direction(
        &self,
        ih: &Linear,
        hh: &Linear,
        input: &Input<'_>,
        h0: Option<&[f32]>,
        (t_len, batch): (usize, usize),
        reverse: bool,
        plan: &LengthPlan,
    ) -> (Vec<f32>, Vec<f32>) {
        let hidden = self.hidden;
        let g = 3 * hidden;
        let valid = |t: usize, b: usize| plan.lengths[b] > t;
        let order = |t: usize| &plan.perm[..plan.active[t]];
        // The input projections of a block of steps just ahead of the steps that read them
        // (`tb` steps: the block stays in cache), quantized as PyTorch's one call over the
        // whole sequence quantizes them: with the parameters of all of it (`input.q`).
        // (The fp16 kind's sums depend on how many rows one call has: one block.)
        let tb = if ih.is_fp16() || t_len * batch * g <= GI_WHOLE {
            t_len.max(1)
        } else {
            (GI_BLOCK / (batch * g).max(1)).clamp(1, t_len.max(1))
        };
        let mut gi = vec![0.0f32; tb * batch * g];
        let mut h: Vec<f32> = match h0 {
            Some(h0) => h0.to_vec(),
            None => vec![0.0; batch * hidden],
        };
        let mut out = vec![0.0f32; t_len * batch * hidden];
        let mut gh = vec![0.0f32; batch * g];
        let mut h_new = vec![0.0f32; hidden];
        let zeros = vec![0.0f32; hidden];
        let threads = crate::cpu::cpu_threads();
        for s in 0..t_len {
            let t = if reverse { t_len - 1 - s } else { s };
            // The block holding step t: steps t0..t0 + tb, projected when first reached.
            let t0 = t / tb * tb;
            let first = if reverse {
                t + 1 == (t0 + tb).min(t_len)
            } else {
                t == t0
            };
            if first {
                let t1 = (t0 + tb).min(t_len);
                let mut ys = rows_in_order(&mut gi, g, batch, t0..t1, &order);
                let xs = &input.xs[input.starts[t0]..input.starts[t1]];
                ih.run_with(xs, input.q, &mut ys);
            }
            let active = order(t);
            if active.is_empty() {
                continue;
            }
            {
                let hs: Vec<&[f32]> = active
                    .iter()
                    .map(|&b| &h[b * hidden..(b + 1) * hidden])
                    .collect();
                let mut ys = rows_in_order(&mut gh, g, batch, t..t + 1, &|_| active);
                hh.run(&hs, self.reduce_range, &mut ys);
            }
            let gi_t = &gi[(t - t0) * batch * g..(t - t0 + 1) * batch * g];
            let out_t = &mut out[t * batch * hidden..(t + 1) * batch * hidden];
            // The gates of rows `c * per..`, each row's state updated in place.
            let rows = |c: usize, per: usize, hc: &mut [f32], oc: &mut [f32], h_new: &mut [f32]| {
                for (r, (hr, or)) in hc.chunks_mut(hidden).zip(oc.chunks_mut(hidden)).enumerate() {
                    let b = c * per + r;
                    if valid(t, b) {
                        gates(
                            &gi_t[b * g..][..g],
                            &gh[b * g..][..g],
                            hidden,
                            0..hidden,
                            &zeros,
                            hr,
                            h_new,
                            or,
                        );
                        hr.copy_from_slice(h_new);
                    }
                }
            };
            if threads > 1 && active.len() * hidden >= PAR_GATES {
                let per = batch.div_ceil(threads);
                h.par_chunks_mut(per * hidden)
                    .zip(out_t.par_chunks_mut(per * hidden))
                    .enumerate()
                    .for_each(|(c, (hc, oc))| rows(c, per, hc, oc, &mut vec![0.0; hidden]));
            } else {
                rows(0, batch, &mut h, out_t, &mut h_new);
            }
        }
        (out, h)
    }
}

/// A layer's input: its valid rows in packed order, where each step's start
/// (`xs[starts[t]..starts[t + 1]]`), and their quantization.
struct Input<'a> {
    xs: &'a [&'a [f32]],
    starts: &'a [usize],
    q: InputQuant,
}

/// The rows of `buf` (`(steps.len() * batch, width)`, row `(t - steps.start) * batch + b`)
/// of the sequences `order(t)` runs at each step, in that order.
fn rows_in_order<'a, 'o>(
    buf: &'a mut [f32],
    width: usize,
    batch: usize,
    steps: std::ops::Range<usize>,
    order: &dyn Fn(usize) -> &'o [usize],
) -> Vec<&'a mut [f32]> {
    let t0 = steps.start;
    let mut slots: Vec<Option<&mut [f32]>> = buf
        .chunks_mut(width)
        .take(steps.len() * batch)
        .map(Some)
        .collect();
    let mut rows = Vec::new();
    for t in steps {
        for &b in order(t) {
            if let Some(r) = slots[(t - t0) * batch + b].take() {
                rows.push(r);
            }
        }
    }
    rows
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
