//! The persistent layer as a candle op (CUDA only): one launch of `gru_persist_*`
//! (cooperative: its blocks meet at a grid barrier) or `gru_persist_cluster<n>_*` (clusters of
//! `n` blocks, sm_90+) runs every time step of both directions of a layer, each block keeping its
//! rows of `W_hh` in shared memory (see `gru.cu`). The input projection stays one matmul
//! before it. CUDA's per-step launch overhead is what bounds small batches; this removes it.
//!
//! The op's operand is the input projection `x @ W_ih^T` `(T * B, D * 3H)`, without the biases
//! (the kernel adds them). It returns a 1-D buffer: `(T, B, D * H)` the layer's output (zero past
//! each sequence's length), `(2, D, H, B)` the double-buffered state of the grid-barrier exchange
//! (transposed), `(D, B, H)` the final state `h_n`, then `D` barrier counters (one u32 in each of
//! `D` elements). The kernel writes every element of the output and of `h_n`, so the buffer is
//! allocated uninitialised and only the counters are zeroed, when the grid barrier uses them: a
//! forward is the projection's matmul and this launch, nothing else.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};

use super::source::PersistentPlan;
use super::DeviceKernels;

/// The whole layer in one persistent launch (CUDA): `x` `(T, B, in)`, `h0` `(D, B, H)` (`None`:
/// zeros), `w_hh` `(D, 3H, H)`, `b_hn` `(D, H)`, `bias` `(D * 3H)` -> `output` `(T, B, D * H)`,
/// `h_n` `(D, B, H)`; both are views of the one buffer the kernel writes (see `PersistLayer`).
/// Two launches in all: the input projection's matmul and the kernel.
pub(crate) fn persistent_layer(
    x: &Tensor,
    w_ih_t: &Tensor,
    bias: &Tensor,
    w_hh: &Tensor,
    b_hn: &Tensor,
    h0: Option<&Tensor>,
    lengths: Option<&Tensor>,
    plan: PersistentPlan,
    kernels: &DeviceKernels,
) -> crate::error::Result<(Tensor, Tensor)> {
    let (t_len, batch, input) = x.dims3()?;
    let (n_dirs, _, hidden) = w_hh.dims3()?;
    // The kernel adds the biases as it reads the projections: no separate add.
    let gi = x.reshape((t_len * batch, input))?.matmul(w_ih_t)?;
    let h0 = h0.map(Tensor::contiguous).transpose()?;
    let op = PersistLayer {
        seq_len: t_len,
        batch,
        w_hh,
        b_hn,
        bias,
        h0: h0.as_ref(),
        lengths,
        plan,
        kernels,
    };
    let buf = gi.contiguous()?.apply_op1_no_bwd(&op)?;
    let dh = n_dirs * hidden;
    let (h_n_at, _) = buffer_layout(t_len, batch, n_dirs, hidden);
    let output = buf
        .narrow(0, 0, t_len * batch * dh)?
        .reshape((t_len, batch, dh))?;
    let h_n = buf
        .narrow(0, h_n_at, n_dirs * batch * hidden)?
        .reshape((n_dirs, batch, hidden))?;
    Ok((output, h_n))
}

// Read by the CUDA launch only.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct PersistLayer<'a> {
    pub seq_len: usize,
    pub batch: usize,
    /// `(D, 3H, H)`, PyTorch's `weight_hh` of each direction.
    pub w_hh: &'a Tensor,
    /// `(D, H)`.
    pub b_hn: &'a Tensor,
    /// `(D * 3H)`: `b_ih + [b_hr, b_hz, 0]` per direction.
    pub bias: &'a Tensor,
    /// `(D, B, H)`; `None` for zeros.
    pub h0: Option<&'a Tensor>,
    /// `(B)` u32; `None` when every sequence runs all `T` steps.
    pub lengths: Option<&'a Tensor>,
    pub plan: PersistentPlan,
    pub kernels: &'a DeviceKernels,
}

/// Where `h_n` starts in the buffer, and the buffer's length, in elements (see the module's doc).
pub(crate) fn buffer_layout(
    seq_len: usize,
    batch: usize,
    directions: usize,
    hidden: usize,
) -> (usize, usize) {
    let h_n = (seq_len + 2) * batch * directions * hidden;
    (h_n, h_n + directions * batch * hidden + directions)
}

