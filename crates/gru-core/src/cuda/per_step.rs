//! The per-step CUDA path of one direction as ONE candle op: for each step one cuBLAS GEMM
//! (`gh = h @ W_hh^T` into a scratch buffer) and one launch of the gate kernel `gru_gate_*`, issued
//! from a single host loop. Going through candle for each step (a `matmul`, an output allocation,
//! an op dispatch) cost more host time per step than the GPU spends on it.
//!
//! The buffer is `(T + 2, B, H)` as for `GateStep` (whose CPU twin tests this data flow): rows
//! `0..T` the outputs, rows `T` and `T + 1` the double-buffered state, `h0` in row `T`; after the
//! loop the final state is in row `T + T % 2`. The second operand is `W_hh^T` `(H, 3H)`.

use candle_core::{CpuStorage, InplaceOp2, Layout, Result, Tensor};

use super::DeviceKernels;

// Read by the CUDA launch only.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) struct DirectionLoop<'a> {
    /// `(T, B, g)` input projections, biases folded in; this direction's gates at `offset`.
    pub gi: &'a Tensor,
    pub offset: usize,
    /// `(H)`.
    pub b_hn: &'a Tensor,
    /// `(B)` u32; `None` when every sequence runs all `T` steps.
    pub lengths: Option<&'a Tensor>,
    pub reverse: bool,
    pub kernels: &'a DeviceKernels,
}

