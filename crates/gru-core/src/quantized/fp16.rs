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

/// One row's products over one block of the inner dimension, into `c` (columns `cols` of the
/// transposed weight `wt` `(K, N)`); `beta`: add to what `c` holds (later blocks).
fn row_block(
    a: &[f32],
    wt: &[f32],
    n: usize,
    cols: std::ops::Range<usize>,
    k0: usize,
    nrows: usize,
    beta: bool,
    c: &mut [f32],
) {
    let sets = match nrows {
        1 => 4,
        2 => 2,
        _ => 1,
    };
    let w = |k: usize, j: usize| wt[(k0 + k) * n + j];
    for (ci, j) in cols.enumerate() {
        let mut acc = [0.0f32; 4];
        acc[0] = if beta {
            a[0].mul_add(w(0, j), c[ci])
        } else {
            a[0] * w(0, j)
        };
        let kb = a.len();
        if sets == 1 {
            for k in 1..kb {
                acc[0] = a[k].mul_add(w(k, j), acc[0]);
            }
            c[ci] = acc[0];
            continue;
        }
        let (mut k, mut r) = (1, kb - 1);
        while r > 4 {
            for u in 0..4 {
                let s = if sets == 2 { u % 2 } else { u };
                acc[s] = a[k].mul_add(w(k, j), acc[s]);
                k += 1;
            }
            r -= 4;
        }
        while r > 0 {
            acc[0] = a[k].mul_add(w(k, j), acc[0]);
            k += 1;
            r -= 1;
        }
        let mut out = acc[0];
        for s in acc.iter().take(sets).skip(1) {
            out += s;
        }
        c[ci] = out;
    }
}

/// `y` `(rows, out)` = `x W^T` then `+ bias`, W `(out, input)` holding f16 values.
pub(crate) fn linear(
    weight: &[f32],
    n: usize,
    k: usize,
    bias: Option<&[f32]>,
    x: &[&[f32]],
    y: &mut [&mut [f32]],
) {
    const BROW: usize = 512;
    const MB: usize = 120;
    let mut wt = vec![0.0f32; k * n];
    for j in 0..n {
        for kk in 0..k {
            wt[kk * n + j] = weight[j * k + kk];
        }
    }
    let last = n / 16 * 16;
    let mut fringe = vec![0.0f32; n - last];
    for m0 in (0..x.len()).step_by(MB) {
        let mb = MB.min(x.len() - m0);
        let rows = kernel_rows(mb);
        for k0 in (0..k).step_by(BROW) {
            let kb = BROW.min(k - k0);
            for (r, &nr) in rows.iter().enumerate() {
                let i = m0 + r;
                let a = &x[i][k0..k0 + kb];
                let c = &mut *y[i];
                if last > 0 {
                    row_block(a, &wt, n, 0..last, k0, nr, k0 > 0, &mut c[..last]);
                }
                if last < n {
                    if k0 == 0 {
                        row_block(a, &wt, n, last..n, k0, nr, false, &mut c[last..]);
                    } else {
                        row_block(a, &wt, n, last..n, k0, nr, false, &mut fringe);
                        for (cj, f) in c[last..].iter_mut().zip(&fringe) {
                            *cj += f;
                        }
                    }
                }
            }
        }
    }
    if let Some(b) = bias {
        for yr in y.iter_mut() {
            for (v, bj) in yr.iter_mut().zip(b) {
                *v += bj;
            }
        }
    }
}
