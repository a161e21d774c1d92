//! `Gru`: PyTorch's `nn.GRU` (any layers, directions, bias, batch_first; variable-length batches).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use crate::config::GruConfig;
use crate::error::{GruError, Result};
use crate::layer::{compute_dtype, Kernel, Layer, RunContext};
use crate::packing::LengthPlan;
use crate::params::{DirectionParams, ParamNames};
use crate::quantized::forward::Prepared;
use crate::quantized::QuantizedGruWeights;

/// A quantized GRU's parameters as f32 tensors under PyTorch's float names.
fn quantized_named(q: &QuantizedGruWeights) -> Vec<(String, Tensor)> {
    let mut v = Vec::new();
    for (k, dirs) in q.layers.iter().enumerate() {
        for (d, (ih, hh)) in dirs.iter().enumerate() {
            let names = ParamNames::gru(k, d);
            for (w, b, lin) in [
                (&names.w_ih, &names.b_ih, ih),
                (&names.w_hh, &names.b_hh, hh),
            ] {
                let t = Tensor::from_vec(lin.dequantized(), (lin.out(), lin.input()), &Device::Cpu);
                if let Ok(t) = t {
                    v.push((w.clone(), t));
                }
                if let Some(bias) = lin.bias() {
                    if let Ok(t) = Tensor::from_slice(bias, lin.out(), &Device::Cpu) {
                        v.push((b.clone(), t));
                    }
                }
            }
        }
    }
    v
}

/// A float GRU's layers, or a dynamically quantized GRU's weights and their packed form.
#[derive(Debug, Clone)]
enum Body {
    Float(Vec<Layer>),
    Quantized(Arc<(QuantizedGruWeights, Prepared)>),
}

/// A multi-layer GRU with PyTorch's parameters, semantics and tensor layouts.
///
/// ```no_run
/// # fn main() -> anyhow::Result<()> {
/// use candle_core::{DType, Device, Tensor};
/// use gru_core::{Gru, GruConfig};
/// let vb = unsafe {
///     candle_nn::VarBuilder::from_mmaped_safetensors(&["gru.safetensors"], DType::F32, &Device::Cpu)?
/// };
/// let gru = Gru::new(GruConfig::new(8, 16).with_num_layers(2), vb.pp("encoder.rnn"))?;
/// let x = Tensor::zeros((5, 3, 8), DType::F32, &Device::Cpu)?; // (seq_len, batch, input_size)
/// let (output, h_n) = gru.forward(&x, None)?; // (5, 3, 16), (2, 3, 16)
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Gru {
    config: GruConfig,
    body: Body,
    dtype: DType,
    device: Device,
    kernel: Kernel,
}

