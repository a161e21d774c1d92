//! The time loop of one direction: the input projection in blocks just ahead of the steps that
//! read them, then per step the recurrent matmul and the gate pass, run by every member of the
//! direction's team on its own batch rows or groups of hidden units. Nothing is allocated inside
//! the loop.

use super::gates::gate_update;
use super::gemm::{matmul_panels, Plan};
use super::panels::{groups, DirPack, GROUP, NR};
use super::simd::multiversion;
use super::team::{chunks, Chunk, SharedMut, SpinBarrier, Split};
use super::Dims;
use crate::activation::Real;
use crate::packing::LengthPlan;

/// Rows of input projected per GEMM: large enough for the GEMM to run at speed, small enough
/// that the projected block stays in cache until its steps consume it.
const PROJ_ROWS: usize = 512;

/// Where a direction writes its output: `(T, B, stride)` rows, this direction's `H` values at
/// `offset` of each (both directions of a layer write the same buffer, PyTorch's layout).
#[derive(Clone, Copy)]
pub(super) struct OutView<T> {
    pub ptr: SharedMut<T>,
    pub stride: usize,
    pub offset: usize,
}

/// The time loop of one direction (`reverse`: from the last step back) over `x` `(T, B, in)`.
/// `out` must arrive zeroed (steps past a sequence's length stay zero); `hn` is `(B, H)`.
///
/// # Safety
/// `out` points at `T * B` rows of `out.stride` values, and nothing else reads or writes this
/// direction's columns `offset..offset + H` of them during the call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run_direction<T: Real>(
    x: &[T],
    dir: &DirPack<T>,
    dims: Dims,
    h0: &[T],
    plan: &LengthPlan,
    reverse: bool,
    out: OutView<T>,
    hn: &mut [T],
    threads: usize,
) {
    let Dims {
        seq_len,
        batch,
        input,
        hidden,
    } = dims;
    let g_row = groups(hidden) * GROUP;
    assert_eq!(x.len(), seq_len * batch * input);
    assert_eq!(dir.w_ih.k, input);
    assert_eq!(dir.w_hh.k, hidden);
    assert!(out.offset + hidden <= out.stride);
    let block = PROJ_ROWS.div_ceil(batch).clamp(1, seq_len);
    let mut gi = vec![T::zero(); block * batch * g_row];
    let (split, mut chunks) = chunks(hidden, batch, seq_len, threads);
    let members = chunks.len();
    // State rows in team order: each chunk's rows `r0..r1` hold every `lanes`-th sequence of
    // the plan's order (longest first), so that a chunk's active rows are a prefix of its range
    // and sequences of every length are spread over the members.
    let order: Vec<usize> = if split == Split::Rows {
        chunks
            .iter()
            .flat_map(|c| (c.lane..batch).step_by(c.lanes).map(|p| plan.perm[p]))
            .collect()
    } else {
        plan.perm.clone()
    };
    assert_eq!(order.len(), batch);
    // Double-buffered: members read one buffer while writing their part of the other.
    let mut h = vec![T::zero(); batch * hidden];
    for (i, &b) in order.iter().enumerate() {
        h[i * hidden..(i + 1) * hidden].copy_from_slice(&h0[b * hidden..(b + 1) * hidden]);
    }
    let mut h_next = h.clone();
    // A lone member threads its products by panels; a team has split the work already.
    let mm_plan = if members == 1 {
        Plan::new::<T>(threads)
    } else {
        Plan::new::<T>(1)
    };
    let barrier = SpinBarrier::new(members);
    let gi_ptr = SharedMut(gi.as_mut_ptr());
    let bufs = [SharedMut(h.as_mut_ptr()), SharedMut(h_next.as_mut_ptr())];
    let gi_len = gi.len();

    // Every member runs this same loop over the steps, on its own chunk and its share of each
    // projected block, meeting the others at a barrier after each projection and (split by
    // units) after each step. Returns which buffer holds the final state.
    let member = |id: usize, chunk: &mut Chunk<T>| -> usize {
        let _poison = barrier.poison_on_panic();
        let mut parity = 0;
        let mut prev_m = batch;
        let mut t0 = 0;
        for s in 0..seq_len {
            let t = if reverse { seq_len - 1 - s } else { s };
            if s % block == 0 {
                if s > 0 && split == Split::Rows {
                    // Members split by rows run their steps without meeting: all must be done
                    // with the block's projections before the next block overwrites them.
                    barrier.wait();
                }
                // The next block of steps (in this direction's order): times t0..t0 + n.
                let n = block.min(seq_len - s);
                t0 = if reverse { t + 1 - n } else { t };
                let rows = n * batch;
                let (lo, hi) = (rows * id / members, rows * (id + 1) / members);
                // SAFETY: rows lo..hi of the block are this member's alone, inside `gi`
                // (rows <= block * batch); nobody reads `gi` until the barrier below.
                let dst = unsafe {
                    std::slice::from_raw_parts_mut(gi_ptr.ptr().add(lo * g_row), (hi - lo) * g_row)
                };
                let x0 = (t0 * batch + lo) * input;
                project(
                    mm_plan,
                    hi - lo,
                    input,
                    &x[x0..x0 + (hi - lo) * input],
                    dir,
                    dst,
                    &mut chunk.scratch,
                );
                barrier.wait();
            }
            let m = plan.active[t];
            let (h_in, h_out) = (bufs[parity], bufs[1 - parity]);
            // Rows that just finished keep their last state in both buffers: copied by the
            // member that owns them (split by units: all own every row, the first copies).
            let (lo, hi) = (chunk.r0 + chunk.active(m), chunk.r0 + chunk.active(prev_m));
            if lo < hi && (split == Split::Rows || id == 0) {
                // SAFETY: rows lo..hi < r1 <= batch of both buffers are in bounds, and no
                // member touches a chunk's rows past its active ones during this step.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        h_in.ptr().add(lo * hidden),
                        h_out.ptr().add(lo * hidden),
                        (hi - lo) * hidden,
                    );
                }
            }
            prev_m = m;
            if m == 0 {
                continue;
            }
            // SAFETY: during a step `gi` and the input state buffer are only read; members
            // write disjoint rows or units of the other buffer and of `out` (see `advance`).
            let step = unsafe {
                Step {
                    t,
                    t0,
                    m,
                    batch,
                    hidden,
                    gi: std::slice::from_raw_parts(gi_ptr.ptr(), gi_len),
                    order: &order,
                    dir,
                    // Only this member's rows: split by rows, the others may be writing theirs
                    // of this buffer (one step ahead or behind).
                    h_in: std::slice::from_raw_parts(
                        h_in.ptr().add(chunk.r0 * hidden),
                        (chunk.r1 - chunk.r0) * hidden,
                    ),
                    h_out,
                    out,
                    plan: mm_plan,
                }
            };
            advance(&step, chunk);
            if split != Split::Rows {
                barrier.wait();
            }
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
    for (i, &b) in order.iter().enumerate() {
        hn[b * hidden..(b + 1) * hidden].copy_from_slice(&h[i * hidden..(i + 1) * hidden]);
    }
}

