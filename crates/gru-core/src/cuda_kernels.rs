//! Loading the CUDA kernels: `kernel_source::CUDA_SOURCE` compiled once per compute capability
//! with NVRTC to a CUBIN for the device's own architecture (a CUBIN, not PTX: PTX from a libnvrtc
//! newer than the driver is refused with `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`), loaded once per
//! device, its functions kept so that a time step launches without a lock or a lookup; and the
//! views of tensors that the launches pass as arguments.

use std::collections::HashMap;
use std::ffi::{c_char, CStr};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{sys, CudaFunction, CudaView};
use candle_core::cuda_backend::cudarc::nvrtc::{self, Ptx};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
use candle_core::{DType, Layout, Result, Storage};

use crate::kernel_source::CUDA_SOURCE;

/// The kernels of one device, with what their launch geometry needs to know about it.
pub(crate) struct CudaKernels {
    gate_f32: CudaFunction,
    gate_f64: CudaFunction,
    persist_f32: CudaFunction,
    persist_f64: CudaFunction,
    /// Multiprocessors the persistent kernel may use (0 without cooperative launch).
    pub sm_count: usize,
    /// Shared memory a block may opt in to.
    pub max_smem: usize,
    /// Threads per block the persistent kernel can run with (its registers allowing).
    pub persist_max_threads: usize,
}

impl std::fmt::Debug for CudaKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaKernels")
            .field("sm_count", &self.sm_count)
            .field("max_smem", &self.max_smem)
            .finish_non_exhaustive()
    }
}

impl CudaKernels {
    pub fn gate(&self, dtype: DType) -> Result<&CudaFunction> {
        match dtype {
            DType::F32 => Ok(&self.gate_f32),
            DType::F64 => Ok(&self.gate_f64),
            other => candle_core::bail!("gru: no CUDA gate kernel for {other:?}"),
        }
    }

    pub fn persist(&self, dtype: DType) -> Result<&CudaFunction> {
        match dtype {
            DType::F32 => Ok(&self.persist_f32),
            DType::F64 => Ok(&self.persist_f64),
            other => candle_core::bail!("gru: no CUDA persistent kernel for {other:?}"),
        }
    }
}

fn msg(what: &str, e: impl std::fmt::Debug) -> candle_core::Error {
    candle_core::Error::Msg(format!("gru CUDA kernels: {what}: {e:?}"))
}

/// The kernels of `dev`, compiled and loaded on first use.
pub(crate) fn kernels(dev: &CudaDevice) -> Result<Arc<CudaKernels>> {
    static LOADED: OnceLock<Mutex<HashMap<DeviceId, Arc<CudaKernels>>>> = OnceLock::new();
    let mut loaded = LOADED
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| msg("cache", "poisoned"))?;
    if let Some(k) = loaded.get(&dev.id()) {
        return Ok(k.clone());
    }
    let stream = dev.cuda_stream();
    let ctx = stream.context();
    let (major, minor) = ctx
        .compute_capability()
        .map_err(|e| msg("compute capability", e))?;
    let cubin = cubin(major, minor)?;
    let module = ctx
        .load_module(Ptx::from_binary(cubin))
        .map_err(|e| msg(&format!("loading the CUBIN for sm_{major}{minor}"), e))?;
    let load = |name: &str| {
        module
            .load_function(name)
            .map_err(|e| msg(&format!("function {name}"), e))
    };
    let attr = |a| ctx.attribute(a).map_err(|e| msg("device attribute", e));
    let sm_count =
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as usize;
    let max_smem =
        attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)?
            as usize;
    let persist_f32 = load("gru_persist_f32")?;
    let persist_f64 = load("gru_persist_f64")?;
    for f in [&persist_f32, &persist_f64] {
        // Opt in to all of it once; each launch then asks for what its plan needs.
        f.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            max_smem as i32,
        )
        .map_err(|e| msg("shared memory opt-in", e))?;
    }
    let max_threads = |f: &CudaFunction| {
        f.get_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
            .map_err(|e| msg("function attribute", e))
    };
    let persist_max_threads = max_threads(&persist_f32)?.min(max_threads(&persist_f64)?) as usize;
    let k = Arc::new(CudaKernels {
        gate_f32: load("gru_gate_f32")?,
        gate_f64: load("gru_gate_f64")?,
        persist_f32,
        persist_f64,
        sm_count,
        max_smem,
        persist_max_threads,
    });
    loaded.insert(dev.id(), k.clone());
    Ok(k)
}

/// The CUBIN of `CUDA_SOURCE` for `sm_{major}{minor}`, compiled once per capability.
fn cubin(major: i32, minor: i32) -> Result<Vec<u8>> {
    type Cache = Mutex<HashMap<(i32, i32), std::result::Result<Vec<u8>, String>>>;
    static CUBINS: OnceLock<Cache> = OnceLock::new();
    let mut cache = CUBINS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| msg("cache", "poisoned"))?;
    cache
        .entry((major, minor))
        .or_insert_with(|| compile_cubin(major, minor))
        .clone()
        .map_err(candle_core::Error::Msg)
}

fn compile_cubin(major: i32, minor: i32) -> std::result::Result<Vec<u8>, String> {
    use nvrtc::{result, sys as nsys};
    let fail = |what: &str, e: &dyn std::fmt::Debug| {
        format!("NVRTC could not {what} the GRU kernels for sm_{major}{minor}: {e:?}")
    };
    let src = std::ffi::CString::new(CUDA_SOURCE).map_err(|e| fail("read", &e))?;
    let prog = result::create_program(&src, None).map_err(|e| fail("create", &e))?;
    let opts = [format!("--gpu-architecture=sm_{major}{minor}")];
    // SAFETY: `prog` was created above and is destroyed once, below; buffers are sized by NVRTC.
    let out = unsafe {
        let compiled = result::compile_program(prog, &opts).map_err(|e| {
            let log = result::get_program_log(prog)
                .map(|l| CStr::from_ptr(l.as_ptr()).to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{}\n{log}", fail("compile", &e))
        });
        let image = compiled.and_then(|()| {
            let mut size = 0usize;
            nsys::nvrtcGetCUBINSize(prog, &mut size)
                .result()
                .map_err(|e| fail("size", &e))?;
            let mut buf = vec![0u8; size];
            nsys::nvrtcGetCUBIN(prog, buf.as_mut_ptr() as *mut c_char)
                .result()
                .map_err(|e| fail("emit", &e))?;
            Ok(buf)
        });
        let _ = result::destroy_program(prog);
        image
    };
    out
}

/// The CUDA slice of a tensor's held storage and layout (`Tensor::storage_and_layout`, kept
/// while a launch uses it) from its start offset, as a kernel argument.
pub(crate) fn view<'a, T: CudaDType>(
    held: &'a (impl std::ops::Deref<Target = Storage>, &Layout),
) -> Result<CudaView<'a, T>> {
    match &*held.0 {
        Storage::Cuda(c) => Ok(c.as_cuda_slice::<T>()?.slice(held.1.start_offset()..)),
        _ => candle_core::bail!("gru CUDA kernels: tensors must all be on the CUDA device"),
    }
}
