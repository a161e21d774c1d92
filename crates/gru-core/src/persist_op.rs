//! The persistent layer as a candle in-place op (CUDA only): one cooperative launch of
//! `gru_persist_*` runs every time step of both directions of a layer, each block keeping its
//! rows of `W_hh` in shared memory (see `kernels/gru.cu`). The input projection stays one matmul
//! before it. CUDA's per-step launch overhead is what bounds small batches; this removes it.
//!
//! The buffer is `(T + 2, B, D * H)`: rows `0..T` the layer's output (zero past each sequence's
//! length, as allocated), rows `T` and `T + 1` the double-buffered state, `h0` in row `T`; after
//! the launch the final state is in row `T + T % 2`. The second operand is `(D)` u32 barrier
//! counters, zeroed, written by the kernel.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor};

use crate::gate_op::DeviceKernels;
use crate::kernel_source::PersistentPlan;

// Read by the CUDA launch only.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct PersistLayer<'a> {
    /// `(T, B, D * 3H)` input projections, biases folded in.
    pub gi: &'a Tensor,
    /// `(D, 3H, H)`, PyTorch's `weight_hh` of each direction.
    pub w_hh: &'a Tensor,
    /// `(D, H)`.
    pub b_hn: &'a Tensor,
    /// `(B)` u32.
    pub lengths: &'a Tensor,
    pub plan: PersistentPlan,
    pub kernels: &'a DeviceKernels,
}

impl InplaceOp2 for PersistLayer<'_> {
    fn name(&self) -> &'static str {
        "gru-persistent-layer"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("gru persistent layer: CUDA only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        buf_s: &mut candle_core::CudaStorage,
        buf_l: &Layout,
        bar_s: &candle_core::CudaStorage,
        bar_l: &Layout,
    ) -> Result<()> {
        use candle_core::backend::BackendStorage;
        match buf_s.dtype() {
            candle_core::DType::F32 => cuda::launch::<f32>(self, buf_s, buf_l, bar_s, bar_l),
            candle_core::DType::F64 => cuda::launch::<f64>(self, buf_s, buf_l, bar_s, bar_l),
            other => candle_core::bail!("gru persistent layer: no CUDA kernel for {other:?}"),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result, Storage};

    use super::PersistLayer;

    fn cuda_of(s: &Storage) -> Result<&CudaStorage> {
        match s {
            Storage::Cuda(c) => Ok(c),
            _ => candle_core::bail!("gru persistent layer: tensors must all be on the CUDA device"),
        }
    }

    pub(super) fn launch<T: CudaDType + DeviceRepr>(
        op: &PersistLayer<'_>,
        buf_s: &mut CudaStorage,
        buf_l: &Layout,
        bar_s: &CudaStorage,
        bar_l: &Layout,
    ) -> Result<()> {
        let (t2, b, dh) = buf_l.shape().dims3()?;
        let (d, h3, hs) = op.w_hh.dims3()?;
        let (t_len, b2, g) = op.gi.dims3()?;
        if t2 != t_len + 2 || b != b2 || dh != d * hs || h3 != 3 * hs || g != d * h3 {
            candle_core::bail!(
                "gru persistent layer: inconsistent shapes buffer {:?}, gi {:?}, w_hh {:?}",
                buf_l.dims(),
                op.gi.dims(),
                op.w_hh.dims()
            );
        }
        for (name, ok) in [
            ("buffer", buf_l.is_contiguous()),
            (
                "barrier",
                bar_l.is_contiguous() && bar_l.shape().elem_count() == d,
            ),
            ("gi", op.gi.is_contiguous()),
            ("w_hh", op.w_hh.is_contiguous()),
            ("b_hn", op.b_hn.is_contiguous()),
        ] {
            if !ok {
                candle_core::bail!("gru persistent layer: `{name}` must be contiguous and sized");
            }
        }
        let plan = op.plan;
        let func = op.kernels.persist(buf_s.dtype())?;
        let stream = buf_s.device().cuda_stream();
        let (gi_g, gi_l) = op.gi.storage_and_layout();
        let (w_g, w_l) = op.w_hh.storage_and_layout();
        let (bh_g, bh_l) = op.b_hn.storage_and_layout();
        let (len_g, len_l) = op.lengths.storage_and_layout();
        let gi = cuda_of(&gi_g)?
            .as_cuda_slice::<T>()?
            .slice(gi_l.start_offset()..);
        let w_hh = cuda_of(&w_g)?
            .as_cuda_slice::<T>()?
            .slice(w_l.start_offset()..);
        let b_hn = cuda_of(&bh_g)?
            .as_cuda_slice::<T>()?
            .slice(bh_l.start_offset()..);
        let lengths = cuda_of(&len_g)?
            .as_cuda_slice::<u32>()?
            .slice(len_l.start_offset()..);
        let bar = bar_s.as_cuda_slice::<u32>()?.slice(bar_l.start_offset()..);
        let mut buf = buf_s
            .as_cuda_slice_mut::<T>()?
            .slice_mut(buf_l.start_offset()..);
        // Fit in i32: checked by `PersistentPlan::new`.
        let ints = [t_len, b, hs, d, plan.units, plan.blocks_per_direction].map(|v| v as i32);
        let mut builder = stream.launch_builder(func);
        builder.arg(&gi);
        builder.arg(&w_hh);
        builder.arg(&b_hn);
        builder.arg(&lengths);
        builder.arg(&mut buf);
        // The kernel writes the counters: this call allocated them for itself, zeroed.
        builder.arg(&bar);
        for v in &ints {
            builder.arg(v);
        }
        let cfg = LaunchConfig {
            grid_dim: (plan.grid(d) as u32, 1, 1),
            block_dim: (plan.threads as u32, 1, 1),
            shared_mem_bytes: plan.smem_bytes as u32,
        };
        // SAFETY: argument types and order match the kernel's signature; shapes were checked
        // above and the plan's sizes by `PersistentPlan::new`. A cooperative launch is refused
        // (an error, not a hang) when its blocks cannot all be resident, which the grid
        // barrier needs.
        unsafe { builder.launch_cooperative(cfg) }.w()?;
        Ok(())
    }
}
