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

/// The fp16 kind's weight, transposed once (`(K, N)`: a row per input, contiguous over the
/// output columns the kernels vectorize over) and its bias.
#[derive(Debug, Clone)]
pub(crate) struct PackedF16 {
    wt: Vec<f32>,
    n: usize,
    k: usize,
    bias: Option<Vec<f32>>,
}

impl PackedF16 {
    /// `weight` `(n, k)` row-major (f16 values).
    pub fn new(weight: &[f32], n: usize, k: usize, bias: Option<&[f32]>) -> Self {
        let mut wt = vec![0.0f32; k * n];
        for j in 0..n {
            for kk in 0..k {
                wt[kk * n + j] = weight[j * k + kk];
            }
        }
        Self {
            wt,
            n,
            k,
            bias: bias.map(<[f32]>::to_vec),
        }
    }

    /// `y` `(rows, n)` = `x W^T` then `+ bias`.
    pub fn run(&self, x: &[&[f32]], y: &mut [&mut [f32]]) {
        #[cfg(target_arch = "x86_64")]
        {
            if super::int8::avx2_fma() {
                // SAFETY: the CPU has AVX2 and FMA.
                unsafe { self.run_fma(x, y) };
                return;
            }
        }
        self.run_any(x, y);
    }

    /// The same code built for AVX2 and FMA: `mul_add` is one instruction, the column loops
    /// vector instructions.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run_fma(&self, x: &[&[f32]], y: &mut [&mut [f32]]) {
        self.run_any(x, y);
    }

    #[inline(always)]
    fn run_any(&self, x: &[&[f32]], y: &mut [&mut [f32]]) {
        const BROW: usize = 512;
        const MB: usize = 120;
        let (n, k) = (self.n, self.k);
        let last = n / 16 * 16;
        let mut fringe = vec![0.0f32; n - last];
        let mut scratch = vec![0.0f32; 3 * n];
        for m0 in (0..x.len()).step_by(MB) {
            let mb = MB.min(x.len() - m0);
            let rows = kernel_rows(mb);
            for k0 in (0..k).step_by(BROW) {
                let kb = BROW.min(k - k0);
                for (r, &nr) in rows.iter().enumerate() {
                    let i = m0 + r;
                    let a = &x[i][k0..k0 + kb];
                    let c = &mut *y[i];
                    let blk = Block {
                        a,
                        wt: &self.wt,
                        n,
                        k0,
                        nrows: nr,
                    };
                    if last > 0 {
                        blk.run(0..last, k0 > 0, &mut c[..last], &mut scratch);
                    }
                    if last < n {
                        if k0 == 0 {
                            blk.run(last..n, false, &mut c[last..], &mut scratch);
                        } else {
                            blk.run(last..n, false, &mut fringe, &mut scratch);
                            for (cj, f) in c[last..].iter_mut().zip(&fringe) {
                                *cj += f;
                            }
                        }
                    }
                }
            }
        }
        if let Some(b) = &self.bias {
            for yr in y.iter_mut() {
                for (v, bj) in yr.iter_mut().zip(b) {
                    *v += bj;
                }
            }
        }
    }
}

/// One row's products over one block of the inner dimension (`a`, from input `k0`), for a
/// kernel of `nrows` rows.
struct Block<'a> {
    a: &'a [f32],
    wt: &'a [f32],
    n: usize,
    k0: usize,
    nrows: usize,
}

impl Block<'_> {
    /// Into `c` (columns `cols`); `beta`: added to what `c` holds (later blocks).
    #[inline(always)]
    fn run(&self, cols: std::ops::Range<usize>, beta: bool, c: &mut [f32], scratch: &mut [f32]) {
        let len = cols.len();
        let w = |k: usize| &self.wt[(self.k0 + k) * self.n + cols.start..][..len];
        let a = self.a;
        let sets = match self.nrows {
            1 => 4,
            2 => 2,
            _ => 1,
        };
        let w0 = w(0);
        if beta {
            for (cj, &wj) in c.iter_mut().zip(w0) {
                *cj = a[0].mul_add(wj, *cj);
            }
        } else {
            for (cj, &wj) in c.iter_mut().zip(w0) {
                *cj = a[0] * wj;
            }
        }
        let fma_into = |acc: &mut [f32], k: usize| {
            for (cj, &wj) in acc.iter_mut().zip(w(k)) {
                *cj = a[k].mul_add(wj, *cj);
            }
        };
        let kb = a.len();
        if sets == 1 {
            for k in 1..kb {
                fma_into(c, k);
            }
            return;
        }
        let others = &mut scratch[..(sets - 1) * len];
        others.fill(0.0);
        let (mut k, mut r) = (1, kb - 1);
        while r > 4 {
            for u in 0..4 {
                let s = if sets == 2 { u % 2 } else { u };
                if s == 0 {
                    fma_into(c, k);
                } else {
                    fma_into(&mut others[(s - 1) * len..s * len], k);
                }
                k += 1;
            }
            r -= 4;
        }
        while r > 0 {
            fma_into(c, k);
            k += 1;
            r -= 1;
        }
        for s in 1..sets {
            for (cj, o) in c.iter_mut().zip(&others[(s - 1) * len..s * len]) {
                *cj += o;
            }
        }
    }
}