impl CustomOp1 for PersistLayer<'_> {
    fn name(&self) -> &'static str {
        "gru-persistent-layer"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("gru persistent layer: CUDA only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gi_s: &candle_core::CudaStorage,
        gi_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::backend::BackendStorage;
        match gi_s.dtype() {
            candle_core::DType::F32 => cuda::launch::<f32>(self, gi_s, gi_l),
            candle_core::DType::F64 => cuda::launch::<f64>(self, gi_s, gi_l),
            other => candle_core::bail!("gru persistent layer: no CUDA kernel for {other:?}"),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{
        DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result, Shape, Tensor};

    use super::PersistLayer;
    use crate::cuda::nvrtc::view;

    pub(super) fn launch<T: CudaDType + DeviceRepr + ValidAsZeroBits>(
        op: &PersistLayer<'_>,
        gi_s: &CudaStorage,
        gi_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (d, h3, hs) = op.w_hh.dims3()?;
        let (rows, g) = gi_l.shape().dims2()?;
        let (t_len, b) = (op.seq_len, op.batch);
        let h0_ok = op.h0.is_none_or(|h| h.dims() == [d, b, hs]);
        if rows != t_len * b || h3 != 3 * hs || g != d * h3 || !h0_ok {
            candle_core::bail!(
                "gru persistent layer: inconsistent shapes gi {:?} for T {t_len}, B {b}, h0 {:?}, \
                 w_hh {:?}",
                gi_l.dims(),
                op.h0.map(Tensor::dims),
                op.w_hh.dims()
            );
        }
        for (name, ok) in [
            ("gi", gi_l.is_contiguous()),
            ("h0", op.h0.is_none_or(Tensor::is_contiguous)),
            ("w_hh", op.w_hh.is_contiguous()),
            ("b_hn", op.b_hn.is_contiguous()),
            ("bias", op.bias.is_contiguous()),
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
        let sized = op.b_hn.elem_count() == d * hs
            && op.bias.elem_count() == d * h3
            && op.lengths.is_none_or(|l| l.elem_count() == b);
        if !covered || !sized {
            candle_core::bail!(
                "gru persistent layer: internal: plan {plan:?} or b_hn/bias/lengths do not fit \
                 B {b}, H {hs}, D {d}"
            );
        }
        let func = op.kernels.persist(gi_s.dtype(), plan.cluster)?;
        let dev = gi_s.device().clone();
        let stream = dev.cuda_stream();
        let (_, len) = super::buffer_layout(t_len, b, d, hs);
        // SAFETY: plain device memory of `len` elements. The kernel writes every element of the
        // output and of h_n (the parts of the buffer the caller reads), the counters are zeroed
        // below where they are used, and the state rows are scratch the kernel writes before it
        // reads them.
        let mut buf = unsafe { dev.alloc::<T>(len) }?;
        if plan.cluster == 0 && plan.blocks_per_direction > 1 {
            stream.memset_zeros(&mut buf.slice_mut(len - d..)).w()?;
        }
        let gi = gi_s.as_cuda_slice::<T>()?.slice(gi_l.start_offset()..);
        let w_h = op.w_hh.storage_and_layout();
        let bh_h = op.b_hn.storage_and_layout();
        let bias_h = op.bias.storage_and_layout();
        let h0_guard = op.h0.map(|h| h.storage_and_layout());
        let len_guard = op.lengths.map(|l| l.storage_and_layout());
        let w_hh = view::<T>(&w_h)?;
        let b_hn = view::<T>(&bh_h)?;
        let bias = view::<T>(&bias_h)?;
        let h0 = h0_guard.as_ref().map(view::<T>).transpose()?;
        let lengths = len_guard.as_ref().map(view::<u32>).transpose()?;
        // A null pointer: h0 zeros, or every step valid.
        let null = 0u64;
        // Fit in i32: checked by `PersistentPlan::plan`.
        let ints = [
            t_len,
            b,
            hs,
            d,
            plan.units,
            plan.blocks_per_direction,
            plan.k_split,
            usize::from(plan.async_exchange),
        ]
        .map(|v| v as i32);
        let mut builder = stream.launch_builder(func);
        builder.arg(&gi);
        builder.arg(&w_hh);
        builder.arg(&b_hn);
        builder.arg(&bias);
        match &h0 {
            Some(h) => builder.arg(h),
            None => builder.arg(&null),
        };
        match &lengths {
            Some(l) => builder.arg(l),
            None => builder.arg(&null),
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
            let dtype = gi_s.dtype();
            if !op
                .kernels
                .cluster_placeable(dtype, plan.cluster, cfg, &stream)?
            {
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
        drop(builder);
        Ok((CudaStorage::wrap_cuda_slice(buf, dev), Shape::from(len)))
    }
}
