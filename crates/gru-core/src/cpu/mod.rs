//! The CPU recurrence, on plain slices (the `Auto` path on the CPU). Per direction: the input
//! projection runs as one matmul per block of steps, just ahead of the steps that read it; each
//! step is one matmul `h @ W_hh^T` into a reused buffer and one vectorized pass computing r, z, n
//! and h'. The weights are packed once, when the model is built, in the layout the matmul
//! microkernel reads. Nothing is allocated inside the time loop. Both directions of a
//! bidirectional layer run concurrently; the layers of a unidirectional stack run together, block
//! by block. Large layers split a direction's batch rows (or, for small batches, its hidden units)
//! across a team of threads; split by units, they meet at a spin barrier after each step.
//!
//! - `panels`: the packed weights of a direction (`DirPack`), grouped by units;
//! - `gemm`: the matmul microkernel on those panels;
//! - `simd`: the CPU's SIMD level and the per-level builds of the hot functions;
//! - `time_loop`: the steps of one direction of a stack of layers (projection blocks, the step);
//! - `team`: splitting a direction's rows or units across threads, and their spin barrier;
//! - `gates`: the gate update of one row;
//! - `aligned`: buffers that start on a cache line.

mod aligned;
mod gates;
mod gemm;
mod microkernel;
mod panels;
pub(crate) mod simd;
pub(crate) mod team;
mod time_loop;

pub(crate) use gates::gate_update;
pub(crate) use panels::DirPack;

use crate::packing::LengthPlan;
pub(crate) use microkernel::SimdFloat;
use team::{SharedMut, Split};
use time_loop::{run_stack, OutView};

/// The SIMD level the CPU kernel runs at on this machine: `"avx512"`, `"avx2"`,
/// `"baseline (sse2)"` (`"baseline (neon)"` on aarch64) or `"scalar"`: the CPU's best, capped by
/// the environment variable `GRU_CPU_LEVEL`.
pub fn cpu_level() -> &'static str {
    simd::level().name()
}

/// Every SIMD level this CPU can run, lowest first, by the names `GRU_CPU_LEVEL` takes
/// (`scalar`, `baseline`, `avx2`, `avx512`): set it to one of them to run (test, time) that level.
pub fn cpu_levels() -> Vec<&'static str> {
    simd::levels()
        .into_iter()
        .map(simd::Level::env_name)
        .collect()
}

/// Checks `GRU_CPU_LEVEL`: an error naming it when it is set to something that is not a level
/// (the kernel itself warns once and ignores such a value).
pub fn check_cpu_level_env() -> crate::Result<()> {
    simd::level_cap()
        .map(|_| ())
        .map_err(|reason| crate::GruError::arg(simd::LEVEL_ENV, reason))
}

/// The threads the CPU kernel uses: candle's rule (`RAYON_NUM_THREADS` when set to a positive
/// number, else candle's count of the physical cores), without its cost: candle 0.11 counts the
/// cores again on every call (reading `/proc/cpuinfo`, ~20 us) when the variable is unset; here
/// they are counted once per process. The variable is read on every call (no system call).
pub fn cpu_threads() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| *CORES.get_or_init(candle_core::utils::get_num_threads))
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
pub(crate) fn layer_forward<T: SimdFloat>(
    x: &[T],
    dims: Dims,
    dirs: &[DirPack<T>],
    h0: &[T],
    plan: &LengthPlan,
    threads: usize,
) -> (Vec<T>, Vec<T>) {
    let [fwd, bwd] = dirs else {
        assert_eq!(dirs.len(), 1, "one or two directions");
        return stack_forward(x, dims, &[&dirs[0]], h0, plan, threads);
    };
    let bh = dims.batch * dims.hidden;
    assert_eq!(h0.len(), 2 * bh);
    let stride = 2 * dims.hidden;
    // Both directions write their halves of every row of this one buffer (PyTorch's layout).
    let mut out = vec![T::zero(); dims.seq_len * dims.batch * stride];
    let mut hn = vec![T::zero(); 2 * bh];
    let ptr = SharedMut(out.as_mut_ptr());
    let run = |d: usize, dir: &DirPack<T>, hn: &mut [T], threads: usize| {
        let view = OutView {
            ptr,
            stride,
            offset: d * dims.hidden,
        };
        let h0 = &h0[d * bh..(d + 1) * bh];
        // SAFETY: `out` holds T * B rows of `stride`, and direction d alone writes columns
        // d * H..(d + 1) * H of them; `out` is not otherwise touched until both return.
        unsafe { run_stack(x, &[dir], dims, h0, plan, d == 1, view, hn, threads) }
    };
    let (hn_f, hn_b) = hn.split_at_mut(bh);
    if threads > 1 {
        // An odd thread goes to the forward direction.
        let (t_fwd, t_bwd) = (threads.div_ceil(2), threads / 2);
        rayon::join(|| run(0, fwd, hn_f, t_fwd), || run(1, bwd, hn_b, t_bwd));
    } else {
        run(0, fwd, hn_f, 1);
        run(1, bwd, hn_b, 1);
    }
    (out, hn)
}

/// Runs a stack of unidirectional layers (`layers[l]` the one direction of layer `l`) block by
/// block: `x` `(T, B, in)`, `h0` `(L, B, H)`. Returns the last layer's `output` `(T, B, H)` (zero
/// past each sequence's length) and `h_n` `(L, B, H)`. Only the last layer's outputs are kept
/// whole, unless the threads split hidden units.
pub(crate) fn stack_forward<T: SimdFloat>(
    x: &[T],
    dims: Dims,
    layers: &[&DirPack<T>],
    h0: &[T],
    plan: &LengthPlan,
    threads: usize,
) -> (Vec<T>, Vec<T>) {
    let bh = dims.batch * dims.hidden;
    let (how, _) = team::split(dims.hidden, dims.batch, dims.seq_len, threads);
    if layers.len() > 1 && how == Split::Units {
        // Threads split by units would all read each layer's block of outputs: the layers run
        // one at a time, each layer's output kept whole for the next.
        let mut hn = Vec::with_capacity(layers.len() * bh);
        let mut below: Option<Vec<T>> = None;
        for (l, dir) in layers.iter().enumerate() {
            let (x_l, dims_l) = match &below {
                None => (x, dims),
                Some(y) => (
                    &y[..],
                    Dims {
                        input: dims.hidden,
                        ..dims
                    },
                ),
            };
            let h0_l = &h0[l * bh..(l + 1) * bh];
            let (y, hn_l) = stack_forward(x_l, dims_l, &[dir], h0_l, plan, threads);
            hn.extend_from_slice(&hn_l);
            below = Some(y);
        }
        return (below.expect("at least one layer"), hn);
    }
    let mut out = vec![T::zero(); dims.seq_len * bh];
    let mut hn = vec![T::zero(); layers.len() * bh];
    let view = OutView {
        ptr: SharedMut(out.as_mut_ptr()),
        stride: dims.hidden,
        offset: 0,
    };
    // SAFETY: `out` holds T * B rows of H and is not otherwise touched until the call returns.
    unsafe { run_stack(x, layers, dims, h0, plan, false, view, &mut hn, threads) };
    (out, hn)
}
