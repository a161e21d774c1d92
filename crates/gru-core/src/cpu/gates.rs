//! The gate update, PyTorch's formula term for term, in two stages: r and z (`sigmoid_gates`),
//! then n and h' (`candidate_update`). The time loop runs each stage over a whole step's grouped
//! products, which gives the CPU independent work to overlap where one chain r -> n -> h' per
//! unit would stall it; `gate_update` runs both over one row.

use super::panels::NR;
use crate::activation::Real;

/// Stage 1: the reset or update gate, σ(gi + gh), in place of `gh`. `gi` already holds `b_ih`
/// and `b_hr` or `b_hz` (folded at load). `FMA`: see [`Real`].
#[inline(always)]
pub(crate) fn sigmoid_gates<T: Real, const FMA: bool>(gi: &[T], gh: &mut [T]) {
    let gi = &gi[..gh.len()];
    for (g, &x) in gh.iter_mut().zip(gi) {
        *g = (x + *g).sigmoid::<FMA>();
    }
}

/// Stage 2, from the gates `r` and `z` of `w` units: n = tanh(gi_n + r * (gh_n + b_hn)), then
/// h' = (1 - z) n + z h, written to both `h_out` and `out`.
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
        let n = (gi_n[j] + r[j] * (gh_n[j] + b_hn[j])).tanh::<FMA>();
        let hj = n + z[j] * (h[j] - n);
        h_out[j] = hj;
        out[j] = hj;
    }
}

/// PyTorch's GRU update for one row of `w` units (both stages, `NR` units at a time):
/// r = σ(gi_r + gh_r), z = σ(gi_z + gh_z), n = tanh(gi_n + r * (gh_n + b_hn)), h' = (1 - z) n + z h.
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
    // Whole chunks of `NR` units with their length known to the compiler (no `memcpy` calls
    // for the copies, no remainder loops), then the rest.
    let whole = w / NR * NR;
    for u in (0..whole).step_by(NR) {
        let at = |v: &[T]| -> [T; NR] { v[u..u + NR].try_into().expect("NR values") };
        let (mut r, mut z) = (at(gh_r), at(gh_z));
        sigmoid_gates::<T, FMA>(&gi_r[u..u + NR], &mut r);
        sigmoid_gates::<T, FMA>(&gi_z[u..u + NR], &mut z);
        candidate_update::<T, FMA>(
            &r,
            &z,
            &gi_n[u..u + NR],
            &gh_n[u..u + NR],
            &b_hn[u..u + NR],
            &h[u..u + NR],
            &mut h_out[u..u + NR],
            &mut out[u..u + NR],
        );
    }
    if whole < w {
        let (u, e) = (whole, w);
        let (mut r, mut z) = ([T::zero(); NR], [T::zero(); NR]);
        let (r, z) = (&mut r[..e - u], &mut z[..e - u]);
        r.copy_from_slice(&gh_r[u..e]);
        z.copy_from_slice(&gh_z[u..e]);
        sigmoid_gates::<T, FMA>(&gi_r[u..e], r);
        sigmoid_gates::<T, FMA>(&gi_z[u..e], z);
        candidate_update::<T, FMA>(
            r,
            z,
            &gi_n[u..e],
            &gh_n[u..e],
            &b_hn[u..e],
            &h[u..e],
            &mut h_out[u..e],
            &mut out[u..e],
        );
    }
}
