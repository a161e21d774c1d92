//! One GRU layer (one or two directions): its parameters as loaded, the same in compute layout
//! (transposed once, biases folded), and the dispatch to the CPU kernel or the candle-ops path.

use std::sync::Arc;

use candle_core::{DType, Device, Storage, Tensor, WithDType};

use crate::activation::Real;
use crate::cpu::{self, Dims, DirPack};
use crate::cuda::source::{LayerShape, PersistentPlan, Tuning};
use crate::cuda::DeviceKernels;
use crate::error::{GruError, Result};
use crate::packing::LengthPlan;
use crate::params::DirectionParams;
use crate::stepwise::{self, DirTensors, Fused};

/// Which implementation runs the recurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernel {
    /// The slice kernel on the CPU; on CUDA the persistent kernel up to batch 64 where the layer
    /// fits, else the fused step kernel; candle ops on Metal.
    #[default]
    Auto,
    /// Per step a matmul and the gate update composed from candle ops (Metal's path), on any
    /// device; for testing and comparison.
    CandleOps,
    /// Per step a matmul and the fused gate kernel (CUDA's path; its CPU twin elsewhere).
    FusedStep,
    /// CUDA only: each layer's whole recurrence in one persistent launch, `W_hh` held on chip
    /// (what `Auto` picks on CUDA for batches up to 64 when the layer fits). An error on other
    /// devices or when the layer does not fit in the GPU's shared memory.
    Persistent,
}

/// `Auto` takes the persistent kernel on CUDA up to this batch size (`GRU_PERSISTENT_MAX_BATCH`
/// overrides it): beyond it each step has enough rows for cuBLAS to do better than a block's
/// share of a GEMV. It was 32 while every block transposed the exchanged `h` on each step with
/// 32-way bank conflicts (the large config, B = 64, ran at 12-14 ms persistent against 8 ms per
/// step on an H200); without them a cost model that matches those measurements puts B = 64
/// persistent at about half the per-step time. Not yet measured: scripts/gpu-check.sh times both.
const AUTO_PERSISTENT_MAX_BATCH: usize = 64;

fn auto_persistent_max_batch() -> usize {
    static MAX: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *MAX.get_or_init(|| {
        std::env::var("GRU_PERSISTENT_MAX_BATCH")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(AUTO_PERSISTENT_MAX_BATCH)
    })
}

/// The persistent kernel's tuning: `GRU_PERSISTENT_ITEMS`, `GRU_PERSISTENT_THREADS`,
/// `GRU_PERSISTENT_KSPLIT`, `GRU_PERSISTENT_CLUSTER` (0: no clusters; 2, 4, 8: that size) and
/// `GRU_PERSISTENT_ASYNC` (1: clusters exchange `h` by `st.async` and mbarriers), knobs for
/// benchmarks; the plan's defaults where unset.
fn persistent_tuning() -> Tuning {
    static TUNING: std::sync::OnceLock<Tuning> = std::sync::OnceLock::new();
    *TUNING.get_or_init(|| {
        let var = |name: &str| -> Option<usize> { std::env::var(name).ok()?.parse().ok() };
        let default = Tuning::default();
        Tuning {
            items: var("GRU_PERSISTENT_ITEMS")
                .filter(|&n| n > 0)
                .unwrap_or(default.items),
            max_threads: var("GRU_PERSISTENT_THREADS")
                .filter(|&n| n > 0)
                .unwrap_or(default.max_threads),
            k_split: var("GRU_PERSISTENT_KSPLIT").filter(|&n| n > 0),
            cluster: var("GRU_PERSISTENT_CLUSTER"),
            async_exchange: var("GRU_PERSISTENT_ASYNC").is_some_and(|n| n > 0),
        }
    })
}

/// What every layer of one forward call shares: the lengths as a `(B)` u32 tensor on the device
/// (uploaded once per forward, not per layer and direction) and the device's loaded kernels.
pub(crate) struct RunContext {
    lengths: Option<Tensor>,
    kernels: Option<Arc<DeviceKernels>>,
}

