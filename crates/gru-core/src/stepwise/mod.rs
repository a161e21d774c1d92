//! The per-step recurrence of one layer on any device: the input projection in one matmul, then
//! per step one matmul `h @ W_hh^T` and the gate update, either fused in one in-place kernel
//! (`Kernel::FusedStep`: on CUDA `cuda::per_step`'s host loop, two launches per step; elsewhere
//! its CPU twin `GateStep`) or composed from candle ops (`Kernel::CandleOps`: every backend,
//! Metal's path, the one gradients flow through). On the CPU the slice kernel (`cpu`) runs by
//! default; both variants here stay tested on the CPU. On CUDA a layer that fits on chip runs as
//! one persistent launch instead (`cuda::persistent`).

use candle_core::{DType, Tensor, D};

use crate::cuda::per_step::DirectionLoop;
use crate::cuda::{check_kernel_sizes, DeviceKernels};
use crate::error::Result;
use crate::packing::LengthPlan;

mod gate_step;
use gate_step::GateStep;

/// One direction's recurrent weights, in compute layout.
pub(crate) struct DirTensors<'a> {
    /// `(H, 3H)`.
    pub w_hh_t: &'a Tensor,
    /// `(H)`.
    pub b_hn: &'a Tensor,
}

/// One layer: `x` `(T, B, in)`, `h0` `(D, B, H)` -> `output` `(T, B, D * H)`, `h_n` `(D, B, H)`.
/// `narrow`: the tensors are an f32 layer's in f64 (its wide steps, `layer::WIDE_MAX_HIDDEN`),
/// and each step's state is rounded to f32.
pub(crate) fn layer_forward(
    x: &Tensor,
    w_ih_t: &Tensor,
    bias: &Tensor,
    dirs: &[DirTensors<'_>],
    h0: &Tensor,
    plan: &LengthPlan,
    fused: Option<Fused<'_>>,
    narrow: bool,
) -> Result<(Tensor, Tensor)> {
    let g3 = 3 * h0.dim(D::Minus1)?;
    let gi = input_projection(x, w_ih_t, bias, dirs.len() * g3)?;
    let mut outs = Vec::with_capacity(dirs.len());
    let mut hns = Vec::with_capacity(dirs.len());
    for (d, dir) in dirs.iter().enumerate() {
        let h0_d = h0.get(d)?;
        let (out, hn) = if let Some(f) = &fused {
            fused_direction(&gi, d * g3, dir, &h0_d, f, d == 1, narrow)?
        } else {
            let gi_d = gi.narrow(2, d * g3, g3)?;
            composite_direction(&gi_d, dir, &h0_d, plan, d == 1, narrow)?
        };
        outs.push(out);
        hns.push(hn);
    }
    let output = if outs.len() == 1 {
        outs.pop().expect("one direction")
    } else {
        Tensor::cat(&outs, 2)?
    };
    Ok((output, Tensor::stack(&hns, 0)?))
}

/// Input projection of every step and direction in one matmul: `(T, B, g)`, biases folded in.
fn input_projection(x: &Tensor, w_ih_t: &Tensor, bias: &Tensor, g: usize) -> Result<Tensor> {
    let (t_len, batch, input) = x.dims3()?;
    let x = x.reshape((t_len * batch, input))?;
    Ok(matmul_in_chains(&x, w_ih_t)?
        .broadcast_add(bias)?
        .reshape((t_len, batch, g))?)
}

/// Steps of the inner dimension one CPU matmul sums in one chain: as the CPU kernel does
/// (`cpu::microkernel`'s `CHAIN`), so that these paths are as close to the exact answer.
const CHAIN: usize = 64;

/// `a @ b` (`(m, k) x (k, n)`); on the CPU, for `k` past [`CHAIN`], as the sum of the products
/// of chains of `k`, added in order: candle's matmul sums all of `k` in one chain, whose rounding
/// error grows with `k` (a 512-unit GRU's recurrent product, twice PyTorch's). Elsewhere (CUDA,
/// Metal: their own GEMMs, and one launch matters more) one matmul. Differentiable either way.
fn matmul_in_chains(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let k = a.dim(D::Minus1)?;
    if !a.device().is_cpu() || k <= CHAIN {
        return Ok(a.matmul(b)?);
    }
    let mut sum = a.narrow(1, 0, CHAIN)?.matmul(&b.narrow(0, 0, CHAIN)?)?;
    for k0 in (CHAIN..k).step_by(CHAIN) {
        let kc = CHAIN.min(k - k0);
        sum = (sum + a.narrow(1, k0, kc)?.matmul(&b.narrow(0, k0, kc)?)?)?;
    }
    Ok(sum)
}

/// What the fused per-step path needs besides the weights: the lengths as a `(B)` u32 tensor on
/// the device (uploaded once per forward) and the device's kernels.
pub(crate) struct Fused<'a> {
    /// `None` when every sequence runs the full length.
    pub lengths: Option<&'a Tensor>,
    pub kernels: Option<&'a DeviceKernels>,
}