impl InplaceOp2 for DirectionLoop<'_> {
    fn name(&self) -> &'static str {
        "gru-direction-loop"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        candle_core::bail!("gru direction loop: CUDA only")
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        buf_s: &mut candle_core::CudaStorage,
        buf_l: &Layout,
        w_s: &candle_core::CudaStorage,
        w_l: &Layout,
    ) -> Result<()> {
        use candle_core::backend::BackendStorage;
        match buf_s.dtype() {
            candle_core::DType::F32 => cuda::run::<f32>(self, buf_s, buf_l, w_s, w_l),
            candle_core::DType::F64 => cuda::run::<f64>(self, buf_s, buf_l, w_s, w_l),
            other => candle_core::bail!("gru direction loop: no CUDA kernel for {other:?}"),
        }
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cublas::result::{dgemm, sgemm, CublasError};
    use candle_core::cuda_backend::cudarc::cublas::sys::{cublasHandle_t, cublasOperation_t};
    use candle_core::cuda_backend::cudarc::driver::sys::CUdeviceptr;
    use candle_core::cuda_backend::cudarc::driver::{
        DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PushKernelArg,
    };
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, Layout, Result};

    use super::DirectionLoop;
    use crate::cuda::nvrtc::view;
    use crate::cuda::source::GATE_BLOCK;

    /// cuBLAS's `C = A B` (column-major, no transposes, alpha 1, beta 0, leading dimensions
    /// m, k, m) on raw device addresses `[a, b, c]`, for f32 and f64: the calls cudarc's `Gemm`
    /// makes, without its per-call event bookkeeping.
    pub(super) trait RawGemm: Sized {
        /// # Safety
        /// `a`, `b`, `c` address m*k, k*n and m*n elements of `Self` on the handle's stream.
        unsafe fn gemm_raw(
            handle: cublasHandle_t,
            mnk: (usize, usize, usize),
            abc: [CUdeviceptr; 3],
        ) -> std::result::Result<(), CublasError>;
    }

    macro_rules! raw_gemm {
        ($t:ty, $f:ident) => {
            impl RawGemm for $t {
                unsafe fn gemm_raw(
                    handle: cublasHandle_t,
                    (m, n, k): (usize, usize, usize),
                    [a, b, c]: [CUdeviceptr; 3],
                ) -> std::result::Result<(), CublasError> {
                    let (one, zero): ($t, $t) = (1.0, 0.0);
                    let op = cublasOperation_t::CUBLAS_OP_N;
                    let (m, n, k) = (m as i32, n as i32, k as i32);
                    // SAFETY: the caller's contract; alpha and beta live across the call.
                    unsafe {
                        $f(
                            handle,
                            op,
                            op,
                            m,
                            n,
                            k,
                            &one,
                            a as *const $t,
                            m,
                            b as *const $t,
                            k,
                            &zero,
                            c as *mut $t,
                            m,
                        )
                    }
                }
            }
        };
    }
    raw_gemm!(f32, sgemm);
    raw_gemm!(f64, dgemm);

    pub(super) fn run<T>(
        op: &DirectionLoop<'_>,
        buf_s: &mut CudaStorage,
        buf_l: &Layout,
        w_s: &CudaStorage,
        w_l: &Layout,
    ) -> Result<()>
    where
        T: CudaDType + DeviceRepr + candle_core::WithDType + RawGemm,
    {
        let (t2, b, hs) = buf_l.shape().dims3()?;
        let (hs2, h3) = w_l.shape().dims2()?;
        let (t_len, b2, g) = op.gi.dims3()?;
        if t2 != t_len + 2 || b != b2 || hs != hs2 || h3 != 3 * hs || op.offset + h3 > g {
            candle_core::bail!(
                "gru direction loop: inconsistent shapes buffer {:?}, w_hh_t {:?}, gi {:?}",
                buf_l.dims(),
                w_l.dims(),
                op.gi.dims()
            );
        }
        if !buf_l.is_contiguous()
            || !w_l.is_contiguous()
            || !op.gi.is_contiguous()
            || !op.b_hn.is_contiguous()
            || op.b_hn.elem_count() != hs
            || op.lengths.is_some_and(|l| l.elem_count() != b)
        {
            candle_core::bail!("gru direction loop: internal: expects contiguous, sized tensors");
        }
        crate::cuda::check_kernel_sizes(t_len, b, hs, g)?;
        let dev = w_s.device();
        let stream = dev.cuda_stream();
        let blas = dev.cublas_handle();
        let func = op.kernels.gate(w_s.dtype())?;
        let gi_h = op.gi.storage_and_layout();
        let bh_h = op.b_hn.storage_and_layout();
        let len_guard = op.lengths.map(|l| l.storage_and_layout());
        let gi = view::<T>(&gi_h)?;
        let b_hn = view::<T>(&bh_h)?;
        let lengths = len_guard.as_ref().map(view::<u32>).transpose()?;
        let w = w_s.as_cuda_slice::<T>()?.slice(w_l.start_offset()..);
        let buf_all = buf_s.as_cuda_slice_mut::<T>()?;
        // SAFETY: fully written by the first GEMM (beta = 0) before the gate kernel reads it.
        let mut gh = unsafe { stream.alloc::<T>(b * h3) }.w()?;
        // Raw pointers, taken once: candle's context tracks every buffer with CUDA events, and
        // passing slices would cost an event wait or record per buffer per call (about 17
        // driver calls per step besides the GEMM and the launch, the most of this loop's host
        // time). One stream orders everything here; the guards record the accesses once when
        // they drop after the loop.
        let (w_ptr, _w) = w.device_ptr(&stream);
        let (gi_ptr, _gi) = gi.device_ptr(&stream);
        let (b_hn_ptr, _b_hn) = b_hn.device_ptr(&stream);
        let (len_ptr, _len) = match &lengths {
            Some(l) => {
                let (p, g) = l.device_ptr(&stream);
                (p, Some(g))
            }
            None => (0, None), // a null `const unsigned int*`: every step valid
        };
        let (gh_ptr, _gh) = gh.device_ptr_mut(&stream);
        let (buf_base, _buf) = buf_all.device_ptr_mut(&stream);
        let elem = std::mem::size_of::<T>() as u64;
        let buf_ptr = buf_base + buf_l.start_offset() as u64 * elem;
        let bh = b * hs;
        let cfg = LaunchConfig {
            grid_dim: ((bh as u32).div_ceil(GATE_BLOCK as u32), 1, 1),
            block_dim: (GATE_BLOCK as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut parity = 0;
        for s in 0..t_len {
            let t = if op.reverse { t_len - 1 - s } else { s };
            let h_ptr = buf_ptr + ((t_len + parity) * bh) as u64 * elem;
            // Column-major: gh^T (3H x B) = W_hh (W_hh^T row-major read as col-major 3H x H)
            // times h^T (h row-major (B, H) read as col-major H x B).
            // SAFETY: shapes checked above; `h` and `gh` hold B * H and B * 3H values; the
            // handle's stream is `stream`.
            unsafe { T::gemm_raw(*blas.handle(), (h3, b, hs), [w_ptr, h_ptr, gh_ptr]) }.w()?;
            let ints = [b, hs, g, op.offset, t, t_len, parity].map(|v| v as i32);
            let mut builder = stream.launch_builder(func);
            builder.arg(&gi_ptr);
            builder.arg(&gh_ptr);
            builder.arg(&b_hn_ptr);
            builder.arg(&len_ptr);
            builder.arg(&buf_ptr);
            for v in &ints {
                builder.arg(v);
            }
            // SAFETY: argument types and order match the kernel's signature (pointers as
            // 64-bit device addresses); sizes checked above; each thread writes only its own
            // (row, unit) elements.
            unsafe { builder.launch(cfg) }.w()?;
            parity = 1 - parity;
        }
        Ok(())
    }
}
