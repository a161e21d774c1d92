//! The time loop of one direction of a stack of layers: per block of steps and per layer, the
//! input projection of the block (from the model's input, or from the block's outputs of the
//! layer below), then per step the recurrent matmul and the gate pass, run by every member of the
//! direction's team on its own batch rows or groups of hidden units. A unidirectional stack runs
//! all its layers block by block, so a layer's outputs feed the next while still in cache and
//! only the last layer's are kept whole. Nothing is allocated inside the loop.

use super::aligned::Aligned;
use super::gates::{candidate_update, sigmoid_gates};
use super::gemm::{matmul_panels, Plan};
use super::microkernel::SimdFloat;
use super::panels::{DirPack, GROUP, NR};
use super::simd::multiversion;
use super::team::{chunks, Chunk, SharedMut, SpinBarrier, Split};
use super::Dims;
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

/// The time loop of one direction (`reverse`: from the last step back) of a stack of `layers`
/// over `x` `(T, B, in)`, `h0` and `hn` `(L, B, H)`: the last layer's outputs go to `out`, which
/// must arrive zeroed (steps past a sequence's length stay zero). A stack of more than one layer
/// must not split by units (see [`super::team::split`]).
///
/// # Safety
/// `out` points at `T * B` rows of `out.stride` values, and nothing else reads or writes this
/// direction's columns `offset..offset + H` of them during the call.
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn run_stack<T: SimdFloat>(
    x: &[T],
    layers: &[&DirPack<T>],
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
    let n_layers = layers.len();
    let bh = batch * hidden;
    assert!(n_layers >= 1);
    assert_eq!(x.len(), seq_len * batch * input);
    assert!(h0.len() == n_layers * bh && hn.len() == n_layers * bh);
    for (l, dir) in layers.iter().enumerate() {
        assert_eq!(dir.w_ih.k, if l == 0 { input } else { hidden });
        assert_eq!(dir.w_hh.k, hidden);
    }
    assert!(out.offset + hidden <= out.stride);
    let (split, mut chunks) = chunks(hidden, batch, seq_len, threads);
    // Members split by units would all read each layer's block of outputs (`stack_forward`
    // runs such layers one at a time).
    assert!(n_layers == 1 || split != Split::Units);
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
    // Each layer's state, double-buffered (members read one buffer while writing their part of
    // the other): buffer `q` of layer `l` at `(2 l + q) * B * H`.
    let mut states = Aligned::<T>::new(2 * n_layers * bh);
    for l in 0..n_layers {
        for (i, &b) in order.iter().enumerate() {
            let h = &h0[l * bh + b * hidden..][..hidden];
            for q in 0..2 {
                states[(2 * l + q) * bh + i * hidden..][..hidden].copy_from_slice(h);
            }
        }
    }
    let states_ptr = SharedMut(states.as_mut_ptr());
    // A lone member threads its products by panels; a team has split the work already.
    let mm_plan = if members == 1 {
        Plan::new::<T>(threads)
    } else {
        Plan::new::<T>(1)
    };
    let barrier = SpinBarrier::new(members);

    // Every member runs this same loop over blocks of steps and layers, on its own chunk,
    // projecting its own inputs; split by units, the members meet after each step. Returns
    // which buffer holds each layer's final state.
    let member = |id: usize, chunk: &mut Chunk<T>| -> Vec<usize> {
        let _poison = barrier.poison_on_panic();
        let rows = chunk.r1 - chunk.r0;
        // The member's own block of steps: split by rows, members never meet, so their blocks
        // need not line up; split by units, every member has every row.
        let block = PROJ_ROWS.div_ceil(rows).clamp(1, seq_len);
        chunk.gi_at.resize(block + 1, 0);
        chunk
            .gi
            .reserve_zeroed(block * rows * (chunk.g1 - chunk.g0) * GROUP);
        // The block's outputs of the layer below the one running, in `gi`'s row order.
        let mut y = vec![
            T::zero();
            if n_layers > 1 {
                block * rows * hidden
            } else {
                0
            }
        ];
        let y_ptr = SharedMut(y.as_mut_ptr());
        let y_len = y.len();
        let mut parity = vec![0; n_layers];
        // Sequences active at the step before; at the first step, those of the first step: both
        // buffers hold h0 already, and a copy there (reverse, every sequence shorter than T)
        // would race with members split by units writing their first active step.
        let first = if reverse { seq_len - 1 } else { 0 };
        let mut prev_m = vec![plan.active[first]; n_layers];
        let mut s0 = 0;
        while s0 < seq_len {
            // The next block of steps (in this direction's order): times t0..t0 + n.
            let n = block.min(seq_len - s0);
            let t0 = if reverse { seq_len - s0 - n } else { s0 };
            for (l, dir) in layers.iter().enumerate() {
                let src = if l == 0 {
                    Source::Model {
                        x,
                        batch,
                        rows: &order[chunk.r0..chunk.r1],
                    }
                } else {
                    // SAFETY: nothing writes `y` while this borrow lives (the projection).
                    Source::Block(unsafe { std::slice::from_raw_parts(y_ptr.ptr(), y_len) })
                };
                project_block(mm_plan, dir, src, &plan.active, chunk, t0, n);
                let dest = if l + 1 == n_layers {
                    Dest::Model(out)
                } else {
                    Dest::Block(y_ptr)
                };
                for s in s0..s0 + n {
                    let t = if reverse { seq_len - 1 - s } else { s };
                    let m = plan.active[t];
                    // SAFETY: both buffers of layer l lie inside `states`.
                    let (h_in, h_out) = unsafe {
                        (
                            SharedMut(states_ptr.ptr().add((2 * l + parity[l]) * bh)),
                            SharedMut(states_ptr.ptr().add((2 * l + 1 - parity[l]) * bh)),
                        )
                    };
                    // Rows that just finished keep their last state in both buffers: copied by
                    // the member that owns them (split by units: all own every row, the first
                    // copies).
                    let (lo, hi) = (
                        chunk.r0 + chunk.active(m),
                        chunk.r0 + chunk.active(prev_m[l]),
                    );
                    if lo < hi && (split == Split::Rows || id == 0) {
                        // SAFETY: rows lo..hi < r1 <= batch of both buffers are in bounds, and
                        // no member touches a chunk's rows past its active ones during this step.
                        unsafe {
                            std::ptr::copy_nonoverlapping(
                                h_in.ptr().add(lo * hidden),
                                h_out.ptr().add(lo * hidden),
                                (hi - lo) * hidden,
                            );
                        }
                    }
                    prev_m[l] = m;
                    if m == 0 {
                        continue;
                    }
                    // SAFETY: during a step the input state buffer is only read; members write
                    // disjoint rows or units of the other buffer and of `dest` (see `advance`).
                    let step = unsafe {
                        Step {
                            t,
                            t0,
                            m,
                            batch,
                            hidden,
                            order: &order,
                            dir,
                            // Only this member's rows: split by rows, the others may be writing
                            // theirs of this buffer (steps ahead or behind).
                            h_in: std::slice::from_raw_parts(
                                h_in.ptr().add(chunk.r0 * hidden),
                                rows * hidden,
                            ),
                            h_out,
                            dest,
                            plan: mm_plan,
                        }
                    };
                    advance(&step, chunk);
                    if split == Split::Units {
                        barrier.wait();
                    }
                    parity[l] = 1 - parity[l];
                }
            }
            s0 += n;
        }
        parity
    };
    let parity = if members == 1 {
        member(0, &mut chunks[0])
    } else {
        let member = &member;
        std::thread::scope(|scope| {
            // Held while spawning: a thread that cannot start must not leave those already
            // started waiting at the barrier.
            let _poison = barrier.poison_on_panic();
            let (first, rest) = chunks.split_first_mut().expect("at least one chunk");
            for (i, c) in rest.iter_mut().enumerate() {
                scope.spawn(move || member(i + 1, c));
            }
            member(0, first)
        })
    };
    for (l, q) in parity.into_iter().enumerate() {
        let h = &states[(2 * l + q) * bh..][..bh];
        for (i, &b) in order.iter().enumerate() {
            hn[l * bh + b * hidden..][..hidden].copy_from_slice(&h[i * hidden..][..hidden]);
        }
    }
}

