//! The dynamic quantization of one linear call's input, as PyTorch's fbgemm path does it: the
//! min and max over the whole input (`fbgemm::FindMinMax`), a u8 scale and zero point from them
//! (`quant_utils::ChooseQuantizationParams`, 7 bits with `reduce_range`), and each value
//! quantized (`fbgemm::QuantizeAvx2`).

/// A u8 quantization of an input tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct InputQuant {
    pub scale: f32,
    pub zero_point: i32,
}

impl InputQuant {
    /// For the fp16 kind, whose inputs are not quantized.
    pub const UNUSED: Self = Self {
        scale: 1.0,
        zero_point: 0,
    };
}

/// `quant_utils::ChooseQuantizationParams(min, max, 0, 255, preserve_sparsity=false,
/// force_scale_power_of_two=false, reduce_range)`.
pub(crate) fn choose_qparams(min: f32, max: f32, reduce_range: bool) -> InputQuant {
    let (mut qmin, mut qmax) = (0i32, 255i32);
    if reduce_range {
        qmin /= 2;
        qmax /= 2;
    }
    // The range always holds 0, so that 0 is exact.
    let min = min.min(0.0);
    let max = max.max(0.0);
    let mut scale = (max as f64 - min as f64) / (qmax - qmin) as f64;
    if scale as f32 == 0.0 || (1.0 / scale as f32).is_infinite() {
        scale = 0.1;
    }
    let (mut min, mut max) = (min, max);
    // PyTorch's SMALL_SCALE_THRESHOLD: too small a scale is widened, keeping 0 representable.
    const SMALL: f32 = 6.1e-5;
    if scale < SMALL as f64 {
        let org = scale as f32;
        scale = SMALL as f64;
        if min == 0.0 {
            max = SMALL * (qmax - qmin) as f32;
        } else if max == 0.0 {
            min = -SMALL * (qmax - qmin) as f32;
        } else {
            let amplifier = SMALL / org;
            min *= amplifier;
            max *= amplifier;
        }
    }
    let (qmin_d, qmax_d) = (qmin as f64, qmax as f64);
    let zp_from_min = qmin_d - min as f64 / scale;
    let zp_from_max = qmax_d - max as f64 / scale;
    let err_min = qmin_d.abs() - (min as f64 / scale).abs();
    let err_max = qmax_d.abs() - (max as f64 / scale).abs();
    let initial = if err_min < err_max {
        zp_from_min
    } else {
        zp_from_max
    };
    let zero_point = if initial < qmin_d {
        qmin
    } else if initial > qmax_d {
        qmax
    } else {
        // nearbyint: ties to even.
        initial.round_ties_even() as i32
    };
    InputQuant {
        scale: scale as f32,
        zero_point,
    }
}

/// Min and max of `rows` (each a slice), as `fbgemm::FindMinMax` over the whole input.
pub(crate) fn min_max<'a>(rows: impl Iterator<Item = &'a [f32]>) -> (f32, f32) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    let mut any = false;
    for r in rows {
        any |= !r.is_empty();
        let (l, h) = row_min_max(r);
        lo = lo.min(l);
        hi = hi.max(h);
    }
    if any {
        (lo, hi)
    } else {
        (0.0, 0.0)
    }
}

/// Min and max of one row (NaN ignored): 8 lanes, in AVX2 where the CPU has it.
pub(crate) fn row_min_max(r: &[f32]) -> (f32, f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::features::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { row_min_max_avx2(r) };
        }
    }
    row_min_max_any(r)
}