impl RunContext {
    pub fn new(plan: &LengthPlan, device: &Device, kernel: Kernel) -> Result<Self> {
        // The device kernels take no lengths for a batch that runs the full length.
        let needs_device_path = kernel != Kernel::Auto || !device.is_cpu();
        let lengths = if needs_device_path && kernel != Kernel::CandleOps && !plan.is_full() {
            let l: Vec<u32> = plan.lengths.iter().map(|&l| l as u32).collect();
            let n = l.len();
            Some(Tensor::from_vec(l, n, device)?)
        } else {
            None
        };
        // Only the kernel paths need the compiled kernels (and a GPU NVRTC can compile for).
        let kernels = if kernel == Kernel::CandleOps {
            None
        } else {
            device_kernels(device)?
        };
        Ok(Self { lengths, kernels })
    }
}

#[cfg(feature = "cuda")]
fn device_kernels(device: &Device) -> Result<Option<Arc<DeviceKernels>>> {
    match device {
        Device::Cuda(d) => Ok(Some(crate::cuda::nvrtc::kernels(d)?)),
        _ => Ok(None),
    }
}

#[cfg(not(feature = "cuda"))]
fn device_kernels(_: &Device) -> Result<Option<Arc<DeviceKernels>>> {
    Ok(None)
}

/// The persistent kernel's weights: every direction's `W_hh` as PyTorch stores it, stacked.
#[derive(Debug, Clone)]
struct PersistWeights {
    /// `(D, 3H, H)`.
    w_hh: Tensor,
    /// `(D, H)`.
    b_hn: Tensor,
}

/// The dtype the recurrence computes in: half types compute in f32 (and round once at the end).
pub(crate) fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::F16 | DType::BF16 => DType::F32,
        other => other,
    }
}

/// What the kernels read, derived from the parameters in compute dtype: on the CPU the packed
/// weights of its kernel, elsewhere transposed and folded tensors.
#[derive(Debug, Clone)]
struct Derived {
    /// Empty on the CPU until a kernel that reads them (`CandleOps`, `FusedStep`) first runs,
    /// so that a CPU model keeps its weights twice (loaded and packed; a layer with wide steps
    /// packed twice, in f32 and f64), not once more.
    tensors: std::sync::OnceLock<DerivedTensors>,
    /// The same in f64, for a wide layer's per-step and candle-ops paths (built on first use).
    wide_tensors: std::sync::OnceLock<DerivedTensors>,
    /// On CUDA only.
    persist: Option<PersistWeights>,
    /// On the CPU only (f32, f64): every direction's weights packed for the CPU kernel.
    cpu: Option<CpuPack>,
}

/// The parameters transposed and folded, as the candle-ops and device paths read them.
#[derive(Debug, Clone)]
struct DerivedTensors {
    /// `(in, D * 3H)`: `W_ih^T` of each direction side by side.
    w_ih_t: Tensor,
    /// `(D * 3H)`: `b_ih + [b_hr, b_hz, 0]` per direction.
    bias: Tensor,
    /// Per direction `(H, 3H)`.
    w_hh_t: Vec<Tensor>,
    /// Per direction `(H)`.
    b_hn: Vec<Tensor>,
}

/// Hidden sizes up to which an f32 layer's steps may compute in f64 on the CPU ("wide steps"):
/// the products, biases and gates of a step in f64, its new state (and output) rounded to f32.
/// For small states f32 arithmetic leaves our answer no closer to the exact one than PyTorch's
/// f32, and on some inputs 2-3x further (a few roundings decide a chaotic trajectory, and the
/// maximum over few outputs is set by one of them: issue 28, BENCHMARKS.md "Accuracy"); one
/// rounding per step brings it well under PyTorch's error. Streaming is unchanged: the carried
/// state is f32, as every step's state is.
pub(crate) const WIDE_MAX_HIDDEN: usize = 128;

