//! One dynamically quantized linear, `y = x W^T + b`, as PyTorch's fbgemm path computes it
//! (`PackedLinearWeight::apply_dynamic`): the input's min and max over the whole call choose a
//! u8 scale and zero point (`quant_utils::ChooseQuantizationParams`, 7 bits with
//! `reduce_range`), the input is quantized (`fbgemm::Quantize`), the int8 products are summed
//! in i32 (exact: no overflow for the sizes checked), and each sum becomes f32 as fbgemm's
//! `ReQuantizeForFloat` does. The fp16 kind: f32 products of the f16 weights, then the bias.

use super::fp16::PackedF16;
use super::input::{choose_qparams, min_max, quantize_row, InputQuant};
use super::int8::PackedInt8;
use super::weights::QuantizedLinear;

/// A linear ready to run: int8 weights packed (the input quantized on every call), or the
/// fp16 kind's weights transposed.
#[derive(Debug, Clone)]
pub(crate) enum Linear {
    Int8(PackedInt8),
    Float16(PackedF16),
}

impl Linear {
    pub fn new(lin: &QuantizedLinear) -> Self {
        match lin {
            QuantizedLinear::Int8 {
                weight,
                out,
                input,
                scheme,
                bias,
            } => Self::Int8(PackedInt8::new(
                weight,
                *out,
                *input,
                scheme,
                bias.as_deref(),
            )),
            QuantizedLinear::Float16 {
                weight,
                out,
                input,
                bias,
            } => Self::Float16(PackedF16::new(weight, *out, *input, bias.as_deref())),
        }
    }

    /// `y[i]` = the linear of `x[i]`, with one input quantization over all of `x` (PyTorch
    /// quantizes each call's whole input).
    pub fn run(&self, x: &[&[f32]], reduce_range: bool, y: &mut [&mut [f32]]) {
        let q = Self::input_quant(x, reduce_range);
        self.run_with(x, q, y);
    }

    pub fn is_fp16(&self) -> bool {
        matches!(self, Self::Float16(_))
    }

    /// How PyTorch quantizes `x` as one call's input: over its min and max.
    pub fn input_quant(x: &[&[f32]], reduce_range: bool) -> InputQuant {
        let (lo, hi) = min_max(x.iter().copied());
        choose_qparams(lo, hi, reduce_range)
    }

    /// `run` with the input's quantization given (a part of one call's input, computed in
    /// pieces; unused by the fp16 kind).
    pub fn run_with(&self, x: &[&[f32]], q: InputQuant, y: &mut [&mut [f32]]) {
        match self {
            Self::Float16(p) => p.run(x, y),
            Self::Int8(p) => {
                let kp = p.k_padded();
                let inv = 1.0 / q.scale;
                let mut qa = vec![0u8; x.len() * kp];
                let mut sums = vec![0i32; x.len()];
                for ((row, dst), sum) in x.iter().zip(qa.chunks_mut(kp)).zip(&mut sums) {
                    *sum = quantize_row(row, inv, q.zero_point, dst);
                }
                p.run(&qa, &sums, q, y);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without `reduce_range` fbgemm's AVX2 pair sums saturate at i16: PyTorch's numbers do too.
    #[test]
    fn pair_sums_saturate_as_fbgemm_s() {
        let lin = Linear::new(&QuantizedLinear::Int8 {
            weight: vec![127, 127],
            out: 1,
            input: 2,
            scheme: crate::quantized::WeightScheme::PerTensor {
                scale: 1.0,
                zero_point: 0,
            },
            bias: None,
        });
        // [0, 255] quantizes to [0, 255] with scale 1: 255 * 127 * 2 = 64770 saturates to
        // 32767; the input's zero point is 0.
        let mut y = [0.0f32];
        lin.run(&[&[255.0, 255.0]], false, &mut [&mut y[..]]);
        assert_eq!(y[0], 32767.0);
    }
}
