//! Splitting one call's output columns across the CPU's threads: each thread gets its own
//! columns of every row (disjoint slices), so the products need no synchronization.

/// Column boundaries for `threads` parts of `n` columns in units of `unit` columns (a kernel's
/// block): `threads + 1` increasing bounds from 0 to `n`.
pub(crate) fn bounds(n: usize, unit: usize, threads: usize) -> Vec<usize> {
    let per = n.div_ceil(unit).div_ceil(threads.max(1));
    (0..=threads).map(|t| (t * per * unit).min(n)).collect()
}

/// Runs `f(part, cols)` on the pool for each part `cols = bounds[t]..bounds[t + 1]`, `part` the
/// rows of `y` cut to those columns.
pub(crate) fn for_each_part<F>(y: &mut [&mut [f32]], bounds: &[usize], f: F)
where
    F: Fn(&mut [&mut [f32]], std::ops::Range<usize>) + Sync,
{
    let parts_n = bounds.len().saturating_sub(1);
    let mut parts: Vec<Vec<&mut [f32]>> =
        (0..parts_n).map(|_| Vec::with_capacity(y.len())).collect();
    for row in y.iter_mut() {
        let mut rest: &mut [f32] = row;
        for (t, part) in parts.iter_mut().enumerate() {
            let (a, b) = std::mem::take(&mut rest).split_at_mut(bounds[t + 1] - bounds[t]);
            part.push(a);
            rest = b;
        }
    }
    let f = &f;
    rayon::scope(|s| {
        for (t, mut part) in parts.into_iter().enumerate() {
            let cols = bounds[t]..bounds[t + 1];
            s.spawn(move |_| f(&mut part, cols));
        }
    });
}
