//! The device recurrence of one layer: the input projection in one matmul, then per step one
//! matmul `h @ W_hh^T` and the gate update, either fused in one kernel (`GateStep`, CUDA) or
//! composed from candle ops (every backend, Metal's path). On the CPU the slice kernel
//! (`kernel_cpu`) runs instead; both variants here stay tested on the CPU through
//! `Kernel::FusedStep` and `Kernel::CandleOps`.

use candle_core::{Tensor, D};

use crate::error::Result;
use crate::gate_op::GateStep;
use crate::packing::LengthPlan;

/// One layer: `x` `(T, B, in)`, `h0` `(D, B, H)` -> `output` `(T, B, D * H)`, `h_n` `(D, B, H)`.
pub(crate) fn layer_forward(
    x: &Tensor,
    w_ih_t: &Tensor,
    bias: &Tensor,
    w_hh_t: &[Tensor],
    b_hn: &[Tensor],
    h0: &Tensor,
    plan: &LengthPlan,
    fused: bool,
) -> Result<(Tensor, Tensor)> {
    let (t_len, batch, input) = x.dims3()?;
    let hidden = h0.dim(D::Minus1)?;
    let g3 = 3 * hidden;
    let n_dirs = w_hh_t.len();
    // Input projection of every step and direction in one matmul.
    let gi = x
        .reshape((t_len * batch, input))?
        .matmul(w_ih_t)?
        .broadcast_add(bias)?
        .reshape((t_len, batch, n_dirs * g3))?;
    let mask = if plan.is_full() || fused {
        None
    } else {
        Some(plan.mask(x.device())?)
    };
    let lengths = if fused {
        let l: Vec<u32> = plan.lengths.iter().map(|&l| l as u32).collect();
        Some(Tensor::from_vec(l, batch, x.device())?)
    } else {
        None
    };
    let zeros = Tensor::zeros((batch, hidden), x.dtype(), x.device())?;

    let mut outs = Vec::with_capacity(n_dirs);
    let mut hns = Vec::with_capacity(n_dirs);
    for d in 0..n_dirs {
        let gi_d = gi.narrow(2, d * g3, g3)?;
        let mut h = h0.get(d)?.contiguous()?;
        let mut steps: Vec<Option<Tensor>> = vec![None; t_len];
        for s in 0..t_len {
            let t = if d == 1 { t_len - 1 - s } else { s };
            let gh = h.matmul(&w_hh_t[d])?;
            if let Some(lengths) = &lengths {
                // Two launches per step: the matmul above and this kernel.
                let step = GateStep {
                    gi: &gi,
                    t,
                    offset: d * g3,
                    b_hn: &b_hn[d],
                    lengths,
                };
                let res = gh.apply_op2_no_bwd(&h, &step)?;
                h = res.get(0)?;
                steps[t] = Some(res.get(1)?);
                continue;
            }
            let h_new = gate_update(&gi_d.get(t)?, &gh, &b_hn[d], &h)?;
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
        outs.push(Tensor::stack(&steps, 0)?);
        hns.push(h);
    }
    let output = if n_dirs == 1 {
        outs.pop().expect("one direction")
    } else {
        Tensor::cat(&outs, 2)?
    };
    Ok((output, Tensor::stack(&hns, 0)?))
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
