//! The int8 linear of a dynamically quantized GRU, packed once and run fast, with fbgemm's AVX2
//! numbers: `vpmaddubsw` sums the u8 x i8 products of pairs `(k, k + 1)` saturating at i16 (as
//! fbgemm's AVX2 kernel does; never reached with `reduce_range`), `vpmaddwd` with ones adds two
//! pairs in i32, and the epilogue is `requantizeForFloatAvx2`'s: the zero points' offsets
//! subtracted in i32, then `fma(f32(raw), f32(scale_in * scale_w), bias)`.
//!
//! Weights are packed in blocks of 8 output columns x 4 inputs (32 bytes: column c's 4 values
//! at bytes 4c..4c + 4), so that one broadcast of 4 input bytes meets 8 columns. On aarch64 with
//! the dot-product instructions the same blocks go through `sdot` (`int8/sdot.rs`). Elsewhere the
//! same sums run as plain loops (`run_portable`, the reference the tiles are tested against).

use super::input::InputQuant;
use super::weights::WeightScheme;

/// Output columns per block and inputs per group.
pub(crate) const NC: usize = 8;
const KG: usize = 4;

/// Rows and column blocks per tile of the SIMD paths (`sized_tile!` has an arm for each size).
const MR: usize = 4;
const NB: usize = 2;
/// Bytes of quantized inputs one pass over the column blocks works on.
const L2_BYTES: usize = 128 << 10;

/// The tiles of one call of `rows` rows over column blocks `blocks`, in the SIMD paths' order:
/// rows in chunks whose inputs stay in L2 while every column block passes over them; within a
/// chunk, pairs of column blocks whose weights stay in L1 over their row tiles.
/// `tile(i0, mr, b0, nb)`: rows `i0..i0 + mr`, blocks `b0..b0 + nb`, all checked to exist.
fn for_each_tile(
    p: &PackedInt8,
    (qa_len, sums_len, rows): (usize, usize, usize),
    blocks: std::ops::Range<usize>,
    mut tile: impl FnMut(usize, usize, usize, usize),
) {
    let groups = p.kp / KG;
    let nblocks = p.data.len() / (groups * NC * KG).max(1);
    assert!(qa_len >= rows * p.kp && sums_len >= rows && blocks.end <= nblocks);
    let mc = (L2_BYTES / p.kp.max(1)).clamp(MR, 4096) / MR * MR;
    for c0 in (0..rows).step_by(mc) {
        let c1 = (c0 + mc).min(rows);
        let mut b0 = blocks.start;
        while b0 < blocks.end {
            let nb = NB.min(blocks.end - b0);
            let mut i0 = c0;
            while i0 < c1 {
                let mr = MR.min(c1 - i0);
                tile(i0, mr, b0, nb);
                i0 += mr;
            }
            b0 += nb;
        }
    }
}

/// `$tile::<R, B, $Y>(args)` for a tile of `$mr` rows (1 to `MR`) and `$nb` blocks (1 to `NB`).
macro_rules! sized_tile {
    ($tile:ident::<$Y:ty>($mr:expr, $nb:expr; $($arg:expr),*)) => {
        match ($mr, $nb) {
            (4, 2) => $tile::<4, 2, $Y>($($arg),*),
            (3, 2) => $tile::<3, 2, $Y>($($arg),*),
            (2, 2) => $tile::<2, 2, $Y>($($arg),*),
            (1, 2) => $tile::<1, 2, $Y>($($arg),*),
            (4, _) => $tile::<4, 1, $Y>($($arg),*),
            (3, _) => $tile::<3, 1, $Y>($($arg),*),
            (2, _) => $tile::<2, 1, $Y>($($arg),*),
            _ => $tile::<1, 1, $Y>($($arg),*),
        }
    };
}

#[cfg(all(target_arch = "aarch64", target_endian = "little"))]
mod sdot;

/// Where a call writes its output rows: row `i`'s slice starts at the first column of the call's
/// first block.
pub(crate) trait RowsOut {
    fn rows(&self) -> usize;
    fn row(&mut self, i: usize) -> &mut [f32];
}

impl RowsOut for [&mut [f32]] {
    fn rows(&self) -> usize {
        self.len()
    }
    fn row(&mut self, i: usize) -> &mut [f32] {
        &mut *self[i]
    }
}

/// `rows` rows of one buffer, `stride` apart, each from column `offset`.
pub(crate) struct Strided<'a> {
    pub data: &'a mut [f32],
    pub rows: usize,
    pub stride: usize,
    pub offset: usize,
}

impl RowsOut for Strided<'_> {
    fn rows(&self) -> usize {
        self.rows
    }
    fn row(&mut self, i: usize) -> &mut [f32] {
        &mut self.data[i * self.stride + self.offset..(i + 1) * self.stride]
    }
}

