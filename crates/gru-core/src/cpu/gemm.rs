//! The matrix products of the CPU recurrence, on weights packed as gate panels
//! ([`super::panels`]): a register-blocked microkernel (a few rows of the left operand times one
//! panel, the accumulators in registers, both operands read contiguously), looped over blocks of
//! rows and the panels.
//!
//! Written as plain Rust over fixed-size arrays: compiled inside [`multiversion!`] functions it
//! becomes AVX2/AVX-512 (or NEON) code with one fused multiply-add per value. Every value sums
//! its products over `k` (in order, or for kernels of 1-3 rows in 2-4 interleaved partial sums),
//! then adds the bias: a row's result may differ in the last bits with the batch's size.

use super::panels::NR;
use super::simd::multiversion;
use super::team::SharedMut;
use crate::activation::Real;

/// Most rows one microkernel call takes (the largest kernel compiled).
pub(crate) const MAX_ROWS: usize = 8;

/// Bytes of the left operand (packed) kept in cache while every panel passes over it.
const A_BLOCK_BYTES: usize = 128 << 10;

/// Depth of a block of `k`: a slice of a panel (`KC x NR` values) stays in L1.
const KC: usize = 256;

/// Below this many multiply-adds a block of rows runs on one thread.
const PAR_WORK: usize = 1 << 20;

/// How a product runs: the microkernel's rows, whether `a * b + c` is fused, and on how many
/// threads (1 when the caller's team has split the work already).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub rows: usize,
    pub fma: bool,
    /// Whether kernels of 1-3 rows keep several partial sums (enough registers for them).
    pub chains: bool,
    pub threads: usize,
}

impl Plan {
    pub fn new<T>(threads: usize) -> Self {
        let level = super::simd::level();
        Self {
            rows: level.kernel_rows(std::mem::size_of::<T>(), NR),
            fma: level.has_fma(),
            chains: level.has_many_registers(),
            threads: threads.max(1),
        }
    }
}

/// Rows per block of the left operand: a multiple of the kernel's `rows` that fits
/// [`A_BLOCK_BYTES`] for `k` columns.
fn block_rows<T>(rows: usize, k: usize) -> usize {
    (A_BLOCK_BYTES / (k * std::mem::size_of::<T>()).max(1)).max(rows) / rows * rows
}

/// `c = a @ W (+ bias)` over `panels` (each `k x NR`, see [`super::panels`]): `a` `(m, k)` with
/// row stride `lda`; `c` `(m, panels * NR)` with row stride `ldc`; `bias` grouped like a row of
/// `c` when given. `scratch` holds the packed rows of `a` (grown once, then reused). Must run
/// inside a `multiversion!` function to get SIMD code.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_panels<T: Real>(
    plan: Plan,
    m: usize,
    k: usize,
    a: &[T],
    lda: usize,
    panels: &[T],
    c: &mut [T],
    ldc: usize,
    bias: Option<&[T]>,
    scratch: &mut Vec<T>,
) {
    // (A GRU has at least one input feature and one hidden unit: `GruConfig` checks.)
    assert!(k > 0, "a product over k = 0");
    let n_panels = panels.len() / (k * NR);
    assert_eq!(panels.len(), n_panels * k * NR);
    assert!(lda >= k && ldc >= n_panels * NR);
    assert!(m == 0 || (a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n_panels * NR));
    assert!(bias.is_none_or(|b| b.len() >= n_panels * NR));
    if m == 0 || n_panels == 0 {
        return;
    }
    let rows = plan.rows.clamp(1, MAX_ROWS);
    // Blocks of `k`, so that the slice of a panel the kernel streams stays in L1 while every
    // group of rows passes over it; later blocks continue the sums the earlier ones stored.
    let k_blocks = k.div_ceil(KC);
    for kb_i in 0..k_blocks {
        let (k0, k1) = (k * kb_i / k_blocks, k * (kb_i + 1) / k_blocks);
        let kb = k1 - k0;
        let block = block_rows::<T>(rows, kb);
        if scratch.len() < block.min(m) * kb {
            scratch.resize(block.min(m) * kb, T::zero());
        }
        for i0 in (0..m).step_by(block) {
            let bm = block.min(m - i0);
            pack_rows(&a[i0 * lda + k0..], lda, bm, kb, rows, scratch);
            let job = Job {
                groups: group_count(bm, rows),
                fma: plan.fma,
                chains: plan.chains,
                m: bm,
                k,
                k0,
                kb,
                a: &scratch[..bm * kb],
                panels,
                c: SharedMut(c[i0 * ldc..].as_mut_ptr()),
                ldc,
                bias: if k1 == k { bias } else { None },
            };
            let threads = plan.threads.min(n_panels);
            if threads <= 1 || bm * kb * n_panels * NR < PAR_WORK {
                // SAFETY: the operands were checked above (rows i0..i0 + bm of `c`); all
                // panels, one caller.
                unsafe { job.run(0, n_panels) };
                continue;
            }
            // Closures get no target features of their own: each task enters through the
            // dispatch.
            let job = &job;
            rayon::scope(|s| {
                for t in 1..threads {
                    s.spawn(move |_| {
                        panel_range(job, n_panels * t / threads, n_panels * (t + 1) / threads)
                    });
                }
                panel_range(job, 0, n_panels / threads);
            });
        }
    }
}