/// The largest `batch * hidden` a call runs with wide steps: f64 products cost about twice f32
/// ones, which a step this small hides behind its fixed costs (measured: 1.6-3x f32 steps, still
/// under PyTorch's time); past it the products dominate (hidden 128, batch 32: 2.3x f32 steps,
/// 1.5x PyTorch) and the maximum error over many rows is no longer one trajectory's.
pub(crate) const WIDE_MAX_STATE: usize = 512;

/// Whether an f32 layer may have wide steps (see [`WIDE_MAX_HIDDEN`]); `allowed`: the model's
/// choice (`Gru::with_wide_steps`).
fn wide_steps(params: &[DirectionParams], hidden: usize, allowed: bool) -> bool {
    let w = &params[0].w_ih;
    allowed && w.device().is_cpu() && w.dtype() == DType::F32 && hidden <= WIDE_MAX_HIDDEN
}

/// Whether a call of `batch` rows runs a wide layer's steps in f64 (see [`WIDE_MAX_STATE`]).
fn wide_call(batch: usize, hidden: usize) -> bool {
    batch * hidden <= WIDE_MAX_STATE
}

/// The CPU kernel's packed weights of a layer, per direction, in the compute dtype.
#[derive(Debug, Clone)]
enum CpuPack {
    F32(Vec<DirPack<f32>>),
    F64(Vec<DirPack<f64>>),
    /// An f32 layer with wide steps (see [`WIDE_MAX_HIDDEN`]): its weights in f32, for calls
    /// of many rows, and in f64, each direction narrowing its state to f32 after every step.
    Wide(Vec<DirPack<f32>>, Vec<DirPack<f64>>),
}

impl CpuPack {
    fn new(
        params: &[DirectionParams],
        hidden: usize,
        dtype: DType,
        wide: bool,
    ) -> Result<Option<Self>> {
        fn pack<T: Real>(
            params: &[DirectionParams],
            hidden: usize,
            dtype: DType,
        ) -> Result<Vec<DirPack<T>>> {
            let flat = |t: &Tensor| -> Result<Vec<T>> {
                Ok(t.to_dtype(dtype)?.flatten_all()?.to_vec1::<T>()?)
            };
            params
                .iter()
                .map(|p| {
                    let input = p.w_ih.dim(1)?;
                    let biases = match (&p.b_ih, &p.b_hh) {
                        (Some(bi), Some(bh)) => Some((flat(bi)?, flat(bh)?)),
                        _ => None,
                    };
                    Ok(DirPack::new(
                        &flat(&p.w_ih)?,
                        &flat(&p.w_hh)?,
                        biases.as_ref().map(|(bi, bh)| (&bi[..], &bh[..])),
                        hidden,
                        input,
                    ))
                })
                .collect()
        }
        Ok(match dtype {
            DType::F32 if wide => {
                let mut dirs = pack::<f64>(params, hidden, DType::F64)?;
                for d in &mut dirs {
                    d.narrow = true;
                }
                Some(Self::Wide(pack(params, hidden, dtype)?, dirs))
            }
            DType::F32 => Some(Self::F32(pack(params, hidden, dtype)?)),
            DType::F64 => Some(Self::F64(pack(params, hidden, dtype)?)),
            _ => None,
        })
    }

    /// The weights a call computes with: `wide`, a wide layer's f64 weights (which narrow the
    /// state to f32 each step); otherwise the weights of the layer's own dtype. `None` when `T`
    /// is not that dtype.
    fn dirs<T: Real>(&self, wide: bool) -> Option<&[DirPack<T>]> {
        let any: &dyn std::any::Any = match (self, wide) {
            (Self::Wide(_, f64s), true) => f64s,
            (_, true) => return None,
            (Self::F32(d) | Self::Wide(d, _), false) => d,
            (Self::F64(d), false) => d,
        };
        any.downcast_ref::<Vec<DirPack<T>>>().map(Vec::as_slice)
    }

    fn is_wide(&self) -> bool {
        matches!(self, Self::Wide(..))
    }
}

