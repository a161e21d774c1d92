//! The matrix products of the CPU recurrence: the GEMM library for large ones, a plain loop for
//! small ones, and the transposed form that lets the library read `W_hh^T` in place each step.

use gemm::Parallelism;

use crate::activation::Real;

/// Below this many multiply-adds a plain loop beats the GEMM library's dispatch and packing.
const SMALL_MATMUL: usize = 1 << 15;

pub(super) fn parallelism(threads: usize) -> Parallelism {
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
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
pub(super) fn project<T: Real>(
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
pub(super) fn recurrent_matmul<T: Real>(
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
