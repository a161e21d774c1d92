//! The fused gate update of one time step as a candle in-place op: the CPU twin of the CUDA
//! kernel `gru_gate_*` (which `cuda::per_step` launches), so that the per-step data flow of the CUDA
//! path is tested on every run (`Kernel::FusedStep` on the CPU): r, z, n, h' and the length mask,
//! given the step's input projection and `gh = h @ W_hh^T`, written straight into the direction's
//! buffer.
//!
//! The buffer is `(T + 2, B, H)`: rows `0..T` the outputs (zero past each sequence's length,
//! as allocated), rows `T` and `T + 1` the state, double-buffered: step reads row `T + parity`
//! and writes row `T + 1 - parity` (a row past its sequence's length keeps its state).

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Storage, Tensor, WithDType};

use crate::activation::Real;

/// One step `t` of one direction (gates at `offset` in rows of stride `g` of `gi`).
pub(crate) struct GateStep<'a> {
    /// `(T, B, g)` input projections, biases folded in.
    pub gi: &'a Tensor,
    pub t: usize,
    pub offset: usize,
    /// `(H)`.
    pub b_hn: &'a Tensor,
    /// `(B)` u32: step `t` of row `b` is valid iff `t < lengths[b]`; `None`: every step is.
    pub lengths: Option<&'a Tensor>,
    /// Which state row of the buffer holds the current state (0: row T, 1: row T + 1).
    pub parity: usize,
    /// Round the new state and output to f32 (an f32 layer's wide steps, computed in f64: see
    /// `layer::WIDE_MAX_HIDDEN`).
    pub narrow: bool,
}

fn cpu_slice<'s, T: WithDType>(storage: &'s Storage, layout: &Layout) -> Result<&'s [T]> {
    match storage {
        Storage::Cpu(s) => Ok(&s.as_slice::<T>()?[layout.start_offset()..]),
        _ => candle_core::bail!("gru gate step: expected CPU storage"),
    }
}

impl GateStep<'_> {
    /// `(T, B, H, g)` from the buffer `(T + 2, B, H)` and `gh` `(B, 3H)`, checked.
    fn dims(&self, buf_l: &Layout, gh_l: &Layout) -> Result<(usize, usize, usize, usize)> {
        let (t2, b, hs) = buf_l.shape().dims3()?;
        let (b2, h3) = gh_l.shape().dims2()?;
        let (t_len, b3, g) = self.gi.dims3()?;
        if t2 != t_len + 2 || b != b2 || b != b3 || h3 != 3 * hs || self.offset + h3 > g {
            candle_core::bail!(
                "gru gate step: inconsistent shapes buffer {:?}, gh {:?}, gi {:?}",
                buf_l.dims(),
                gh_l.dims(),
                self.gi.dims()
            );
        }
        if !buf_l.is_contiguous() || !gh_l.is_contiguous() || !self.gi.is_contiguous() {
            candle_core::bail!("gru gate step: expects contiguous tensors");
        }
        crate::cuda::check_kernel_sizes(t_len, b, hs, g)?;
        Ok((t_len, b, hs, g))
    }

    fn cpu<T: Real>(
        &self,
        buf: &mut [T],
        gh: &[T],
        dims: (usize, usize, usize, usize),
    ) -> Result<()> {
        let (t_len, b, hs, g) = dims;
        let (gi_s, gi_l) = self.gi.storage_and_layout();
        let (bh_s, bh_l) = self.b_hn.storage_and_layout();
        let len_guard = self.lengths.map(|l| l.storage_and_layout());
        let gi = cpu_slice::<T>(&gi_s, gi_l)?;
        let b_hn = &cpu_slice::<T>(&bh_s, bh_l)?[..hs];
        let lengths = match &len_guard {
            Some((s, l)) => Some(&cpu_slice::<u32>(s, l)?[..b]),
            None => None,
        };
        let (outs, states) = buf.split_at_mut(t_len * b * hs);
        let (s0, s1) = states.split_at_mut(b * hs);
        let (h_in, h_out) = if self.parity == 0 {
            (&*s0, s1)
        } else {
            (&*s1, s0)
        };
        let out = &mut outs[self.t * b * hs..(self.t + 1) * b * hs];
        for row in 0..b {
            let r = row * hs..(row + 1) * hs;
            if lengths.is_none_or(|l| (self.t as u32) < l[row]) {
                let base = (self.t * b + row) * g + self.offset;
                let gi_row = &gi[base..base + 3 * hs];
                // Fused multiply-adds, as the CPU kernel's gate pass on a CPU with them (and
                // the CUDA kernel): the activations to within an ulp (without one, `mul_add` is
                // libm's exact software fma: slower, the same numbers).
                crate::cpu::gate_update::<T, true>(
                    &gi_row[..hs],
                    &gi_row[hs..2 * hs],
                    &gi_row[2 * hs..],
                    &gh[row * 3 * hs..row * 3 * hs + hs],
                    &gh[row * 3 * hs + hs..row * 3 * hs + 2 * hs],
                    &gh[row * 3 * hs + 2 * hs..(row + 1) * 3 * hs],
                    b_hn,
                    &h_in[r.clone()],
                    &mut h_out[r.clone()],
                    &mut out[r.clone()],
                );
                if self.narrow {
                    for v in h_out[r.clone()].iter_mut().chain(&mut out[r]) {
                        *v = v.narrow();
                    }
                }
            } else {
                h_out[r.clone()].copy_from_slice(&h_in[r]);
            }
        }
        Ok(())
    }
}

impl InplaceOp2 for GateStep<'_> {
    fn name(&self) -> &'static str {
        "gru-gate-step"
    }

    fn cpu_fwd(
        &self,
        buf_s: &mut CpuStorage,
        buf_l: &Layout,
        gh_s: &CpuStorage,
        gh_l: &Layout,
    ) -> Result<()> {
        let dims = self.dims(buf_l, gh_l)?;
        let (o1, o2) = (buf_l.start_offset(), gh_l.start_offset());
        match (buf_s, gh_s) {
            (CpuStorage::F32(buf), CpuStorage::F32(gh)) => {
                self.cpu(&mut buf[o1..], &gh[o2..], dims)
            }
            (CpuStorage::F64(buf), CpuStorage::F64(gh)) => {
                self.cpu(&mut buf[o1..], &gh[o2..], dims)
            }
            _ => candle_core::bail!("gru gate step: f32 or f64 expected"),
        }
    }
}
