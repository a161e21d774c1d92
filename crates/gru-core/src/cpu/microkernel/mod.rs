//! The matmul microkernel: a tile of `R` rows of the left operand times `P` adjacent gate
//! panels (each `k x NR`), its `R x P` accumulators in registers, written once per SIMD level
//! with that level's intrinsics so that the hot loop's instructions are what the source says
//! (an autovectorizer once turned the AVX-512 build of a plain-Rust kernel into gathers and
//! scatters, 20-60x slower). `scripts/check_codegen.py` checks every level's build.
//!
//! The tile and the loops around it are written once, over [`PanelRow`]: one row of a panel in
//! a level's registers and the six operations the tile needs. Each level's file implements it
//! for f32 and f64; `scalar` is the portable reference the tests compare against.
//!
//! Every value sums its products over `k` in chains of [`CHAIN`] steps (tiles of 1-3 rows: each
//! chain in 2-4 interleaved partial sums over alternate steps, where the registers allow), each
//! chain's sum added to those before it, then adds the bias: a row's result may differ in the
//! last bits with the batch's size and level.

#[cfg(target_arch = "aarch64")]
mod aarch64_neon;
mod scalar;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;
#[cfg(target_arch = "x86_64")]
mod x86_sse2;

use super::panels::NR;
use super::simd::Level;
use super::team::SharedMut;
use crate::activation::Real;

/// Steps of `k` one chain of multiply-adds sums before its sums are added to those of the
/// chains before it (stored in `c`): a value summed in one chain of `k` products carries about
/// `sqrt(k)` times the rounding error of one; chains of 64 keep a trained 512-unit GRU closer to
/// the exact answer than PyTorch's own f32 (`scripts/accuracy.py`), for one load, add and store
/// of the tile's sums per 64 steps.
const CHAIN: usize = 64;

/// Most rows one tile takes (the largest tile compiled at any level).
pub(crate) const MAX_ROWS: usize = 8;

/// One row of a gate panel (`NR` values of `T`) held in a level's vector registers.
///
/// # Safety
/// Every method is `unsafe`: it runs the level's intrinsics, so it may only be called from a
/// function compiled for that level (`#[target_feature]`) on a CPU that has it, with pointers
/// valid for `NR` values (`load`, `store`) or one value (`splat`).
pub(super) trait PanelRow<T>: Copy {
    /// Vector registers one row takes.
    const REGS: usize;
    /// Vector registers the level has.
    const BANK: usize;
    /// Most rows of a tile at this level.
    const ROWS: usize;
    /// Panels a tile takes side by side (2 where one panel row is a single register).
    const PANELS: usize;
    /// One value of the left operand, broadcast.
    type Splat: Copy;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const T) -> Self;
    unsafe fn store(self, p: *mut T);
    unsafe fn splat(p: *const T) -> Self::Splat;
    /// `self + a * b`, one fused multiply-add per value where the level has FMA.
    unsafe fn mul_add(self, a: Self::Splat, b: Self) -> Self;
    unsafe fn add(self, other: Self) -> Self;
}

/// Whether a tile of `r` rows and `p` panels with `s` partial sums keeps its accumulators, one
/// row of each panel and the broadcast value in the registers.
const fn fits(regs: usize, bank: usize, r: usize, p: usize, s: usize) -> bool {
    s * r * p * regs + p * regs < bank
}

/// A block of rows of a product, to run in ranges of panels.
pub(crate) struct Block<'a, T> {
    /// How many groups of rows `m` splits into ([`row_groups`]).
    pub groups: usize,
    pub m: usize,
    /// Depth of the whole product (the panels' rows).
    pub k: usize,
    /// This block's rows of the panels: `k0..k0 + kb`. A block after the first adds to `c`.
    pub k0: usize,
    pub kb: usize,
    /// `m` rows of `kb` values at stride `lda`.
    pub a: &'a [T],
    pub lda: usize,
    pub panels: &'a [T],
    /// `m` rows of at least `panels * NR` values at stride `ldc`.
    pub c: SharedMut<T>,
    pub ldc: usize,
    /// Grouped like a row of `c`, added after the last block of `k`.
    pub bias: Option<&'a [T]>,
}

