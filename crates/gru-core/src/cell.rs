//! `GruCell`: PyTorch's `nn.GRUCell`, one step of the GRU update.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::GruConfig;
use crate::error::{GruError, Result};
use crate::layer::{compute_dtype, Kernel, Layer, RunContext};
use crate::packing::LengthPlan;
use crate::params::{DirectionParams, ParamNames};

/// One GRU step with `nn.GRUCell`'s parameters: `weight_ih` `(3H, I)`, `weight_hh` `(3H, H)`,
/// `bias_ih`, `bias_hh` `(3H)`.
#[derive(Debug, Clone)]
pub struct GruCell {
    input_size: usize,
    hidden_size: usize,
    layer: Layer,
    dtype: DType,
    device: Device,
    kernel: Kernel,
}

impl GruCell {
    /// Builds the cell from `vb` at the cell's prefix; `bias` as in `nn.GRUCell(..., bias=)`.
    pub fn new(input_size: usize, hidden_size: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        GruConfig::new(input_size, hidden_size)
            .with_bias(bias)
            .validate()?;
        crate::device::check_dtype_supported(vb.device(), vb.dtype())?;
        let params =
            DirectionParams::load(&vb, &ParamNames::cell(), input_size, hidden_size, bias)?;
        Ok(Self {
            input_size,
            hidden_size,
            layer: Layer::new(vec![params], hidden_size)?,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            kernel: Kernel::Auto,
        })
    }

    pub fn input_size(&self) -> usize {
        self.input_size
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    pub fn bias(&self) -> bool {
        self.layer.params[0].b_ih.is_some()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// The parameters under `nn.GRUCell`'s names, in the model's dtype.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.layer.params[0].named(&ParamNames::cell())
    }

    /// `h' = cell(input, hx)`: `input` `(B, I)` or `(I)`, `hx` `(B, H)` or `(H)` (zeros when
    /// `None`); returns `(B, H)` or `(H)`.
    pub fn forward(&self, input: &Tensor, hx: Option<&Tensor>) -> Result<Tensor> {
        let batched = match input.rank() {
            2 => true,
            1 => false,
            r => {
                return Err(GruError::arg(
                    "input",
                    format!(
                        "GRUCell: Expected input to be 1D or 2D, got {r}D (shape {:?})",
                        input.dims()
                    ),
                ))
            }
        };
        self.check("input", input)?;
        let x = if batched {
            input.clone()
        } else {
            input.unsqueeze(0)?
        };
        let (batch, features) = x.dims2()?;
        if features != self.input_size {
            return Err(GruError::shape(
                "input",
                &[batch, self.input_size],
                &[batch, features],
            ));
        }
        let cdt = compute_dtype(self.dtype);
        let h = match hx {
            Some(hx) => {
                self.check("hx", hx)?;
                let expected: &[usize] = if batched {
                    &[batch, self.hidden_size]
                } else {
                    &[self.hidden_size]
                };
                if hx.dims() != expected {
                    return Err(GruError::shape("hx", expected, hx.dims()));
                }
                hx.reshape((1, batch, self.hidden_size))?.to_dtype(cdt)?
            }
            None => Tensor::zeros((1, batch, self.hidden_size), cdt, &self.device)?,
        };
        if batch == 0 {
            // PyTorch returns an empty (0, H) state for an empty batch.
            return Ok(Tensor::zeros(
                (0, self.hidden_size),
                self.dtype,
                &self.device,
            )?);
        }
        let x = x.unsqueeze(0)?.to_dtype(cdt)?.contiguous()?;
        let plan = LengthPlan::full(batch, 1);
        let ctx = RunContext::new(&plan, &self.device, self.kernel)?;
        let (_, h_n) = self.layer.forward(&x, Some(&h), &plan, self.kernel, &ctx)?;
        let h_n = h_n.squeeze(0)?.to_dtype(self.dtype)?;
        Ok(if batched { h_n } else { h_n.squeeze(0)? })
    }

    fn check(&self, name: &str, t: &Tensor) -> Result<()> {
        crate::error::check_dtype_device(name, t, self.dtype, &self.device)
    }
}

/// A `GruCell` in a candle model: `forward(input)` is `nn.GRUCell(input)` (zero `hx`).
impl candle_core::Module for GruCell {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Ok(GruCell::forward(self, xs, None)?)
    }
}
