//! Loading the CUDA kernels: `source::CUDA_SOURCE` compiled once per compute capability
//! with NVRTC to a CUBIN for the device's own architecture (a CUBIN, not PTX: PTX from a libnvrtc
//! newer than the driver is refused with `CUDA_ERROR_UNSUPPORTED_PTX_VERSION`), loaded once per
//! device, its functions kept so that a time step launches without a lock or a lookup; and the
//! views of tensors that the launches pass as arguments. On compute capability 9.0 and up the
//! cluster kernels are a second program (the same source with `GRU_CLUSTER_KERNELS`): if NVRTC or
//! the driver refuses it, the other kernels still load and the reason is kept.

use std::collections::HashMap;
use std::ffi::{c_char, CStr};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::cuda_backend::cudarc::driver::{
    sys, CudaFunction, CudaStream, CudaView, LaunchConfig,
};
use candle_core::cuda_backend::cudarc::nvrtc::{self, Ptx};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
use candle_core::{DType, Layout, Result, Storage};

use super::source::{GpuLimits, CLUSTER_SIZES, CUDA_SOURCE};

/// The kernels of one device, with what their launch geometry needs to know about it.
/// Every per-dtype array below is indexed by [`dtype_index`]: f32, then f64.
pub(crate) struct CudaKernels {
    /// `gru_gate_*`.
    gate: [CudaFunction; 2],
    /// `gru_persist_*` (grid barrier).
    persist: [CudaFunction; 2],
    /// `gru_persist_cluster<n>_*` for each of `CLUSTER_SIZES`.
    cluster: Option<[[CudaFunction; 3]; 2]>,
    /// Why there are no cluster kernels, if there are none.
    pub cluster_unavailable: Option<String>,
    /// What the persistent kernel's plan needs to know about the device (the f64 kernels take
    /// more registers, so fewer threads per block).
    limits: [GpuLimits; 2],
    /// Whether a cluster launch can be placed, by dtype index and launch geometry: asked of the
    /// driver once per geometry, not at every launch.
    placeable: Mutex<HashMap<LaunchKey, bool>>,
}

/// A cluster launch: dtype index, cluster size, grid, threads, shared memory bytes.
type LaunchKey = (usize, usize, u32, u32, u32);

impl std::fmt::Debug for CudaKernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaKernels")
            .field("limits", &self.limits)
            .field("cluster_unavailable", &self.cluster_unavailable)
            .finish_non_exhaustive()
    }
}

/// The kernels' index for `dtype`: 0 for f32, 1 for f64, `None` for types without kernels.
fn dtype_index(dtype: DType) -> Option<usize> {
    match dtype {
        DType::F32 => Some(0),
        DType::F64 => Some(1),
        _ => None,
    }
}

impl CudaKernels {
    pub fn gate(&self, dtype: DType) -> Result<&CudaFunction> {
        match dtype_index(dtype) {
            Some(d) => Ok(&self.gate[d]),
            None => candle_core::bail!("gru: no CUDA gate kernel for {dtype:?}"),
        }
    }

    /// What the persistent kernel's plan needs to know about the device for `dtype` (f32 or
    /// f64; `None` for other types).
    pub fn limits(&self, dtype: DType) -> Option<GpuLimits> {
        dtype_index(dtype).map(|d| self.limits[d])
    }

    /// Whether clusters of `cluster` blocks of the kernel for `dtype` launched as `cfg` can be placed on the
    /// device at all (`cuOccupancyMaxActiveClusters` > 0): too few free SMs in a GPC, a MIG
    /// slice or MPS limits can make that none.
    pub fn cluster_placeable(
        &self,
        dtype: DType,
        cluster: usize,
        cfg: LaunchConfig,
        stream: &Arc<CudaStream>,
    ) -> Result<bool> {
        let Some(d) = dtype_index(dtype) else {
            candle_core::bail!("gru: no CUDA persistent kernel for {dtype:?}")
        };
        let key = (
            d,
            cluster,
            cfg.grid_dim.0,
            cfg.block_dim.0,
            cfg.shared_mem_bytes,
        );
        let known = self.placeable.lock().map(|m| m.get(&key).copied());
        if let Ok(Some(p)) = known {
            return Ok(p);
        }
        let func = self.persist(dtype, cluster)?;
        let p = func
            .occupancy_max_active_clusters(cfg, stream)
            .map_err(|e| msg("cluster occupancy", e))?
            > 0;
        if let Ok(mut m) = self.placeable.lock() {
            m.insert(key, p);
        }
        Ok(p)
    }

