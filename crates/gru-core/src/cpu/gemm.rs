//! The matrix products of the CPU recurrence, on weights packed as gate panels
//! ([`super::panels`]): a register-blocked microkernel (a few rows of the left operand times one
//! or two panels, the accumulators in registers, the panels read contiguously, the rows in
//! place), looped over blocks of rows and the panels.
//!
//! The tiles themselves are [`super::microkernel`]'s, one build per SIMD level; this file blocks
//! the product for the caches and splits panels across threads.

use super::microkernel::{Block, SimdFloat, MAX_ROWS};
use super::panels::NR;
use super::simd::Level;
use super::team::SharedMut;

/// Bytes of the left operand kept in cache while every panel passes over it.
const A_BLOCK_BYTES: usize = 128 << 10;

/// Depth of a block of `k`: a slice of a panel (`KC x NR` values) stays in L1.
const KC: usize = 256;

/// Below this many multiply-adds a block of rows runs on one thread.
const PAR_WORK: usize = 1 << 20;

/// How a product runs: the SIMD level of its tiles, their rows (at most the level's), whether
/// the level fuses `a * b + c` (for the gate pass), and on how many threads (1 when the caller's
/// team has split the work already).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Plan {
    pub level: Level,
    pub rows: usize,
    pub fma: bool,
    pub threads: usize,
}

impl Plan {
    /// The plan at the CPU's level (see [`super::simd::level`]).
    pub fn new<T: SimdFloat>(threads: usize) -> Self {
        Self::at::<T>(super::simd::level(), threads)
    }

    /// The plan at `level`, or at the CPU's best level if that is lower (the tiles run the
    /// level's instructions).
    pub fn at<T: SimdFloat>(level: Level, threads: usize) -> Self {
        let level = level.min(super::simd::detected());
        Self {
            level,
            rows: T::tile_rows(level),
            fma: level.has_fma(),
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
/// `c` when given. The tiles run the plan's level and read `a` in place (row by row: broadcasts
/// need no packed copy).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul_panels<T: SimdFloat>(
    plan: Plan,
    m: usize,
    k: usize,
    a: &[T],
    lda: usize,
    panels: &[T],
    c: &mut [T],
    ldc: usize,
    bias: Option<&[T]>,
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
    // (`Plan`'s fields are public: a level above the CPU's would run instructions it lacks.)
    assert!(
        plan.level <= super::simd::detected(),
        "{:?} on this CPU",
        plan.level
    );
    let rows = plan.rows.clamp(1, MAX_ROWS);
    // Blocks of `k`, so that the slice of a panel the kernel streams stays in L1 while every
    // group of rows passes over it; later blocks continue the sums the earlier ones stored.
    let k_blocks = k.div_ceil(KC);
    for kb_i in 0..k_blocks {
        let (k0, k1) = (k * kb_i / k_blocks, k * (kb_i + 1) / k_blocks);
        let kb = k1 - k0;
        let block = block_rows::<T>(rows, kb);
        for i0 in (0..m).step_by(block) {
            let bm = block.min(m - i0);
            let job = Block {
                groups: group_count(bm, rows),
                m: bm,
                k,
                k0,
                kb,
                a: &a[i0 * lda + k0..(i0 + bm - 1) * lda + k1],
                lda,
                panels,
                c: SharedMut(c[i0 * ldc..].as_mut_ptr()),
                ldc,
                bias: if k1 == k { bias } else { None },
            };
            let threads = plan.threads.min(n_panels);
            if threads <= 1 || bm * kb * n_panels * NR < PAR_WORK {
                // SAFETY: the operands were checked above (rows i0..i0 + bm of `c`); all
                // panels, one caller; the plan's level is the CPU's or below.
                unsafe { T::run(plan.level, &job, 0, n_panels) };
                continue;
            }
            let (job, level) = (&job, plan.level);
            // SAFETY (each task): as above, and each task runs its own range of panels.
            rayon::scope(|s| {
                for t in 1..threads {
                    s.spawn(move |_| unsafe {
                        T::run(
                            level,
                            job,
                            n_panels * t / threads,
                            n_panels * (t + 1) / threads,
                        )
                    });
                }
                unsafe { T::run(level, job, 0, n_panels / threads) };
            });
        }
    }
}

/// How many groups of at most `rows` to split `m` rows into (see `microkernel::row_groups`).
#[inline(always)]
fn group_count(m: usize, rows: usize) -> usize {
    // (No division for the common single group: it costs more than a small step's matmul.)
    if m <= rows {
        1
    } else {
        m.div_ceil(rows.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::super::panels::{grouped, GatePanels};
    use super::*;

    /// Every level this CPU has (and the scalar reference), every row count, with and without
    /// bias, on one or more threads, in f32 and f64 (their tiles keep different numbers of sums;
    /// shapes with an odd number of panels and with several blocks of k), against a plain triple
    /// loop (exact: small integers).
    #[test]
    fn panels_product_matches_a_plain_loop() {
        for level in crate::cpu::simd::levels() {
            check::<f32>(level);
            check::<f64>(level);
        }
    }

    fn check<T: SimdFloat>(level: Level) {
        let v = |x: f64| T::from_f64(x);
        // (64, 256, 80): 15 panels over 3 threads, ranges of odd length starting at odd panels.
        // `pad`: rows of `a` longer than k (a stride past the product's depth).
        for &(m, k, hidden, pad) in &[
            (1, 3, 5, 0),
            (7, 32, 16, 3),
            (13, 80, 40, 0),
            (64, 128, 96, 0),
            (64, 256, 80, 5),
            (9, 600, 20, 1),
        ] {
            let lda = k + pad;
            let a: Vec<f64> = (0..m * lda).map(|i| ((i * 7 % 13) as f64) - 6.0).collect();
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
                for threads in [1, 3] {
                    let plan = Plan {
                        rows,
                        ..Plan::at::<T>(level, threads)
                    };
                    for with_bias in [false, true] {
                        let mut c = vec![v(f64::NAN); m * ldc];
                        let b = with_bias.then_some(&grouped_bias[..]);
                        let p = &packed.data;
                        matmul_panels(plan, m, k, &a_t, lda, p, &mut c, ldc, b);
                        for i in 0..m {
                            for gate in 0..3 {
                                for u in 0..hidden {
                                    let want: f64 = (0..k)
                                        .map(|kk| a[i * lda + kk] * w[(gate * hidden + u) * k + kk])
                                        .sum::<f64>()
                                        + if with_bias {
                                            bias[gate * hidden + u]
                                        } else {
                                            0.0
                                        };
                                    assert_eq!(
                                        c[i * ldc + grouped(u, gate)].to_f64(),
                                        want,
                                        "{} {level:?} {m} {k} {hidden} {rows}",
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
