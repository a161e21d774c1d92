//! The scalar math of the gate update, `Real` (f32 and f64), with branch-free `exp`s that the
//! compiler vectorizes: libm's `expf`/`tanhf` (`exp`/`tanh`) are calls the gate loop cannot
//! vectorize, and they would cost more than the recurrent matmul for small hidden sizes.

use candle_core::WithDType;

/// A float type the CPU kernel computes in. `FMA`: the caller runs on a CPU with fused
/// multiply-add (a build for one without would call libm's software `fma`).
pub(crate) trait Real: WithDType + Copy + Default + Send + Sync + 'static {
    fn sigmoid<const FMA: bool>(self) -> Self;
    fn tanh<const FMA: bool>(self) -> Self;
    /// This value rounded to f32's precision: the state an f32 model carries, when its steps
    /// compute in f64 (see `cpu::DirPack::narrow`).
    fn narrow(self) -> Self;
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
    fn narrow(self) -> Self {
        self
    }

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
    fn narrow(self) -> Self {
        self as f32 as f64
    }

    #[inline(always)]
    fn sigmoid<const FMA: bool>(self) -> Self {
        // e^{-x} = 2^n (1 + expm1(r))
        let (p, scale) = exp_parts::<FMA>(-self);
        1.0 / (1.0 + madd64::<FMA>(scale, p, scale))
    }

    /// `expm1(2|x|) / (expm1(2|x|) + 2)` with the sign of `x`: one polynomial and one division
    /// for every `x`, accurate near 0 too (no cancellation: `expm1`, not `e^x - 1`).
    #[inline(always)]
    fn tanh<const FMA: bool>(self) -> Self {
        let (p, scale) = exp_parts::<FMA>(2.0 * self.abs());
        let em = madd64::<FMA>(scale, p, scale - 1.0);
        (em / (em + 2.0)).copysign(self)
    }
}

/// `a * b + c`, fused when `FMA`.
#[inline(always)]
fn madd64<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// `e^x` as `2^n (1 + p)`: returns `(p, 2^n)` with `p = expm1(r)`, `x = n ln 2 + r`,
/// `|r| <= ln 2 / 2`, so that `e^x = 2^n + 2^n p` and `expm1(x) = (2^n - 1) + 2^n p` are both
/// accurate (about 1 ulp). Branch-free and without division, so that the gate loop vectorizes
/// (libm's `exp`/`tanh` are a call per value and cost more than a small layer's matmul). `x` is
/// clamped to [-708, 709], where `2^n` is a normal number: past it `e^x` is below 1e-307 or
/// above 8e307, and the gates (`1 / (1 + e)`, `e / (e + 2)`) come out within 1.3e-308 of their
/// values (sigmoid below -708 is about 1.2e-308, not smaller or 0).
#[inline(always)]
pub(crate) fn exp_parts<const FMA: bool>(x: f64) -> (f64, f64) {
    const HI: f64 = 709.0;
    const LO: f64 = -708.0;
    let x = if x > HI { HI } else { x };
    let x = if x < LO { LO } else { x };
    // n = round(x / ln 2), by the 1.5 * 2^52 trick (no conversion instruction).
    const ROUND: f64 = 6_755_399_441_055_744.0;
    let n = madd64::<FMA>(x, std::f64::consts::LOG2_E, ROUND) - ROUND;
    // ln 2 in two parts (Cephes'): n * LN2_HI is exact for |n| < 2^11.
    let r = madd64::<FMA>(n, -6.931_457_519_531_25e-1, x);
    let r = madd64::<FMA>(n, -1.428_606_820_309_417_3e-6, r);
    // expm1(r) = r + r^2 / 2! + ... + r^13 / 13! (the next term is below 4e-18 here).
    const C: [f64; 12] = [
        1.0 / 6_227_020_800.0,
        1.0 / 479_001_600.0,
        1.0 / 39_916_800.0,
        1.0 / 3_628_800.0,
        1.0 / 362_880.0,
        1.0 / 40_320.0,
        1.0 / 5_040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ];
    let mut q = C[0];
    for &c in &C[1..] {
        q = madd64::<FMA>(q, r, c);
    }
    let p = madd64::<FMA>(q, r * r, r);
    // 2^n from its bits: n is an integer in [-1021, 1023] here.
    let biased = (n + (ROUND + 1023.0))
        .to_bits()
        .wrapping_sub(ROUND.to_bits());
    (p, f64::from_bits(biased << 52))
}

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

    fn check_f64<const FMA: bool>() {
        // Relative error in units of f64's epsilon, worst over a dense sweep.
        let ulps = |got: f64, want: f64| ((got - want) / want).abs() / f64::EPSILON;
        let (mut e_exp, mut e_sig, mut e_tanh) = (0.0f64, 0.0f64, 0.0f64);
        let mut x = -700.0f64;
        while x < 700.0 {
            let (p, scale) = exp_parts::<FMA>(x);
            e_exp = e_exp.max(ulps(scale.mul_add(p, scale), x.exp()));
            x += 0.003_7;
        }
        for i in -400_000..=400_000 {
            let x = i as f64 * 1e-4 + 1e-9;
            e_sig = e_sig.max(ulps(x.sigmoid::<FMA>(), 1.0 / (1.0 + (-x).exp())));
            e_tanh = e_tanh.max(ulps(Real::tanh::<FMA>(x), x.tanh()));
        }
        assert!(e_exp < 2.0, "exp (fma {FMA}): {e_exp} ulp");
        assert!(e_sig < 4.0, "sigmoid (fma {FMA}): {e_sig} ulp");
        assert!(e_tanh < 4.0, "tanh (fma {FMA}): {e_tanh} ulp");
        // Saturation and special values.
        assert_eq!(1e4f64.sigmoid::<FMA>(), 1.0);
        assert!((-1e4f64).sigmoid::<FMA>() < 1e-300);
        assert_eq!(Real::tanh::<FMA>(f64::INFINITY), 1.0);
        assert_eq!(Real::tanh::<FMA>(-1e4f64), -1.0);
        assert!(f64::NAN.sigmoid::<FMA>().is_nan());
        assert!(Real::tanh::<FMA>(f64::NAN).is_nan());
        assert!(exp_parts::<FMA>(f64::NAN).0.is_nan());
        assert!(Real::tanh::<FMA>(-0.0f64).is_sign_negative());
    }

    #[test]
    fn f64_activations_are_within_a_few_ulp_of_libm() {
        check_f64::<false>();
        check_f64::<true>();
    }

    #[test]
    fn activations_are_accurate_and_saturate() {
        check_activations::<false>();
        check_activations::<true>();
    }
}
