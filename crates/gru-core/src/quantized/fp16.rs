//! The fp16 kind's linear as fbgemm computes it on AVX2 (`cblas_gemm_compute` with a packed
//! f16 matrix, then `output.add_(bias)`): the inner dimension in blocks of 512; rows in groups
//! of 120, each row handled by a kernel of 1-6 rows (`partition_avx2`), whose size decides how
//! the products are summed (1 row: 4 interleaved sums, 2 rows: 2, more: one chain of fused
//! multiply-adds); the last `N % 16` columns of later blocks are summed apart and added.

/// Rows of a group of `m` (1..=120) as fbgemm's AVX2 partition gives them to kernels: each
/// row's kernel height.
fn kernel_rows(m: usize) -> Vec<usize> {
    const SMALL: [&[(usize, usize)]; 30] = [
        &[(1, 1)],
        &[(2, 1)],
        &[(3, 1)],
        &[(4, 1)],
        &[(5, 1)],
        &[(6, 1)],
        &[(5, 1), (2, 1)],
        &[(4, 2)],
        &[(5, 1), (4, 1)],
        &[(5, 2)],
        &[(6, 1), (5, 1)],
        &[(6, 2)],
        &[(5, 2), (3, 1)],
        &[(6, 2), (2, 1)],
        &[(5, 3)],
        &[(6, 2), (4, 1)],
        &[(6, 2), (5, 1)],
        &[(6, 3)],
        &[(5, 3), (4, 1)],
        &[(5, 4)],
        &[(5, 3), (6, 1)],
        &[(6, 3), (4, 1)],
        &[(6, 3), (5, 1)],
        &[(6, 4)],
        &[(5, 5)],
        &[(5, 4), (6, 1)],
        &[(6, 4), (3, 1)],
        &[(6, 4), (4, 1)],
        &[(6, 4), (5, 1)],
        &[(6, 5)],
    ];
    let parts: Vec<(usize, usize)> = if m <= 30 {
        SMALL[m - 1].to_vec()
    } else {
        let mut v = vec![(6, m / 6)];
        if !m.is_multiple_of(6) {
            v.push((m % 6, 1));
        }
        v
    };
    parts
        .into_iter()
        .flat_map(|(rows, count)| std::iter::repeat_n(rows, rows * count))
        .collect()
}

/// The fp16 kind's weight, packed once in strips of `STRIP` output columns (`[strip][k][j]`,
/// zero past the last column): a row's pass over a strip reads it front to back. And its bias.
#[derive(Debug, Clone)]
pub(crate) struct PackedF16 {
    strips: Vec<f32>,
    n: usize,
    k: usize,
    bias: Option<Vec<f32>>,
}

impl PackedF16 {
    /// `weight` `(n, k)` row-major (f16 values).
    pub fn new(weight: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        let mut strips = vec![0.0f32; n.div_ceil(STRIP) * k * STRIP];
        for j in 0..n {
            for kk in 0..k {
                strips[((j / STRIP) * k + kk) * STRIP + j % STRIP] = weight[j * k + kk];
            }
        }
        Self {
            strips,
            n,
            k,
            bias: bias.map(<[f32]>::to_vec),
        }
    }