/// How many groups of at most `rows` [`row_groups`] makes of `m` rows.
#[inline(always)]
fn group_count(m: usize, rows: usize) -> usize {
    // (No division for the common single group: it costs more than a small step's matmul.)
    if m <= rows {
        1
    } else {
        m.div_ceil(rows.max(1))
    }
}

/// Splits `m` rows into `n` groups ([`group_count`]), as even as possible (8 rows with a 6-row
/// kernel: 4 + 4, not 6 + 2): a kernel of few rows has too few accumulators to hide the latency
/// of its multiply-adds. Yields `(first row, rows)`.
#[inline(always)]
fn row_groups(m: usize, n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).map(move |i| {
        if n == 1 {
            (0, m)
        } else {
            (m * i / n, m * (i + 1) / n - m * i / n)
        }
    })
}

/// Packs `bm` rows of `a` (stride `lda`) for the microkernel: in the groups of [`row_groups`],
/// each group column by column, so that the kernel reads the group's values at step `kk` side
/// by side.
#[inline(always)]
fn pack_rows<T: Real>(a: &[T], lda: usize, bm: usize, k: usize, rows: usize, dst: &mut [T]) {
    for (r0, rr) in row_groups(bm, group_count(bm, rows)) {
        let group = &mut dst[r0 * k..(r0 + rr) * k];
        let a = &a[r0 * lda..];
        match rr {
            8 => pack_group::<T, 8>(a, lda, k, group),
            7 => pack_group::<T, 7>(a, lda, k, group),
            6 => pack_group::<T, 6>(a, lda, k, group),
            5 => pack_group::<T, 5>(a, lda, k, group),
            4 => pack_group::<T, 4>(a, lda, k, group),
            3 => pack_group::<T, 3>(a, lda, k, group),
            2 => pack_group::<T, 2>(a, lda, k, group),
            _ => pack_group::<T, 1>(a, lda, k, group),
        }
    }
}

#[inline(always)]
fn pack_group<T: Real, const R: usize>(a: &[T], lda: usize, k: usize, group: &mut [T]) {
    if R == 1 {
        // One row packs as itself.
        group[..k].copy_from_slice(&a[..k]);
        return;
    }
    let src: [&[T]; R] = std::array::from_fn(|r| &a[r * lda..r * lda + k]);
    for (kk, col) in group.chunks_exact_mut(R).take(k).enumerate() {
        for r in 0..R {
            col[r] = src[r][kk];
        }
    }
}

/// A block of rows of a product, its left operand packed, to run in ranges of panels.
struct Job<'a, T> {
    /// `group_count(m, rows)`.
    groups: usize,
    fma: bool,
    chains: bool,
    m: usize,
    /// Depth of the whole product (the panels' rows).
    k: usize,
    /// This block's rows of the panels: `k0..k0 + kb`. A block after the first adds to `c`.
    k0: usize,
    kb: usize,
    /// `m` rows of `kb`, packed by [`pack_rows`].
    a: &'a [T],
    panels: &'a [T],
    /// `m` rows of at least `panels * NR` values at stride `ldc`.
    c: SharedMut<T>,
    ldc: usize,
    bias: Option<&'a [T]>,
}

// SAFETY: shared by the tasks of one product, which read `a` and write disjoint panels of `c`.
unsafe impl<T: Sync> Sync for Job<'_, T> {}

