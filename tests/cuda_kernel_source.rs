//! The CUDA kernels' own source, tested without a GPU: the exact text NVRTC compiles
//! (`gru_core::kernel_source::CUDA_SOURCE`) is compiled as host C++ with a shim for the CUDA
//! built-ins (`tests/kernel_host/shim.h`) and launched with the CUDA path's launch geometry
//! (`tests/kernel_host/launch.cpp`: one OS thread per CUDA thread for the persistent kernel, whose
//! grid barrier then runs on real atomics, and the cluster kernels with one std::barrier per
//! cluster and stores into peer blocks' shared memory). Every reference case in models/reference runs through
//! the same per-step data flow as the CUDA path, and is compared with PyTorch's numbers.

use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor, WithDType};
use candle_gru::models_dir;
use gru_core::kernel_source::{
    GpuLimits, LayerShape, PersistentPlan, Tuning, CUDA_SOURCE, GATE_BLOCK,
};
use gru_verify::{compare, distance, find_cases, Case, CaseKind, Tolerance};
use gru_weights::WeightFile;

/// The compiler flag that lets contracted multiply-adds be fused instructions on this CPU.
fn host_fma() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("fma") {
        return vec!["-mfma"];
    }
    // aarch64 always has fused multiply-adds; elsewhere they stay separate roundings.
    Vec::new()
}

/// Builds the kernels and the launcher into a shared library in a fresh folder.
fn build_host_kernels() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("gru_kernels.cpp");
    // `GRU_KERNEL_SOURCE=FILE` compiles another version of the source instead (an A/B of a
    // kernel change's accuracy, e.g. `git show REV:crates/gru-core/src/cuda/gru.cu`).
    match std::env::var_os("GRU_KERNEL_SOURCE") {
        Some(other) => std::fs::copy(&other, &src).map(|_| ()).unwrap(),
        None => std::fs::write(&src, CUDA_SOURCE).unwrap(),
    }
    let host = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/kernel_host");
    let lib = dir.path().join("libgru_host_kernels.so");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args([
            "-std=c++20",
            "-O2",
            "-shared",
            "-fPIC",
            "-pthread",
            "-Wall",
            "-Werror",
            // The kernels read floats through float4 / double2, as CUDA code does.
            "-fno-strict-aliasing",
            "-Wno-unknown-pragmas",
            // `a += w * h` as one fused multiply-add, as nvcc compiles it (its default), so that
            // the harness's rounding, and its accuracy figures, are the GPU's.
            "-ffp-contract=fast",
        ])
        .args(host_fma())
        .arg("-I")
        .arg(&host)
        .args(["-include", "shim.h"])
        .arg(&src)
        .arg(host.join("launch.cpp"))
        .arg("-o")
        .arg(&lib)
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ compiler `{cxx}` (set CXX): {e}"));
    assert!(
        out.status.success(),
        "host build of the CUDA source failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dir, lib)
}

type GateFn<T> = unsafe extern "C" fn(
    u32,
    u32,
    *const T,
    *const T,
    *const T,
    *const u32,
    *mut T,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
);
type PersistFn<T> = unsafe extern "C" fn(
    u32,
    u32,
    usize,
    u32,
    *const T,
    *const T,
    *const T,
    *const T,
    *const T,
    *const u32,
    *mut T,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
    i32,
);

/// The compute types of the kernels.
trait Elem: WithDType + Default + std::ops::AddAssign {
    const SUFFIX: &'static str;
    const NAN: Self;
}
impl Elem for f32 {
    const SUFFIX: &'static str = "f32";
    const NAN: Self = f32::NAN;
}
impl Elem for f64 {
    const SUFFIX: &'static str = "f64";
    const NAN: Self = f64::NAN;
}

/// How the recurrence of each layer runs.
#[derive(Debug, Clone, Copy)]
enum Mode {
    /// Per step: `gh = h @ W_hh^T` on the host, then one launch of `gru_gate_*`.
    Step,
    /// One launch of `gru_persist_*` (or `gru_persist_cluster<n>_*`) per layer with the plan
    /// for 132 SMs, `max_smem` bytes of shared memory (`None`: just enough for 2 units per block
    /// without a column split, which forces many blocks and so the grid barrier), clusters or
    /// not, and `tuning`.
    Persistent {
        max_smem: Option<usize>,
        clusters: bool,
        tuning: Tuning,
    },
}