    /// Columns `cols` (starting at a strip; the columns past the last whole strip only with
    /// all of them) of every row, on this thread; `y`'s rows hold just those.
    pub fn run_cols(&self, x: &[&[f32]], y: &mut [&mut [f32]], cols: std::ops::Range<usize>) {
        #[cfg(target_arch = "x86_64")]
        {
            if super::features::avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA.
                unsafe { self.run_fma(x, y, cols) };
                return;
            }
        }
        self.run_any(x, y, cols);
    }

    /// The same code built for AVX2 and FMA: `mul_add` is one instruction, the column loops
    /// vector instructions.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_fma(&self, x: &[&[f32]], y: &mut [&mut [f32]], cols: std::ops::Range<usize>) {
        self.run_any(x, y, cols);
    }

    #[inline(always)]
    fn run_any(&self, x: &[&[f32]], y: &mut [&mut [f32]], cols: std::ops::Range<usize>) {
        const BROW: usize = 512;
        const MB: usize = 120;
        const COLS: usize = 128;
        let (n, k) = (self.n, self.k);
        let last = n / 16 * 16;
        let mut fringe = vec![0.0f32; n - last];
        // This call's columns: y's column 0 is `base`.
        let base = cols.start;
        let main_end = cols.end.min(last);
        // Several rows at a time (AVX2 with FMA only; elsewhere one at a time, same sums).
        #[cfg(target_arch = "x86_64")]
        let tiles = super::features::avx2_fma();
        #[cfg(not(target_arch = "x86_64"))]
        let tiles = false;
        for m0 in (0..x.len()).step_by(MB) {
            let mb = MB.min(x.len() - m0);
            let rows = kernel_rows(mb);
            for k0 in (0..k).step_by(BROW) {
                let kb = BROW.min(k - k0);
                // Columns in chunks whose weights stay in L2 while every row of the group passes
                // over them (each element's sums run in the same order whatever the chunking).
                for c0 in (base..main_end).step_by(COLS) {
                    let c1 = (c0 + COLS).min(main_end);
                    let mut r = 0;
                    while r < rows.len() {
                        // Rows of kernels of 3+ rows sum in one chain each: up to 6 of them at
                        // a time, so that their chains overlap.
                        let run = if tiles {
                            rows[r..].iter().take(6).take_while(|&&nr| nr >= 3).count()
                        } else {
                            0
                        };
                        #[cfg(not(target_arch = "x86_64"))]
                        let _ = run;
                        #[cfg(target_arch = "x86_64")]
                        if run > 0 {
                            let i = m0 + r;
                            let a: Vec<&[f32]> =
                                x[i..i + run].iter().map(|xr| &xr[k0..k0 + kb]).collect();
                            let mut c: Vec<&mut [f32]> = y[i..i + run]
                                .iter_mut()
                                .map(|yr| &mut yr[c0 - base..c1 - base])
                                .collect();
                            let t = Tile {
                                strips: &self.strips,
                                k,
                                k0,
                            };
                            let beta = k0 > 0;
                            // SAFETY: `tiles` is set only when the CPU has AVX2 and FMA.
                            unsafe {
                                match run {
                                    6 => t.rows::<6>(&a, c0..c1, beta, &mut c),
                                    5 => t.rows::<5>(&a, c0..c1, beta, &mut c),
                                    4 => t.rows::<4>(&a, c0..c1, beta, &mut c),
                                    3 => t.rows::<3>(&a, c0..c1, beta, &mut c),
                                    2 => t.rows::<2>(&a, c0..c1, beta, &mut c),
                                    _ => t.rows::<1>(&a, c0..c1, beta, &mut c),
                                }
                            }
                            r += run;
                            continue;
                        }
                        let i = m0 + r;
                        let blk = Block {
                            a: &x[i][k0..k0 + kb],
                            strips: &self.strips,
                            k,
                            k0,
                            nrows: rows[r],
                        };
                        blk.run(c0..c1, k0 > 0, &mut y[i][c0 - base..c1 - base]);
                        r += 1;
                    }
                }
                if last < n && cols.end == n {
                    for (r, &nr) in rows.iter().enumerate() {
                        let i = m0 + r;
                        let blk = Block {
                            a: &x[i][k0..k0 + kb],
                            strips: &self.strips,
                            k,
                            k0,
                            nrows: nr,
                        };
                        let c = &mut y[i][last - base..];
                        if k0 == 0 {
                            blk.run(last..n, false, c);
                        } else {
                            blk.run(last..n, false, &mut fringe);
                            for (cj, f) in c.iter_mut().zip(&fringe) {
                                *cj += f;
                            }
                        }
                    }
                }
            }
        }
        if let Some(b) = &self.bias {
            for yr in y.iter_mut() {
                for (v, bj) in yr.iter_mut().zip(&b[cols.clone()]) {
                    *v += bj;
                }
            }
        }
    }
}

/// Columns whose sums one pass keeps in registers (per interleaved sum: two AVX2 vectors).
pub(crate) const STRIP: usize = 16;

/// One row's products over one block of the inner dimension (`a`, from input `k0`), for a
/// kernel of `nrows` rows.
struct Block<'a> {
    a: &'a [f32],
    strips: &'a [f32],
    /// The whole inner dimension (a strip's length).
    k: usize,
    k0: usize,
    nrows: usize,
}

