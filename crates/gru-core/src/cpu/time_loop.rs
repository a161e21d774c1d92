//! The time loop of one direction: the input projection in blocks just ahead of the steps that
//! read them, then per step the recurrent matmul and the gate pass, run by every member of the
//! direction's team on its own hidden units. Nothing is allocated inside the loop.

use gemm::Parallelism;

use super::gates::gate_update;
use super::gemm::{parallelism, project, recurrent_matmul};
use super::team::{chunks, Chunk, SharedMut, SpinBarrier};
use super::{Dims, DirSlices, LayerSlices};
use crate::activation::Real;
use crate::packing::LengthPlan;

/// Rows of input projected per GEMM: large enough for the GEMM to run at speed, small enough
/// that the projected block stays in cache until its steps consume it.
const PROJ_ROWS: usize = 512;

/// The time loop of direction `d` (1 = reverse) of `layer` over `x` `(T, B, in)`. The input
/// projection runs in blocks of steps, just ahead of the steps that read it. `out` is
/// `(T, B, H)` and must arrive zeroed; `hn` is `(B, H)`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run_direction<T: Real>(
    x: &[T],
    layer: &LayerSlices<'_, T>,
    d: usize,
    dims: Dims,
    h0: &[T],
    plan: &LengthPlan,
    reverse: bool,
    out: &mut [T],
    hn: &mut [T],
    threads: usize,
) {
    let Dims {
        seq_len,
        batch,
        input,
        hidden,
    } = dims;
    let dir = &layer.dirs[d];
    let g3 = 3 * hidden;
    let g_all = layer.bias.len();
    assert_eq!(out.len(), seq_len * batch * hidden);
    assert_eq!(x.len(), seq_len * batch * input);
    let block = PROJ_ROWS.div_ceil(batch).clamp(1, seq_len);
    let mut gi = vec![T::zero(); block * batch * g3];
    // State rows in `plan.perm` order, so that the active rows of every step are a prefix.
    // Double-buffered: members read all of one buffer while writing their units of the other.
    let mut h = vec![T::zero(); batch * hidden];
    for (i, &b) in plan.perm.iter().enumerate() {
        h[i * hidden..(i + 1) * hidden].copy_from_slice(&h0[b * hidden..(b + 1) * hidden]);
    }
    let mut h_next = h.clone();
    let mut chunks = chunks(dir.w_hh_t, hidden, batch, seq_len, threads);
    // A lone member may let the GEMM library thread the recurrent matmul (it decides by size).
    let step_par = if chunks.len() == 1 {
        parallelism(threads)
    } else {
        Parallelism::None
    };
    let members = chunks.len();
    let barrier = SpinBarrier::new(members);
    let gi_ptr = SharedMut(gi.as_mut_ptr());
    let bufs = [SharedMut(h.as_mut_ptr()), SharedMut(h_next.as_mut_ptr())];
    let out_ptr = SharedMut(out.as_mut_ptr());
    let (gi_len, h_len) = (gi.len(), h.len());

    // Every member runs this same loop over the steps, on its own chunk of hidden units and its
    // share of each projected block, meeting the others at a barrier after each phase. Returns
    // which buffer holds the final state.
    let member = |id: usize, chunk: &mut Chunk<T>| -> usize {
        let _poison = barrier.poison_on_panic();
        let mut parity = 0;
        let mut prev_m = batch;
        let mut t0 = 0;
        for s in 0..seq_len {
            let t = if reverse { seq_len - 1 - s } else { s };
            if s % block == 0 {
                // The next block of steps (in this direction's order): times t0..t0 + n.
                let n = block.min(seq_len - s);
                t0 = if reverse { t + 1 - n } else { t };
                let rows = n * batch;
                let (lo, hi) = (rows * id / members, rows * (id + 1) / members);
                // SAFETY: rows lo..hi of the block are this member's alone, inside `gi`
                // (rows <= block * batch); nobody reads `gi` until the barrier below.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(gi_ptr.ptr().add(lo * g3), (hi - lo) * g3)
                };
                let x0 = t0 * batch;
                project(
                    hi - lo,
                    input,
                    g3,
                    &x[(x0 + lo) * input..(x0 + hi) * input],
                    &layer.w_ih_t[d * g3..],
                    g_all,
                    &layer.bias[d * g3..(d + 1) * g3],
                    dst,
                    if members == 1 {
                        parallelism(threads)
                    } else {
                        Parallelism::None
                    },
                );
                barrier.wait();
            }
            let m = plan.active[t];
            let (h_in, h_out) = (bufs[parity], bufs[1 - parity]);
            if m < prev_m && id == 0 {
                // Rows that just finished keep their last state in both buffers. No member
                // touches rows >= m during this step.
                // SAFETY: rows m..prev_m of both buffers are in bounds and not otherwise
                // accessed during this step.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        h_in.ptr().add(m * hidden),
                        h_out.ptr().add(m * hidden),
                        (prev_m - m) * hidden,
                    );
                }
            }
            prev_m = m;
            if m == 0 {
                continue;
            }
            // SAFETY: during a step `gi` and the input state buffer are only read; members
            // write disjoint units of the other buffer and of `out` (see `advance_body`).
            let step = unsafe {
                Step {
                    t,
                    t0,
                    m,
                    batch,
                    hidden,
                    gi: std::slice::from_raw_parts(gi_ptr.ptr(), gi_len),
                    perm: &plan.perm,
                    dir,
                    h_in: std::slice::from_raw_parts(h_in.ptr(), h_len),
                    h_out,
                    out: out_ptr,
                    par: step_par,
                }
            };
            advance(&step, chunk);
            barrier.wait();
            parity = 1 - parity;
        }
        parity
    };
    let parity = if members == 1 {
        member(0, &mut chunks[0])
    } else {
        let member = &member;
        std::thread::scope(|scope| {
            let (first, rest) = chunks.split_first_mut().expect("at least one chunk");
            for (i, c) in rest.iter_mut().enumerate() {
                scope.spawn(move || member(i + 1, c));
            }
            member(0, first)
        })
    };
    let h = if parity == 0 { &h } else { &h_next };
    for (i, &b) in plan.perm.iter().enumerate() {
        hn[b * hidden..(b + 1) * hidden].copy_from_slice(&h[i * hidden..(i + 1) * hidden]);
    }
}