impl<T: Real> Job<'_, T> {
    /// Panels `p0..p1` of this block.
    ///
    /// # Safety
    /// `p0..p1` within the panels, `c` as documented on the field, and no other caller runs
    /// an overlapping range at once.
    #[inline(always)]
    unsafe fn run(&self, p0: usize, p1: usize) {
        let (k, kb) = (self.k, self.kb);
        let acc = self.k0 > 0;
        for p in p0..p1 {
            let b = &self.panels[(p * k + self.k0) * NR..(p * k + self.k0 + kb) * NR];
            let bias = self.bias.map(|bias| &bias[p * NR..(p + 1) * NR]);
            for (r0, rr) in row_groups(self.m, self.groups) {
                let a = &self.a[r0 * kb..(r0 + rr) * kb];
                // SAFETY: rows r0..r0 + rr < m of `c`, the NR columns of panel p (the caller's
                // contract).
                let c = unsafe { self.c.ptr().add(r0 * self.ldc + p * NR) };
                let (a, b) = (a.as_ptr(), b.as_ptr());
                // SAFETY: `a` holds rr packed rows of kb, `b` kb rows of one panel.
                unsafe {
                    let (ch, ldc) = (self.chains, self.ldc);
                    match (self.fma, acc) {
                        (true, false) => {
                            kernel_rows::<T, true, false>(rr, ch, kb, a, b, c, ldc, bias)
                        }
                        (true, true) => {
                            kernel_rows::<T, true, true>(rr, ch, kb, a, b, c, ldc, bias)
                        }
                        (false, false) => {
                            kernel_rows::<T, false, false>(rr, ch, kb, a, b, c, ldc, bias)
                        }
                        (false, true) => {
                            kernel_rows::<T, false, true>(rr, ch, kb, a, b, c, ldc, bias)
                        }
                    }
                }
            }
        }
    }
}

multiversion! {
    /// Panels `p0..p1` of a block split across tasks (each task a disjoint range).
    fn panel_range<T: Real>(job: &Job<'_, T>, p0: usize, p1: usize) {
        // SAFETY: `matmul_panels` checked the operands and gives each task its own range.
        unsafe { job.run(p0, p1) }
    }
}

/// The microkernel for `r` rows (1..=MAX_ROWS).
///
/// # Safety
/// As [`kernel`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn kernel_rows<T: Real, const FMA: bool, const ACC: bool>(
    r: usize,
    chains: bool,
    k: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    ldc: usize,
    bias: Option<&[T]>,
) {
    // Few rows leave too few accumulators to hide the latency of the multiply-adds: those
    // kernels keep S independent sums over alternate steps of k (as many as the registers hold)
    // and add them at the end. Without registers to spare (SSE2: 16 of 16 bytes) one sum.
    let wide = std::mem::size_of::<T>() > 4 || !chains;
    // SAFETY: the caller's contract, for `r` rows.
    unsafe {
        match (r, wide) {
            (8, _) => kernel::<T, 8, 1, FMA, ACC>(k, a, b, c, ldc, bias),
            (7, _) => kernel::<T, 7, 1, FMA, ACC>(k, a, b, c, ldc, bias),
            (6, _) => kernel::<T, 6, 1, FMA, ACC>(k, a, b, c, ldc, bias),
            (5, _) => kernel::<T, 5, 1, FMA, ACC>(k, a, b, c, ldc, bias),
            (4, _) => kernel::<T, 4, 1, FMA, ACC>(k, a, b, c, ldc, bias),
            (3, false) => kernel::<T, 3, 2, FMA, ACC>(k, a, b, c, ldc, bias),
            (3, true) => kernel::<T, 3, 1, FMA, ACC>(k, a, b, c, ldc, bias),
            (2, false) => kernel::<T, 2, 2, FMA, ACC>(k, a, b, c, ldc, bias),
            (2, true) => kernel::<T, 2, 1, FMA, ACC>(k, a, b, c, ldc, bias),
            (_, false) => kernel::<T, 1, 4, FMA, ACC>(k, a, b, c, ldc, bias),
            (_, true) if chains => kernel::<T, 1, 2, FMA, ACC>(k, a, b, c, ldc, bias),
            (_, true) => kernel::<T, 1, 1, FMA, ACC>(k, a, b, c, ldc, bias),
        }
    }
}

/// `R` packed rows times one panel: `S x R x NR` accumulators (`S` sums over alternate steps of
/// `k`), one pass over `k`, starting from zero or (`ACC`) from the sums already in `c`.
///
/// # Safety
/// `a` holds `k * R` values (packed rows), `b` holds `k * NR` values (one panel), `c` holds
/// `R` rows of `NR` values at stride `ldc`, and `bias` (if any) `NR` values.
#[inline(always)]
unsafe fn kernel<T: Real, const R: usize, const S: usize, const FMA: bool, const ACC: bool>(
    k: usize,
    a: *const T,
    b: *const T,
    c: *mut T,
    ldc: usize,
    bias: Option<&[T]>,
) {
    let mut acc = [[[T::zero(); NR]; R]; S];
    if ACC {
        for (r, acc) in acc[0].iter_mut().enumerate() {
            // SAFETY: row r < R of `c` holds NR values (the caller's contract).
            *acc = unsafe { std::ptr::read(c.add(r * ldc) as *const [T; NR]) };
        }
    }
    let whole = k / S * S;
    for kk in (0..whole).step_by(S) {
        for (s, acc) in acc.iter_mut().enumerate() {
            // SAFETY: kk + s < k (the caller's contract).
            unsafe { step::<T, R, FMA>(acc, a, b, kk + s) };
        }
    }
    for kk in whole..k {
        // SAFETY: kk < k (the caller's contract).
        unsafe { step::<T, R, FMA>(&mut acc[0], a, b, kk) };
    }
    let (first, rest) = acc.split_first_mut().expect("S >= 1");
    for other in rest {
        for r in 0..R {
            for j in 0..NR {
                first[r][j] += other[r][j];
            }
        }
    }
    // The bias as a whole vector (zero when absent): one add per value, no branch in the loop
    // (a branch here keeps the compiler from vectorizing the accumulators).
    let mut bias_v = [T::zero(); NR];
    if let Some(b) = bias {
        bias_v.copy_from_slice(&b[..NR]);
    }
    for r in 0..R {
        for j in 0..NR {
            first[r][j] += bias_v[j];
        }
        // SAFETY: row r < R of `c` has room for NR values (the caller's contract).
        unsafe { std::ptr::write(c.add(r * ldc) as *mut [T; NR], first[r]) };
    }
}