/// One int8 linear, packed.
#[derive(Debug, Clone)]
pub(crate) struct PackedInt8 {
    n: usize,
    /// `k` rounded up to `KG` (zero weights and inputs past `k`).
    kp: usize,
    /// `[n / NC][kp / KG][NC][KG]`, `n` rounded up to `NC` with zero columns.
    data: Vec<i8>,
    /// Per column (padded): `sum_k W[j, k] - zp_W[j] * k` (fbgemm's column offsets), the
    /// weight's zero point and scale, the bias (0 when none).
    col_offsets: Vec<i32>,
    /// Per column: `sum_k W[j, k]` (the aarch64 tiles' correction for inputs offset by 128).
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    col_sums: Vec<i32>,
    zero_points: Vec<i32>,
    scales: Vec<f32>,
    bias: Option<Vec<f32>>,
}

impl PackedInt8 {
    /// `weight` `(n, k)` row-major.
    pub fn new(
        weight: &[i8],
        n: usize,
        k: usize,
        scheme: &WeightScheme,
        bias: Option<&[f32]>,
    ) -> Self {
        let kp = k.div_ceil(KG) * KG;
        let np = n.div_ceil(NC) * NC;
        let mut data = vec![0i8; np * kp];
        for j in 0..n {
            let (blk, c) = (j / NC, j % NC);
            for kk in 0..k {
                let (g, e) = (kk / KG, kk % KG);
                data[((blk * (kp / KG) + g) * NC + c) * KG + e] = weight[j * k + kk];
            }
        }
        let mut col_offsets = vec![0i32; np];
        let mut col_sums = vec![0i32; np];
        let mut zero_points = vec![0i32; np];
        let mut scales = vec![0f32; np];
        for j in 0..n {
            let (s, z) = scheme.of_row(j);
            let sum: i32 = weight[j * k..(j + 1) * k].iter().map(|&v| v as i32).sum();
            col_offsets[j] = sum.wrapping_sub(z.wrapping_mul(k as i32));
            col_sums[j] = sum;
            zero_points[j] = z;
            scales[j] = s;
        }
        let bias = bias.map(|b| {
            let mut v = b.to_vec();
            v.resize(np, 0.0);
            v
        });
        Self {
            n,
            kp,
            data,
            col_offsets,
            col_sums,
            zero_points,
            scales,
            bias,
        }
    }

    pub fn k_padded(&self) -> usize {
        self.kp
    }

    /// The column blocks that hold columns `cols`.
    pub fn blocks_of(cols: std::ops::Range<usize>) -> std::ops::Range<usize> {
        cols.start / NC..cols.end.div_ceil(NC)
    }