    /// The persistent kernel for `dtype`: with the grid barrier (`cluster` 0) or for clusters of
    /// `cluster` blocks.
    pub fn persist(&self, dtype: DType, cluster: usize) -> Result<&CudaFunction> {
        let Some(d) = dtype_index(dtype) else {
            candle_core::bail!("gru: no CUDA persistent kernel for {dtype:?}")
        };
        if cluster == 0 {
            return Ok(&self.persist[d]);
        }
        let Some(fs) = &self.cluster else {
            candle_core::bail!(
                "gru: no cluster kernels on this device: {}",
                self.cluster_unavailable.as_deref().unwrap_or("unknown")
            )
        };
        match CLUSTER_SIZES.iter().position(|&n| n == cluster) {
            Some(i) => Ok(&fs[d][i]),
            None => candle_core::bail!("gru: no cluster kernel for clusters of {cluster}"),
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
    let cubin = cubin(major, minor, false)?;
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
    // Opt in to all of it once; each launch then asks for what its plan needs.
    let opt_in = |f: &CudaFunction| {
        f.set_attribute(
            sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            max_smem as i32,
        )
        .map_err(|e| msg("shared memory opt-in", e))
    };
    let max_threads = |f: &CudaFunction| {
        f.get_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)
            .map(|n| n as usize)
            .map_err(|e| msg("function attribute", e))
    };
    let persist = [load("gru_persist_f32")?, load("gru_persist_f64")?];
    // Threads per block each dtype's grid-barrier kernel runs with (registers allowing).
    let mut threads = [0, 0];
    for (f, n) in persist.iter().zip(&mut threads) {
        opt_in(f)?;
        *n = max_threads(f)?;
    }
    // Clusters: compute capability 9.0 and up, their own program.
    let cluster = if major < 9 {
        Err(format!(
            "compute capability {major}.{minor} (clusters need 9.0)"
        ))
    } else {
        load_cluster_kernels(dev, major, minor, &opt_in, &max_threads).map_err(|e| e.to_string())
    };
    let (cluster, cluster_threads, cluster_unavailable) = match cluster {
        Ok((fs, n)) => (Some(fs), n, None),
        Err(why) => (None, [0, 0], Some(why)),
    };
    let limits = [0, 1].map(|d| GpuLimits {
        sm_count,
        max_smem,
        max_threads: threads[d],
        cluster_max_threads: cluster_threads[d],
    });
    let k = Arc::new(CudaKernels {
        gate: [load("gru_gate_f32")?, load("gru_gate_f64")?],
        persist,
        limits,
        cluster,
        cluster_unavailable,
        placeable: Mutex::default(),
    });
    loaded.insert(dev.id(), k.clone());
    Ok(k)
}

/// The cluster kernels of `dev` (f32 then f64, one per cluster size), shared memory opted in,
/// with the fewest threads per block any of each dtype's can run with.
fn load_cluster_kernels(
    dev: &CudaDevice,
    major: i32,
    minor: i32,
    opt_in: &dyn Fn(&CudaFunction) -> Result<()>,
    max_threads: &dyn Fn(&CudaFunction) -> Result<usize>,
) -> Result<([[CudaFunction; 3]; 2], [usize; 2])> {
    let module = dev
        .cuda_stream()
        .context()
        .load_module(Ptx::from_binary(cubin(major, minor, true)?))
        .map_err(|e| msg("loading the cluster kernels", e))?;
    let mut threads = [usize::MAX; 2];
    let mut load = |d: usize, n: usize| -> Result<CudaFunction> {
        let name = format!("gru_persist_cluster{n}_{}", ["f32", "f64"][d]);
        let f = module
            .load_function(&name)
            .map_err(|e| msg(&format!("function {name}"), e))?;
        opt_in(&f)?;
        threads[d] = threads[d].min(max_threads(&f)?);
        Ok(f)
    };
    let [a, b, c] = CLUSTER_SIZES;
    let fs = [
        [load(0, a)?, load(0, b)?, load(0, c)?],
        [load(1, a)?, load(1, b)?, load(1, c)?],
    ];
    Ok((fs, threads))
}

/// The CUBIN of `CUDA_SOURCE` for `sm_{major}{minor}` (with `cluster`: its cluster kernels),
/// compiled once per capability.
fn cubin(major: i32, minor: i32, cluster: bool) -> Result<Vec<u8>> {
    type Cache = Mutex<HashMap<(i32, i32, bool), std::result::Result<Vec<u8>, String>>>;
    static CUBINS: OnceLock<Cache> = OnceLock::new();
    let mut cache = CUBINS
        .get_or_init(Default::default)
        .lock()
        .map_err(|_| msg("cache", "poisoned"))?;
    cache
        .entry((major, minor, cluster))
        .or_insert_with(|| compile_cubin(major, minor, cluster))
        .clone()
        .map_err(candle_core::Error::Msg)
}

fn compile_cubin(major: i32, minor: i32, cluster: bool) -> std::result::Result<Vec<u8>, String> {
    use nvrtc::{result, sys as nsys};
    let fail = |what: &str, e: &dyn std::fmt::Debug| {
        format!("NVRTC could not {what} the GRU kernels for sm_{major}{minor}: {e:?}")
    };
    let src = std::ffi::CString::new(CUDA_SOURCE).map_err(|e| fail("read", &e))?;
    let prog = result::create_program(&src, None).map_err(|e| fail("create", &e))?;
    let mut opts = vec![format!("--gpu-architecture=sm_{major}{minor}")];
    if cluster {
        opts.push("-DGRU_CLUSTER_KERNELS".into());
    }
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