/// One layer's weights (per direction, PyTorch layouts) in compute type.
struct LayerWeights<T> {
    w_ih: Vec<Vec<T>>,
    w_hh: Vec<Vec<T>>,
    b_ih: Vec<Vec<T>>,
    b_hh: Vec<Vec<T>>,
}

fn vec_of<T: Elem>(t: &Tensor) -> Vec<T> {
    t.to_dtype(T::DTYPE)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<T>()
        .unwrap()
}

/// The folded bias `(D * 3H)`: `b_ih + [b_hr, b_hz, 0]` per direction (zeros without biases).
fn folded_bias<T: Elem>(w: &LayerWeights<T>, h: usize) -> Vec<T> {
    let mut bias = Vec::with_capacity(w.w_ih.len() * 3 * h);
    for d in 0..w.w_ih.len() {
        for o in 0..3 * h {
            let mut acc = w.b_ih[d].get(o).copied().unwrap_or_default();
            if o < 2 * h {
                acc += w.b_hh[d].get(o).copied().unwrap_or_default();
            }
            bias.push(acc);
        }
    }
    bias
}

/// `gi` `(T, B, D * 3H)`: `x @ W_ih^T`, plus `bias` `(D * 3H)` when given, as the CUDA path's
/// input projection gives (the per-step path folds the bias in; the persistent kernel adds it).
fn project<T: Elem>(
    x: &[T],
    dims: (usize, usize, usize),
    w: &LayerWeights<T>,
    bias: Option<&[T]>,
    h: usize,
) -> Vec<T> {
    let (t_len, batch, input) = dims;
    let d_n = w.w_ih.len();
    let g = d_n * 3 * h;
    // On a GPU this matmul is cuBLAS's, whose order of summation is its own: one chain over
    // `input` here, or chains of `GRU_PROJECT_CHAIN` columns (each added to the sum before it),
    // to tell the projection's share of a case's error from the kernels'.
    let chain = std::env::var("GRU_PROJECT_CHAIN")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&c| c > 0)
        .unwrap_or(usize::MAX);
    let mut gi = vec![T::default(); t_len * batch * g];
    for row in 0..t_len * batch {
        let xr = &x[row * input..(row + 1) * input];
        for d in 0..d_n {
            for o in 0..3 * h {
                let mut acc = T::default();
                for k0 in (0..input).step_by(chain) {
                    let mut c = T::default();
                    for k in k0..(k0 + chain).min(input) {
                        c += xr[k] * w.w_ih[d][o * input + k];
                    }
                    acc += c;
                }
                if let Some(b) = bias {
                    acc += b[d * 3 * h + o];
                }
                gi[row * g + d * 3 * h + o] = acc;
            }
        }
    }
    gi
}

struct Run<'l, T> {
    gate: libloading::Symbol<'l, GateFn<T>>,
    persist: libloading::Symbol<'l, PersistFn<T>>,
}