/// Step `kk` of `k` into one set of sums (a function, not a closure: closures do not get the
/// caller's SIMD features when they are not inlined).
///
/// # Safety
/// `kk < k` of `kernel`'s operands.
#[inline(always)]
unsafe fn step<T: Real, const R: usize, const FMA: bool>(
    acc: &mut [[T; NR]; R],
    a: *const T,
    b: *const T,
    kk: usize,
) {
    // SAFETY: inside the panel and the packed rows (the caller's contract).
    let (av, bv) = unsafe {
        (
            *(a.add(kk * R) as *const [T; R]),
            *(b.add(kk * NR) as *const [T; NR]),
        )
    };
    for r in 0..R {
        for j in 0..NR {
            acc[r][j] = if FMA {
                av[r].mul_add(bv[j], acc[r][j])
            } else {
                acc[r][j] + av[r] * bv[j]
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::panels::{grouped, GatePanels};
    use super::*;

    multiversion! {
        fn product<T: Real>(plan: Plan, m: usize, k: usize, a: &[T], p: &[T], c: &mut [T], ldc: usize, bias: Option<&[T]>) {
            matmul_panels(plan, m, k, a, k, p, c, ldc, bias, &mut Vec::new())
        }
    }

    /// Every row count, with and without bias, fused or not, on one or more threads, in f32
    /// and f64 (their kernels keep different numbers of sums), against a plain triple loop
    /// (exact: small integers).
    #[test]
    fn panels_product_matches_a_plain_loop() {
        check::<f32>();
        check::<f64>();
    }

    fn check<T: Real>() {
        let v = |x: f64| T::from_f64(x);
        for &(m, k, hidden) in &[
            (1, 3, 5),
            (7, 32, 16),
            (13, 80, 40),
            (64, 128, 96),
            (9, 600, 20),
        ] {
            let a: Vec<f64> = (0..m * k).map(|i| ((i * 7 % 13) as f64) - 6.0).collect();
            // PyTorch's W (3H, k).
            let w: Vec<f64> = (0..3 * hidden * k)
                .map(|i| ((i * 5 % 11) as f64) * 0.5)
                .collect();
            let bias: Vec<f64> = (0..3 * hidden).map(|i| i as f64).collect();
            let w_t: Vec<T> = w.iter().map(|&x| v(x)).collect();
            let a_t: Vec<T> = a.iter().map(|&x| v(x)).collect();
            let packed = GatePanels::pack(&w_t, hidden, k);
            let ldc = 3 * hidden.div_ceil(NR) * NR;
            let mut grouped_bias = vec![T::zero(); ldc];
            for gate in 0..3 {
                for u in 0..hidden {
                    grouped_bias[grouped(u, gate)] = v(bias[gate * hidden + u]);
                }
            }
            for rows in 1..=MAX_ROWS {
                for (fma, threads) in [(true, 1), (false, 1), (true, 3)] {
                    let chains = rows % 2 == 1;
                    let plan = Plan {
                        rows,
                        fma,
                        chains,
                        threads,
                    };
                    for with_bias in [false, true] {
                        let mut c = vec![v(f64::NAN); m * ldc];
                        let b = with_bias.then_some(&grouped_bias[..]);
                        product(plan, m, k, &a_t, &packed.data, &mut c, ldc, b);
                        for i in 0..m {
                            for gate in 0..3 {
                                for u in 0..hidden {
                                    let want: f64 = (0..k)
                                        .map(|kk| a[i * k + kk] * w[(gate * hidden + u) * k + kk])
                                        .sum::<f64>()
                                        + if with_bias {
                                            bias[gate * hidden + u]
                                        } else {
                                            0.0
                                        };
                                    assert_eq!(
                                        c[i * ldc + grouped(u, gate)].to_f64(),
                                        want,
                                        "{} {m} {k} {hidden} {rows}",
                                        T::DTYPE.as_str()
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
