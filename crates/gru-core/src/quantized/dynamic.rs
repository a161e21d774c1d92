//! One dynamically quantized linear, `y = x W^T + b`, as PyTorch's fbgemm path computes it
//! (`PackedLinearWeight::apply_dynamic`): the input's min and max over the whole call choose a
//! u8 scale and zero point (`quant_utils::ChooseQuantizationParams`, 7 bits with
//! `reduce_range`; `Linear::input_quant`), the input is quantized (`fbgemm::Quantize`), the int8
//! products are summed in i32, and each sum becomes f32 as fbgemm's `ReQuantizeForFloat` does
//! (`int8`). The fp16 kind: f32 products of the f16 weights, then the bias (`fp16`). Here: a
//! linear's packed weights of either kind; `team` runs the calls of a recurrence.

use super::fp16::PackedF16;
use super::input::{choose_qparams, min_max, InputQuant};
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

    pub fn is_fp16(&self) -> bool {
        matches!(self, Self::Float16(_))
    }

    /// How PyTorch quantizes `x` as one call's input: over its min and max.
    pub fn input_quant(x: &[&[f32]], reduce_range: bool) -> InputQuant {
        let (lo, hi) = min_max(x.iter().copied());
        choose_qparams(lo, hi, reduce_range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantized::input::quantize_row;

    /// Without `reduce_range` fbgemm's AVX2 pair sums saturate at i16: PyTorch's numbers do too.
    #[test]
    fn pair_sums_saturate_as_fbgemm_s() {
        let Linear::Int8(p) = Linear::new(&QuantizedLinear::Int8 {
            weight: vec![127, 127],
            out: 1,
            input: 2,
            scheme: crate::quantized::WeightScheme::PerTensor {
                scale: 1.0,
                zero_point: 0,
            },
            bias: None,
        }) else {
            unreachable!()
        };
        // [0, 255] quantizes to [0, 255] with scale 1: 255 * 127 * 2 = 64770 saturates to
        // 32767; the input's zero point is 0.
        let q = InputQuant {
            scale: 1.0,
            zero_point: 0,
        };
        let mut qa = vec![0u8; p.k_padded()];
        let sum = quantize_row(&[255.0, 255.0], 1.0, 0, &mut qa);
        let mut y = [0.0f32];
        p.run_blocks(&qa, &[sum], q, &mut [&mut y[..]][..], 0..1);
        assert_eq!(y[0], 32767.0);
    }
}