impl<T: Elem> Run<'_, T> {
    /// One layer: `x` `(T, B, in)`, `h0` `(D, B, H)` (`None`: zeros, passed to the persistent
    /// kernel as null, as the CUDA path does) -> output `(T, B, D * H)`, h_n `(D, B, H)`.
    #[allow(clippy::type_complexity)]
    fn layer(
        &self,
        mode: Mode,
        x: &[T],
        dims: (usize, usize, usize),
        w: &LayerWeights<T>,
        h0: Option<&[T]>,
        h: usize,
        lengths: Option<&[u32]>,
    ) -> Option<(Vec<T>, Vec<T>)> {
        // A batch without lengths passes null, as the CUDA path does.
        let lengths_ptr = lengths.map_or(std::ptr::null(), |l| l.as_ptr());
        let (t_len, batch, _) = dims;
        let d_n = w.w_ih.len();
        let bias = folded_bias(w, h);
        let g = d_n * 3 * h;
        let bh = batch * h;
        let b_hn: Vec<Vec<T>> = (0..d_n)
            .map(|d| match w.b_hh[d].len() {
                0 => vec![T::default(); h],
                _ => w.b_hh[d][2 * h..].to_vec(),
            })
            .collect();
        let mut out = vec![T::default(); t_len * batch * d_n * h];
        let mut h_n = vec![T::default(); d_n * bh];
        match mode {
            Mode::Step => {
                let gi = project(x, dims, w, Some(&bias), h);
                let zeros = vec![T::default(); d_n * bh];
                let h0 = h0.unwrap_or(&zeros);
                for d in 0..d_n {
                    // The fused path's buffer: (T + 2, B, H), h0 in row T.
                    let mut buf = vec![T::default(); (t_len + 2) * bh];
                    buf[t_len * bh..(t_len + 1) * bh].copy_from_slice(&h0[d * bh..(d + 1) * bh]);
                    let mut parity = 0;
                    for s in 0..t_len {
                        let t = if d == 1 { t_len - 1 - s } else { s };
                        let hrow = (t_len + parity) * bh;
                        let mut gh = vec![T::default(); batch * 3 * h];
                        for b in 0..batch {
                            for o in 0..3 * h {
                                let mut acc = T::default();
                                for k in 0..h {
                                    acc += buf[hrow + b * h + k] * w.w_hh[d][o * h + k];
                                }
                                gh[b * 3 * h + o] = acc;
                            }
                        }
                        let grid = bh.div_ceil(GATE_BLOCK) as u32;
                        let ints = [batch, h, g, d * 3 * h, t, t_len, parity].map(|v| v as i32);
                        // SAFETY: the buffers have the sizes the kernel indexes (as on the GPU).
                        unsafe {
                            (self.gate)(
                                grid,
                                GATE_BLOCK as u32,
                                gi.as_ptr(),
                                gh.as_ptr(),
                                b_hn[d].as_ptr(),
                                lengths_ptr,
                                buf.as_mut_ptr(),
                                ints[0],
                                ints[1],
                                ints[2],
                                ints[3],
                                ints[4],
                                ints[5],
                                ints[6],
                            )
                        };
                        parity = 1 - parity;
                    }
                    for t in 0..t_len {
                        for b in 0..batch {
                            let src = &buf[t * bh + b * h..t * bh + (b + 1) * h];
                            let at = (t * batch + b) * d_n * h + d * h;
                            out[at..at + h].copy_from_slice(src);
                        }
                    }
                    let last = (t_len + parity) * bh;
                    h_n[d * bh..(d + 1) * bh].copy_from_slice(&buf[last..last + bh]);
                }
            }
            Mode::Persistent {
                max_smem,
                clusters,
                tuning,
            } => {
                let size = std::mem::size_of::<T>();
                let gpu = GpuLimits {
                    sm_count: 132,
                    max_smem: max_smem
                        .unwrap_or_else(|| PersistentPlan::smem_bytes(h, batch, 2, 1, false, size)),
                    max_threads: 1024,
                    cluster_max_threads: if clusters { 1024 } else { 0 },
                };
                let shape = LayerShape {
                    seq_len: t_len,
                    batch,
                    hidden: h,
                    directions: d_n,
                    elem_size: size,
                };
                // `None`: a layer past the mode's limits (only cases of another folder).
                let plan = PersistentPlan::plan(shape, gpu, tuning)?;
                if let Some(n) = tuning.cluster {
                    assert_eq!(plan.cluster, n, "{plan:?}");
                }
                if let Some(k) = tuning.k_split {
                    assert_eq!(plan.k_split, k.min(h.div_ceil(4)), "{plan:?}");
                }
                let gi = project(x, dims, w, None, h);
                let dh = d_n * h;
                // Output, 2 state rows, h_n, one element per barrier counter. Uninitialised on
                // the GPU but for the counters: NaN here, so that any element the kernel fails
                // to write shows in the comparison.
                let rows = (t_len + 2) * batch * dh;
                let mut buf = vec![T::NAN; rows + d_n * bh + d_n];
                buf[rows + d_n * bh..].fill(T::default());
                let w_hh: Vec<T> = w.w_hh.concat();
                let b_hn: Vec<T> = b_hn.concat();
                let ints = [
                    t_len,
                    batch,
                    h,
                    d_n,
                    plan.units,
                    plan.blocks_per_direction,
                    plan.k_split,
                    usize::from(plan.async_exchange),
                ]
                .map(|v| v as i32);
                // SAFETY: as above.
                unsafe {
                    (self.persist)(
                        plan.grid(d_n) as u32,
                        plan.threads as u32,
                        plan.smem_bytes,
                        plan.cluster as u32,
                        gi.as_ptr(),
                        w_hh.as_ptr(),
                        b_hn.as_ptr(),
                        bias.as_ptr(),
                        h0.map_or(std::ptr::null(), <[T]>::as_ptr),
                        lengths_ptr,
                        buf.as_mut_ptr(),
                        ints[0],
                        ints[1],
                        ints[2],
                        ints[3],
                        ints[4],
                        ints[5],
                        ints[6],
                        ints[7],
                    )
                };
                // Only the grid barrier counts arrivals.
                let barriers = if plan.blocks_per_direction > 1 && plan.cluster == 0 {
                    (t_len - 1) * plan.blocks_per_direction
                } else {
                    0
                };
                for d in 0..d_n {
                    let cell = &buf[rows + d_n * bh + d];
                    // SAFETY: the kernel keeps the counter in the element's first 4 bytes.
                    let count = unsafe { *(cell as *const T as *const u32) };
                    assert_eq!(count as usize, barriers, "{plan:?}");
                }
                out.copy_from_slice(&buf[..t_len * batch * dh]);
                h_n.copy_from_slice(&buf[rows..rows + d_n * bh]);
            }
        }
        Some((out, h_n))
    }
}