impl Gru {
    /// Builds the GRU from `vb` (at the GRU's own prefix), reading PyTorch's names:
    /// `weight_ih_l{k}` `(3H, in_k)`, `weight_hh_l{k}` `(3H, H)`, `bias_ih_l{k}` and `bias_hh_l{k}`
    /// `(3H)` (when `config.bias`), with the suffix `_reverse` for the backward direction. Every
    /// shape is checked; the model's dtype and device are the `VarBuilder`'s.
    pub fn new(config: GruConfig, vb: VarBuilder) -> Result<Self> {
        config.validate()?;
        crate::device::check_dtype_supported(vb.device(), vb.dtype())?;
        let mut layers = Vec::with_capacity(config.num_layers);
        for k in 0..config.num_layers {
            let params = (0..config.num_directions())
                .map(|d| {
                    DirectionParams::load(
                        &vb,
                        &ParamNames::gru(k, d),
                        config.layer_input_size(k),
                        config.hidden_size,
                        config.bias,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            layers.push(Layer::new(params, config.hidden_size)?);
        }
        Ok(Self {
            config,
            body: Body::Float(layers),
            dtype: vb.dtype(),
            device: vb.device().clone(),
            kernel: Kernel::Auto,
        })
    }

    /// A GRU quantized with `torch.ao.quantization.quantize_dynamic` (int8 or float16), from its
    /// packed weights: it computes what PyTorch's `torch.ao.nn.quantized.dynamic.GRU` computes on
    /// an x86 CPU, in f32, on the CPU (inputs are quantized per call, as there). `kernel` is
    /// ignored.
    pub fn from_quantized(config: GruConfig, weights: QuantizedGruWeights) -> Result<Self> {
        weights.check(&config)?;
        let prepared = Prepared::new(&weights, config.hidden_size);
        Ok(Self {
            config,
            body: Body::Quantized(Arc::new((weights, prepared))),
            dtype: DType::F32,
            device: Device::Cpu,
            kernel: Kernel::Auto,
        })
    }

    /// The quantized weights of a GRU built by [`Gru::from_quantized`].
    pub fn quantized(&self) -> Option<&QuantizedGruWeights> {
        match &self.body {
            Body::Quantized(q) => Some(&q.0),
            Body::Float(_) => None,
        }
    }

    pub fn config(&self) -> &GruConfig {
        &self.config
    }

    /// The dtype of the weights; inputs and `h0` must have it too.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Chooses the implementation of the recurrence (default: `Kernel::Auto`).
    pub fn with_kernel(mut self, kernel: Kernel) -> Self {
        self.kernel = kernel;
        self
    }

    /// Whether an f32 model's small layers may compute each step in f64 on the CPU, rounding the
    /// state to f32 after every step (default: yes): layers of up to 128 hidden units, in calls
    /// whose batch times hidden size is at most 512. Such steps end several times closer to the
    /// exact answer than PyTorch's f32 (f32 steps land about as far as PyTorch's, on some inputs
    /// 2-3x further) and take 1.6-3x the time of f32 steps (still less than PyTorch's). `false`
    /// computes in f32. Other dtypes, devices and quantized models are unaffected.
    pub fn with_wide_steps(mut self, allowed: bool) -> Result<Self> {
        if let Body::Float(layers) = self.body {
            let layers = layers
                .into_iter()
                .map(|l| l.with_wide_steps(allowed))
                .collect::<Result<Vec<_>>>()?;
            self.body = Body::Float(layers);
        }
        Ok(self)
    }

    /// `batch_first` is not stored in a state_dict: set it as the PyTorch model had it.
    pub fn with_batch_first(mut self, batch_first: bool) -> Self {
        self.config.batch_first = batch_first;
        self
    }

    /// Number of scalar parameters (as `sum(p.numel() for p in gru.parameters())`).
    pub fn num_parameters(&self) -> usize {
        self.named_tensors()
            .iter()
            .map(|(_, t)| t.elem_count())
            .sum()
    }

    /// The parameters under PyTorch's names (`weight_ih_l0`, ...), in the model's dtype: what
    /// `gru.state_dict()` holds.
    /// A quantized GRU's are its dequantized weights and its biases (f32): a float GRU with
    /// them computes without the quantization of the inputs, so not PyTorch's quantized numbers.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let layers = match &self.body {
            Body::Quantized(q) => return quantized_named(&q.0),
            Body::Float(layers) => layers,
        };
        let mut v = Vec::new();
        for (k, layer) in layers.iter().enumerate() {
            for (d, p) in layer.params.iter().enumerate() {
                v.extend(p.named(&ParamNames::gru(k, d)));
            }
        }
        v
    }

    /// Runs the GRU as `nn.GRU.forward(input, h0)` does.
    ///
    /// - `input`: `(T, B, input_size)`, or `(B, T, input_size)` with `batch_first`, or unbatched
    ///   `(T, input_size)`.
    /// - `h0`: `(L * D, B, H)` (`(L * D, H)` for unbatched input); zeros when `None`.
    ///
    /// Returns `output` `(T, B, D * H)` (batch-first when configured; forward half then backward
    /// half) and `h_n` `(L * D, B, H)` indexed `layer * D + direction`.
    pub fn forward(&self, input: &Tensor, h0: Option<&Tensor>) -> Result<(Tensor, Tensor)> {
        self.run(input, h0, None)
    }

    /// Runs a padded variable-length batch, giving what PyTorch gives for
    /// `pad_packed_sequence(gru(pack_padded_sequence(x, lengths, enforce_sorted=False), h0),
    /// total_length=T)`: each sequence stops at its own length (the reverse direction starts at
    /// its last valid step), `output` is zero past each length, `h_n` holds each sequence's last
    /// state. Values in padded positions are never read. `lengths`: one per batch element, each
    /// in `1..=T`, in any order.
    pub fn forward_with_lengths(
        &self,
        input: &Tensor,
        lengths: &[usize],
        h0: Option<&Tensor>,
    ) -> Result<(Tensor, Tensor)> {
        self.run(input, h0, Some(lengths))
    }

    fn run(
        &self,
        input: &Tensor,
        h0: Option<&Tensor>,
        lengths: Option<&[usize]>,
    ) -> Result<(Tensor, Tensor)> {
        let cfg = &self.config;
        let (x, batched) = self.time_major_input(input)?;
        let (t_len, batch, _) = x.dims3()?;
        let n_dirs = cfg.num_directions();
        // `None` stays `None`: each layer makes zeros only where its kernel needs them (the
        // persistent kernel reads none).
        let h0 = h0.map(|h0| self.check_h0(h0, batched, batch)).transpose()?;
        if batch == 0 {
            // PyTorch returns empty tensors for an empty batch.
            let t = if cfg.batch_first {
                (0, t_len, n_dirs * cfg.hidden_size)
            } else {
                (t_len, 0, n_dirs * cfg.hidden_size)
            };
            let out = Tensor::zeros(t, self.dtype, &self.device)?;
            let h_n = Tensor::zeros(
                (cfg.num_layers * n_dirs, 0, cfg.hidden_size),
                self.dtype,
                &self.device,
            )?;
            return Ok((out, h_n));
        }
        let plan = match lengths {
            None => LengthPlan::full(batch, t_len),
            Some(_) if !batched => {
                return Err(GruError::arg(
                    "lengths",
                    "need a batched 3-D input, as pack_padded_sequence does",
                ))
            }
            Some(l) => LengthPlan::new(l, batch, t_len)?,
        };

        let layers = match &self.body {
            Body::Quantized(q) => {
                let (output, h_n) = self.run_quantized(&q.1, &x, h0.as_ref(), &plan)?;
                return self.finish(output, h_n, batched);
            }
            Body::Float(layers) => layers,
        };
        let (output, h_n) =
            match Layer::forward_cpu_stack(layers, &x, h0.as_ref(), &plan, self.kernel)? {
                Some(out) => out,
                None => {
                    let ctx = RunContext::new(&plan, &self.device, self.kernel)?;
                    let mut x = x;
                    let mut h_n = Vec::with_capacity(cfg.num_layers);
                    for (k, layer) in layers.iter().enumerate() {
                        let h0_k = h0
                            .as_ref()
                            .map(|h0| h0.narrow(0, k * n_dirs, n_dirs))
                            .transpose()?;
                        let (out, hn) =
                            layer.forward(&x, h0_k.as_ref(), &plan, self.kernel, &ctx)?;
                        h_n.push(hn);
                        x = out;
                    }
                    (x, Tensor::cat(&h_n, 0)?)
                }
            };
        self.finish(output, h_n, batched)
    }

    /// Batch-first and unbatched layouts of a time-major result, in the model's dtype.
    fn finish(
        &self,
        mut output: Tensor,
        mut h_n: Tensor,
        batched: bool,
    ) -> Result<(Tensor, Tensor)> {
        let cfg = &self.config;
        if cfg.batch_first && batched {
            output = output.transpose(0, 1)?.contiguous()?;
        }
        if !batched {
            output = output.squeeze(1)?;
            h_n = h_n.squeeze(1)?;
        }
        Ok((output.to_dtype(self.dtype)?, h_n.to_dtype(self.dtype)?))
    }

    /// The quantized recurrence on the CPU: `x` `(T, B, I)`, `h0` `(L * D, B, H)`.
    fn run_quantized(
        &self,
        q: &Prepared,
        x: &Tensor,
        h0: Option<&Tensor>,
        plan: &LengthPlan,
    ) -> Result<(Tensor, Tensor)> {
        let (t_len, batch, _) = x.dims3()?;
        let cfg = &self.config;
        let dev = x.device().clone();
        if !dev.is_cpu() {
            return Err(GruError::arg(
                "input",
                "a quantized GRU runs on the CPU (PyTorch's quantized kernels are CPU kernels)",
            ));
        }
        let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let h0 = h0
            .map(|h| h.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
            .transpose()?;
        // (Run from here, not inside the pool: each direction's steps run in a team of its own
        // threads, and a small model would pay a hand-off to the pool per call.)
        let (out, h_n) = q.forward(&xs, (t_len, batch), h0.as_deref(), plan);
        let n_dirs = cfg.num_directions();
        Ok((
            Tensor::from_vec(out, (t_len, batch, n_dirs * cfg.hidden_size), &dev)?,
            Tensor::from_vec(h_n, (cfg.num_layers * n_dirs, batch, cfg.hidden_size), &dev)?,
        ))
    }

    /// Checks `input` as PyTorch's `RNNBase.check_input` does and returns it as `(T, B, I)` in
    /// compute dtype, with whether it was batched.
    fn time_major_input(&self, input: &Tensor) -> Result<(Tensor, bool)> {
        self.check_tensor("input", input)?;
        let cfg = &self.config;
        let batched = match input.rank() {
            3 => true,
            2 => false,
            r => {
                return Err(GruError::arg(
                    "input",
                    format!(
                        "expected a 2-D (unbatched) or 3-D (batched) tensor, got {r}-D shape {:?}",
                        input.dims()
                    ),
                ))
            }
        };
        let last = input.dim(candle_core::D::Minus1)?;
        if last != cfg.input_size {
            return Err(GruError::arg(
                "input",
                format!(
                    "input.size(-1) must be equal to input_size. Expected {}, got {last} (shape {:?})",
                    cfg.input_size,
                    input.dims()
                ),
            ));
        }
        let t_axis = if batched && cfg.batch_first { 1 } else { 0 };
        if input.dim(t_axis)? == 0 {
            return Err(GruError::arg(
                "input",
                format!(
                    "Expected sequence length to be larger than 0 in RNN (shape {:?})",
                    input.dims()
                ),
            ));
        }
        let x = if !batched {
            input.unsqueeze(1)?
        } else if cfg.batch_first {
            input.transpose(0, 1)?
        } else {
            input.clone()
        };
        Ok((
            x.to_dtype(compute_dtype(self.dtype))?.contiguous()?,
            batched,
        ))
    }

    fn check_h0(&self, h0: &Tensor, batched: bool, batch: usize) -> Result<Tensor> {
        self.check_tensor("h0", h0)?;
        let cfg = &self.config;
        let ld = cfg.num_layers * cfg.num_directions();
        let expected: Vec<usize> = if batched {
            vec![ld, batch, cfg.hidden_size]
        } else {
            vec![ld, cfg.hidden_size]
        };
        if h0.dims() != expected.as_slice() {
            return Err(GruError::shape("h0", &expected, h0.dims()));
        }
        let h0 = if batched {
            h0.clone()
        } else {
            h0.unsqueeze(1)?
        };
        Ok(h0.to_dtype(compute_dtype(self.dtype))?.contiguous()?)
    }

    fn check_tensor(&self, name: &str, t: &Tensor) -> Result<()> {
        crate::device::check_dtype_device(name, t, self.dtype, &self.device)
    }
}

/// A `Gru` in a candle model: `forward(input)` is `nn.GRU(input)[0]` (the output; zero `h0`).
/// For `h0`, `h_n` or lengths use the inherent [`Gru::forward`] / [`Gru::forward_with_lengths`].
impl candle_core::Module for Gru {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        Ok(Gru::forward(self, xs, None)?.0)
    }
}
