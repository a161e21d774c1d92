//! The gate update, PyTorch's formula term for term: per row (`gate_update`), or in two stages
//! over a step's grouped products (`sigmoid_gates`, then `candidate_update`), which gives the
//! CPU independent work to overlap where one chain r -> n -> h' per unit would stall it.

use crate::activation::Real;

/// n = tanh(gi_n + r * (gh_n + b_hn)), then h' = (1 - z) n + z h.
#[inline(always)]
fn blend<T: Real, const FMA: bool>(r: T, z: T, gi_n: T, gh_n: T, b_hn: T, h: T) -> T {
    let n = (gi_n + r * (gh_n + b_hn)).tanh::<FMA>();
    n + z * (h - n)
}

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
        let hj = blend::<T, FMA>(r, z, gi_n[j], gh_n[j], b_hn[j], h[j]);
        h_out[j] = hj;
        out[j] = hj;
    }
}

/// Stage 1: the reset and update gates, σ(gi + gh), in place of `gh` (the r and z values of a
/// group of units, side by side).
#[inline(always)]
pub(crate) fn sigmoid_gates<T: Real, const FMA: bool>(gi: &[T], gh: &mut [T]) {
    let gi = &gi[..gh.len()];
    for (g, &x) in gh.iter_mut().zip(gi) {
        *g = (x + *g).sigmoid::<FMA>();
    }
}

/// Stage 2: from the gates `r` and `z` of stage 1, the candidate and the new state of `w` units.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn candidate_update<T: Real, const FMA: bool>(
    r: &[T],
    z: &[T],
    gi_n: &[T],
    gh_n: &[T],
    b_hn: &[T],
    h: &[T],
    h_out: &mut [T],
    out: &mut [T],
) {
    let w = h.len();
    let (r, z, gi_n, gh_n, b_hn) = (&r[..w], &z[..w], &gi_n[..w], &gh_n[..w], &b_hn[..w]);
    let (h_out, out) = (&mut h_out[..w], &mut out[..w]);
    for j in 0..w {
        let hj = blend::<T, FMA>(r[j], z[j], gi_n[j], gh_n[j], b_hn[j], h[j]);
        h_out[j] = hj;
        out[j] = hj;
    }
}
