//! The persistent layer as a candle in-place op (CUDA only): one launch of `gru_persist_*`
//! (cooperative: its blocks meet at a grid barrier) or `gru_persist_cluster<n>_*` (clusters of
//! `n` blocks, sm_90+) runs every time step of both directions of a layer, each block keeping its
//! rows of `W_hh` in shared memory (see `kernels/gru.cu`). The input projection stays one matmul
//! before it. CUDA's per-step launch overhead is what bounds small batches; this removes it.
//!
//! The buffer is 1-D and zeroed; the kernel writes, in order: `(T, B, D * H)` the layer's output
//! (zero past each sequence's length), `(2, B, D * H)` the double-buffered state, `(D, B, H)` the
//! final state `h_n`, then `D` barrier counters (one u32 in each of `D` elements, zero as
//! allocated). The second operand is `h0` `(D, B, H)`, read only.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor};

use crate::kernel_ops::DeviceKernels;
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
    /// `(B)` u32; `None` when every sequence runs all `T` steps.
    pub lengths: Option<&'a Tensor>,
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
        h0_s: &candle_core::CudaStorage,
        h0_l: &Layout,
    ) -> Result<()> {
        use candle_core::backend::BackendStorage;
        match buf_s.dtype() {
            candle_core::DType::F32 => cuda::launch::<f32>(self, buf_s, buf_l, h0_s, h0_l),
            candle_core::DType::F64 => cuda::launch::<f64>(self, buf_s, buf_l, h0_s, h0_l),
            other => candle_core::bail!("gru persistent layer: no CUDA kernel for {other:?}"),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result};

    use super::PersistLayer;
    use crate::cuda_kernels::view;

    pub(super) fn launch<T: CudaDType + DeviceRepr>(
        op: &PersistLayer<'_>,
        buf_s: &mut CudaStorage,
        buf_l: &Layout,
        h0_s: &CudaStorage,
        h0_l: &Layout,
    ) -> Result<()> {
        let (d, b, hs) = h0_l.shape().dims3()?;
        let (d2, h3, hs2) = op.w_hh.dims3()?;
        let (t_len, b2, g) = op.gi.dims3()?;
        let dh = d * hs;
        let expected = (t_len + 2) * b * dh + d * b * hs + d;
        if buf_l.shape().elem_count() != expected
            || d != d2
            || hs != hs2
            || b != b2
            || h3 != 3 * hs
            || g != d * h3
        {
            candle_core::bail!(
                "gru persistent layer: inconsistent shapes buffer {:?}, h0 {:?}, gi {:?}, w_hh {:?}",
                buf_l.dims(),
                h0_l.dims(),
                op.gi.dims(),
                op.w_hh.dims()
            );
        }
        for (name, ok) in [
            ("buffer", buf_l.is_contiguous()),
            ("h0", h0_l.is_contiguous()),
            ("gi", op.gi.is_contiguous()),
            ("w_hh", op.w_hh.is_contiguous()),
            ("b_hn", op.b_hn.is_contiguous()),
        ] {
            if !ok {
                candle_core::bail!("gru persistent layer: `{name}` must be contiguous");
            }
        }
        let plan = op.plan;
        let groups = b.div_ceil(4);
        let covered = plan.units * plan.blocks_per_direction >= hs
            && plan.k_split >= 1
            && plan.threads >= (plan.units * b).max(3 * plan.units * groups * plan.k_split)
            && (plan.cluster == 0 || plan.cluster == plan.blocks_per_direction);
        let sized =
            op.b_hn.elem_count() == d * hs && op.lengths.is_none_or(|l| l.elem_count() == b);
        if !covered || !sized {
            candle_core::bail!(
                "gru persistent layer: internal: plan {plan:?} or b_hn/lengths do not fit B {b}, H {hs}, D {d}"
            );
        }
        let func = op.kernels.persist(buf_s.dtype(), plan.cluster)?;
        let stream = buf_s.device().cuda_stream();
        let gi_h = op.gi.storage_and_layout();
        let w_h = op.w_hh.storage_and_layout();
        let bh_h = op.b_hn.storage_and_layout();
        let len_guard = op.lengths.map(|l| l.storage_and_layout());
        let gi = view::<T>(&gi_h)?;
        let w_hh = view::<T>(&w_h)?;
        let b_hn = view::<T>(&bh_h)?;
        let h0 = h0_s.as_cuda_slice::<T>()?.slice(h0_l.start_offset()..);
        let lengths = len_guard.as_ref().map(view::<u32>).transpose()?;
        let null_lengths = 0u64; // a null `const unsigned int*`: every step valid
        let mut buf = buf_s
            .as_cuda_slice_mut::<T>()?
            .slice_mut(buf_l.start_offset()..);
        // Fit in i32: checked by `PersistentPlan::plan`.
        let ints = [
            t_len,
            b,
            hs,
            d,
            plan.units,
            plan.blocks_per_direction,
            plan.k_split,
        ]
        .map(|v| v as i32);
        let mut builder = stream.launch_builder(func);
        builder.arg(&gi);
        builder.arg(&w_hh);
        builder.arg(&b_hn);
        builder.arg(&h0);
        match &lengths {
            Some(l) => builder.arg(l),
            None => builder.arg(&null_lengths),
        };
        builder.arg(&mut buf);
        for v in &ints {
            builder.arg(v);
        }
        let cfg = LaunchConfig {
            grid_dim: (plan.grid(d) as u32, 1, 1),
            block_dim: (plan.threads as u32, 1, 1),
            shared_mem_bytes: plan.smem_bytes as u32,
        };
        if plan.cluster > 0 {
            // A cluster that can never be placed (too few free SMs in a GPC, a MIG slice, MPS
            // limits) is refused here rather than left to the launch.
            let placeable = func.occupancy_max_active_clusters(cfg, &stream).w()?;
            if placeable == 0 {
                candle_core::bail!(
                    "gru persistent layer: no cluster of {} blocks of {} threads and {} bytes of \
                     shared memory can be placed on this GPU",
                    plan.cluster,
                    plan.threads,
                    plan.smem_bytes
                );
            }
        }
        // SAFETY: argument types and order match the kernel's signature; shapes were checked
        // above and the plan's sizes by `PersistentPlan::plan`. A cooperative launch is refused
        // (an error, not a hang) when its blocks cannot all be resident, which the grid
        // barrier needs. A cluster kernel's blocks meet only within their cluster, which the
        // hardware schedules as one (or refuses to launch); its grid is whole clusters.
        if plan.cluster > 0 {
            unsafe { builder.launch(cfg) }.w()?;
        } else {
            unsafe { builder.launch_cooperative(cfg) }.w()?;
        }
        Ok(())
    }
}