impl DerivedTensors {
    /// In `dtype` (the compute dtype, or f64 for a layer's wide steps).
    fn new(params: &[DirectionParams], hidden: usize, dtype: DType) -> Result<Self> {
        let device = params[0].w_ih.device().clone();
        let zeros_h = Tensor::zeros(hidden, dtype, &device)?;
        let mut w_ih_t = Vec::with_capacity(params.len());
        let mut bias = Vec::with_capacity(params.len());
        let mut w_hh_t = Vec::with_capacity(params.len());
        let mut b_hn = Vec::with_capacity(params.len());
        for p in params {
            w_ih_t.push(p.w_ih.to_dtype(dtype)?.t()?);
            w_hh_t.push(p.w_hh.to_dtype(dtype)?.t()?.contiguous()?);
            match (&p.b_ih, &p.b_hh) {
                (Some(bi), Some(bh)) => {
                    let bi = bi.to_dtype(dtype)?;
                    let bh = bh.to_dtype(dtype)?;
                    let folded = Tensor::cat(&[&bh.narrow(0, 0, 2 * hidden)?, &zeros_h], 0)?;
                    bias.push((bi + folded)?);
                    b_hn.push(bh.narrow(0, 2 * hidden, hidden)?.contiguous()?);
                }
                _ => {
                    bias.push(Tensor::zeros(3 * hidden, dtype, &device)?);
                    b_hn.push(zeros_h.clone());
                }
            }
        }
        Ok(Self {
            w_ih_t: Tensor::cat(&w_ih_t, 1)?.contiguous()?,
            bias: Tensor::cat(&bias, 0)?.contiguous()?,
            w_hh_t,
            b_hn,
        })
    }
}

impl Derived {
    /// `for_kernels`: also the kernels' own layouts (packed on the CPU, the persistent kernel's
    /// stacked weights on CUDA); tracked (`Var`) layers only ever run the candle-ops recurrence
    /// and skip them.
    /// `wide`: an f32 layer with wide steps (packed in f64).
    fn new(
        params: &[DirectionParams],
        hidden: usize,
        for_kernels: bool,
        wide: bool,
    ) -> Result<Self> {
        let first = &params[0].w_ih;
        let dtype = compute_dtype(first.dtype());
        let device = first.device();
        if for_kernels && device.is_cpu() {
            if let Some(cpu) = CpuPack::new(params, hidden, dtype, wide)? {
                return Ok(Self {
                    tensors: std::sync::OnceLock::new(),
                    wide_tensors: std::sync::OnceLock::new(),
                    persist: None,
                    cpu: Some(cpu),
                });
            }
        }
        let tensors = DerivedTensors::new(params, hidden, dtype)?;
        let persist = if for_kernels && device.is_cuda() {
            let w_hh = params
                .iter()
                .map(|p| p.w_hh.to_dtype(dtype))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Some(PersistWeights {
                w_hh: Tensor::stack(&w_hh, 0)?.contiguous()?,
                b_hn: Tensor::stack(&tensors.b_hn, 0)?.contiguous()?,
            })
        } else {
            None
        };
        Ok(Self {
            tensors: tensors.into(),
            wide_tensors: std::sync::OnceLock::new(),
            persist,
            cpu: None,
        })
    }

    /// The transposed and folded tensors in the compute dtype, built on first use.
    fn tensors(&self, params: &[DirectionParams], hidden: usize) -> Result<&DerivedTensors> {
        let dtype = compute_dtype(params[0].w_ih.dtype());
        Self::built(&self.tensors, params, hidden, dtype)
    }

    /// The same in f64 (biases folded in f64, as the CPU kernel's wide packs fold them).
    fn wide_tensors(&self, params: &[DirectionParams], hidden: usize) -> Result<&DerivedTensors> {
        Self::built(&self.wide_tensors, params, hidden, DType::F64)
    }