// SAFETY: shared by the tasks of one product, which read `a` and write disjoint panels of `c`.
unsafe impl<T: Sync> Sync for Block<'_, T> {}

/// Splits `m` rows into `n` groups, as even as possible (8 rows with a 6-row tile: 4 + 4, not
/// 6 + 2): a tile of few rows has too few accumulators to hide the latency of its multiply-adds.
/// Yields `(first row, rows)`.
#[inline(always)]
pub(super) fn row_groups(m: usize, n: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..n).map(move |i| {
        if n == 1 {
            (0, m)
        } else {
            (m * i / n, m * (i + 1) / n - m * i / n)
        }
    })
}

/// A float type with a microkernel at every level.
pub(crate) trait SimdFloat: Real {
    /// Rows of the largest tile at `level`.
    fn tile_rows(level: Level) -> usize;
    /// Runs panels `p0..p1` of `block` with `level`'s tiles.
    ///
    /// # Safety
    /// The CPU has `level`; `p0..p1` lies within the block's panels, the block's operands are
    /// as its fields say, and no other caller runs an overlapping range at once.
    unsafe fn run(level: Level, block: &Block<'_, Self>, p0: usize, p1: usize);
}

/// Defines one level's entry for one float type: a function compiled for the level (never
/// inlined, so that the codegen check finds it by name) around the generic loop.
macro_rules! entry {
    ($name:ident, $t:ty, $row:ty $(, $features:literal)?) => {
        #[inline(never)]
        $(#[target_feature(enable = $features)])?
        pub(super) unsafe fn $name(block: &super::Block<'_, $t>, p0: usize, p1: usize) {
            // SAFETY: the caller's contract (`SimdFloat::run`).
            unsafe { super::run_block::<$t, $row>(block, p0, p1) }
        }
    };
}
use entry;

macro_rules! kernel_for {
    ($t:ident, $row:ident, $run:ident) => {
        impl SimdFloat for $t {
            fn tile_rows(level: Level) -> usize {
                match level {
                    Level::Scalar => rows_of::<$t, scalar::$row>(),
                    #[cfg(target_arch = "x86_64")]
                    Level::Baseline => rows_of::<$t, x86_sse2::$row>(),
                    #[cfg(target_arch = "x86_64")]
                    Level::Avx2 => rows_of::<$t, x86_avx2::$row>(),
                    #[cfg(target_arch = "x86_64")]
                    Level::Avx512 => rows_of::<$t, x86_avx512::$row>(),
                    #[cfg(target_arch = "aarch64")]
                    Level::Baseline => rows_of::<$t, aarch64_neon::$row>(),
                    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
                    Level::Baseline => rows_of::<$t, scalar::$row>(),
                    #[cfg(not(target_arch = "x86_64"))]
                    Level::Avx2 | Level::Avx512 => unreachable!("x86-64 levels on another CPU"),
                }
            }

            unsafe fn run(level: Level, block: &Block<'_, $t>, p0: usize, p1: usize) {
                // SAFETY: the caller's contract: the CPU has `level`.
                unsafe {
                    match level {
                        Level::Scalar => scalar::$run(block, p0, p1),
                        #[cfg(target_arch = "x86_64")]
                        Level::Baseline => x86_sse2::$run(block, p0, p1),
                        #[cfg(target_arch = "x86_64")]
                        Level::Avx2 => x86_avx2::$run(block, p0, p1),
                        #[cfg(target_arch = "x86_64")]
                        Level::Avx512 => x86_avx512::$run(block, p0, p1),
                        #[cfg(target_arch = "aarch64")]
                        Level::Baseline => aarch64_neon::$run(block, p0, p1),
                        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
                        Level::Baseline => scalar::$run(block, p0, p1),
                        #[cfg(not(target_arch = "x86_64"))]
                        Level::Avx2 | Level::Avx512 => unreachable!("x86-64 levels on another CPU"),
                    }
                }
            }
        }
    };
}
kernel_for!(f32, F32, run_f32);
kernel_for!(f64, F64, run_f64);

fn rows_of<T, V: PanelRow<T>>() -> usize {
    V::ROWS.min(MAX_ROWS)
}

/// Panels `p0..p1` of a block: per panel (or pair of panels), every group of rows, so that the
/// slice of the panels the tiles stream stays in L1 while the groups pass over it.
///
/// # Safety
/// As [`SimdFloat::run`], at `V`'s level.
#[inline(always)]
unsafe fn run_block<T: Real, V: PanelRow<T>>(blk: &Block<'_, T>, p0: usize, p1: usize) {
    let (k, kb) = (blk.k, blk.kb);
    let acc = blk.k0 > 0;
    let mut p = p0;
    while p < p1 {
        let pair = V::PANELS == 2 && p + 1 < p1;
        let b = blk.panels[(p * k + blk.k0) * NR..].as_ptr();
        // (Checked here so that the tiles may read `p * NR..` of it as whole panel rows.)
        let bias = blk
            .bias
            .map(|bias| bias[p * NR..(p + if pair { 2 } else { 1 }) * NR].as_ptr());
        for (r0, rr) in row_groups(blk.m, blk.groups) {
            let a = blk.a[r0 * blk.lda..(r0 + rr - 1) * blk.lda + kb].as_ptr();
            // SAFETY: rows r0..r0 + rr < m of `c`, the NR columns of panels p (and p + 1):
            // the caller's contract.
            let c = unsafe { blk.c.ptr().add(r0 * blk.ldc + p * NR) };
            let t = Tile {
                k: kb,
                a,
                lda: blk.lda,
                b,
                b_next: k * NR,
                c,
                ldc: blk.ldc,
                bias,
            };
            // SAFETY: `a` holds rr rows of kb at stride lda, `b` kb rows of one panel (two: the next
            // panel starts k * NR values later), `c` and `bias` as checked above.
            unsafe {
                match (pair, acc) {
                    (true, false) => t.rows::<V, 2, false>(rr),
                    (true, true) => t.rows::<V, 2, true>(rr),
                    (false, false) => t.rows::<V, 1, false>(rr),
                    (false, true) => t.rows::<V, 1, true>(rr),
                }
            }
        }
        p += if pair { 2 } else { 1 };
    }
}

/// The operands of one tile.
struct Tile<T> {
    /// Depth of this tile's product.
    k: usize,
    /// Its rows: value `r` of step `kk` at `r * lda + kk`.
    a: *const T,
    lda: usize,
    /// The first panel's `k` rows of `NR`; the second panel (if any) `b_next` values later.
    b: *const T,
    b_next: usize,
    /// `R` rows of `P * NR` values at stride `ldc`.
    c: *mut T,
    ldc: usize,
    /// `P * NR` values, added at the end.
    bias: Option<*const T>,
}

impl<T: Copy> Tile<T> {
    /// The tile for `r` rows (1..=MAX_ROWS): tiles of 1-3 rows keep extra partial sums where the
    /// registers allow.
    ///
    /// # Safety
    /// As [`Tile::run`].
    #[inline(always)]
    unsafe fn rows<V: PanelRow<T>, const P: usize, const ACC: bool>(&self, r: usize) {
        let s3 = if fits(V::REGS, V::BANK, 3, P, 2) {
            2
        } else {
            1
        };
        let s2 = if fits(V::REGS, V::BANK, 2, P, 2) {
            2
        } else {
            1
        };
        let s1 = if fits(V::REGS, V::BANK, 1, P, 4) {
            4
        } else if fits(V::REGS, V::BANK, 1, P, 2) {
            2
        } else {
            1
        };
        // SAFETY: the caller's contract, for `r` rows.
        unsafe {
            match (r, s3, s2, s1) {
                (8, ..) => self.run::<V, 8, P, 1, ACC>(),
                (7, ..) => self.run::<V, 7, P, 1, ACC>(),
                (6, ..) => self.run::<V, 6, P, 1, ACC>(),
                (5, ..) => self.run::<V, 5, P, 1, ACC>(),
                (4, ..) => self.run::<V, 4, P, 1, ACC>(),
                (3, 2, ..) => self.run::<V, 3, P, 2, ACC>(),
                (3, ..) => self.run::<V, 3, P, 1, ACC>(),
                (2, _, 2, _) => self.run::<V, 2, P, 2, ACC>(),
                (2, ..) => self.run::<V, 2, P, 1, ACC>(),
                (1, _, _, 4) => self.run::<V, 1, P, 4, ACC>(),
                (1, _, _, 2) => self.run::<V, 1, P, 2, ACC>(),
                (1, ..) => self.run::<V, 1, P, 1, ACC>(),
                _ => unreachable!("a tile of {r} rows"),
            }
        }
    }

    /// `R` rows times `P` panels: `S x R x P` accumulators (`S` sums over alternate
    /// steps of `k`), one pass over `k` in chains of [`CHAIN`] steps, each chain's sums added to
    /// those stored in `c` by the chains before it (and, with `ACC`, by an earlier block of `k`).
    ///
    /// # Safety
    /// `a` holds `R` rows of `k` values at stride `lda`, each panel `k * NR` values, `c` `R` rows of `P * NR` values at
    /// stride `ldc`, `bias` (if any) `P * NR` values; the CPU has `V`'s level.
    #[inline(always)]
    unsafe fn run<
        V: PanelRow<T>,
        const R: usize,
        const P: usize,
        const S: usize,
        const ACC: bool,
    >(
        &self,
    ) {
        // SAFETY (whole body): pointers within the operands, per the contract above.
        unsafe {
            // One pointer per row, so that each step addresses its broadcasts off them (no
            // per-row address arithmetic inside the loop).
            let mut rows = [self.a; R];
            for (r, row) in rows.iter_mut().enumerate() {
                *row = self.a.add(r * self.lda);
            }
            let mut k0 = 0;
            while k0 < self.k {
                let k1 = (k0 + CHAIN).min(self.k);
                let mut acc = [[[V::zero(); P]; R]; S];
                let whole = k0 + (k1 - k0) / S * S;
                let mut kk = k0;
                while kk < whole {
                    for (s, acc) in acc.iter_mut().enumerate() {
                        self.step::<V, R, P>(acc, &rows, kk + s);
                    }
                    kk += S;
                }
                while kk < k1 {
                    self.step::<V, R, P>(&mut acc[0], &rows, kk);
                    kk += 1;
                }
                let (sum, rest) = acc.split_first_mut().expect("S >= 1");
                for other in rest {
                    for r in 0..R {
                        for p in 0..P {
                            sum[r][p] = sum[r][p].add(other[r][p]);
                        }
                    }
                }
                // The sums of the earlier steps of `k` (this tile's earlier chains, or an
                // earlier block's), added to this chain's.
                if ACC || k0 > 0 {
                    for r in 0..R {
                        for p in 0..P {
                            let before = V::load(self.c.add(r * self.ldc + p * NR));
                            sum[r][p] = before.add(sum[r][p]);
                        }
                    }
                }
                if k1 == self.k {
                    if let Some(bias) = self.bias {
                        for p in 0..P {
                            let b = V::load(bias.add(p * NR));
                            for row in sum.iter_mut() {
                                row[p] = row[p].add(b);
                            }
                        }
                    }
                }
                for (r, row) in sum.iter().enumerate() {
                    for (p, v) in row.iter().enumerate() {
                        v.store(self.c.add(r * self.ldc + p * NR));
                    }
                }
                k0 = k1;
            }
        }
    }

    /// Step `kk` of the tile into one set of sums: one row of each panel, then per row of `a`
    /// one broadcast and `P` multiply-adds.
    ///
    /// # Safety
    /// `kk < k`, as [`Tile::run`].
    #[inline(always)]
    unsafe fn step<V: PanelRow<T>, const R: usize, const P: usize>(
        &self,
        acc: &mut [[V; P]; R],
        rows: &[*const T; R],
        kk: usize,
    ) {
        // SAFETY: inside the panels and the rows of `a` (the caller's contract).
        unsafe {
            // (A loop, not `array::from_fn`: a closure gets no target features if not inlined.)
            let mut b = [V::zero(); P];
            for (p, b) in b.iter_mut().enumerate() {
                *b = V::load(self.b.add(p * self.b_next + kk * NR));
            }
            for (acc, row) in acc.iter_mut().zip(rows) {
                let a = V::splat(row.add(kk));
                for p in 0..P {
                    acc[p] = acc[p].mul_add(a, b[p]);
                }
            }
        }
    }
}

/// Defines a [`PanelRow`] of `$n` vector registers `$v` of `$t` from the level's intrinsics:
/// `$zero()`, `$load(ptr)` and `$store(ptr, v)` (unaligned), `$set1(x)`, `$add(a, b)`, and the
/// multiply-add `|acc, a, b| acc + a * b`.
macro_rules! vector_row {
    (
        $name:ident: [$v:ty; $n:literal] of $t:ty,
        bank $bank:literal, rows $rows:literal, panels $panels:literal,
        $zero:ident, $load:ident, $store:ident, $set1:ident, $add:ident,
        |$acc:ident, $a:ident, $b:ident| $madd:expr
    ) => {
        #[derive(Clone, Copy)]
        pub(super) struct $name([$v; $n]);

        impl super::PanelRow<$t> for $name {
            const REGS: usize = $n;
            const BANK: usize = $bank;
            const ROWS: usize = $rows;
            const PANELS: usize = $panels;
            type Splat = $v;

            #[inline(always)]
            unsafe fn zero() -> Self {
                // SAFETY: the trait's contract (the level's features).
                Self([unsafe { $zero() }; $n])
            }

            #[inline(always)]
            unsafe fn load(p: *const $t) -> Self {
                const LANES: usize = super::NR / $n;
                // SAFETY: the trait's contract: `p` valid for NR values.
                unsafe {
                    let mut v = [$zero(); $n];
                    for (i, v) in v.iter_mut().enumerate() {
                        *v = $load(p.add(i * LANES));
                    }
                    Self(v)
                }
            }

            #[inline(always)]
            unsafe fn store(self, p: *mut $t) {
                const LANES: usize = super::NR / $n;
                // SAFETY: the trait's contract: `p` valid for NR values.
                unsafe {
                    for i in 0..$n {
                        $store(p.add(i * LANES), self.0[i]);
                    }
                }
            }

            #[inline(always)]
            unsafe fn splat(p: *const $t) -> $v {
                // SAFETY: the trait's contract: `p` valid for one value.
                unsafe { $set1(*p) }
            }

            #[inline(always)]
            unsafe fn mul_add(self, a: $v, b: Self) -> Self {
                let mut r = self.0;
                for i in 0..$n {
                    let ($acc, $a, $b) = (r[i], a, b.0[i]);
                    // SAFETY: the trait's contract (the level's features).
                    r[i] = unsafe { $madd };
                }
                Self(r)
            }

            #[inline(always)]
            unsafe fn add(self, other: Self) -> Self {
                let mut r = self.0;
                for i in 0..$n {
                    // SAFETY: the trait's contract (the level's features).
                    r[i] = unsafe { $add(r[i], other.0[i]) };
                }
                Self(r)
            }
        }
    };
}
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
use vector_row;