/// `vminps(x, lo)` returns `lo` when `x` is NaN and when they are equal: the portable loop's
/// `if x < lo { lo = x }` exactly (written out: the compiler's own vectorization of that loop
/// shuffles lanes back and forth, 10x slower).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_min_max_avx2(r: &[f32]) -> (f32, f32) {
    use std::arch::x86_64::*;
    let mut chunks = r.chunks_exact(8);
    let (mut lo, mut hi) = (
        _mm256_set1_ps(f32::INFINITY),
        _mm256_set1_ps(f32::NEG_INFINITY),
    );
    for c in &mut chunks {
        // SAFETY: `c` holds 8 floats.
        let x = unsafe { _mm256_loadu_ps(c.as_ptr()) };
        lo = _mm256_min_ps(x, lo);
        hi = _mm256_max_ps(x, hi);
    }
    let (mut l8, mut h8) = ([0f32; 8], [0f32; 8]);
    // SAFETY: 8 floats each.
    unsafe {
        _mm256_storeu_ps(l8.as_mut_ptr(), lo);
        _mm256_storeu_ps(h8.as_mut_ptr(), hi);
    }
    lanes_and_rest((l8, h8), chunks.remainder())
}

#[inline(always)]
fn row_min_max_any(r: &[f32]) -> (f32, f32) {
    let (mut lo, mut hi) = ([f32::INFINITY; 8], [f32::NEG_INFINITY; 8]);
    let mut chunks = r.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            if c[i] < lo[i] {
                lo[i] = c[i];
            }
            if c[i] > hi[i] {
                hi[i] = c[i];
            }
        }
    }
    lanes_and_rest((lo, hi), chunks.remainder())
}

/// The min and max of 8 lanes' mins and maxes and of the values past the last whole 8.
#[inline(always)]
fn lanes_and_rest((lo, hi): ([f32; 8], [f32; 8]), rest: &[f32]) -> (f32, f32) {
    let (mut l, mut h) = (f32::INFINITY, f32::NEG_INFINITY);
    for i in 0..8 {
        l = l.min(lo[i]);
        h = h.max(hi[i]);
    }
    for &v in rest {
        l = l.min(v);
        h = h.max(v);
    }
    (l, h)
}

/// `fbgemm::QuantizeAvx2<uint8_t>`: `clamp(rne(min(x * (1 / scale), 2147483520)) + zero_point,
/// 0, 255)` (multiplied by the f32 reciprocal, not divided; clamped to 255 even with
/// `reduce_range`). `minps` returns its second operand for a NaN (so NaN quantizes as the
/// largest value, as `f32::min` gives too); `cvtps2dq` gives `i32::MIN` below the i32 range.
#[inline(always)]
pub(crate) fn quantize(x: f32, inv_scale: f32, zero_point: i32) -> i32 {
    let t = (x * inv_scale).min(2_147_483_520.0);
    let r = if t < -2_147_483_648.0 {
        i32::MIN
    } else {
        t.round_ties_even() as i32
    };
    r.wrapping_add(zero_point).clamp(0, 255)
}