    fn built<'a>(
        cell: &'a std::sync::OnceLock<DerivedTensors>,
        params: &[DirectionParams],
        hidden: usize,
        dtype: DType,
    ) -> Result<&'a DerivedTensors> {
        if let Some(t) = cell.get() {
            return Ok(t);
        }
        let t = DerivedTensors::new(params, hidden, dtype)?;
        // Another thread may have built them meanwhile: either copy serves.
        Ok(cell.get_or_init(|| t))
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Layer {
    /// As loaded, in the model's dtype: what `named_tensors` returns.
    pub params: Vec<DirectionParams>,
    /// Derived once at construction from plain tensors; `None` when the parameters are candle
    /// `Var`s: those can change under us (`VarMap::load`, an optimizer step) and track
    /// gradients, so each forward derives afresh, inside the autograd graph.
    derived: Option<Derived>,
    hidden: usize,
    /// Wide steps allowed (the default; see [`WIDE_MAX_HIDDEN`]).
    wide_allowed: bool,
}

impl Layer {
    pub fn new(params: Vec<DirectionParams>, hidden: usize) -> Result<Self> {
        Self::build(params, hidden, true)
    }

    fn build(params: Vec<DirectionParams>, hidden: usize, wide_allowed: bool) -> Result<Self> {
        let variable = params.iter().any(DirectionParams::is_variable);
        let wide = wide_steps(&params, hidden, wide_allowed);
        let derived = if variable {
            None
        } else {
            Some(Derived::new(&params, hidden, true, wide)?)
        };
        Ok(Self {
            params,
            derived,
            hidden,
            wide_allowed,
        })
    }

    /// This layer with wide steps allowed or not (packed anew when that changes them).
    pub fn with_wide_steps(self, allowed: bool) -> Result<Self> {
        if wide_steps(&self.params, self.hidden, allowed) == self.is_wide() {
            // Nothing to pack anew (another dtype, a larger layer, the same choice).
            return Ok(Self {
                wide_allowed: allowed,
                ..self
            });
        }
        Self::build(self.params, self.hidden, allowed)
    }

