//! The CPU recurrence of one layer, on plain slices: the input projection of all steps in one GEMM,
//! then per step one GEMM `h @ W_hh^T` into a reused buffer and one fused pass computing r, z, n and
//! h' in place. No allocation happens inside the time loop; both directions of a bidirectional
//! layer run concurrently on two threads.

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
    let g = n_dirs * 3 * hidden;
    let rows = seq_len * batch;
    debug_assert_eq!(x.len(), rows * input);
    debug_assert_eq!(h0.len(), n_dirs * batch * hidden);

    // Input projection of every step and both directions: gi = x @ W_ih^T + bias.
    let mut gi = Vec::with_capacity(rows * g);
    for _ in 0..rows {
        gi.extend_from_slice(layer.bias);
    }
    matmul(
        rows,
        input,
        g,
        x,
        layer.w_ih_t,
        &mut gi,
        true,
        parallelism(threads),
    );

    let run = |d: usize, par: Parallelism| {
        let mut out = vec![T::zero(); rows * hidden];
        let mut hn = vec![T::zero(); batch * hidden];
        run_direction(
            &gi,
            g,
            d * 3 * hidden,
            dims,
            &layer.dirs[d],
            &h0[d * batch * hidden..(d + 1) * batch * hidden],
            plan,
            d == 1,
            &mut out,
            &mut hn,
            par,
        );
        (out, hn)
    };

    if n_dirs == 1 {
        return run(0, parallelism(threads));
    }
    let ((out_f, hn_f), (out_b, hn_b)) = if threads > 1 {
        let par = parallelism(threads / 2);
        rayon::join(|| run(0, par), || run(1, par))
    } else {
        (run(0, Parallelism::None), run(1, Parallelism::None))
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

/// The time loop of one direction. `gi` rows have stride `g`; this direction's gates start at
/// `offset`. `out` is `(T, B, H)` and must arrive zeroed; `hn` is `(B, H)`.
#[allow(clippy::too_many_arguments)]
fn run_direction<T: Real>(
    gi: &[T],
    g: usize,
    offset: usize,
    dims: Dims,
    dir: &DirSlices<'_, T>,
    h0: &[T],
    plan: &LengthPlan,
    reverse: bool,
    out: &mut [T],
    hn: &mut [T],
    par: Parallelism,
) {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
        unsafe {
            return simd::run_direction_avx2(
                gi, g, offset, dims, dir, h0, plan, reverse, out, hn, par,
            );
        }
    }
    run_direction_body(gi, g, offset, dims, dir, h0, plan, reverse, out, hn, par)
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use super::*;
    use std::sync::OnceLock;

    pub(super) fn has_avx2_fma() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }

    /// The same loop compiled for AVX2: the gate pass and the small matmul vectorize 8 wide.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn run_direction_avx2<T: Real>(
        gi: &[T],
        g: usize,
        offset: usize,
        dims: Dims,
        dir: &DirSlices<'_, T>,
        h0: &[T],
        plan: &LengthPlan,
        reverse: bool,
        out: &mut [T],
        hn: &mut [T],
        par: Parallelism,
    ) {
        run_direction_body(gi, g, offset, dims, dir, h0, plan, reverse, out, hn, par)
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn run_direction_body<T: Real>(
    gi: &[T],
    g: usize,
    offset: usize,
    dims: Dims,
    dir: &DirSlices<'_, T>,
    h0: &[T],
    plan: &LengthPlan,
    reverse: bool,
    out: &mut [T],
    hn: &mut [T],
    par: Parallelism,
) {
    let Dims {
        seq_len,
        batch,
        hidden,
        ..
    } = dims;
    let g3 = 3 * hidden;
    // State rows in `plan.perm` order, so that the active rows of every step are a prefix.
    let mut h = vec![T::zero(); batch * hidden];
    for (i, &b) in plan.perm.iter().enumerate() {
        h[i * hidden..(i + 1) * hidden].copy_from_slice(&h0[b * hidden..(b + 1) * hidden]);
    }
    let mut gh = vec![T::zero(); batch * g3];

    for s in 0..seq_len {
        let t = if reverse { seq_len - 1 - s } else { s };
        let m = plan.active[t];
        if m == 0 {
            continue;
        }
        matmul(
            m,
            hidden,
            g3,
            &h[..m * hidden],
            dir.w_hh_t,
            &mut gh[..m * g3],
            false,
            par,
        );
        for i in 0..m {
            let b = plan.perm[i];
            let row = (t * batch + b) * g + offset;
            let out_row = (t * batch + b) * hidden;
            gate_update(
                &gi[row..row + g3],
                &gh[i * g3..(i + 1) * g3],
                dir.b_hn,
                &mut h[i * hidden..(i + 1) * hidden],
                &mut out[out_row..out_row + hidden],
            );
        }
    }
    for (i, &b) in plan.perm.iter().enumerate() {
        hn[b * hidden..(b + 1) * hidden].copy_from_slice(&h[i * hidden..(i + 1) * hidden]);
    }
}

/// PyTorch's GRU update for one row, in place:
/// r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + r * (gh_n + b_hn)), h' = (1 - z) n + z h.
/// `gi` already holds `b_ih` and `b_hr`, `b_hz` (folded at load).
#[inline(always)]
pub(crate) fn gate_update<T: Real>(gi: &[T], gh: &[T], b_hn: &[T], h: &mut [T], out: &mut [T]) {
    let hs = h.len();
    let (gi_r, gi_z, gi_n) = (&gi[..hs], &gi[hs..2 * hs], &gi[2 * hs..3 * hs]);
    let (gh_r, gh_z, gh_n) = (&gh[..hs], &gh[hs..2 * hs], &gh[2 * hs..3 * hs]);
    let b_hn = &b_hn[..hs];
    let out = &mut out[..hs];
    for j in 0..hs {
        let r = (gi_r[j] + gh_r[j]).sigmoid();
        let z = (gi_z[j] + gh_z[j]).sigmoid();
        let n = (gi_n[j] + r * (gh_n[j] + b_hn[j])).tanh();
        let hj = n + z * (h[j] - n);
        h[j] = hj;
        out[j] = hj;
    }
}

/// `c = a @ b` (or `c += a @ b` with `accumulate`), all row-major: `a` `(m, k)`, `b` `(k, n)`,
/// `c` `(m, n)`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Real>(
    m: usize,
    k: usize,
    n: usize,
    a: &[T],
    b: &[T],
    c: &mut [T],
    accumulate: bool,
    par: Parallelism,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n);
    if m * k * n <= SMALL_MATMUL {
        for i in 0..m {
            let c_row = &mut c[i * n..(i + 1) * n];
            if !accumulate {
                c_row.fill(T::zero());
            }
            for kk in 0..k {
                let av = a[i * k + kk];
                let b_row = &b[kk * n..(kk + 1) * n];
                for j in 0..n {
                    c_row[j] += av * b_row[j];
                }
            }
        }
        return;
    }
    // SAFETY: the asserts above bound every access: `a` is m x k, `b` k x n and `c` m x n, all
    // row-major (row stride = columns, column stride 1), and `c` does not alias `a` or `b`.
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
            n as isize,
            if accumulate { T::one() } else { T::zero() },
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
            matmul(m, k, n, &a, &b, &mut c, true, Parallelism::None);
            for (x, y) in c.iter().zip(&want) {
                assert!((x - (y + 1.0)).abs() < 1e-9);
            }
            matmul(m, k, n, &a, &b, &mut c, false, Parallelism::None);
            assert_eq!(c, want);
        }
    }
}