/// `quantize` over a row into `dst`; the sum of the quantized values.
pub(crate) fn quantize_row(src: &[f32], inv_scale: f32, zero_point: i32, dst: &mut [u8]) -> i32 {
    #[cfg(target_arch = "x86_64")]
    {
        if super::features::avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA.
            return unsafe { avx2::quantize_row(src, inv_scale, zero_point, dst) };
        }
    }
    let mut sum = 0;
    for (d, &v) in dst.iter_mut().zip(src) {
        let q = quantize(v, inv_scale, zero_point);
        *d = q as u8;
        sum += q;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// `fbgemm::QuantizeAvx2<uint8_t>` of one row into `dst` (as the parent's
    /// scalar `quantize`, 8 values at a time): returns the sum of the quantized values.
    ///
    /// # Safety
    /// AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn quantize_row(
        src: &[f32],
        inv_scale: f32,
        zero_point: i32,
        dst: &mut [u8],
    ) -> i32 {
        // SAFETY: AVX2 (the caller's contract); every pointer comes from an 8-element slice.
        unsafe {
            let n = src.len().min(dst.len());
            let inv = _mm256_set1_ps(inv_scale);
            let zp = _mm256_set1_epi32(zero_point);
            let max = _mm256_set1_ps(2_147_483_520.0);
            let (lo, hi) = (_mm256_setzero_si256(), _mm256_set1_epi32(255));
            let mut sum = _mm256_setzero_si256();
            let mut k = 0;
            while k + 8 <= n {
                let x = _mm256_loadu_ps(src[k..k + 8].as_ptr());
                // minps(x * inv, max): a NaN gives `max`, as in fbgemm.
                let t = _mm256_min_ps(_mm256_mul_ps(x, inv), max);
                let v = _mm256_add_epi32(_mm256_cvtps_epi32(t), zp);
                let v = _mm256_min_epi32(_mm256_max_epi32(v, lo), hi);
                sum = _mm256_add_epi32(sum, v);
                let mut out = [0i32; 8];
                _mm256_storeu_si256(out.as_mut_ptr() as *mut __m256i, v);
                for (d, &o) in dst[k..k + 8].iter_mut().zip(&out) {
                    *d = o as u8;
                }
                k += 8;
            }
            let mut lanes = [0i32; 8];
            _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, sum);
            let mut total: i32 = lanes.iter().sum();
            for kk in k..n {
                let v = super::quantize(src[kk], inv_scale, zero_point);
                dst[kk] = v as u8;
                total += v;
            }
            total
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The AVX2 min and max are the portable loop's, NaN ignored and the first of equal zeros
    /// kept, for every length around the 8-lane chunks.
    #[test]
    fn simd_min_max_is_the_portable_one() {
        let vals = [0.5, -0.0, 0.0, f32::NAN, -3.25, 7.0, f32::INFINITY, -1e-30];
        for len in 0..40 {
            for shift in 0..vals.len() {
                let r: Vec<f32> = (0..len)
                    .map(|i| vals[(i * 5 + shift) % vals.len()])
                    .collect();
                let bits = |(l, h): (f32, f32)| (l.to_bits(), h.to_bits());
                assert_eq!(bits(row_min_max(&r)), bits(row_min_max_any(&r)), "{r:?}");
            }
        }
    }

    /// `torch._choose_qparams_per_tensor(torch.tensor([min, max]), reduce_range)` (PyTorch
    /// 2.15): the scale's f32 bits and the zero point, including the all-zero input (scale
    /// 0.1) and the tiny range widened to PyTorch's smallest scale.
    #[test]
    fn input_qparams_are_pytorch_s() {
        for (lo, hi, rr, bits, zp) in [
            (-1.0, 1.0, true, 0x3c810204, 64),
            (-1.0, 1.0, false, 0x3c008081, 128),
            (0.0, 0.0, true, 0x3dcccccd, 0),
            (0.5, 3.0, true, 0x3cc18306, 0),
            (-3.0, -0.5, false, 0x3c40c0c1, 255),
            (-1e-06, 2e-06, true, 0x387fda40, 42),
            (-0.123456, 7.654321, true, 0x3d7ad93f, 2),
            (-5.5, 0.001, false, 0x3cb0b8ea, 255),
        ] {
            let q = choose_qparams(lo, hi, rr);
            assert_eq!(
                (q.scale.to_bits(), q.zero_point),
                (bits, zp),
                "[{lo}, {hi}] reduce_range={rr}"
            );
        }
    }

    #[test]
    fn quantization_rounds_half_to_even_and_clamps_to_u8() {
        assert_eq!(quantize(2.5, 1.0, 0), 2);
        assert_eq!(quantize(3.5, 1.0, 0), 4);
        assert_eq!(quantize(-0.5, 1.0, 10), 10);
        assert_eq!(quantize(1e30, 1.0, 0), 255);
        assert_eq!(quantize(f32::NAN, 1.0, 64), 255);
        assert_eq!(quantize(f32::NEG_INFINITY, 1.0, 64), 0);
        assert_eq!(quantize(300.0, 1.0, 0), 255);
    }
}
