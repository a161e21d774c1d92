//! `GruCell`: PyTorch's `nn.GRUCell`, one step of the GRU update.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::GruConfig;
use crate::error::{GruError, Result};
use crate::gru::Gru;
use crate::layer::{compute_dtype, Kernel, Layer, RunContext};
use crate::packing::LengthPlan;
use crate::params::{DirectionParams, ParamNames};
use crate::quantized::{QuantizedGruWeights, QuantizedLinear};

/// One GRU step with `nn.GRUCell`'s parameters: `weight_ih` `(3H, I)`, `weight_hh` `(3H, H)`,
/// `bias_ih`, `bias_hh` `(3H)`.
#[derive(Debug, Clone)]
pub struct GruCell {
    input_size: usize,
    hidden_size: usize,
    body: Body,
    dtype: DType,
    device: Device,
    kernel: Kernel,
}

/// A float cell's layer, or a quantized cell's one-step quantized GRU.
#[derive(Debug, Clone)]
enum Body {
    Float(Box<Layer>),
    Quantized(Box<Gru>),
}

impl GruCell {
    /// Builds the cell from `vb` at the cell's prefix; `bias` as in `nn.GRUCell(..., bias=)`.
    /// The older form: [`GruCell::from_config`] builds a cell as [`crate::Gru::new`] builds a GRU.
    #[deprecated(
        note = "use GruCell::from_config(GruConfig::new(input_size, hidden_size).with_bias(bias), vb)"
    )]
    pub fn new(input_size: usize, hidden_size: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        Self::from_config(GruConfig::new(input_size, hidden_size).with_bias(bias), vb)
    }

    /// Builds the cell as `Gru::new` builds a GRU: from a config (what
    /// `WeightFile::select(ModuleKind::GruCell, ..)` infers: one layer, one direction; its
    /// `batch_first` has no meaning for a cell), with the weights of `vb` at the cell's prefix.
    pub fn from_config(config: GruConfig, vb: VarBuilder) -> Result<Self> {
        if config.num_layers != 1 || config.bidirectional {
            return Err(GruError::Config {
                field: "num_layers / bidirectional",
                reason: format!(
                    "a GRUCell has one layer and one direction, the config {} layers{}",
                    config.num_layers,
                    if config.bidirectional {
                        " in two directions"
                    } else {
                        ""
                    }
                ),
            });
        }
        config.validate()?;
        let GruConfig {
            input_size,
            hidden_size,
            bias,
            ..
        } = config;
        crate::device::check_dtype_supported(vb.device(), vb.dtype())?;
        let params =
            DirectionParams::load(&vb, &ParamNames::cell(), input_size, hidden_size, bias)?;
        Ok(Self {
            input_size,
            hidden_size,
            body: Body::Float(Box::new(Layer::new(vec![params], hidden_size)?)),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            kernel: Kernel::Auto,
        })
    }

    /// A GRUCell quantized with `quantize_dynamic` (`torch.ao.nn.quantized.dynamic.GRUCell`):
    /// its two packed linears. Each call quantizes its input and its `hx` (7 bits: PyTorch's
    /// cell always uses `reduce_range`), as PyTorch's `quantized_gru_cell_dynamic` does; f32 on
    /// the CPU.
    pub fn from_quantized(ih: QuantizedLinear, hh: QuantizedLinear) -> Result<Self> {
        let (input_size, hidden_size) = (ih.input(), hh.input());
        let config = GruConfig::new(input_size, hidden_size).with_bias(ih.bias().is_some());
        let weights = QuantizedGruWeights {
            layers: vec![vec![(ih, hh)]],
            reduce_range: true,
        };
        Ok(Self {
            input_size,
            hidden_size,
            body: Body::Quantized(Box::new(Gru::from_quantized(config, weights)?)),
            dtype: DType::F32,
            device: Device::Cpu,
            kernel: Kernel::Auto,
        })
    }

    /// The quantized weights of a cell built by [`GruCell::from_quantized`].
    pub fn quantized(&self) -> Option<&QuantizedGruWeights> {
        match &self.body {
            Body::Quantized(g) => g.quantized(),
            Body::Float(_) => None,
        }
    }

    pub fn input_size(&self) -> usize {
        self.input_size
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    pub fn bias(&self) -> bool {
        match &self.body {
            Body::Float(layer) => layer.params[0].b_ih.is_some(),
            Body::Quantized(g) => g.config().bias,
        }
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// As [`Gru::with_wide_steps`]: `false` computes a small f32 cell's step in f32.
    pub fn with_wide_steps(mut self, allowed: bool) -> Result<Self> {
        if let Body::Float(layer) = self.body {
            self.body = Body::Float(Box::new(layer.with_wide_steps(allowed)?));
        }
        Ok(self)
    }

    /// The parameters under `nn.GRUCell`'s names, in the model's dtype.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        match &self.body {
            Body::Float(layer) => layer.params[0].named(&ParamNames::cell()),
            // The dequantized weights, under the cell's names (`weight_ih_l0` -> `weight_ih`).
            Body::Quantized(g) => g
                .named_tensors()
                .into_iter()
                .map(|(n, t)| (n.trim_end_matches("_l0").to_string(), t))
                .collect(),
        }
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
        let h_n = match &self.body {
            Body::Float(layer) => {
                let plan = LengthPlan::full(batch, 1);
                let ctx = RunContext::new(&plan, &self.device, self.kernel)?;
                layer.forward(&x, Some(&h), &plan, self.kernel, &ctx)?.1
            }
            // One step of a one-layer GRU: the same two linear calls, the same gates.
            Body::Quantized(g) => g.forward(&x, Some(&h))?.1,
        };
        let h_n = h_n.squeeze(0)?.to_dtype(self.dtype)?;
        Ok(if batched { h_n } else { h_n.squeeze(0)? })
    }

    /// The cell applied along a batch-first sequence, as `nn.GRU` with one layer and these
    /// weights: `input` `(B, T, I)`, `h0` `(B, H)`; returns every step's state, `(B, T, H)`. One
    /// fused pass over the sequence (the input projection as one matmul), not `T` calls. A
    /// sequence of no steps gives `(B, 0, H)`, as candle-nn's `RNN::seq` gives no states (where
    /// `nn.GRU`, and `Gru`, refuse it).
    pub fn forward_seq(&self, input: &Tensor, h0: &Tensor) -> Result<Tensor> {
        self.check("input", input)?;
        self.check("h0", h0)?;
        let (batch, steps, features) = match *input.dims() {
            [b, t, i] => (b, t, i),
            _ => {
                return Err(GruError::arg(
                    "input",
                    format!(
                        "a sequence is (batch, seq_len, input_size), got shape {:?}",
                        input.dims()
                    ),
                ))
            }
        };
        if features != self.input_size {
            return Err(GruError::shape(
                "input",
                &[batch, steps, self.input_size],
                input.dims(),
            ));
        }
        if h0.dims() != [batch, self.hidden_size] {
            return Err(GruError::shape("h0", &[batch, self.hidden_size], h0.dims()));
        }
        if batch == 0 || steps == 0 {
            let shape = (batch, steps, self.hidden_size);
            return Ok(Tensor::zeros(shape, self.dtype, &self.device)?);
        }
        let layer = match &self.body {
            Body::Float(layer) => layer,
            Body::Quantized(_) => {
                // A quantized cell quantizes each call's input: one call per step.
                let mut h = h0.clone();
                let mut states = Vec::with_capacity(steps);
                for t in 0..steps {
                    h = self.forward(&input.narrow(1, t, 1)?.squeeze(1)?, Some(&h))?;
                    states.push(h.clone());
                }
                return Ok(Tensor::stack(&states, 1)?);
            }
        };
        let cdt = compute_dtype(self.dtype);
        let x = input.transpose(0, 1)?.to_dtype(cdt)?.contiguous()?;
        let h = h0.reshape((1, batch, self.hidden_size))?.to_dtype(cdt)?;
        let plan = LengthPlan::full(batch, steps);
        let ctx = RunContext::new(&plan, &self.device, self.kernel)?;
        let (out, _) = layer.forward(&x, Some(&h), &plan, self.kernel, &ctx)?;
        Ok(out.to_dtype(self.dtype)?.transpose(0, 1)?.contiguous()?)
    }

    fn check(&self, name: &str, t: &Tensor) -> Result<()> {
        crate::device::check_dtype_device(name, t, self.dtype, &self.device)
    }
}

