//! The weights of a dynamically quantized GRU, as its packed parameters hold them, checked
//! before anything runs: every shape, scale and zero point.

use crate::config::GruConfig;
use crate::error::{GruError, Result};
use crate::params::ParamNames;

/// How an int8 weight's values map to reals: `scale * (q - zero_point)`, for the whole tensor
/// or per output row (`torch.per_channel_affine` on axis 0).
#[derive(Debug, Clone, PartialEq)]
pub enum WeightScheme {
    PerTensor {
        scale: f32,
        zero_point: i32,
    },
    PerChannel {
        scales: Vec<f32>,
        zero_points: Vec<i32>,
    },
}

/// One packed linear `y = x W^T + b`, `W` `(out, in)` row-major.
#[derive(Debug, Clone, PartialEq)]
pub enum QuantizedLinear {
    /// `dtype=torch.qint8`.
    Int8 {
        weight: Vec<i8>,
        out: usize,
        input: usize,
        scheme: WeightScheme,
        bias: Option<Vec<f32>>,
    },
    /// `dtype=torch.float16`: the weight's f16 values, widened to f32.
    Float16 {
        weight: Vec<f32>,
        out: usize,
        input: usize,
        bias: Option<Vec<f32>>,
    },
}

impl QuantizedLinear {
    pub fn out(&self) -> usize {
        match self {
            Self::Int8 { out, .. } | Self::Float16 { out, .. } => *out,
        }
    }

    pub fn input(&self) -> usize {
        match self {
            Self::Int8 { input, .. } | Self::Float16 { input, .. } => *input,
        }
    }

    pub fn is_fp16(&self) -> bool {
        matches!(self, Self::Float16 { .. })
    }

    pub fn bias(&self) -> Option<&[f32]> {
        match self {
            Self::Int8 { bias, .. } | Self::Float16 { bias, .. } => bias.as_deref(),
        }
    }