/// Where a layer's projection reads its inputs.
#[derive(Clone, Copy)]
enum Source<'a, T> {
    /// The model's input `(T, B, k)`; `rows`: the batch index of each of the chunk's rows.
    Model {
        x: &'a [T],
        batch: usize,
        rows: &'a [usize],
    },
    /// The block's outputs of the layer below, already in the projection's row order.
    Block(&'a [T]),
}

/// Where a layer's steps write their outputs.
#[derive(Clone, Copy)]
enum Dest<T> {
    /// The model's output.
    Model(OutView<T>),
    /// The member's block of outputs for the layer above (`H` values per row, in the block's
    /// projection row order).
    Block(SharedMut<T>),
}

multiversion! {
    /// Projects a chunk's inputs for times `t0..t0 + n`: `x @ W_ih^T + bias` of its active rows
    /// (step after step, in state-row order) and its groups of units, into `chunk.gi`.
    fn project_block<T: SimdFloat>(
        plan: Plan,
        dir: &DirPack<T>,
        src: Source<'_, T>,
        active: &[usize],
        chunk: &mut Chunk<T>,
        t0: usize,
        n: usize,
    ) {
        let k = dir.w_ih.k;
        let mut m = 0;
        for j in 0..n {
            chunk.gi_at[j] = m;
            m += chunk.active(active[t0 + j]);
        }
        chunk.gi_at[n] = m;
        if m == 0 {
            return;
        }
        let c_row = (chunk.g1 - chunk.g0) * GROUP;
        let a = match src {
            Source::Block(y) => &y[..m * k],
            // The block's rows of `x` are contiguous when this chunk has every sequence, in
            // batch order, all active.
            Source::Model { x, batch, rows }
                if m == n * batch && rows.iter().enumerate().all(|(i, &b)| i == b) =>
            {
                &x[t0 * batch * k..(t0 + n) * batch * k]
            }
            Source::Model { x, batch, rows } => {
                chunk.xg.clear();
                for j in 0..n {
                    let x_t = &x[(t0 + j) * batch * k..][..batch * k];
                    for &b in &rows[..chunk.gi_at[j + 1] - chunk.gi_at[j]] {
                        chunk.xg.extend_from_slice(&x_t[b * k..][..k]);
                    }
                }
                &chunk.xg[..]
            }
        };
        let (g0, g1) = (chunk.g0, chunk.g1);
        matmul_panels(
            plan,
            m,
            k,
            a,
            k,
            dir.w_ih.groups(g0, g1),
            &mut chunk.gi[..m * c_row],
            c_row,
            Some(&dir.bias[g0 * GROUP..g1 * GROUP]),
        );
    }
}