impl Block<'_> {
    /// Into `c` (columns `cols`); `beta`: added to what `c` holds (later blocks). Strips of
    /// `STRIP` columns whose sums stay in registers over the whole block.
    #[inline(always)]
    fn run(&self, cols: std::ops::Range<usize>, beta: bool, c: &mut [f32]) {
        let mut j = 0;
        while j < cols.len() {
            let width = (cols.len() - j).min(STRIP);
            let c = &mut c[j..j + width];
            match self.nrows {
                1 => self.strip::<4>(cols.start + j, width, beta, c),
                2 => self.strip::<2>(cols.start + j, width, beta, c),
                _ => self.strip::<1>(cols.start + j, width, beta, c),
            }
            j += width;
        }
    }

    /// `width` (<= STRIP) columns from `col`, summed in `SETS` interleaved sums: the first
    /// product into sum 0 (onto `c` with `beta`), then while more than 4 remain, 4 products at
    /// a time into sums 0, 1, 2, 3 (two sums: 0, 1, 0, 1), the last ones into sum 0; the sums
    /// added in order.
    #[inline(always)]
    fn strip<const SETS: usize>(&self, col: usize, width: usize, beta: bool, c: &mut [f32]) {
        let a = self.a;
        let kb = a.len();
        let mut acc = [[0.0f32; STRIP]; SETS];
        let w0 = self.row(0, col);
        let mut c0 = [0.0f32; STRIP];
        c0[..width].copy_from_slice(c);
        for j in 0..STRIP {
            acc[0][j] = if beta {
                a[0].mul_add(w0[j], c0[j])
            } else {
                a[0] * w0[j]
            };
        }
        if SETS == 1 {
            for k in 1..kb {
                fma_row(&mut acc[0], a[k], self.row(k, col));
            }
        } else {
            let (mut k, mut r) = (1, kb - 1);
            while r > 4 {
                for u in 0..4 {
                    fma_row(&mut acc[u % SETS], a[k], self.row(k, col));
                    k += 1;
                }
                r -= 4;
            }
            while r > 0 {
                fma_row(&mut acc[0], a[k], self.row(k, col));
                k += 1;
                r -= 1;
            }
        }
        let mut out = acc[0];
        for set in acc.iter().skip(1) {
            for j in 0..STRIP {
                out[j] += set[j];
            }
        }
        c.copy_from_slice(&out[..width]);
    }

    /// Weights of input `k` (of this block) for the strip starting at column `col` (a multiple
    /// of `STRIP`), zero past the last column.
    #[inline(always)]
    fn row(&self, k: usize, col: usize) -> &[f32; STRIP] {
        let start = ((col / STRIP) * self.k + self.k0 + k) * STRIP;
        self.strips[start..start + STRIP]
            .try_into()
            .expect("a strip")
    }
}

/// Rows of kernels of 3 or more rows (one chain of fused multiply-adds per element), `R` at a
/// time over each strip, so that their chains overlap.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct Tile<'a> {
    strips: &'a [f32],
    k: usize,
    k0: usize,
}

#[cfg(target_arch = "x86_64")]
impl Tile<'_> {
    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn rows<const R: usize>(
        &self,
        a: &[&[f32]],
        cols: std::ops::Range<usize>,
        beta: bool,
        c: &mut [&mut [f32]],
    ) {
        use std::arch::x86_64::*;
        assert!(a.len() >= R && c.len() >= R);
        let kb = a[0].len();
        assert!(a[..R].iter().all(|r| r.len() == kb));
        let mut col = cols.start;
        while col < cols.end {
            let width = (cols.end - col).min(STRIP);
            let off = col - cols.start;
            let base = ((col / STRIP) * self.k + self.k0) * STRIP;
            let w = &self.strips[base..base + kb * STRIP];
            // SAFETY: AVX2 and FMA (the contract); every load is of 8 floats inside `w` (kb
            // rows of STRIP), of `c0` or of `acc` (arrays of STRIP).
            unsafe {
                let mut acc = [[_mm256_setzero_ps(); 2]; R];
                let (w0, w1) = (
                    _mm256_loadu_ps(w.as_ptr()),
                    _mm256_loadu_ps(w.as_ptr().add(8)),
                );
                for r in 0..R {
                    let a0 = _mm256_set1_ps(a[r][0]);
                    if beta {
                        let mut c0 = [0.0f32; STRIP];
                        c0[..width].copy_from_slice(&c[r][off..off + width]);
                        acc[r][0] = _mm256_fmadd_ps(a0, w0, _mm256_loadu_ps(c0.as_ptr()));
                        acc[r][1] = _mm256_fmadd_ps(a0, w1, _mm256_loadu_ps(c0.as_ptr().add(8)));
                    } else {
                        acc[r][0] = _mm256_mul_ps(a0, w0);
                        acc[r][1] = _mm256_mul_ps(a0, w1);
                    }
                }
                for k in 1..kb {
                    let p = w.as_ptr().add(k * STRIP);
                    let (wk0, wk1) = (_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8)));
                    for r in 0..R {
                        let ak = _mm256_set1_ps(*a[r].get_unchecked(k));
                        acc[r][0] = _mm256_fmadd_ps(ak, wk0, acc[r][0]);
                        acc[r][1] = _mm256_fmadd_ps(ak, wk1, acc[r][1]);
                    }
                }
                for r in 0..R {
                    let mut out = [0.0f32; STRIP];
                    _mm256_storeu_ps(out.as_mut_ptr(), acc[r][0]);
                    _mm256_storeu_ps(out.as_mut_ptr().add(8), acc[r][1]);
                    c[r][off..off + width].copy_from_slice(&out[..width]);
                }
            }
            col += width;
        }
    }
}

