//! The CPU recurrence of one layer, on plain slices. Per direction: the input projection runs as
//! one GEMM per block of steps, just ahead of the steps that read it; each step is one GEMM
//! `h @ W_hh^T` into a reused buffer and one vectorized pass computing r, z, n and h'. Nothing is
//! allocated inside the time loop. Both directions of a bidirectional layer run concurrently, and
//! wide layers split their hidden units across a team of threads that meet at a spin barrier.

use gemm::Parallelism;

use crate::activation::Real;
use crate::packing::LengthPlan;

/// Below this many multiply-adds a plain loop beats the GEMM library's dispatch and packing.
const SMALL_MATMUL: usize = 1 << 15;

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

fn parallelism(threads: usize) -> Parallelism {
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
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

/// Below this many multiply-adds per step, one thread runs the whole step: splitting would
/// cost more in synchronisation than it saves.
const SPLIT_WORK: usize = 1 << 17;

/// Most threads one direction's steps are split across.
const MAX_TEAM: usize = 8;

/// Fewer steps than this run on one thread (with the GEMM library's own threading).
const MIN_SPLIT_STEPS: usize = 16;

/// A slice of the hidden units `[u0, u0 + w)` that one thread advances each step, with its own
/// columns of `W_hh^T` (r, z, n of its units side by side) and its own `gh` buffer.
struct Chunk<T> {
    u0: usize,
    w: usize,
    /// `(H, 3w)`; empty when the chunk is all units (the layer's `W_hh^T` is used as it is).
    w_t: Vec<T>,
    gh: Vec<T>,
}

/// Splits the units so that every thread gets a share of both the matmul and the gate pass.
fn chunks<T: Real>(
    w_hh_t: &[T],
    hidden: usize,
    batch: usize,
    seq_len: usize,
    threads: usize,
) -> Vec<Chunk<T>> {
    let work = batch * hidden * 3 * hidden;
    // Splitting costs a copy of W_hh^T and a thread start per call: worth it over many steps
    // (a GRUCell or a short streamed chunk lets the GEMM library thread its matmul instead).
    let n = if threads > 1 && work >= SPLIT_WORK && seq_len >= MIN_SPLIT_STEPS {
        // At least 32 units per member, and few enough members that the barrier stays cheap.
        threads.min(hidden / 32).clamp(1, MAX_TEAM)
    } else {
        1
    };
    if n == 1 {
        return vec![Chunk {
            u0: 0,
            w: hidden,
            w_t: Vec::new(),
            gh: vec![T::zero(); batch * 3 * hidden],
        }];
    }
    let step = hidden.div_ceil(n).div_ceil(16) * 16;
    (0..hidden)
        .step_by(step)
        .map(|u0| {
            let w = step.min(hidden - u0);
            let mut w_t = Vec::with_capacity(hidden * 3 * w);
            for k in 0..hidden {
                let row = &w_hh_t[k * 3 * hidden..(k + 1) * 3 * hidden];
                for gate in 0..3 {
                    w_t.extend_from_slice(&row[gate * hidden + u0..gate * hidden + u0 + w]);
                }
            }
            Chunk {
                u0,
                w,
                w_t,
                gh: vec![T::zero(); batch * 3 * w],
            }
        })
        .collect()
}

/// A pointer shared by the threads of one step, each writing a disjoint range through it.
#[derive(Clone, Copy)]
struct SharedMut<T>(*mut T);
// SAFETY: only used to write disjoint element ranges from different threads (see `advance`).
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// A method, not a field access, so that closures capture the `Sync` wrapper.
    fn ptr(&self) -> *mut T {
        self.0
    }
}

/// Rows of input projected per GEMM: large enough for the GEMM to run at speed, small enough
/// that the projected block stays in cache until its steps consume it.
const PROJ_ROWS: usize = 512;

/// The time loop of direction `d` (1 = reverse) of `layer` over `x` `(T, B, in)`. The input
/// projection runs in blocks of steps, just ahead of the steps that read it. `out` is
/// `(T, B, H)` and must arrive zeroed; `hn` is `(B, H)`.
#[allow(clippy::too_many_arguments)]
fn run_direction<T: Real>(
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

/// A barrier for the few threads of one direction, waited on twice per time step: it spins
/// (a wake-up through the OS costs more than a step of a small GRU), then yields so that an
/// oversubscribed machine still makes progress. A member that panics poisons it, and the others
/// panic instead of waiting forever.
struct SpinBarrier {
    n: usize,
    count: std::sync::atomic::AtomicUsize,
    generation: std::sync::atomic::AtomicUsize,
    poisoned: std::sync::atomic::AtomicBool,
}

impl SpinBarrier {
    fn new(n: usize) -> Self {
        Self {
            n,
            count: 0.into(),
            generation: 0.into(),
            poisoned: false.into(),
        }
    }

    fn wait(&self) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
        if self.n == 1 {
            return;
        }
        let gen = self.generation.load(Acquire);
        if self.count.fetch_add(1, AcqRel) + 1 == self.n {
            self.count.store(0, Relaxed);
            self.generation.fetch_add(1, Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Acquire) == gen {
            if self.poisoned.load(Relaxed) {
                panic!("a GRU kernel thread panicked");
            }
            if spins < 20_000 {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }

    fn poison_on_panic(&self) -> impl Drop + '_ {
        struct Guard<'a>(&'a SpinBarrier);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0
                        .poisoned
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Guard(self)
    }
}

/// PyTorch's GRU update for one row of `w` units:
/// r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + r * (gh_n + b_hn)), h' = (1 - z) n + z h.
/// `gi_*` already hold `b_ih` and `b_hr`, `b_hz` (folded at load); `gh` is `[gh_r | gh_z | gh_n]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate_update<T: Real>(
    gi_r: &[T],
    gi_z: &[T],
    gi_n: &[T],
    gh: &[T],
    b_hn: &[T],
    h: &[T],
    h_out: &mut [T],
    out: &mut [T],
) {
    let w = h.len();
    let (gi_r, gi_z, gi_n) = (&gi_r[..w], &gi_z[..w], &gi_n[..w]);
    let (gh_r, gh_z, gh_n) = (&gh[..w], &gh[w..2 * w], &gh[2 * w..3 * w]);
    let b_hn = &b_hn[..w];
    let (h_out, out) = (&mut h_out[..w], &mut out[..w]);
    for j in 0..w {
        let r = (gi_r[j] + gh_r[j]).sigmoid();
        let z = (gi_z[j] + gh_z[j]).sigmoid();
        let n = (gi_n[j] + r * (gh_n[j] + b_hn[j])).tanh();
        let hj = n + z * (h[j] - n);
        h_out[j] = hj;
        out[j] = hj;
    }
}