/// Everything one chunk needs to advance one time step.
struct Step<'a, T> {
    t: usize,
    /// First time step of the chunk's projected block.
    t0: usize,
    m: usize,
    batch: usize,
    hidden: usize,
    /// Batch index of each state row.
    order: &'a [usize],
    dir: &'a DirPack<T>,
    /// The input state of the chunk's rows `r0..r1`.
    h_in: &'a [T],
    h_out: SharedMut<T>,
    dest: Dest<T>,
    plan: Plan,
}

multiversion! {
    /// One step of one chunk: its matmul, then the gate pass over its units of every active row.
    fn advance<T: SimdFloat>(s: &Step<'_, T>, c: &mut Chunk<T>) {
        let hidden = s.hidden;
        // This chunk's active rows: state rows r0..r0 + m.
        let m = c.active(s.m);
        if m == 0 {
            return;
        }
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
        );
        if s.plan.fma {
            gate_pass::<T, true>(s, c, m);
        } else {
            gate_pass::<T, false>(s, c, m);
        }
    }
}

/// The gate pass of one step over a chunk's units of its first `m` rows, from its products in
/// `c.gh` (overwritten) and its projected inputs: first r and z of every row and unit, then n
/// and h'.
#[inline(always)]
fn gate_pass<T: SimdFloat, const FMA: bool>(s: &Step<'_, T>, c: &mut Chunk<T>, m: usize) {
    let hidden = s.hidden;
    let c_row = (c.g1 - c.g0) * GROUP;
    let gi_rows = &c.gi[c.gi_at[s.t - s.t0] * c_row..][..m * c_row];
    let gh_rows = &mut c.gh[..m * c_row];
    // r and z of a group are its first 2 * NR values (past the last unit: padding, harmless).
    for (gi, gh) in gi_rows
        .chunks_exact(GROUP)
        .zip(gh_rows.chunks_exact_mut(GROUP))
    {
        sigmoid_gates::<T, FMA>(&gi[..2 * NR], &mut gh[..2 * NR]);
    }
    for i in 0..m {
        let p = c.r0 + i;
        let (o_ptr, o_row) = match s.dest {
            Dest::Model(v) => (v.ptr, (s.t * s.batch + s.order[p]) * v.stride + v.offset),
            Dest::Block(y) => (y, (c.gi_at[s.t - s.t0] + i) * hidden),
        };
        let gi_row = &gi_rows[i * c_row..][..c_row];
        let gh_row = &gh_rows[i * c_row..][..c_row];
        for g in c.g0..c.g1 {
            let u = g * NR;
            let w = NR.min(hidden - u);
            let gi = &gi_row[(g - c.g0) * GROUP..][..GROUP];
            let gh = &gh_row[(g - c.g0) * GROUP..][..GROUP];
            let h_row = p * hidden + u;
            // SAFETY: `h_row..h_row + w` lies inside the state buffer and `o_row + u..+ w`
            // inside the destination (`out`: sizes asserted by the caller; a block of
            // outputs: row `gi_at[..] + i` of at most `block * rows`), and each chunk owns its
            // rows and units, so no two threads write the same element; nothing reads these
            // values during the step (`h_in` is the other buffer).
            let (h_dst, o_dst) = unsafe {
                (
                    std::slice::from_raw_parts_mut(s.h_out.ptr().add(h_row), w),
                    std::slice::from_raw_parts_mut(o_ptr.ptr().add(o_row + u), w),
                )
            };
            let h = &s.h_in[i * hidden + u..][..w];
            let b_hn = &s.dir.b_hn[u..u + w];
            let (r, z, gi_n, gh_n) = (&gh[..NR], &gh[NR..2 * NR], &gi[2 * NR..], &gh[2 * NR..]);
            if w == NR {
                // A full group: fixed-length slices, so the pass compiles to whole vectors.
                candidate_update::<T, FMA>(
                    r,
                    z,
                    gi_n,
                    gh_n,
                    &b_hn[..NR],
                    &h[..NR],
                    &mut h_dst[..NR],
                    &mut o_dst[..NR],
                );
            } else {
                candidate_update::<T, FMA>(r, z, gi_n, gh_n, b_hn, h, h_dst, o_dst);
            }
            if s.dir.narrow {
                // Two plain loops (vectorized; a chained iterator is not).
                for v in h_dst.iter_mut() {
                    *v = v.narrow();
                }
                for v in o_dst.iter_mut() {
                    *v = v.narrow();
                }
            }
        }
    }
}