    /// Column blocks `blocks` of every row, on this thread; `y`'s rows start at column
    /// `blocks.start * NC`.
    pub fn run_blocks<Y: RowsOut + ?Sized>(
        &self,
        qa: &[u8],
        row_sums: &[i32],
        q: InputQuant,
        y: &mut Y,
        blocks: std::ops::Range<usize>,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if super::features::avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA (checked above).
                unsafe { avx2::run(self, qa, row_sums, q, y, blocks) };
                return;
            }
        }
        #[cfg(all(target_arch = "aarch64", target_endian = "little"))]
        {
            if super::features::neon_dotprod() && sdot::inputs_fit(&qa[..y.rows() * self.kp]) {
                // SAFETY: the CPU has the dot-product instructions; the inputs fit (checked).
                unsafe { sdot::run(self, qa, row_sums, q, y, blocks) };
                return;
            }
        }
        self.run_portable(qa, row_sums, q, y, blocks);
    }

    /// The same sums and epilogue as plain loops (and the reference the SIMD path is tested
    /// against).
    fn run_portable<Y: RowsOut + ?Sized>(
        &self,
        qa: &[u8],
        row_sums: &[i32],
        q: InputQuant,
        y: &mut Y,
        blocks: std::ops::Range<usize>,
    ) {
        let groups = self.kp / KG;
        let base = blocks.start * NC;
        let end = (blocks.end * NC).min(self.n);
        for i in 0..y.rows() {
            let yr = y.row(i);
            let a = &qa[i * self.kp..(i + 1) * self.kp];
            for (j, yj) in (base..end).zip(yr.iter_mut()) {
                let (blk, c) = (j / NC, j % NC);
                let mut acc: i32 = 0;
                for g in 0..groups {
                    let w = &self.data[((blk * groups + g) * NC + c) * KG..][..KG];
                    let a = &a[g * KG..(g + 1) * KG];
                    for p in 0..KG / 2 {
                        let s = a[2 * p] as i32 * w[2 * p] as i32
                            + a[2 * p + 1] as i32 * w[2 * p + 1] as i32;
                        acc = acc.wrapping_add(s.clamp(-32768, 32767));
                    }
                }
                *yj = self.epilogue(acc, i, j, row_sums, q);
            }
        }
    }

    #[inline(always)]
    fn epilogue(&self, acc: i32, i: usize, j: usize, row_sums: &[i32], q: InputQuant) -> f32 {
        let raw = acc
            .wrapping_sub(q.zero_point.wrapping_mul(self.col_offsets[j]))
            .wrapping_sub(row_sums[i].wrapping_mul(self.zero_points[j]));
        let mult = q.scale * self.scales[j];
        match &self.bias {
            Some(b) => (raw as f32).mul_add(mult, b[j]),
            None => raw as f32 * mult,
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{InputQuant, PackedInt8, RowsOut, KG, NC};

    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run<Y: RowsOut + ?Sized>(
        p: &PackedInt8,
        qa: &[u8],
        row_sums: &[i32],
        q: InputQuant,
        y: &mut Y,
        blocks: std::ops::Range<usize>,
    ) {
        let base = blocks.start;
        let sizes = (qa.len(), row_sums.len(), y.rows());
        super::for_each_tile(p, sizes, blocks, |i0, mr, b0, nb| {
            // SAFETY: AVX2 and FMA (this function's contract); the tile's rows and blocks exist
            // (checked by `for_each_tile`).
            unsafe { sized_tile!(tile::<Y>(mr, nb; p, qa, row_sums, q, y, i0, b0, base)) }
        });
    }

    /// Rows `i0..i0 + R` x column blocks `b0..b0 + B`: the accumulators stay in registers
    /// (R * B of them), each step of 4 inputs loads B weight vectors and broadcasts R inputs.
    ///
    /// # Safety
    /// AVX2 and FMA; the rows and blocks exist.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn tile<const R: usize, const B: usize, Y: RowsOut + ?Sized>(
        p: &PackedInt8,
        qa: &[u8],
        row_sums: &[i32],
        q: InputQuant,
        y: &mut Y,
        i0: usize,
        b0: usize,
        base: usize,
    ) {
        // SAFETY: the caller's contract: AVX2, FMA, and the rows and blocks exist.
        unsafe {
            let groups = p.kp / KG;
            let ones = _mm256_set1_epi16(1);
            let mut acc = [[_mm256_setzero_si256(); B]; R];
            let a0 = qa.as_ptr().add(i0 * p.kp);
            let w0 = p.data.as_ptr().add(b0 * groups * NC * KG);
            for g in 0..groups {
                let mut w = [_mm256_setzero_si256(); B];
                for (b, wb) in w.iter_mut().enumerate() {
                    *wb = _mm256_loadu_si256(w0.add((b * groups + g) * NC * KG) as *const __m256i);
                }
                for (r, acc_r) in acc.iter_mut().enumerate() {
                    let a = (a0.add(r * p.kp + g * KG) as *const i32).read_unaligned();
                    let a = _mm256_set1_epi32(a);
                    for b in 0..B {
                        let pairs = _mm256_maddubs_epi16(a, w[b]);
                        acc_r[b] = _mm256_add_epi32(acc_r[b], _mm256_madd_epi16(pairs, ones));
                    }
                }
            }
            let a_zp = _mm256_set1_epi32(q.zero_point);
            let a_scale = _mm256_set1_ps(q.scale);
            for (r, acc_r) in acc.iter().enumerate() {
                let i = i0 + r;
                let row_sum = _mm256_set1_epi32(row_sums[i]);
                for (b, &acc_rb) in acc_r.iter().enumerate() {
                    let j0 = (b0 + b) * NC;
                    let ld =
                        |v: &[i32]| _mm256_loadu_si256(v[j0..j0 + NC].as_ptr() as *const __m256i);
                    let raw = _mm256_sub_epi32(
                        _mm256_sub_epi32(acc_rb, _mm256_mullo_epi32(a_zp, ld(&p.col_offsets))),
                        _mm256_mullo_epi32(row_sum, ld(&p.zero_points)),
                    );
                    let mult =
                        _mm256_mul_ps(a_scale, _mm256_loadu_ps(p.scales[j0..j0 + NC].as_ptr()));
                    let rawf = _mm256_cvtepi32_ps(raw);
                    let out = match &p.bias {
                        Some(bias) => {
                            _mm256_fmadd_ps(rawf, mult, _mm256_loadu_ps(bias[j0..j0 + NC].as_ptr()))
                        }
                        None => _mm256_mul_ps(rawf, mult),
                    };
                    let yr = y.row(i);
                    let y0 = j0 - base * NC;
                    if j0 + NC <= p.n {
                        _mm256_storeu_ps(yr[y0..y0 + NC].as_mut_ptr(), out);
                    } else {
                        let mut tmp = [0f32; NC];
                        _mm256_storeu_ps(tmp.as_mut_ptr(), out);
                        let e = p.n - j0;
                        yr[y0..y0 + e].copy_from_slice(&tmp[..e]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The packed SIMD paths give the portable loops' numbers bit for bit, saturation and zero
    /// points included, for sizes that leave partial blocks and tiles and half blocks.
    #[test]
    fn simd_matches_the_portable_sums() {
        let mut rng = crate::quantized::test_rng::XorShift::new(0x2545_f491_4f6c_dd1du64);
        let mut next = move || rng.next_u64();
        for (rows, n, k, zp_w) in [
            (1, 24, 16, 0),
            (5, 19, 13, 0),
            (9, 40, 37, 3),
            (3, 8, 4, -7),
            (6, 13, 64, 0),
        ] {
            let w: Vec<i8> = (0..n * k).map(|_| next() as i8).collect();
            let scheme = WeightScheme::PerChannel {
                scales: (0..n).map(|j| 0.01 + j as f32 * 1e-3).collect(),
                zero_points: vec![zp_w; n],
            };
            let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.1 - 1.0).collect();
            // Full bytes (saturating pairs) and inputs of at most 128 (`reduce_range`'s, which
            // the aarch64 dot-product tiles take).
            for (b, top) in [(Some(&bias[..]), 255), (None, 255), (Some(&bias[..]), 128)] {
                let p = PackedInt8::new(&w, n, k, &scheme, b);
                let mut qa = vec![0u8; rows * p.k_padded()];
                for i in 0..rows {
                    for kk in 0..k {
                        qa[i * p.k_padded() + kk] = (next() % (top + 1)) as u8;
                    }
                    // The largest input somewhere in every row.
                    qa[i * p.k_padded() + i % k] = top as u8;
                }
                let sums: Vec<i32> = qa
                    .chunks(p.k_padded())
                    .map(|r| r.iter().map(|&v| v as i32).sum())
                    .collect();
                let q = InputQuant {
                    scale: 0.0123,
                    zero_point: 17,
                };
                let mut a = vec![vec![0f32; n]; rows];
                let mut bb = vec![vec![0f32; n]; rows];
                p.run_blocks(
                    &qa,
                    &sums,
                    q,
                    &mut a.iter_mut().map(|r| &mut r[..]).collect::<Vec<_>>()[..],
                    0..n.div_ceil(NC),
                );
                p.run_portable(
                    &qa,
                    &sums,
                    q,
                    &mut bb.iter_mut().map(|r| &mut r[..]).collect::<Vec<_>>()[..],
                    0..n.div_ceil(NC),
                );
                let bits = |v: &Vec<Vec<f32>>| -> Vec<u32> {
                    v.iter().flatten().map(|x| x.to_bits()).collect()
                };
                assert_eq!(bits(&a), bits(&bb), "rows {rows} n {n} k {k} top {top}");
            }
        }
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release -p gru-core --lib int8::speed -- --ignored --nocapture`: the
    /// kernel's multiply-adds per second on one thread (a yardstick, not a check).
    #[test]
    #[ignore]
    fn kernel_rate() {
        // The large config's recurrence, then the medium, long and small ones'.
        for (rows, n, k) in [(64, 1536, 512), (32, 768, 256), (8, 384, 128), (1, 96, 32)] {
            rate(rows, n, k);
        }
    }

    fn rate(rows: usize, n: usize, k: usize) {
        let w: Vec<i8> = (0..n * k).map(|i| (i * 7 % 251) as i8).collect();
        let scheme = WeightScheme::PerTensor {
            scale: 0.01,
            zero_point: 0,
        };
        let p = PackedInt8::new(&w, n, k, &scheme, None);
        let qa: Vec<u8> = (0..rows * p.k_padded()).map(|i| (i % 127) as u8).collect();
        let sums = vec![0i32; rows];
        let q = InputQuant {
            scale: 0.01,
            zero_point: 3,
        };
        let mut y = vec![vec![0f32; n]; rows];
        let reps = (200 * 64 * 1536 * 512 / (rows * n * k)).max(1);
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            let mut ys: Vec<&mut [f32]> = y.iter_mut().map(|r| &mut r[..]).collect();
            p.run_blocks(&qa, &sums, q, &mut ys[..], 0..n / NC);
        }
        let s = t0.elapsed().as_secs_f64();
        let macs = (rows * n * k * reps) as f64;
        println!("{:.1} GMAC/s ({rows}x{n}x{k})", macs / s / 1e9);
    }
}
