//! GRUCell's gates for one row of a quantized GRU, in f32, vectorized where the CPU allows (the
//! CPU kernel's gate pass, with `b_hn` zero: it is inside `gh` here).

use std::ops::Range;

/// Units `u` of one row: `gi` and `gh` hold the row's `3 * hidden` projections (r, z, n), `h`,
/// `h_out` and `out` the units' slices. `zeros`: at least `u.len()` zeros.
#[allow(clippy::too_many_arguments)]
pub(crate) fn gates(
    gi: &[f32],
    gh: &[f32],
    hidden: usize,
    u: Range<usize>,
    zeros: &[f32],
    h: &[f32],
    h_out: &mut [f32],
    out: &mut [f32],
) {
    fn at<'a>(v: &'a [f32], gate: usize, hidden: usize, u: &Range<usize>) -> &'a [f32] {
        &v[gate * hidden + u.start..gate * hidden + u.end]
    }
    let gi = [0, 1, 2].map(|k| at(gi, k, hidden, &u));
    let gh = [0, 1, 2].map(|k| at(gh, k, hidden, &u));
    #[cfg(target_arch = "x86_64")]
    {
        if super::features::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            unsafe { gates_avx2(gi, gh, zeros, h, h_out, out) };
            return;
        }
    }
    gates_any::<false>(gi, gh, zeros, h, h_out, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gates_avx2(
    gi: [&[f32]; 3],
    gh: [&[f32]; 3],
    zeros: &[f32],
    h: &[f32],
    h_out: &mut [f32],
    out: &mut [f32],
) {
    gates_any::<true>(gi, gh, zeros, h, h_out, out);
}

#[inline(always)]
fn gates_any<const FMA: bool>(
    gi: [&[f32]; 3],
    gh: [&[f32]; 3],
    zeros: &[f32],
    h: &[f32],
    h_out: &mut [f32],
    out: &mut [f32],
) {
    crate::cpu::gate_update::<f32, FMA>(
        gi[0], gi[1], gi[2], gh[0], gh[1], gh[2], zeros, h, h_out, out,
    );
}
