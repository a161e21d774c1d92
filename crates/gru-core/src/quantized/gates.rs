//! GRUCell's gates for one row of a quantized GRU, in f32: the CPU kernel's gate pass (with
//! `b_hn` zero: it is inside `gh` here), built for the kernel's SIMD level and fused
//! multiply-adds where the level has them, as the float kernel's.

use crate::activation::Real;
use crate::cpu::simd::multiversion;

multiversion! {
    /// One row's units: `gi` and `gh` hold their r, z and n projections, `h`, `h_out` and `out`
    /// their state, next state and output. `zeros`: at least as many zeros.
    pub(crate) fn gates<T: Real>(
        gi: [&[T]; 3],
        gh: [&[T]; 3],
        zeros: &[T],
        h: &[T],
        h_out: &mut [T],
        out: &mut [T],
    ) {
        let [gi_r, gi_z, gi_n] = gi;
        let [gh_r, gh_z, gh_n] = gh;
        if crate::cpu::simd::level().has_fma() {
            crate::cpu::gate_update::<T, true>(gi_r, gi_z, gi_n, gh_r, gh_z, gh_n, zeros, h, h_out, out);
        } else {
            crate::cpu::gate_update::<T, false>(gi_r, gi_z, gi_n, gh_r, gh_z, gh_n, zeros, h, h_out, out);
        }
    }
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
            super::gates::<f32>(
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