    fn derived(&self) -> Result<std::borrow::Cow<'_, Derived>> {
        Ok(match &self.derived {
            Some(d) => std::borrow::Cow::Borrowed(d),
            None => std::borrow::Cow::Owned(Derived::new(
                &self.params,
                self.hidden,
                false,
                self.is_wide(),
            )?),
        })
    }

    pub fn num_directions(&self) -> usize {
        self.params.len()
    }

    /// `x` `(T, B, in)` and `h0` `(D, B, H)` (`None`: zeros), both in compute dtype on this
    /// layer's device.
    pub fn forward(
        &self,
        x: &Tensor,
        h0: Option<&Tensor>,
        plan: &LengthPlan,
        kernel: Kernel,
        ctx: &RunContext,
    ) -> Result<(Tensor, Tensor)> {
        let derived = self.derived()?;
        let d = derived.as_ref();
        // The kernels write raw buffers: candle's autograd graph stops there. With anything that
        // tracks gradients only the candle-ops recurrence keeps it.
        let tracked = self.derived.is_none() || x.track_op() || h0.is_some_and(Tensor::track_op);
        let kernel = match (tracked, kernel) {
            (false, k) => k,
            (true, Kernel::Auto | Kernel::CandleOps) => Kernel::CandleOps,
            (true, k) => {
                return Err(GruError::arg(
                    "kernel",
                    format!(
                        "Kernel::{k:?} cuts candle's autograd graph, and the weights (Vars), the \
                         input or h0 track gradients; use Kernel::Auto or Kernel::CandleOps"
                    ),
                ))
            }
        };
        let n_dirs = self.num_directions();
        if kernel == Kernel::Auto && x.device().is_cpu() {
            let h0 = state_or_zeros(h0, n_dirs, x, self.hidden)?;
            let wide =
                d.cpu.as_ref().is_some_and(CpuPack::is_wide) && wide_call(x.dim(1)?, self.hidden);
            return match x.dtype() {
                DType::F32 if wide => widened(x, &h0, |x, h0| {
                    self.forward_cpu::<f64>(d, x, h0, plan, true)
                }),
                DType::F32 => self.forward_cpu::<f32>(d, x, &h0, plan, false),
                DType::F64 => self.forward_cpu::<f64>(d, x, &h0, plan, false),
                other => Err(GruError::Internal(format!("no CPU kernel for {other:?}"))),
            };
        }
        let t = d.tensors(&self.params, self.hidden)?;
        if matches!(kernel, Kernel::Auto | Kernel::Persistent) {
            if let Some(out) = self.try_persistent(d, t, x, h0, kernel, ctx)? {
                return Ok(out);
            }
        }
        let h0 = state_or_zeros(h0, n_dirs, x, self.hidden)?;
        let fused = match kernel {
            Kernel::FusedStep | Kernel::Auto if !x.device().is_metal() => Some(Fused {
                lengths: ctx.lengths.as_ref(),
                kernels: ctx.kernels.as_deref(),
            }),
            _ => None,
        };
        // On the CPU a small f32 layer's call of few rows computes its steps in f64, as the CPU
        // kernel does (the same f64 arithmetic, up to f64's last bits: order of sums, FMA,
        // activations).
        let wide = x.device().is_cpu() && self.is_wide() && wide_call(x.dim(1)?, self.hidden);
        let t = if wide {
            d.wide_tensors(&self.params, self.hidden)?
        } else {
            t
        };
        let dirs: Vec<DirTensors<'_>> = t
            .w_hh_t
            .iter()
            .zip(&t.b_hn)
            .map(|(w_hh_t, b_hn)| DirTensors { w_hh_t, b_hn })
            .collect();
        let run = |x: &Tensor, h0: &Tensor| {
            stepwise::layer_forward(x, &t.w_ih_t, &t.bias, &dirs, h0, plan, fused, wide)
        };
        if wide {
            widened(x, &h0, run)
        } else {
            run(x, &h0)
        }
    }

    fn is_wide(&self) -> bool {
        wide_steps(&self.params, self.hidden, self.wide_allowed)
    }

    /// The persistent kernel when it applies: `Some` output, or `None` for the per-step path
    /// (`Auto` only; an explicit `Persistent` that cannot run is an error saying why).
    fn try_persistent(
        &self,
        d: &Derived,
        t: &DerivedTensors,
        x: &Tensor,
        h0: Option<&Tensor>,
        kernel: Kernel,
        ctx: &RunContext,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let refuse = |why: &str| {
            if kernel == Kernel::Persistent {
                Err(GruError::arg(
                    "kernel",
                    format!("Kernel::Persistent: {why}"),
                ))
            } else {
                Ok(None)
            }
        };
        let (Some(w), Some(kernels)) = (&d.persist, ctx.kernels.as_deref()) else {
            return refuse("needs a CUDA device (and a build with `--features cuda`)");
        };
        let (t_len, batch, _) = x.dims3()?;
        if kernel == Kernel::Auto && batch > auto_persistent_max_batch() {
            return Ok(None);
        }
        // The device's limits for this dtype, and why it has no cluster kernels if it has none.
        #[cfg(feature = "cuda")]
        let (gpu, no_clusters) = (
            kernels.limits(x.dtype()),
            kernels.cluster_unavailable.as_deref().unwrap_or(""),
        );
        #[cfg(not(feature = "cuda"))]
        let (gpu, no_clusters): (Option<crate::cuda::source::GpuLimits>, &str) = {
            let () = kernels;
            (None, "")
        };
        let Some(gpu) = gpu else {
            return refuse(&format!("no persistent kernel for {:?}", x.dtype()));
        };
        let shape = LayerShape {
            seq_len: t_len,
            batch,
            hidden: self.hidden,
            directions: self.num_directions(),
            elem_size: x.dtype().size_in_bytes(),
        };
        let tuning = persistent_tuning();
        let Some(plan) = PersistentPlan::plan(shape, gpu, tuning) else {
            return match tuning.cluster {
                Some(n) if n > 0 && gpu.cluster_max_threads == 0 => refuse(&format!(
                    "GRU_PERSISTENT_CLUSTER={n}, but this GPU has no cluster kernels: {no_clusters}"
                )),
                Some(n) if n > 0 => refuse(&format!(
                    "the layer does not fit in clusters of {n} (GRU_PERSISTENT_CLUSTER)"
                )),
                _ => refuse("the layer does not fit in the GPU's shared memory and SMs"),
            };
        };
        let run = |plan| {
            crate::cuda::persistent::persistent_layer(
                x,
                &t.w_ih_t,
                &t.bias,
                &w.w_hh,
                &w.b_hn,
                h0,
                ctx.lengths.as_ref(),
                plan,
                kernels,
            )
        };
        let mut out = run(plan);
        // A cluster launch that failed (its blocks cannot be placed together, or any other
        // error) where the cluster was the plan's choice: the same layer once more without
        // clusters; a second error then goes where any other would.
        if out.is_err() && plan.cluster > 0 && tuning.cluster.is_none() {
            let no_cluster = Tuning {
                cluster: Some(0),
                ..tuning
            };
            if let Some(plan) = PersistentPlan::plan(shape, gpu, no_cluster) {
                out = run(plan);
            }
        }
        match out {
            Ok(out) => Ok(Some(out)),
            // Auto: a refused launch (a GPU without cooperative launch, SMs taken by another
            // context) falls back to the per-step path, which reports any error of its own.
            Err(_) if kernel == Kernel::Auto => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The CPU kernel over a whole stack of unidirectional layers at once, block by block (see
    /// [`cpu::stack_forward`]), where it applies: `Auto` on the CPU, more than one layer, none
    /// tracking gradients, f32 or f64. `x` `(T, B, in)` and `h0` `(L, B, H)` in compute dtype;
    /// `None` where the layers run one at a time.
    pub fn forward_cpu_stack(
        layers: &[Layer],
        x: &Tensor,
        h0: Option<&Tensor>,
        plan: &LengthPlan,
        kernel: Kernel,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let applies = kernel == Kernel::Auto
            && x.device().is_cpu()
            && layers.len() > 1
            && !x.track_op()
            && !h0.is_some_and(Tensor::track_op)
            && layers.iter().all(|l| l.num_directions() == 1);
        if !applies {
            return Ok(None);
        }
        let h0 = state_or_zeros(h0, layers.len(), x, layers[0].hidden)?;
        let h0 = h0.as_ref();
        let wide = wide_call(x.dim(1)?, layers[0].hidden)
            && layers.iter().all(|l| {
                let pack = l.derived.as_ref().and_then(|d| d.cpu.as_ref());
                pack.is_some_and(CpuPack::is_wide)
            });
        match x.dtype() {
            DType::F32 if wide => {
                let out = widened(x, h0, |x, h0| {
                    Self::stack_cpu::<f64>(layers, x, h0, plan, true)?
                        .ok_or_else(|| GruError::Internal("no wide CPU weights".into()))
                })?;
                Ok(Some(out))
            }
            DType::F32 => Self::stack_cpu::<f32>(layers, x, h0, plan, false),
            DType::F64 => Self::stack_cpu::<f64>(layers, x, h0, plan, false),
            _ => Ok(None),
        }
    }

    /// `wide`: the layers' wide (f64, narrowing) weights; see [`CpuPack::dirs`].
    fn stack_cpu<T: cpu::SimdFloat>(
        layers: &[Layer],
        x: &Tensor,
        h0: &Tensor,
        plan: &LengthPlan,
        wide: bool,
    ) -> Result<Option<(Tensor, Tensor)>> {
        let mut dirs = Vec::with_capacity(layers.len());
        for layer in layers {
            // Tracked layers (no derived weights) run the candle-ops recurrence instead.
            let packed = layer.derived.as_ref().and_then(|d| d.cpu.as_ref());
            match packed.and_then(|p| p.dirs::<T>(wide)) {
                Some([dir]) => dirs.push(dir),
                _ => return Ok(None),
            }
        }
        let n = layers.len();
        let out = run_cpu_kernel(x, h0, layers[0].hidden, 1, n, |x, dims, h0, threads| {
            cpu::stack_forward(x, dims, &dirs, h0, plan, threads)
        })?;
        Ok(Some(out))
    }

    fn forward_cpu<T: cpu::SimdFloat>(
        &self,
        d: &Derived,
        x: &Tensor,
        h0: &Tensor,
        plan: &LengthPlan,
        wide: bool,
    ) -> Result<(Tensor, Tensor)> {
        let dirs = d
            .cpu
            .as_ref()
            .and_then(|p| p.dirs::<T>(wide))
            .ok_or_else(|| GruError::Internal("no packed CPU weights for this layer".into()))?;
        let n = self.num_directions();
        run_cpu_kernel(x, h0, self.hidden, n, n, |x, dims, h0, threads| {
            cpu::layer_forward(x, dims, dirs, h0, plan, threads)
        })
    }
}

/// Runs `f` on `x` and `h0` (f32) in f64 and returns its output and state in f32: exactly its
/// values, since a layer with wide steps rounds them to f32 already.
fn widened(
    x: &Tensor,
    h0: &Tensor,
    f: impl FnOnce(&Tensor, &Tensor) -> Result<(Tensor, Tensor)>,
) -> Result<(Tensor, Tensor)> {
    let (out, hn) = f(&x.to_dtype(DType::F64)?, &h0.to_dtype(DType::F64)?)?;
    Ok((out.to_dtype(DType::F32)?, hn.to_dtype(DType::F32)?))
}

/// `h0` as given, or the zero state `(n, B, H)` for `x` `(T, B, in)`, in its dtype and device.
fn state_or_zeros<'a>(
    h0: Option<&'a Tensor>,
    n: usize,
    x: &Tensor,
    hidden: usize,
) -> Result<std::borrow::Cow<'a, Tensor>> {
    Ok(match h0 {
        Some(h0) => std::borrow::Cow::Borrowed(h0),
        None => std::borrow::Cow::Owned(Tensor::zeros(
            (n, x.dim(1)?, hidden),
            x.dtype(),
            x.device(),
        )?),
    })
}