multiversion! {
    /// `dst = x @ W_ih^T + bias` for `m` rows of `x` `(m, k)`, grouped rows in `dst`.
    fn project<T: Real>(
        plan: Plan,
        m: usize,
        k: usize,
        x: &[T],
        dir: &DirPack<T>,
        dst: &mut [T],
        scratch: &mut Vec<T>,
    ) {
        let g_row = dir.bias.len();
        matmul_panels(plan, m, k, x, k, &dir.w_ih.data, dst, g_row, Some(&dir.bias), scratch)
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
    /// `(n, B, G)` projected inputs of times `t0..t0 + n`, grouped rows.
    gi: &'a [T],
    /// Batch index of each state row.
    order: &'a [usize],
    dir: &'a DirPack<T>,
    /// The input state of the chunk's rows `r0..r1`.
    h_in: &'a [T],
    h_out: SharedMut<T>,
    out: OutView<T>,
    plan: Plan,
}

multiversion! {
    /// One step of one chunk: its matmul, then the gate pass over its units of every active row.
    fn advance<T: Real>(s: &Step<'_, T>, c: &mut Chunk<T>) {
        let hidden = s.hidden;
        // This chunk's active rows: state rows r0..r0 + m.
        let m = c.active(s.m);
        if m == 0 {
            return;
        }
        let g_row = s.dir.bias.len();
        let c_row = (c.g1 - c.g0) * GROUP;
        matmul_panels(
            s.plan,
            m,
            hidden,
            &s.h_in[..m * hidden],
            hidden,
            s.dir.w_hh.groups(c.g0, c.g1),
            &mut c.gh[..m * c_row],
            c_row,
            None,
            &mut c.scratch,
        );
        for i in 0..m {
            let p = c.r0 + i;
            let b = s.order[p];
            let gi_row = &s.gi[((s.t - s.t0) * s.batch + b) * g_row..][..g_row];
            let gh_row = &c.gh[i * c_row..][..c_row];
            for g in c.g0..c.g1 {
                let u = g * NR;
                let w = NR.min(hidden - u);
                let gi = &gi_row[g * GROUP..][..GROUP];
                let gh = &gh_row[(g - c.g0) * GROUP..][..GROUP];
                let h_row = p * hidden + u;
                let out_row = (s.t * s.batch + b) * s.out.stride + s.out.offset + u;
                // SAFETY: `h_row..h_row + w` lies inside the state buffer and `out_row..+ w`
                // inside `out` (sizes asserted by the caller), and each chunk owns its rows and
                // units, so no two threads write the same element; nothing reads these values
                // during the step (`h_in` is the other buffer).
                let (h_dst, o_dst) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(s.h_out.ptr().add(h_row), w),
                        std::slice::from_raw_parts_mut(s.out.ptr.ptr().add(out_row), w),
                    )
                };
                let h = &s.h_in[i * hidden + u..][..w];
                let b_hn = &s.dir.b_hn[u..u + w];
                if w == NR {
                    // A full group: fixed-length slices, so the pass compiles to whole vectors.
                    gate_update(
                        &gi[..NR], &gi[NR..2 * NR], &gi[2 * NR..],
                        &gh[..NR], &gh[NR..2 * NR], &gh[2 * NR..],
                        &b_hn[..NR], &h[..NR], &mut h_dst[..NR], &mut o_dst[..NR],
                    );
                } else {
                    gate_update(
                        &gi[..w], &gi[NR..NR + w], &gi[2 * NR..2 * NR + w],
                        &gh[..w], &gh[NR..NR + w], &gh[2 * NR..2 * NR + w],
                        b_hn, h, h_dst, o_dst,
                    );
                }
            }
        }
    }
}