/// candle-nn's recurrent-network trait, so that a `GruCell` stands in for
/// `candle_nn::rnn::GRU` with PyTorch's numbers: `step` is one `nn.GRUCell` call, `seq` /
/// `seq_init` run the whole sequence in one fused pass (`forward_seq`) instead of step by step,
/// and `states_to_tensor` concatenates the states along dim 1, `(B, T * H)`, as candle-nn's GRU
/// does. The weights are read under `nn.GRUCell`'s names (`weight_ih`); where candle-nn's `gru()`
/// read a one-layer `nn.GRU`'s (`weight_ih_l0`), build from
/// `vb.rename_f(|n| format!("{n}_l0"))`.
impl candle_nn::rnn::RNN for GruCell {
    type State = candle_nn::rnn::GRUState;

    fn zero_state(&self, batch_dim: usize) -> candle_core::Result<Self::State> {
        let h = Tensor::zeros((batch_dim, self.hidden_size), self.dtype, &self.device)?;
        Ok(candle_nn::rnn::GRUState { h })
    }

    fn step(&self, input: &Tensor, state: &Self::State) -> candle_core::Result<Self::State> {
        let h = self.forward(input, Some(&state.h))?;
        Ok(candle_nn::rnn::GRUState { h })
    }

    fn seq_init(
        &self,
        input: &Tensor,
        init_state: &Self::State,
    ) -> candle_core::Result<Vec<Self::State>> {
        let out = self.forward_seq(input, &init_state.h)?;
        (0..out.dim(1)?)
            .map(|t| {
                let h = out.narrow(1, t, 1)?.squeeze(1)?;
                Ok(candle_nn::rnn::GRUState { h })
            })
            .collect()
    }

    fn states_to_tensor(&self, states: &[Self::State]) -> candle_core::Result<Tensor> {
        let states: Vec<Tensor> = states.iter().map(|s| s.h.clone()).collect();
        Tensor::cat(&states, 1)
    }
}

/// A `GruCell` in a candle model: `forward(input)` is `nn.GRUCell(input)` (zero `hx`).
impl candle_core::Module for GruCell {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Ok(GruCell::forward(self, xs, None)?)
    }
}