/// Runs a CPU kernel `kernel(x, dims, h0, threads)` on the data of `x` `(T, B, in)` and `h0`
/// (made contiguous) with candle's thread count, and returns its output as `(T, B, D * H)` and
/// its final states as `(states, B, H)`.
fn run_cpu_kernel<T: cpu::SimdFloat>(
    x: &Tensor,
    h0: &Tensor,
    hidden: usize,
    directions: usize,
    states: usize,
    kernel: impl FnOnce(&[T], Dims, &[T], usize) -> (Vec<T>, Vec<T>),
) -> Result<(Tensor, Tensor)> {
    let (seq_len, batch, input) = x.dims3()?;
    let x = x.contiguous()?;
    let h0 = h0.contiguous()?;
    let views = CpuViews::new([&x, &h0].into_iter())?;
    let dims = Dims {
        seq_len,
        batch,
        input,
        hidden,
    };
    let threads = cpu::cpu_threads();
    let (out, hn) = kernel(views.slice::<T>(0)?, dims, views.slice::<T>(1)?, threads);
    Ok((
        Tensor::from_vec(out, (seq_len, batch, directions * hidden), &Device::Cpu)?,
        Tensor::from_vec(hn, (states, batch, hidden), &Device::Cpu)?,
    ))
}

/// Read access to the CPU storage of contiguous tensors, held for the duration of a kernel call.
struct CpuViews<'a> {
    views: Vec<(candle_core::StorageRef<'a>, usize, usize)>,
}

impl<'a> CpuViews<'a> {
    fn new(tensors: impl Iterator<Item = &'a Tensor>) -> Result<Self> {
        let views = tensors
            .map(|t| {
                let (storage, layout) = t.storage_and_layout();
                let (start, end) = layout
                    .contiguous_offsets()
                    .ok_or_else(|| GruError::Internal("expected a contiguous tensor".into()))?;
                Ok((storage, start, end))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { views })
    }

    fn slice<T: WithDType>(&self, i: usize) -> Result<&[T]> {
        let (storage, start, end) = &self.views[i];
        match &**storage {
            Storage::Cpu(cpu) => Ok(&cpu.as_slice::<T>()?[*start..*end]),
            _ => Err(GruError::Internal("expected CPU storage".into())),
        }
    }
}
