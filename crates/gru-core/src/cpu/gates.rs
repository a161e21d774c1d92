//! The gate update of one row, PyTorch's formula term for term.

use crate::activation::Real;

/// PyTorch's GRU update for one row of `w` units:
/// r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + r * (gh_n + b_hn)), h' = (1 - z) n + z h.
/// `gi_*` already hold `b_ih` and `b_hr`, `b_hz` (folded at load). `FMA`: see [`Real`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn gate_update<T: Real, const FMA: bool>(
    gi_r: &[T],
    gi_z: &[T],
    gi_n: &[T],
    gh_r: &[T],
    gh_z: &[T],
    gh_n: &[T],
    b_hn: &[T],
    h: &[T],
    h_out: &mut [T],
    out: &mut [T],
) {
    let w = h.len();
    let (gi_r, gi_z, gi_n) = (&gi_r[..w], &gi_z[..w], &gi_n[..w]);
    let (gh_r, gh_z, gh_n) = (&gh_r[..w], &gh_z[..w], &gh_n[..w]);
    let b_hn = &b_hn[..w];
    let (h_out, out) = (&mut h_out[..w], &mut out[..w]);
    for j in 0..w {
        let r = (gi_r[j] + gh_r[j]).sigmoid::<FMA>();
        let z = (gi_z[j] + gh_z[j]).sigmoid::<FMA>();
        let n = (gi_n[j] + r * (gh_n[j] + b_hn[j])).tanh::<FMA>();
        let hj = n + z * (h[j] - n);
        h_out[j] = hj;
        out[j] = hj;
    }
}
