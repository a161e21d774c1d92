//! The scalar math of the gate update, `Real` (f32 and f64), with a branch-free f32 `exp` that the
//! compiler vectorizes: libm's `expf`/`tanhf` are calls the gate loop cannot vectorize, and they
//! would cost more than the recurrent matmul for small hidden sizes.

use candle_core::WithDType;

/// A float type the CPU kernel computes in. `FMA`: the caller runs on a CPU with fused
/// multiply-add (a build for one without would call libm's software `fma`).
pub(crate) trait Real: WithDType + Copy + Default + Send + Sync + 'static {
    fn sigmoid<const FMA: bool>(self) -> Self;
    fn tanh<const FMA: bool>(self) -> Self;
}

/// `a * b + c`, fused when `FMA` (shorter dependency chains in the polynomial).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

impl Real for f32 {
    #[inline(always)]
    fn sigmoid<const FMA: bool>(self) -> Self {
        let e = exp_f32::<FMA>(-self);
        let s = 1.0 + e;
        let r = 1.0 / s;
        if !FMA {
            return r;
        }
        // With a fused multiply-add, 1 / (1 + e) to within ~0.6 ulp instead of ~2: the rounding
        // error of `1 + e` (exact by Fast2Sum, the larger operand first) and the residual of
        // `r` as the reciprocal of `s` (exact: one rounding), folded in by one Newton step.
        let err = if e <= 1.0 {
            (1.0 - s) + e
        } else {
            (e - s) + 1.0
        };
        let residual = madd::<FMA>(-s, r, 1.0);
        madd::<FMA>(r, madd::<FMA>(-err, r, residual), r)
    }

    #[inline(always)]
    fn tanh<const FMA: bool>(self) -> Self {
        // Near 0, 1 - 2 / (e^{2x} + 1) cancels to an absolute error of ~6e-8 whatever the
        // value (a relative error of 1e-4 at x = 1e-3), which a trained GRU's recurrence then
        // amplifies: there, Cephes' odd polynomial (relative error ~1e-7), as libm's and
        // SLEEF's tanhf are accurate in relative terms. Both computed, one kept: no branch.
        let a = self.abs();
        let z = self * self;
        let p = madd::<FMA>(-5.704_988_7e-3, z, 2.063_909e-2);
        let p = madd::<FMA>(p, z, -5.373_971_6e-2);
        let p = madd::<FMA>(p, z, 1.333_144_2e-1);
        let p = madd::<FMA>(p, z, -3.333_328e-1);
        let small = madd::<FMA>(p * z, self, self);
        let large = 1.0 - 2.0 / (exp_f32::<FMA>(2.0 * a) + 1.0);
        let large = if self < 0.0 { -large } else { large };
        if a < 0.625 {
            small
        } else {
            large
        }
    }
}

impl Real for f64 {
    #[inline(always)]
    fn sigmoid<const FMA: bool>(self) -> Self {
        1.0 / (1.0 + (-self).exp())
    }

    #[inline(always)]
    fn tanh<const FMA: bool>(self) -> Self {
        f64::tanh(self)
    }
}

/// `e^x` for f32 with Cephes' `expf` polynomial (max error ~2 ulp), written without branches or
/// libm calls so loops over it vectorize. NaN propagates: the clamps compare false on NaN.
#[inline(always)]
pub(crate) fn exp_f32<const FMA: bool>(x: f32) -> f32 {
    const HI: f32 = 88.376_26;
    // Keeps 2^n a normal float.
    const LO: f32 = -87.336_54;
    let x = if x > HI { HI } else { x };
    let x = if x < LO { LO } else { x };
    // n = round(x / ln 2) by the 1.5 * 2^23 trick (rounds to nearest without a libm call).
    const ROUND: f32 = 12_582_912.0;
    let n = madd::<FMA>(x, std::f32::consts::LOG2_E, ROUND) - ROUND;
    // r = x - n ln 2, with ln 2 split in two for precision.
    let r = madd::<FMA>(n, -0.693_359_4, x);
    let r = madd::<FMA>(n, 2.121_944_4e-4, r);
    let p = 1.987_569_1e-4_f32;
    let p = madd::<FMA>(p, r, 1.398_2e-3);
    let p = madd::<FMA>(p, r, 8.333_452e-3);
    let p = madd::<FMA>(p, r, 4.166_579_6e-2);
    let p = madd::<FMA>(p, r, 1.666_666_5e-1);
    let p = madd::<FMA>(p, r, 0.5);
    let y = madd::<FMA>(p, r * r, r) + 1.0;
    // 2^n from the bits of n + 127 + 2^23 (an integer-valued float in [2^23, 2^24), whose low
    // mantissa bits are n + 127): no float-to-int cast, whose saturating semantics do not
    // vectorize. For NaN the result is NaN through `y`.
    let biased = (n + 8_388_735.0).to_bits().wrapping_sub(0x4B00_0000);
    let pow2n = f32::from_bits(biased << 23);
    y * pow2n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_libm() {
        fn worst<const FMA: bool>() -> f64 {
            let mut worst = 0.0f64;
            let mut x = -87.0f32;
            while x < 88.0 {
                let want = (x as f64).exp();
                let got = exp_f32::<FMA>(x) as f64;
                worst = worst.max(((got - want) / want).abs());
                x += 0.0137;
            }
            worst
        }
        for (fma, worst) in [(false, worst::<false>()), (true, worst::<true>())] {
            assert!(worst < 3e-7, "fma {fma}: worst relative error {worst}");
        }
    }

    fn check_activations<const FMA: bool>() {
        for i in -2000..=2000 {
            let x = i as f32 * 0.01;
            let s = (1.0 / (1.0 + (-(x as f64)).exp())) as f32;
            assert!((x.sigmoid::<FMA>() - s).abs() < 2e-7, "sigmoid({x})");
            assert!(
                (Real::tanh::<FMA>(x) - (x as f64).tanh() as f32).abs() < 3e-7,
                "tanh({x})"
            );
        }
        // Relative accuracy near 0, where the value is small (2 ulp).
        for i in 1..=6250 {
            let x = i as f32 * 1e-4;
            for x in [x, -x, x * 1e-3] {
                let want = (x as f64).tanh();
                let got = Real::tanh::<FMA>(x) as f64;
                assert!(
                    ((got - want) / want).abs() < 2.4e-7,
                    "tanh({x}): {got} vs {want}"
                );
            }
        }
        assert_eq!(1e4f32.sigmoid::<FMA>(), 1.0);
        assert!((-1e4f32).sigmoid::<FMA>() < 1e-37);
        assert_eq!(Real::tanh::<FMA>(1e4f32), 1.0);
        assert_eq!(Real::tanh::<FMA>(-1e4f32), -1.0);
        assert!(f32::NAN.sigmoid::<FMA>().is_nan());
        assert!(Real::tanh::<FMA>(f32::NAN).is_nan());
    }

    #[test]
    fn activations_are_accurate_and_saturate() {
        check_activations::<false>();
        check_activations::<true>();
    }
}