/// Everything one chunk needs to advance one time step.
struct Step<'a, T> {
    t: usize,
    /// First time step of the projected block `gi`.
    t0: usize,
    m: usize,
    batch: usize,
    hidden: usize,
    /// `(n, B, 3H)` projected inputs of times `t0..t0 + n`.
    gi: &'a [T],
    perm: &'a [usize],
    dir: &'a DirSlices<'a, T>,
    h_in: &'a [T],
    h_out: SharedMut<T>,
    out: SharedMut<T>,
    /// Threading of the recurrent matmul (`None` inside a team).
    par: Parallelism,
}

/// One step of one chunk: its matmul, then the gate pass over its units of every active row.
/// Compiled for the best SIMD level of the CPU (closures and generic code would otherwise get
/// the baseline SSE2 build).
fn advance<T: Real>(s: &Step<'_, T>, c: &mut Chunk<T>) {
    #[cfg(target_arch = "x86_64")]
    {
        match simd::level() {
            // SAFETY: the CPU supports these features (checked at run time by `level`).
            simd::Level::Avx512 => return unsafe { simd::advance_avx512(s, c) },
            simd::Level::Avx2 => return unsafe { simd::advance_avx2(s, c) },
            simd::Level::Baseline => {}
        }
    }
    advance_body(s, c)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::*;
    use std::sync::OnceLock;

    #[derive(Clone, Copy, PartialEq, Eq)]
    pub(super) enum Level {
        Baseline,
        Avx2,
        Avx512,
    }

    pub(super) fn level() -> Level {
        static LEVEL: OnceLock<Level> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx2") && has!("fma") {
                Level::Avx512
            } else if has!("avx2") && has!("fma") {
                Level::Avx2
            } else {
                Level::Baseline
            }
        })
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn advance_avx512<T: Real>(s: &Step<'_, T>, c: &mut Chunk<T>) {
        advance_body(s, c)
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn advance_avx2<T: Real>(s: &Step<'_, T>, c: &mut Chunk<T>) {
        advance_body(s, c)
    }
}

#[inline(always)]
fn advance_body<T: Real>(s: &Step<'_, T>, c: &mut Chunk<T>) {
    let (hidden, m) = (s.hidden, s.m);
    let w3 = 3 * c.w;
    let w_t = if c.w_t.is_empty() {
        s.dir.w_hh_t
    } else {
        &c.w_t
    };
    recurrent_matmul(
        s.par,
        m,
        hidden,
        w3,
        &s.h_in[..m * hidden],
        w_t,
        &mut c.gh[..m * w3],
    );
    for i in 0..m {
        let b = s.perm[i];
        let row = ((s.t - s.t0) * s.batch + b) * 3 * hidden;
        let gi_row = &s.gi[row..row + 3 * hidden];
        let h_row = i * hidden + c.u0;
        let out_row = (s.t * s.batch + b) * hidden + c.u0;
        // SAFETY: `h_row..h_row + w` and `out_row..out_row + w` lie inside `h_next` and `out`
        // (sizes asserted by the caller; u0 + w <= hidden), and each chunk owns units
        // `u0..u0 + w`, so no two threads write the same element; nothing reads these buffers
        // during the step (`h_in` is the other buffer).
        let (h_dst, o_dst) = unsafe {
            (
                std::slice::from_raw_parts_mut(s.h_out.ptr().add(h_row), c.w),
                std::slice::from_raw_parts_mut(s.out.ptr().add(out_row), c.w),
            )
        };
        gate_update(
            &gi_row[c.u0..c.u0 + c.w],
            &gi_row[hidden + c.u0..hidden + c.u0 + c.w],
            &gi_row[2 * hidden + c.u0..2 * hidden + c.u0 + c.w],
            &c.gh[i * w3..(i + 1) * w3],
            &s.dir.b_hn[c.u0..c.u0 + c.w],
            &s.h_in[h_row..h_row + c.w],
            h_dst,
            o_dst,
        );
    }
}
