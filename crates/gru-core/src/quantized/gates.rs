//! GRUCell's gates for one row of a quantized GRU, in f32, vectorized where the CPU allows (the
//! CPU kernel's gate pass, with `b_hn` zero: it is inside `gh` here).

/// One row's units: `gi` and `gh` hold their r, z and n projections, `h`, `h_out` and `out`
/// their state, next state and output. `zeros`: at least as many zeros.
pub(crate) fn gates(
    gi: [&[f32]; 3],
    gh: [&[f32]; 3],
    zeros: &[f32],
    h: &[f32],
    h_out: &mut [f32],
    out: &mut [f32],
) {
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

#[cfg(test)]
mod speed {
    /// `cargo test --release -p gru-core --lib gates::speed -- --ignored --nocapture`: ns per
    /// unit of the gate pass (a yardstick, not a check).
    #[test]
    #[ignore]
    fn gate_rate() {
        let hidden = 256;
        let gi: Vec<f32> = (0..3 * hidden)
            .map(|i| (i % 17) as f32 * 0.1 - 0.8)
            .collect();
        let gh: Vec<f32> = (0..3 * hidden)
            .map(|i| (i % 13) as f32 * 0.1 - 0.6)
            .collect();
        let zeros = vec![0.0f32; hidden];
        let mut h = vec![0.1f32; hidden];
        let (mut h2, mut o) = (vec![0.0f32; hidden], vec![0.0f32; hidden]);
        let reps = 200_000;
        let t0 = std::time::Instant::now();
        for _ in 0..reps {
            let (gi, gh) = (&gi[..], &gh[..]);
            super::gates(
                [&gi[..hidden], &gi[hidden..2 * hidden], &gi[2 * hidden..]],
                [&gh[..hidden], &gh[hidden..2 * hidden], &gh[2 * hidden..]],
                &zeros,
                &h,
                &mut h2,
                &mut o,
            );
            std::mem::swap(&mut h, &mut h2);
        }
        let ns = t0.elapsed().as_secs_f64() * 1e9 / (reps * hidden) as f64;
        println!("{ns:.2} ns per unit ({})", h[0]);
    }
}