/// Runs `case` through the host-compiled kernels in `mode`; returns the worst |difference|.
fn run_case<T: Elem>(lib: &libloading::Library, case: &Case, mode: Mode) -> Option<f64> {
    // SAFETY: the symbols have the signatures launch.cpp defines.
    let run = unsafe {
        Run::<T> {
            gate: lib
                .get(format!("launch_gate_{}", T::SUFFIX).as_bytes())
                .unwrap(),
            persist: lib
                .get(format!("launch_persist_{}", T::SUFFIX).as_bytes())
                .unwrap(),
        }
    };
    let file = WeightFile::open(&case.weights).unwrap();
    let prefix = case.prefix.as_deref();
    let (named, hidden, layers, dirs) = match case.kind {
        CaseKind::Cell => {
            let (c, _) = file.gru_cell(prefix, None, &Device::Cpu).unwrap();
            let named: Vec<(String, Tensor)> = c
                .named_tensors()
                .into_iter()
                .map(|(n, t)| (format!("{n}_l0"), t))
                .collect();
            (named, c.hidden_size(), 1, 1)
        }
        CaseKind::Gru => {
            let (g, _) = file.gru(prefix, None, &Device::Cpu).unwrap();
            let c = *g.config();
            (
                g.named_tensors(),
                c.hidden_size,
                c.num_layers,
                c.num_directions(),
            )
        }
    };
    let get = |name: String| -> Vec<T> {
        named
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| vec_of::<T>(t))
            .unwrap_or_default()
    };
    // Input as (T, B, I), time-major.
    let mut x = case.input.clone();
    let batched = match case.kind {
        CaseKind::Cell => {
            x = x.unsqueeze(0).unwrap();
            x.rank() == 3
        }
        CaseKind::Gru => x.rank() == 3,
    };
    if !batched {
        x = x.unsqueeze(1).unwrap();
    } else if case.batch_first {
        x = x.transpose(0, 1).unwrap();
    }
    let (t_len, batch, input) = x.dims3().unwrap();
    let h = hidden;
    let h0: Option<Vec<T>> = case.h0.as_ref().map(vec_of);
    let lengths: Option<Vec<u32>> = case
        .lengths
        .as_ref()
        .map(|l| l.iter().map(|&v| v as u32).collect());
    let mut x: Vec<T> = vec_of(&x.contiguous().unwrap());
    let mut in_size = input;
    let mut h_n = Vec::new();
    for k in 0..layers {
        let suffix = |d: usize| format!("_l{k}{}", if d == 1 { "_reverse" } else { "" });
        let w = LayerWeights {
            w_ih: (0..dirs)
                .map(|d| get(format!("weight_ih{}", suffix(d))))
                .collect(),
            w_hh: (0..dirs)
                .map(|d| get(format!("weight_hh{}", suffix(d))))
                .collect(),
            b_ih: (0..dirs)
                .map(|d| get(format!("bias_ih{}", suffix(d))))
                .collect(),
            b_hh: (0..dirs)
                .map(|d| get(format!("bias_hh{}", suffix(d))))
                .collect(),
        };
        let h0_k = h0
            .as_deref()
            .map(|h0| &h0[k * dirs * batch * h..(k + 1) * dirs * batch * h]);
        let (out, hn) = run.layer(
            mode,
            &x,
            (t_len, batch, in_size),
            &w,
            h0_k,
            h,
            lengths.as_deref(),
        )?;
        x = out;
        in_size = dirs * h;
        h_n.extend(hn);
    }
    // Back to the case's layouts and dtype (half types round once at the end, as on the GPU).
    let dtype = case.input.dtype();
    let mut output = Tensor::from_vec(x, (t_len, batch, dirs * h), &Device::Cpu).unwrap();
    let mut h_n = Tensor::from_vec(h_n, (layers * dirs, batch, h), &Device::Cpu).unwrap();
    if case.batch_first && batched {
        output = output.transpose(0, 1).unwrap();
    }
    if !batched {
        output = output.squeeze(1).unwrap();
        h_n = h_n.squeeze(1).unwrap();
    }
    if case.kind == CaseKind::Cell {
        output = h_n.squeeze(0).unwrap();
    }
    let output = output.to_dtype(dtype).unwrap();
    let h_n = h_n.to_dtype(dtype).unwrap();
    let base = Tolerance::for_dtype(dtype);
    let tol = Tolerance::new(
        case.atol.unwrap_or(base.atol),
        case.rtol.unwrap_or(base.rtol),
    );
    let mut worst: f64 = 0.0;
    let mut cmps = vec![compare("output", &output, &case.output, tol).unwrap()];
    if let (Some(r), CaseKind::Gru) = (&case.h_n, case.kind) {
        cmps.push(compare("h_n", &h_n, r, tol).unwrap());
    }
    // A case carrying its exact answer passes as `gru verify` passes it: within the tolerance,
    // or at least as close to the exact answer as PyTorch's f32 (the drift of a trained model).
    let exact = case.exact.as_ref().map(|x| {
        let error = |out: &Tensor, h: Option<&Tensor>| {
            let mut e = distance(out, &x.output).unwrap();
            if let (Some(h), Some(xh), CaseKind::Gru) = (h, &x.h_n, case.kind) {
                e = e.max(distance(h, xh).unwrap());
            }
            e
        };
        (
            error(&output, Some(&h_n)),
            error(&case.output, case.h_n.as_ref()),
        )
    });
    for c in &cmps {
        let closer = exact.is_some_and(|(ours, torch)| ours <= torch + tol.atol);
        assert!(c.passed || closer, "{} ({mode:?}): {c:?}", case.name);
        worst = worst.max(c.max_abs);
    }
    // (The f64 kernels' extra runs on f32 cases are not the f32 kernels' accuracy.)
    if let (Some((ours, torch)), true) = (exact, T::DTYPE == dtype) {
        eprintln!(
            "{:<28} {mode:?}: error vs exact {:.2} of PyTorch's",
            case.name,
            ours / torch
        );
        ACCURACY.with(|a| a.borrow_mut().push((format!("{mode:?}"), ours / torch)));
    }
    Some(worst)
}