/// `c = a @ b` (or `c += a @ b` with `accumulate`), all row-major: `a` `(m, k)`, `b` `(k, n)`
/// with row stride `b_rs` (>= n: a column block of a wider matrix), `c` `(m, n)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    b: &[T],
    b_rs: usize,
    c: &mut [T],
    accumulate: bool,
    par: Parallelism,
) {
    assert!(a.len() >= m * k && c.len() >= m * n && b_rs >= n);
    assert!(k == 0 || b.len() >= (k - 1) * b_rs + n);
    if m * k * n <= SMALL_MATMUL {
        for i in 0..m {
            let c_row = &mut c[i * n..(i + 1) * n];
            if !accumulate {
                c_row.fill(T::zero());
            }
            for kk in 0..k {
                let av = a[i * k + kk];
                let b_row = &b[kk * b_rs..kk * b_rs + n];
                for j in 0..n {
                    c_row[j] += av * b_row[j];
                }
            }
        }
        return;
    }
    // SAFETY: the asserts above bound every access: `a` is m x k (row stride k), `b` k x n (row
    // stride b_rs), `c` m x n (row stride n), column strides 1; `c` aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            b_rs as isize,
            if accumulate { T::one() } else { T::zero() },
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

/// `dst = x @ w + bias` (every row): `x` `(m, k)` row-major, `w` `(k, n)` with row stride
/// `w_rs` (a column block of the layer's `[W_ih^T | W_ih_reverse^T]`), `dst` `(m, n)`.
#[allow(clippy::too_many_arguments)]
fn project<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    x: &[T],
    w: &[T],
    w_rs: usize,
    bias: &[T],
    dst: &mut [T],
    par: Parallelism,
) {
    assert!(dst.len() >= m * n && bias.len() == n);
    for row in dst.chunks_exact_mut(n).take(m) {
        row.copy_from_slice(bias);
    }
    matmul(m, k, n, x, w, w_rs, dst, true, par);
}

/// `gh = h @ w_t` for the recurrent step: `h` `(m, k)`, `w_t` `(k, n)`, `gh` `(m, n)`, row-major.
///
/// Large cases go to the GEMM library as the transposed product `gh^T = w_t^T @ h^T`: there the
/// weights are a column-major left operand, which the library reads in place instead of packing
/// them again at every time step.
#[inline(always)]
fn recurrent_matmul<T: Real>(
    par: Parallelism,
    m: usize,
    k: usize,
    n: usize,
    h: &[T],
    w_t: &[T],
    gh: &mut [T],
) {
    assert!(h.len() >= m * k && w_t.len() >= k * n && gh.len() >= m * n);
    if m * k * n <= SMALL_MATMUL {
        return matmul(m, k, n, h, w_t, n, gh, false, Parallelism::None);
    }
    // SAFETY: bounds asserted above. Column-major views: lhs `w_t^T` (n x k) with column stride
    // n, rhs `h^T` (k x m) with column stride k, dst `gh^T` (n x m) with column stride n; `gh`
    // aliases neither input.
    unsafe {
        gemm::gemm(
            n,
            m,
            k,
            gh.as_mut_ptr(),
            n as isize,
            1,
            false,
            w_t.as_ptr(),
            n as isize,
            1,
            h.as_ptr(),
            k as isize,
            1,
            T::zero(),
            T::one(),
            false,
            false,
            false,
            par,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(m: usize, k: usize, n: usize, a: &[f64], b: &[f64]) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k).map(|kk| a[i * k + kk] * b[kk * n + j]).sum();
            }
        }
        c
    }

    #[test]
    fn matmul_small_and_large_paths_agree_with_naive() {
        for &(m, k, n) in &[(1, 3, 5), (4, 32, 96), (64, 80, 96)] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 13) as f64) - 6.0).collect();
            let b: Vec<f64> = (0..k * n).map(|i| ((i * 5 % 11) as f64) * 0.5).collect();
            let want = naive(m, k, n, &a, &b);
            let mut c = vec![1.0; m * n];
            matmul(m, k, n, &a, &b, n, &mut c, true, Parallelism::None);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - (y + 1.0)).abs() < 1e-9);
            }
            matmul(m, k, n, &a, &b, n, &mut c, false, Parallelism::None);
            assert_eq!(c, want);
            recurrent_matmul(Parallelism::None, m, k, n, &a, &b, &mut c);
            assert_eq!(c, want);
        }
    }
}
