//! The fused gate update of one time step as a candle `CustomOp2`, for the device path: one
//! kernel computes r, z, n, h' and applies the length mask, given the step's input projection,
//! `gh = h @ W_hh^T` and `h`. CPU twin (`cpu_fwd`, tested on every run) and CUDA kernel
//! (`cuda_fwd`, compiled once with NVRTC); Metal takes the candle-ops composition instead.
//!
//! Output `(2, B, H)`: row 0 the next state (unchanged past a sequence's length), row 1 the
//! step's output (zero past a sequence's length).

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor, WithDType};

use crate::activation::Real;

/// One step `t` of one direction (gates at `offset` in rows of stride `g` of `gi`).
pub(crate) struct GateStep<'a> {
    /// `(T, B, g)` input projections, biases folded in.
    pub gi: &'a Tensor,
    pub t: usize,
    pub offset: usize,
    /// `(H)`.
    pub b_hn: &'a Tensor,
    /// `(B)` u32: step `t` of row `b` is valid iff `t < lengths[b]`.
    pub lengths: &'a Tensor,
}

fn cpu_slice<'s, T: WithDType>(storage: &'s Storage, layout: &Layout) -> Result<&'s [T]> {
    match storage {
        Storage::Cpu(s) => Ok(&s.as_slice::<T>()?[layout.start_offset()..]),
        _ => candle_core::bail!("gru gate step: expected CPU storage"),
    }
}

impl GateStep<'_> {
    fn dims(&self, gh_l: &Layout, h_l: &Layout) -> Result<(usize, usize, usize)> {
        let (b, h3) = gh_l.shape().dims2()?;
        let (b2, hs) = h_l.shape().dims2()?;
        let (_, b3, g) = self.gi.dims3()?;
        if b != b2 || b != b3 || h3 != 3 * hs || self.offset + h3 > g {
            candle_core::bail!(
                "gru gate step: inconsistent shapes gh {:?}, h {:?}",
                gh_l.dims(),
                h_l.dims()
            );
        }
        if !gh_l.is_contiguous() || !h_l.is_contiguous() || !self.gi.is_contiguous() {
            candle_core::bail!("gru gate step: expects contiguous tensors");
        }
        Ok((b, hs, g))
    }

    fn cpu<T: Real>(&self, gh: &[T], h: &[T], b: usize, hs: usize, g: usize) -> Result<Vec<T>> {
        let (gi_s, gi_l) = self.gi.storage_and_layout();
        let (bh_s, bh_l) = self.b_hn.storage_and_layout();
        let (len_s, len_l) = self.lengths.storage_and_layout();
        let gi = cpu_slice::<T>(&gi_s, gi_l)?;
        let b_hn = &cpu_slice::<T>(&bh_s, bh_l)?[..hs];
        let lengths = &cpu_slice::<u32>(&len_s, len_l)?[..b];
        let mut res = vec![T::zero(); 2 * b * hs];
        let (state, out) = res.split_at_mut(b * hs);
        for row in 0..b {
            let base = (self.t * b + row) * g + self.offset;
            let gi_row = &gi[base..base + 3 * hs];
            let h_row = &h[row * hs..(row + 1) * hs];
            let s_row = &mut state[row * hs..(row + 1) * hs];
            let o_row = &mut out[row * hs..(row + 1) * hs];
            if (self.t as u32) < lengths[row] {
                crate::kernel_cpu::gate_update(
                    &gi_row[..hs],
                    &gi_row[hs..2 * hs],
                    &gi_row[2 * hs..],
                    &gh[row * 3 * hs..(row + 1) * 3 * hs],
                    b_hn,
                    h_row,
                    s_row,
                    o_row,
                );
            } else {
                s_row.copy_from_slice(h_row);
            }
        }
        Ok(res)
    }
}

impl CustomOp2 for GateStep<'_> {
    fn name(&self) -> &'static str {
        "gru-gate-step"
    }

    fn cpu_fwd(
        &self,
        gh_s: &CpuStorage,
        gh_l: &Layout,
        h_s: &CpuStorage,
        h_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, hs, g) = self.dims(gh_l, h_l)?;
        let shape = Shape::from((2, b, hs));
        let (o1, o2) = (gh_l.start_offset(), h_l.start_offset());
        let out = match (gh_s, h_s) {
            (CpuStorage::F32(gh), CpuStorage::F32(h)) => {
                CpuStorage::F32(self.cpu(&gh[o1..], &h[o2..], b, hs, g)?)
            }
            (CpuStorage::F64(gh), CpuStorage::F64(h)) => {
                CpuStorage::F64(self.cpu(&gh[o1..], &h[o2..], b, hs, g)?)
            }
            _ => candle_core::bail!("gru gate step: f32 or f64 expected"),
        };
        Ok((out, shape))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        gh_s: &candle_core::CudaStorage,
        gh_l: &Layout,
        h_s: &candle_core::CudaStorage,
        h_l: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        let (b, hs, g) = self.dims(gh_l, h_l)?;
        let out = cuda::launch(self, gh_s, gh_l, h_s, h_l, b, hs, g)?;
        Ok((out, Shape::from((2, b, hs))))
    }
}

/// The CUDA side: kernel source, compiled with NVRTC on first use.
#[cfg(feature = "cuda")]
mod cuda {
    use std::sync::OnceLock;

    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::driver::{DeviceRepr, LaunchConfig, PushKernelArg};
    use candle_core::cuda_backend::{CudaDType, WrapErr};
    use candle_core::{CudaStorage, DType, Layout, Result, Storage};