/// `acc += a * w`, fused, lane by lane.
#[inline(always)]
fn fma_row(acc: &mut [f32; STRIP], a: f32, w: &[f32; STRIP]) {
    for j in 0..STRIP {
        acc[j] = a.mul_add(w[j], acc[j]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fbgemm's order written plainly for one element: the reference the packed, tiled and
    /// threaded paths must give bit for bit.
    fn reference(x: &[f32], w: &[f32], n: usize, j: usize, nrows: usize) -> f32 {
        let k = x.len();
        let mut c = 0.0f32;
        for k0 in (0..k).step_by(512) {
            let a = &x[k0..(k0 + 512).min(k)];
            let wk = |kk: usize| w[j * k + k0 + kk];
            let sets = match nrows {
                1 => 4,
                2 => 2,
                _ => 1,
            };
            let fringe = j >= n / 16 * 16 && k0 > 0;
            let mut acc = [0.0f32; 4];
            acc[0] = if k0 > 0 && !fringe {
                a[0].mul_add(wk(0), c)
            } else {
                a[0] * wk(0)
            };
            let (mut kk, mut r) = (1, a.len() - 1);
            if sets == 1 {
                while r > 0 {
                    acc[0] = a[kk].mul_add(wk(kk), acc[0]);
                    kk += 1;
                    r -= 1;
                }
            }
            while r > 4 {
                for u in 0..4 {
                    acc[u % sets] = a[kk].mul_add(wk(kk), acc[u % sets]);
                    kk += 1;
                }
                r -= 4;
            }
            while r > 0 {
                acc[0] = a[kk].mul_add(wk(kk), acc[0]);
                kk += 1;
                r -= 1;
            }
            let mut s = acc[0];
            for v in acc.iter().take(sets).skip(1) {
                s += v;
            }
            c = if fringe { c + s } else { s };
        }
        c
    }

    #[test]
    fn every_path_sums_in_fbgemm_s_order() {
        let mut rng = crate::quantized::test_rng::XorShift::new(0x9e37_79b9_7f4a_7c15u64);
        let mut next = move || rng.next_f32();
        // Row counts that give kernels of 1, 2 and 3-6 rows; k past one block of 512; n with a
        // fringe.
        for (m, n, k) in [
            (1, 40, 20),
            (2, 23, 600),
            (7, 61, 33),
            (13, 50, 530),
            (70, 200, 100),
        ] {
            let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
            let x: Vec<Vec<f32>> = (0..m).map(|_| (0..k).map(|_| next()).collect()).collect();
            let p = PackedF16::new(&w, n, k, None);
            let mut y = vec![vec![0.0f32; n]; m];
            {
                let xs: Vec<&[f32]> = x.iter().map(|r| &r[..]).collect();
                let mut ys: Vec<&mut [f32]> = y.iter_mut().map(|r| &mut r[..]).collect();
                p.run_cols(&xs, &mut ys, 0..n);
            }
            let rows = kernel_rows(m.min(120));
            for i in 0..m.min(120) {
                for j in 0..n {
                    let want = reference(&x[i], &w, n, j, rows[i]);
                    assert_eq!(
                        y[i][j].to_bits(),
                        want.to_bits(),
                        "m {m} n {n} k {k} ({i}, {j})"
                    );
                }
            }
        }
    }

    /// A call over a strip-aligned span of the columns (what a team member runs) gives the
    /// whole call's numbers bit for bit: past one block of 512 inputs (the fringe summed across
    /// blocks, `beta`), spans inside, at the end and wholly in the fringe.
    #[test]
    fn column_spans_give_the_whole_call_s_numbers() {
        let mut rng = crate::quantized::test_rng::XorShift::new(0x2545_f491_4f6c_dd1du64);
        let mut next = move || rng.next_f32();
        let (m, n, k) = (9, 150, 600);
        let w: Vec<f32> = (0..n * k).map(|_| next()).collect();
        let b: Vec<f32> = (0..n).map(|_| next()).collect();
        let x: Vec<Vec<f32>> = (0..m).map(|_| (0..k).map(|_| next()).collect()).collect();
        let xs: Vec<&[f32]> = x.iter().map(|r| &r[..]).collect();
        let p = PackedF16::new(&w, n, k, Some(&b));
        let run = |cols: std::ops::Range<usize>| -> Vec<u32> {
            let mut y = vec![vec![0.0f32; cols.len()]; m];
            let mut ys: Vec<&mut [f32]> = y.iter_mut().map(|r| &mut r[..]).collect();
            p.run_cols(&xs, &mut ys, cols);
            y.iter().flatten().map(|v| v.to_bits()).collect()
        };
        let whole = run(0..n);
        for cols in [0..144, 32..96, 128..150, 144..150] {
            let part = run(cols.clone());
            let want: Vec<u32> = (0..m)
                .flat_map(|i| whole[i * n + cols.start..i * n + cols.end].to_vec())
                .collect();
            assert_eq!(part, want, "columns {cols:?}");
        }
    }
}