thread_local! {
    /// Per launch mode, `max |kernel - exact| / max |PyTorch f32 - exact|` of each case that
    /// carries its exact answer.
    static ACCURACY: std::cell::RefCell<Vec<(String, f64)>> = const {
        std::cell::RefCell::new(Vec::new())
    };
}

#[test]
fn cuda_kernel_source_matches_pytorch_on_every_reference_case() {
    let (_dir, lib_path) = build_host_kernels();
    // SAFETY: a library this test just built; its initialisers do nothing.
    let lib = unsafe { libloading::Library::new(&lib_path) }.unwrap();
    // `GRU_KERNEL_CASES=DIR` runs another folder of cases instead (e.g. one made by
    // scripts/make_random_cases.py: a differential fuzz of the kernels against PyTorch).
    let other = std::env::var_os("GRU_KERNEL_CASES").map(PathBuf::from);
    let least = if other.is_some() { 1 } else { 20 };
    let dir = other.unwrap_or_else(|| models_dir().join("reference"));
    let cases = find_cases(&[dir]);
    assert!(
        cases.len() >= least,
        "reference cases missing: {}",
        cases.len()
    );
    let h100 = Some(227 * 1024);
    let unlimited = Some(64 << 20);
    let tuned = |cluster, k_split| Tuning {
        cluster,
        k_split,
        ..Tuning::default()
    };
    let modes = [
        Mode::Step,
        // The plan's choices without clusters: one block per direction for these sizes.
        Mode::Persistent {
            max_smem: h100,
            clusters: false,
            tuning: Tuning::default(),
        },
        // Many blocks and the grid barrier, with and without a column split.
        Mode::Persistent {
            max_smem: None,
            clusters: false,
            tuning: Tuning::default(),
        },
        Mode::Persistent {
            max_smem: h100,
            clusters: false,
            tuning: Tuning {
                items: 6,
                ..tuned(None, Some(3))
            },
        },
        // Clusters of 2, 4 and 8 blocks (units past H in the last blocks for small H), with
        // column splits of 1, 3 (uneven slices) and the plan's choice; shared memory without
        // limit, so that every case runs in every cluster size (the host has no SM to fill).
        Mode::Persistent {
            max_smem: unlimited,
            clusters: true,
            tuning: tuned(Some(2), Some(1)),
        },
        Mode::Persistent {
            max_smem: unlimited,
            clusters: true,
            tuning: tuned(Some(4), Some(3)),
        },
        Mode::Persistent {
            max_smem: unlimited,
            clusters: true,
            tuning: tuned(Some(8), None),
        },
        // The st.async exchange on mbarriers, in clusters of 4 and 8.
        Mode::Persistent {
            max_smem: unlimited,
            clusters: true,
            tuning: Tuning {
                async_exchange: true,
                ..tuned(Some(4), Some(3))
            },
        },
        Mode::Persistent {
            max_smem: unlimited,
            clusters: true,
            tuning: Tuning {
                async_exchange: true,
                ..tuned(Some(8), None)
            },
        },
    ];
    // `GRU_KERNEL_MODES=0,1` runs only those launch modes (by index above): the emulated
    // threads make a sweep over large cases slow.
    let picked: Vec<Mode> = match std::env::var("GRU_KERNEL_MODES") {
        Ok(list) => list
            .split(',')
            .map(|i| {
                modes[i
                    .trim()
                    .parse::<usize>()
                    .expect("GRU_KERNEL_MODES: indices")]
            })
            .collect(),
        Err(_) => modes.to_vec(),
    };
    let mut ran = 0;
    for path in &cases {
        let case = Case::load(path).unwrap();
        for &mode in &picked {
            let worst = match case.input.dtype() {
                DType::F64 => run_case::<f64>(&lib, &case, mode),
                _ => run_case::<f32>(&lib, &case, mode),
            };
            match worst {
                Some(worst) => eprintln!("{:<28} {mode:?}: max |diff| {worst:.2e}", case.name),
                None if least == 1 => eprintln!("{:<28} {mode:?}: does not fit", case.name),
                None => panic!(
                    "{}: the reference cases fit the persistent kernel",
                    case.name
                ),
            }
            ran += 1;
        }
        // The f64 kernels on the other cases' batch sizes too (the f64 cases have only batches
        // of 2 and 3; the exchange copies 4 at a time when B is a multiple of 4): computed in
        // f64, they meet the f32 references' tolerance.
        if case.input.dtype() != DType::F64 && picked.len() == modes.len() {
            let mode = modes[2];
            if let Some(worst) = run_case::<f64>(&lib, &case, mode) {
                eprintln!("{:<28} f64 {mode:?}: max |diff| {worst:.2e}", case.name);
            }
        }
    }
    assert_eq!(ran, cases.len() * picked.len());
    // The kernels' accuracy against the exact answer (cases from `scripts/accuracy.py
    // --cases-out DIR`, run with GRU_KERNEL_CASES=DIR): the ratio to PyTorch's own error.
    ACCURACY.with(|a| {
        let a = a.borrow();
        let mut by_mode: Vec<&str> = a.iter().map(|(m, _)| m.as_str()).collect();
        by_mode.sort();
        by_mode.dedup();
        for mode in by_mode {
            let mut r: Vec<f64> = a.iter().filter(|(m, _)| m == mode).map(|x| x.1).collect();
            r.sort_by(f64::total_cmp);
            eprintln!(
                "accuracy vs exact, {} cases, {mode}: median ratio {:.2}, worst {:.2}",
                r.len(),
                r[r.len() / 2],
                r[r.len() - 1]
            );
        }
    });
}