/// Per step: the matmul, then `GateStep` writes the state and the step's output in place into a
/// `(T + 2, B, H)` buffer. Nothing else is launched or copied inside the loop.
fn fused_direction(
    gi: &Tensor,
    offset: usize,
    dir: &DirTensors<'_>,
    h0: &Tensor,
    fused: &Fused<'_>,
    reverse: bool,
    narrow: bool,
) -> Result<(Tensor, Tensor)> {
    let (t_len, batch, g) = gi.dims3()?;
    let hidden = h0.dim(D::Minus1)?;
    check_kernel_sizes(t_len, batch, hidden, g)?;
    let buf = Tensor::zeros((t_len + 2, batch, hidden), gi.dtype(), gi.device())?;
    buf.slice_set(&h0.unsqueeze(0)?, 0, t_len)?;
    if let Some(kernels) = fused.kernels {
        // CUDA: every step from one host loop, outside candle's per-op bookkeeping.
        let op = DirectionLoop {
            gi,
            offset,
            b_hn: dir.b_hn,
            lengths: fused.lengths,
            reverse,
            kernels,
        };
        buf.inplace_op2(dir.w_hh_t, &op)?;
        return Ok((buf.narrow(0, 0, t_len)?, buf.get(t_len + t_len % 2)?));
    }
    // Elsewhere (the CPU, in tests): per step a candle matmul and the gate kernel's CPU twin.
    let mut parity = 0;
    for s in 0..t_len {
        let t = if reverse { t_len - 1 - s } else { s };
        let h = buf.get(t_len + parity)?;
        let gh = matmul_in_chains(&h, dir.w_hh_t)?;
        drop(h);
        let step = GateStep {
            gi,
            t,
            offset,
            b_hn: dir.b_hn,
            lengths: fused.lengths,
            parity,
            narrow,
        };
        buf.inplace_op2(&gh, &step)?;
        parity = 1 - parity;
    }
    Ok((buf.narrow(0, 0, t_len)?, buf.get(t_len + parity)?))
}

/// Per step: the matmul and the gate update as candle ops, masked with `where_cond` for
/// variable lengths.
fn composite_direction(
    gi: &Tensor,
    dir: &DirTensors<'_>,
    h0: &Tensor,
    plan: &LengthPlan,
    reverse: bool,
    narrow: bool,
) -> Result<(Tensor, Tensor)> {
    let (t_len, batch, _) = gi.dims3()?;
    let hidden = h0.dim(D::Minus1)?;
    let mask = if plan.is_full() {
        None
    } else {
        Some(plan.mask(gi.device())?)
    };
    let zeros = Tensor::zeros((batch, hidden), gi.dtype(), gi.device())?;
    let mut h = h0.contiguous()?;
    let mut steps: Vec<Option<Tensor>> = vec![None; t_len];
    for s in 0..t_len {
        let t = if reverse { t_len - 1 - s } else { s };
        let gh = matmul_in_chains(&h, dir.w_hh_t)?;
        let mut h_new = gate_update(&gi.get(t)?, &gh, dir.b_hn, &h)?;
        if narrow {
            // The state an f32 layer carries (differentiable: a cast each way).
            h_new = h_new.to_dtype(DType::F32)?.to_dtype(DType::F64)?;
        }
        let out_t = match &mask {
            // where_cond, not a multiply: NaN computed from padding must not leak.
            Some(m) => {
                let m_t = m.get(t)?.broadcast_as((batch, hidden))?;
                h = m_t.where_cond(&h_new, &h)?;
                m_t.where_cond(&h_new, &zeros)?
            }
            None => {
                h = h_new;
                h.clone()
            }
        };
        steps[t] = Some(out_t);
    }
    let steps: Vec<Tensor> = steps.into_iter().flatten().collect();
    Ok((Tensor::stack(&steps, 0)?, h))
}

/// PyTorch's gate update with candle ops: `gi` `(B, 3H)` holds `b_ih` and `b_hr`, `b_hz`;
/// `gh = h @ W_hh^T` `(B, 3H)`; `b_hn` `(H)`.
pub(crate) fn gate_update(gi: &Tensor, gh: &Tensor, b_hn: &Tensor, h: &Tensor) -> Result<Tensor> {
    let hs = h.dim(D::Minus1)?;
    let r = candle_nn::ops::sigmoid(&(gi.narrow(1, 0, hs)? + gh.narrow(1, 0, hs)?)?)?;
    let z = candle_nn::ops::sigmoid(&(gi.narrow(1, hs, hs)? + gh.narrow(1, hs, hs)?)?)?;
    let gh_n = gh.narrow(1, 2 * hs, hs)?.broadcast_add(b_hn)?;
    let n = (gi.narrow(1, 2 * hs, hs)? + (r * gh_n)?)?.tanh()?;
    let diff = (h - &n)?;
    Ok((n + (z * diff)?)?)
}
