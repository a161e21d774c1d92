//! The CPU recurrence of one layer, on plain slices (the `FusedStep` path on the CPU). Per direction: the input projection runs as
//! one GEMM per block of steps, just ahead of the steps that read it; each step is one GEMM
//! `h @ W_hh^T` into a reused buffer and one vectorized pass computing r, z, n and h'. Nothing is
//! allocated inside the time loop. Both directions of a bidirectional layer run concurrently, and
//! wide layers split their hidden units across a team of threads that meet at a spin barrier.

//!
//! - `time_loop`: the steps of one direction (projection blocks, the step, the SIMD dispatch);
//! - `team`: splitting a direction's hidden units across threads, and their spin barrier;
//! - `gemm`: the matrix products (GEMM library or a plain loop for small ones);
//! - `gates`: the gate update of one row.

mod gates;
mod gemm;
mod team;
mod time_loop;

pub(crate) use gates::gate_update;

use crate::activation::Real;
use crate::packing::LengthPlan;
use time_loop::run_direction;

/// The recurrent weights of one direction, in compute layout.
pub(crate) struct DirSlices<'a, T> {
    /// `W_hh^T`, `(H, 3H)` row-major.
    pub w_hh_t: &'a [T],
    /// `b_hn`, `(H)`: the part of `bias_hh` that PyTorch applies inside the reset gate.
    pub b_hn: &'a [T],
}

/// One layer's weights in compute layout.
pub(crate) struct LayerSlices<'a, T> {
    /// `[W_ih^T | W_ih_reverse^T]`, `(in, D * 3H)` row-major.
    pub w_ih_t: &'a [T],
    /// `b_ih + [b_hr, b_hz, 0]` per direction, `(D * 3H)`.
    pub bias: &'a [T],
    pub dirs: Vec<DirSlices<'a, T>>,
}

/// Sizes of one layer's run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dims {
    pub seq_len: usize,
    pub batch: usize,
    pub input: usize,
    pub hidden: usize,
}

/// Runs one layer. `x`: `(T, B, in)`; `h0`: `(D, B, H)`. Returns `output` `(T, B, D * H)` (zero
/// past each sequence's length) and `h_n` `(D, B, H)`.
pub(crate) fn layer_forward<T: Real>(
    x: &[T],
    dims: Dims,
    layer: &LayerSlices<'_, T>,
    h0: &[T],
    plan: &LengthPlan,
    threads: usize,
) -> (Vec<T>, Vec<T>) {
    let Dims {
        seq_len,
        batch,
        input,
        hidden,
    } = dims;
    let n_dirs = layer.dirs.len();
    let rows = seq_len * batch;
    debug_assert_eq!(x.len(), rows * input);
    debug_assert_eq!(h0.len(), n_dirs * batch * hidden);

    let run = |d: usize, threads: usize| {
        let mut out = vec![T::zero(); rows * hidden];
        let mut hn = vec![T::zero(); batch * hidden];
        run_direction(
            x,
            layer,
            d,
            dims,
            &h0[d * batch * hidden..(d + 1) * batch * hidden],
            plan,
            d == 1,
            &mut out,
            &mut hn,
            threads,
        );
        (out, hn)
    };

    if n_dirs == 1 {
        return run(0, threads);
    }
    let ((out_f, hn_f), (out_b, hn_b)) = if threads > 1 {
        let per_dir = threads / 2;
        rayon::join(|| run(0, per_dir), || run(1, per_dir))
    } else {
        (run(0, 1), run(1, 1))
    };
    // Interleave to PyTorch's layout: forward half, then backward half, of every (t, b) row.
    let mut out = Vec::with_capacity(rows * 2 * hidden);
    for (f, b) in out_f.chunks_exact(hidden).zip(out_b.chunks_exact(hidden)) {
        out.extend_from_slice(f);
        out.extend_from_slice(b);
    }
    let mut hn = hn_f;
    hn.extend_from_slice(&hn_b);
    (out, hn)
}
