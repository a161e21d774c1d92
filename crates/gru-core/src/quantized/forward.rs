//! The recurrence of a dynamically quantized GRU, as `torch.quantized_gru` runs it on a CPU:
//! per layer and direction the input projection of the whole sequence in one linear call (one
//! input quantization over every valid step: PyTorch's `pre_compute_input`), then per step
//! `W_hh h` over the sequences still running (one quantization over their states), and the
//! gates of `GRUCell` in its order of f32 operations.

use super::dynamic::{choose_qparams, linear, min_max};
use super::weights::QuantizedGruWeights;
use crate::activation::Real;
use crate::packing::LengthPlan;

/// `x` `(T, B, I)` time-major, `h0` `(L * D, B, H)` (zeros when `None`). Returns `output`
/// `(T, B, D * H)` (zero past each length) and `h_n` `(L * D, B, H)`.
pub(crate) fn forward(
    w: &QuantizedGruWeights,
    hidden: usize,
    x: &[f32],
    (t_len, batch): (usize, usize),
    h0: Option<&[f32]>,
    plan: &LengthPlan,
) -> (Vec<f32>, Vec<f32>) {
    let n_dirs = w.layers.first().map_or(1, Vec::len);
    let bh = batch * hidden;
    let mut h_n = vec![0.0f32; w.layers.len() * n_dirs * bh];
    let mut input: Vec<f32> = x.to_vec();
    let valid = |t: usize, b: usize| plan.lengths[b] > t;
    for (k, dirs) in w.layers.iter().enumerate() {
        let in_k = input.len() / (t_len * batch).max(1);
        let row = |t: usize, b: usize| &input[(t * batch + b) * in_k..(t * batch + b + 1) * in_k];
        let rows: Vec<(usize, usize)> = (0..t_len)
            .flat_map(|t| (0..batch).map(move |b| (t, b)))
            .filter(|&(t, b)| valid(t, b))
            .collect();
        let (lo, hi) = min_max(rows.iter().map(|&(t, b)| row(t, b)));
        let q_in = choose_qparams(lo, hi, w.reduce_range);
        let width = n_dirs * hidden;
        let mut out = vec![0.0f32; t_len * batch * width];
        for (d, (ih, hh)) in dirs.iter().enumerate() {
            let g = 3 * hidden;
            // Input projections of every valid (t, b), in one call.
            let mut gi = vec![0.0f32; t_len * batch * g];
            {
                let xs: Vec<&[f32]> = rows.iter().map(|&(t, b)| row(t, b)).collect();
                let mut ys: Vec<&mut [f32]> = gi
                    .chunks_mut(g)
                    .enumerate()
                    .filter(|(i, _)| valid(i / batch, i % batch))
                    .map(|(_, c)| c)
                    .collect();
                linear(ih, &xs, q_in, &mut ys);
            }
            let slot = k * n_dirs + d;
            let mut h: Vec<f32> = match h0 {
                Some(h0) => h0[slot * bh..(slot + 1) * bh].to_vec(),
                None => vec![0.0; bh],
            };
            let mut gh = vec![0.0f32; batch * g];
            for s in 0..t_len {
                let t = if d == 1 { t_len - 1 - s } else { s };
                let active: Vec<usize> = (0..batch).filter(|&b| valid(t, b)).collect();
                if active.is_empty() {
                    continue;
                }
                let (lo, hi) = min_max(active.iter().map(|&b| &h[b * hidden..(b + 1) * hidden]));
                let q_h = choose_qparams(lo, hi, w.reduce_range);
                {
                    let hs: Vec<&[f32]> = active
                        .iter()
                        .map(|&b| &h[b * hidden..(b + 1) * hidden])
                        .collect();
                    let mut ys: Vec<&mut [f32]> = gh
                        .chunks_mut(g)
                        .enumerate()
                        .filter(|(b, _)| valid(t, *b))
                        .map(|(_, c)| c)
                        .collect();
                    linear(hh, &hs, q_h, &mut ys);
                }
                for &b in &active {
                    let gi_b = &gi[(t * batch + b) * g..(t * batch + b + 1) * g];
                    let gh_b = &gh[b * g..(b + 1) * g];
                    let hb = &mut h[b * hidden..(b + 1) * hidden];
                    let o = &mut out[(t * batch + b) * width + d * hidden..][..hidden];
                    for j in 0..hidden {
                        // GRUCell: hgates.add_(igates).sigmoid_() for r and z, then
                        // tanh(i_n + h_n * r), then (h - n) * z + n.
                        let r = (gh_b[j] + gi_b[j]).sigmoid::<false>();
                        let z = (gh_b[hidden + j] + gi_b[hidden + j]).sigmoid::<false>();
                        let n =
                            Real::tanh::<false>(gi_b[2 * hidden + j] + gh_b[2 * hidden + j] * r);
                        let hj = (hb[j] - n) * z + n;
                        hb[j] = hj;
                        o[j] = hj;
                    }
                }
            }
            h_n[slot * bh..(slot + 1) * bh].copy_from_slice(&h);
        }
        input = out;
    }
    (input, h_n)
}