    /// `qint8 per-tensor`, `qint8 per-channel`, `float16`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Int8 {
                scheme: WeightScheme::PerTensor { .. },
                ..
            } => "qint8 per-tensor",
            Self::Int8 { .. } => "qint8 per-channel",
            Self::Float16 { .. } => "float16",
        }
    }

    /// The real-valued weight (`scale * (q - zero_point)`, or the f16 values): what
    /// `weight()` of PyTorch's module gives after dequantizing.
    pub fn dequantized(&self) -> Vec<f32> {
        match self {
            Self::Float16 { weight, .. } => weight.clone(),
            Self::Int8 {
                weight,
                input,
                scheme,
                ..
            } => weight
                .iter()
                .enumerate()
                .map(|(i, &q)| {
                    let (s, z) = scheme.of_row(i / input.max(&1));
                    s * (q as i32 - z) as f32
                })
                .collect(),
        }
    }

    /// Checks the sizes and the quantization parameters; `what` names it in errors.
    fn check(&self, what: &str, out: usize, input: usize) -> Result<()> {
        let err = |reason: String| GruError::arg(what, reason);
        if (self.out(), self.input()) != (out, input) {
            return Err(err(format!(
                "weight is ({}, {}), expected ({out}, {input})",
                self.out(),
                self.input()
            )));
        }
        let n = out
            .checked_mul(input)
            .ok_or_else(|| err("weight size overflows".into()))?;
        if let Some(b) = self.bias() {
            if b.len() != out {
                return Err(err(format!("bias has {} values, expected {out}", b.len())));
            }
            if let Some(i) = b.iter().position(|v| !v.is_finite()) {
                return Err(err(format!("bias holds a non-finite value at {i}")));
            }
        }
        match self {
            Self::Float16 { weight, .. } => {
                if weight.len() != n {
                    return Err(err(format!(
                        "weight holds {} values, expected {n}",
                        weight.len()
                    )));
                }
                if let Some(i) = weight.iter().position(|v| !v.is_finite()) {
                    return Err(err(format!("weight holds a non-finite value at {i}")));
                }
            }
            Self::Int8 { weight, scheme, .. } => {
                if weight.len() != n {
                    return Err(err(format!(
                        "weight holds {} values, expected {n}",
                        weight.len()
                    )));
                }
                let rows: Vec<(f32, i32)> = match scheme {
                    WeightScheme::PerTensor { scale, zero_point } => vec![(*scale, *zero_point)],
                    WeightScheme::PerChannel {
                        scales,
                        zero_points,
                    } => {
                        if scales.len() != out || zero_points.len() != out {
                            return Err(err(format!(
                                "per-channel quantization with {} scales and {} zero points \
                                 for {out} rows",
                                scales.len(),
                                zero_points.len()
                            )));
                        }
                        scales
                            .iter()
                            .copied()
                            .zip(zero_points.iter().copied())
                            .collect()
                    }
                };
                for (i, (s, z)) in rows.into_iter().enumerate() {
                    if !(s.is_finite() && s > 0.0) {
                        return Err(err(format!("scale {s} (row {i}) is not a positive number")));
                    }
                    if !(-128..=127).contains(&z) {
                        return Err(err(format!(
                            "zero point {z} (row {i}) is outside int8's -128..=127"
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

impl WeightScheme {
    /// Scale and zero point of output row `row`.
    pub(crate) fn of_row(&self, row: usize) -> (f32, i32) {
        match self {
            Self::PerTensor { scale, zero_point } => (*scale, *zero_point),
            Self::PerChannel {
                scales,
                zero_points,
            } => (scales[row], zero_points[row]),
        }
    }
}

/// Every layer's and direction's `(W_ih, W_hh)` linears, `layers[k][d]`, and whether int8
/// inputs are quantized to 7 bits (`reduce_range`, as fbgemm needs to keep its 16-bit pair
/// sums from saturating).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedGruWeights {
    pub layers: Vec<Vec<(QuantizedLinear, QuantizedLinear)>>,
    pub reduce_range: bool,
}

impl QuantizedGruWeights {
    /// Checks every linear against `config` (shapes, bias presence, one kind throughout).
    pub fn check(&self, config: &GruConfig) -> Result<()> {
        config.validate()?;
        let (h, g) = (config.hidden_size, 3 * config.hidden_size);
        if self.layers.len() != config.num_layers {
            return Err(GruError::arg(
                "quantized weights",
                format!(
                    "{} layers, the config has {}",
                    self.layers.len(),
                    config.num_layers
                ),
            ));
        }
        let kind = self.kind();
        let first_fp16 = self
            .layers
            .first()
            .and_then(|d| d.first())
            .is_some_and(|(ih, _)| ih.is_fp16());
        for (k, dirs) in self.layers.iter().enumerate() {
            if dirs.len() != config.num_directions() {
                return Err(GruError::arg(
                    "quantized weights",
                    format!(
                        "layer {k} has {} directions, expected {}",
                        dirs.len(),
                        config.num_directions()
                    ),
                ));
            }
            for (d, (ih, hh)) in dirs.iter().enumerate() {
                let names = ParamNames::gru(k, d);
                for (name, lin, input) in [
                    (names.w_ih, ih, config.layer_input_size(k)),
                    (names.w_hh, hh, h),
                ] {
                    lin.check(&name, g, input)?;
                    // int8 schemes may differ between linears; int8 and fp16 may not mix.
                    if lin.is_fp16() != first_fp16 {
                        return Err(GruError::arg(
                            &name,
                            format!("is {}, layer 0 is {kind}", lin.kind()),
                        ));
                    }
                    if lin.bias().is_some() != config.bias {
                        return Err(GruError::arg(
                            &name,
                            format!(
                                "bias {}, the config says bias={}",
                                if lin.bias().is_some() {
                                    "present"
                                } else {
                                    "absent"
                                },
                                config.bias
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// `qint8 per-tensor`, `qint8 per-channel` or `float16` (of the first linear).
    pub fn kind(&self) -> &'static str {
        self.layers
            .first()
            .and_then(|d| d.first())
            .map_or("empty", |(ih, _)| ih.kind())
    }
}