    use super::GateStep;

    /// One thread per (row, unit): r, z, n, h' and the mask, reading each input once.
    const SOURCE: &str = r#"
template <typename T> __device__ __forceinline__ T sigm(T x) { return T(1) / (T(1) + exp(-x)); }

template <typename T>
__device__ void gate(const T* gi, const T* gh, const T* b_hn, const T* h, const unsigned int* lengths,
                     T* res, int B, int H, int G, int offset, int t) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * H) return;
    int b = idx / H, j = idx - b * H;
    T hp = h[idx];
    if ((unsigned int)t >= lengths[b]) { res[idx] = hp; res[B * H + idx] = T(0); return; }
    const T* gir = gi + ((long long)t * B + b) * G + offset;
    const T* ghr = gh + (long long)b * 3 * H;
    T r = sigm(gir[j] + ghr[j]);
    T z = sigm(gir[H + j] + ghr[H + j]);
    T n = tanh(gir[2 * H + j] + r * (ghr[2 * H + j] + b_hn[j]));
    T hn = n + z * (hp - n);
    res[idx] = hn;
    res[B * H + idx] = hn;
}

extern "C" __global__ void gru_gate_f32(const float* gi, const float* gh, const float* b_hn, const float* h,
    const unsigned int* lengths, float* res, int B, int H, int G, int offset, int t) {
    gate<float>(gi, gh, b_hn, h, lengths, res, B, H, G, offset, t);
}
extern "C" __global__ void gru_gate_f64(const double* gi, const double* gh, const double* b_hn, const double* h,
    const unsigned int* lengths, double* res, int B, int H, int G, int offset, int t) {
    gate<double>(gi, gh, b_hn, h, lengths, res, B, H, G, offset, t);
}
"#;

    fn ptx() -> Result<&'static str> {
        static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
        PTX.get_or_init(|| {
            candle_core::cuda_backend::cudarc::nvrtc::compile_ptx(SOURCE)
                .map(|p| p.to_src())
                .map_err(|e| format!("NVRTC could not compile the GRU gate kernel: {e:?}"))
        })
        .as_deref()
        .map_err(|e| candle_core::Error::Msg(e.clone()))
    }

    fn cuda_of(s: &Storage) -> Result<&CudaStorage> {
        match s {
            Storage::Cuda(c) => Ok(c),
            _ => candle_core::bail!("gru gate step: tensors must all be on the CUDA device"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn launch(
        op: &GateStep<'_>,
        gh_s: &CudaStorage,
        gh_l: &Layout,
        h_s: &CudaStorage,
        h_l: &Layout,
        b: usize,
        hs: usize,
        g: usize,
    ) -> Result<CudaStorage> {
        match gh_s.dtype() {
            DType::F32 => typed::<f32>("gru_gate_f32", op, gh_s, gh_l, h_s, h_l, b, hs, g),
            DType::F64 => typed::<f64>("gru_gate_f64", op, gh_s, gh_l, h_s, h_l, b, hs, g),
            other => candle_core::bail!("gru gate step: no CUDA kernel for {other:?}"),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn typed<T: CudaDType + DeviceRepr>(
        name: &str,
        op: &GateStep<'_>,
        gh_s: &CudaStorage,
        gh_l: &Layout,
        h_s: &CudaStorage,
        h_l: &Layout,
        b: usize,
        hs: usize,
        g: usize,
    ) -> Result<CudaStorage> {
        let dev = gh_s.device().clone();
        let (gi_g, gi_l) = op.gi.storage_and_layout();
        let (bh_g, bh_l) = op.b_hn.storage_and_layout();
        let (len_g, len_l) = op.lengths.storage_and_layout();
        let gi = cuda_of(&gi_g)?
            .as_cuda_slice::<T>()?
            .slice(gi_l.start_offset()..);
        let b_hn = cuda_of(&bh_g)?
            .as_cuda_slice::<T>()?
            .slice(bh_l.start_offset()..);
        let lengths = cuda_of(&len_g)?
            .as_cuda_slice::<u32>()?
            .slice(len_l.start_offset()..);
        let gh = gh_s.as_cuda_slice::<T>()?.slice(gh_l.start_offset()..);
        let h = h_s.as_cuda_slice::<T>()?.slice(h_l.start_offset()..);
        // SAFETY: every element is written by the kernel (one thread per (row, unit), two
        // outputs each).
        let res = unsafe { dev.alloc::<T>(2 * b * hs)? };
        let func = dev.get_or_load_custom_func(name, "candle_gru_gate", ptx()?)?;
        let (bi, hi, gi_stride, off, t) =
            (b as i32, hs as i32, g as i32, op.offset as i32, op.t as i32);
        let mut builder = func.builder();
        builder.arg(&gi);
        builder.arg(&gh);
        builder.arg(&b_hn);
        builder.arg(&h);
        builder.arg(&lengths);
        builder.arg(&res);
        builder.arg(&bi);
        builder.arg(&hi);
        builder.arg(&gi_stride);
        builder.arg(&off);
        builder.arg(&t);
        // SAFETY: argument types and order match the kernel's signature; sizes were checked by
        // `GateStep::dims`.
        unsafe { builder.launch(LaunchConfig::for_num_elems((b * hs) as u32)) }.w()?;
        Ok(CudaStorage::wrap_cuda_slice(res, dev))
    }
}
