//! The CPU kernel (`Kernel::Auto`) against the candle-ops recurrence (`Kernel::CandleOps`:
//! candle's matmul and ops, an independent implementation) in f64, over shapes at every edge of
//! the kernel's blocking: hidden sizes around its 16-unit groups, inputs around its 256-deep
//! blocks of k, batches that split a direction by rows, by units or not at all, single steps,
//! variable lengths, both directions, stacks of layers over several blocks of steps. Both paths
//! are checked against PyTorch elsewhere (`models/reference/`); this sweep covers the shapes no
//! fixture can afford.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use gru_core::{Gru, GruConfig, Kernel};

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f64) -> Vec<f64> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor(shape: &[usize], seed: u64, scale: f64) -> Tensor {
    let n = shape.iter().product();
    Tensor::from_vec(values(n, seed, scale), shape, &Device::Cpu).unwrap()
}

fn random_gru(cfg: &GruConfig, seed: u64) -> Gru {
    let (h, dirs) = (cfg.hidden_size, if cfg.bidirectional { 2 } else { 1 });
    let scale = 1.0 / (h as f64).sqrt();
    let mut w = HashMap::new();
    for l in 0..cfg.num_layers {
        let input = if l == 0 { cfg.input_size } else { dirs * h };
        for sfx in ["", "_reverse"].into_iter().take(dirs) {
            let s = seed + 10 * l as u64 + sfx.len() as u64;
            w.insert(
                format!("weight_ih_l{l}{sfx}"),
                tensor(&[3 * h, input], s, scale),
            );
            w.insert(
                format!("weight_hh_l{l}{sfx}"),
                tensor(&[3 * h, h], s + 1, scale),
            );
            if cfg.bias {
                w.insert(format!("bias_ih_l{l}{sfx}"), tensor(&[3 * h], s + 2, scale));
                w.insert(format!("bias_hh_l{l}{sfx}"), tensor(&[3 * h], s + 3, scale));
            }
        }
    }
    Gru::new(*cfg, VarBuilder::from_tensors(w, DType::F64, &Device::Cpu)).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// `(input, hidden, layers, bidirectional, bias, T, B, variable lengths)`.
type Shape = (usize, usize, usize, bool, bool, usize, usize, bool);

const SHAPES: &[Shape] = &[
    (1, 1, 1, false, true, 1, 1, false),
    (7, 5, 2, true, true, 5, 3, true),
    (33, 16, 1, true, false, 20, 9, true),
    (300, 17, 2, false, true, 3, 2, false),
    (257, 40, 1, true, true, 20, 9, false),
    // Split by rows at 2+ threads (B * H * 3H >= 2^17, T >= 16, >= 4 rows each).
    (40, 264, 1, false, true, 18, 9, true),
    // Split by units (3 rows: too few to split by rows).
    (40, 264, 1, false, true, 17, 3, true),
    // Too few steps for a team: the projection is threaded by panels, k in 3 blocks.
    (513, 100, 1, false, true, 4, 8, false),
    // Unidirectional stacks, run layer over layer block by block: split by rows at 2-4 threads,
    // sequences (up to 114 steps) longer than one block of each member's rows (64 steps at 2
    // threads, 86 at 3; 4 blocks at 1 thread).
    (20, 72, 3, false, true, 120, 16, true),
    // ... not split, 2 blocks, no bias.
    (5, 24, 2, false, false, 70, 12, true),
    // ... split by units at 2+ threads: the layers run one after the other.
    (40, 264, 2, false, true, 17, 3, true),
    // Both directions split by units at 4 threads, every sequence shorter than T (11 and 18
    // of 32): the reverse direction starts on steps with no active sequence.
    (40, 256, 1, true, true, 32, 2, true),
];

/// Runs the sweep with the process's current thread count.
pub fn kernel_matches_candle_ops_on_every_shape() {
    for (i, &(input, hidden, layers, bi, bias, t, b, varlen)) in SHAPES.iter().enumerate() {
        let cfg = GruConfig::new(input, hidden)
            .with_num_layers(layers)
            .with_bidirectional(bi)
            .with_bias(bias);
        let gru = random_gru(&cfg, 100 * i as u64);
        let x = tensor(&[t, b, input], 7 + i as u64, 1.0);
        let dirs = if bi { 2 } else { 1 };
        let h0 = tensor(&[layers * dirs, b, hidden], 9 + i as u64, 0.5);
        let lengths: Vec<usize> = (0..b)
            .map(|j| if varlen { 1 + (j * 7 + i) % t } else { t })
            .collect();
        let run = |kernel| {
            gru.clone()
                .with_kernel(kernel)
                .forward_with_lengths(&x, &lengths, Some(&h0))
                .unwrap()
        };
        let (o_auto, h_auto) = run(Kernel::Auto);
        let (o_ops, h_ops) = run(Kernel::CandleOps);
        let (d_o, d_h) = (max_diff(&o_auto, &o_ops), max_diff(&h_auto, &h_ops));
        assert!(
            d_o <= 1e-12 && d_h <= 1e-12,
            "shape {i} {cfg} T={t} B={b} lengths {lengths:?}: output differs by {d_o:e}, h_n by {d_h:e}"
        );
    }
}
