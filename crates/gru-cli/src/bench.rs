//! `gru bench`: median / min / max milliseconds per forward on seeded random weights and inputs,
//! GFLOP/s and peak memory, for this crate's kernels or candle-nn's GRU as a baseline.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::bail;
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;
use gru_core::{Gru, GruConfig, Kernel};

/// `--impl`: the implementation `gru bench` times.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Impl {
    /// candle-gru, `Kernel::Auto`.
    Ours,
    /// candle-gru, the fused per-step kernel.
    OursStep,
    /// candle-gru, the persistent kernel (CUDA).
    OursPersistent,
    /// candle-gru, the candle-ops recurrence.
    OursOps,
    /// candle-nn's rnn::GRU, layers stacked by hand (unidirectional, fixed length).
    CandleNn,
    /// candle-gru on the same weights quantized as `quantize_dynamic(dtype=torch.qint8)` does
    /// (per-tensor symmetric int8; inputs quantized per call): the quantized GRU's kernel.
    OursInt8,
    /// The same with `dtype=torch.float16` (f16 weights, f32 arithmetic).
    OursFp16,
}

impl Impl {
    /// The name `--impl` takes (and the JSON reports).
    fn name(self) -> String {
        use clap::ValueEnum;
        self.to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }
}

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    input_size: usize,
    #[arg(long)]
    hidden_size: usize,
    #[arg(long, default_value_t = 1)]
    num_layers: usize,
    #[arg(long)]
    bidirectional: bool,
    #[arg(long)]
    seq_len: usize,
    #[arg(long)]
    batch: usize,
    /// Lengths drawn uniformly in [T/2, T] (packed input).
    #[arg(long)]
    varlen: bool,
    /// Stream the sequence one frame per call (`forward_chunk` with carried state, as a
    /// real-time service does); reports the time per frame too.
    #[arg(long)]
    stream: bool,
    /// Small f32 layers (hidden up to 128, batch x hidden up to 512) compute their steps in f32,
    /// not in f64 rounded to f32 per step (`Gru::with_wide_steps(false)`): to time both.
    #[arg(long)]
    f32_steps: bool,
    /// cpu, cuda, cuda:N, metal, metal:N or auto.
    #[arg(long, default_value = "cpu", value_parser = crate::device_arg)]
    device: gru_core::DeviceSpec,
    #[arg(long, default_value = "f32", value_parser = crate::dtype_arg)]
    dtype: candle_core::DType,
    /// Threads for the matmuls (sets RAYON_NUM_THREADS); default: all cores.
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// The implementation to time.
    #[arg(long = "impl", value_enum, default_value_t = Impl::Ours)]
    implementation: Impl,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long)]
    json: bool,
    /// Let cuBLAS use TF32 for f32 matmuls (CUDA; off by default, as in PyTorch).
    #[arg(long)]
    allow_tf32: bool,
    /// CUDA: turn off the per-buffer event tracking of candle's CUDA context before anything is
    /// allocated (sound with candle's single stream), to measure what it costs per forward.
    #[arg(long)]
    no_event_tracking: bool,
}

/// `--no-event-tracking`: an error on any device but CUDA.
fn disable_event_tracking(device: &Device) -> anyhow::Result<()> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = device {
        // SAFETY: called before this process allocates anything on the device, and everything
        // here runs on candle's one stream, so no cross-stream ordering is lost.
        unsafe { d.disable_event_tracking() };
        return Ok(());
    }
    bail!("--no-event-tracking: only for a CUDA device, not {device:?}")
}

/// xorshift64*: reproducible without a dependency, uniform in [-1, 1).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((v >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn tensor(&mut self, shape: &[usize], scale: f32) -> candle_core::Result<Tensor> {
        let n = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| self.next() * scale).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }
}

/// The random float weights as `quantize_dynamic` quantizes them: int8 per-tensor symmetric
/// (`MinMaxObserver(qint8, per_tensor_symmetric)`: scale = max|w| / 127.5, values
/// `clamp(rne(w * (1 / scale)), -128, 127)`, zero point 0) with `reduce_range`, or f16 values.
fn quantize(
    c: &GruConfig,
    sd: &HashMap<String, Tensor>,
    fp16: bool,
) -> anyhow::Result<gru_core::QuantizedGruWeights> {
    use gru_core::{ParamNames, QuantizedLinear, WeightScheme};
    let linear = |w: &str, b: &str| -> anyhow::Result<QuantizedLinear> {
        let w = &sd[w];
        let (out, input) = w.dims2()?;
        let v = w.flatten_all()?.to_vec1::<f32>()?;
        let bias = sd.get(b).map(|b| b.to_vec1::<f32>()).transpose()?;
        if fp16 {
            let weight = v.iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
            return Ok(QuantizedLinear::Float16 {
                weight,
                out,
                input,
                bias,
            });
        }
        let amax = v.iter().fold(0.0f32, |m, x| m.max(x.abs()));
        let scale = (amax / 127.5).max(f32::EPSILON);
        let inv = 1.0 / scale;
        let weight = v
            .iter()
            .map(|&x| (x * inv).round_ties_even().clamp(-128.0, 127.0) as i8)
            .collect();
        Ok(QuantizedLinear::Int8 {
            weight,
            out,
            input,
            scheme: WeightScheme::PerTensor {
                scale,
                zero_point: 0,
            },
            bias,
        })
    };
    let layers = (0..c.num_layers)
        .map(|k| {
            (0..c.num_directions())
                .map(|d| {
                    let n = ParamNames::gru(k, d);
                    Ok((linear(&n.w_ih, &n.b_ih)?, linear(&n.w_hh, &n.b_hh)?))
                })
                .collect::<anyhow::Result<Vec<_>>>()
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(gru_core::QuantizedGruWeights {
        layers,
        reduce_range: true,
    })
}

/// PyTorch's initialisation, U(-1/sqrt(H), 1/sqrt(H)), under PyTorch's names.
fn random_state_dict(c: &GruConfig, rng: &mut Rng) -> candle_core::Result<HashMap<String, Tensor>> {
    let k = 1.0 / (c.hidden_size as f32).sqrt();
    let g = c.gate_size();
    let mut m = HashMap::new();
    for l in 0..c.num_layers {
        for sfx in if c.bidirectional {
            vec!["", "_reverse"]
        } else {
            vec![""]
        } {
            m.insert(
                format!("weight_ih_l{l}{sfx}"),
                rng.tensor(&[g, c.layer_input_size(l)], k)?,
            );
            m.insert(
                format!("weight_hh_l{l}{sfx}"),
                rng.tensor(&[g, c.hidden_size], k)?,
            );
            m.insert(format!("bias_ih_l{l}{sfx}"), rng.tensor(&[g], k)?);
            m.insert(format!("bias_hh_l{l}{sfx}"), rng.tensor(&[g], k)?);
        }
    }
    Ok(m)
}

fn peak_rss_reset() {
    // Writing 5 resets the peak-RSS counter (VmHWM) on Linux; elsewhere the number is cumulative.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

fn peak_rss_mb() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn main(a: Args) -> anyhow::Result<()> {
    crate::set_allow_tf32(a.allow_tf32);
    if let Some(n) = a.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        // Read by candle's matmul and by rayon's global pool, which starts lazily after this.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    if a.stream && (a.bidirectional || a.varlen) {
        bail!("--stream: a bidirectional or variable-length GRU cannot stream frame by frame");
    }
    if a.stream && a.implementation == Impl::CandleNn {
        bail!("--stream: not measured for candle-nn's GRU");
    }
    if a.seq_len == 0 || a.batch == 0 || a.iters == 0 {
        bail!("--seq-len, --batch and --iters must be at least 1");
    }
    if a.iters > MAX_ITERS || a.warmup > MAX_ITERS {
        bail!("--iters and --warmup must be at most {MAX_ITERS}");
    }
    let config = GruConfig {
        input_size: a.input_size,
        hidden_size: a.hidden_size,
        num_layers: a.num_layers,
        bidirectional: a.bidirectional,
        ..GruConfig::default()
    };
    config.validate()?;
    // What the run holds at once, in f64 so that no size wraps: the f32 input and weights as
    // generated, each layer's output and gate pre-activations.
    let (t, b, i, h) = (
        a.seq_len as f64,
        a.batch as f64,
        a.input_size as f64,
        a.hidden_size as f64,
    );
    let d = config.num_directions() as f64;
    let layers = a.num_layers as f64;
    let bytes = 4.0 * t * b * i
        + 4.0 * layers * d * 3.0 * h * (i.max(d * h) + h + 2.0)
        + 8.0 * t * b * d * 4.0 * h;
    check_budget(
        "--seq-len x --batch x --input-size/--hidden-size x --num-layers",
        bytes,
    )?;
    let device = crate::open_device(a.device)?;
    if a.no_event_tracking {
        disable_event_tracking(&device)?;
    }
    let dtype = a.dtype;
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ a.seed.wrapping_mul(0x1000_0001));
    let sd = random_state_dict(&config, &mut rng)?;
    let x = rng
        .tensor(&[a.seq_len, a.batch, a.input_size], 1.0)?
        .to_dtype(dtype)?
        .to_device(&device)?;
    let lengths: Option<Vec<usize>> = a.varlen.then(|| {
        let lo = a.seq_len.div_ceil(2).max(1);
        (0..a.batch)
            .map(|_| {
                let u = (rng.next() + 1.0) / 2.0;
                (lo + (u * (a.seq_len - lo + 1) as f32) as usize).min(a.seq_len)
            })
            .collect()
    });

    let quantized = matches!(a.implementation, Impl::OursInt8 | Impl::OursFp16);
    if quantized && (!device.is_cpu() || dtype != candle_core::DType::F32) {
        bail!("--impl ours-int8/ours-fp16: a quantized GRU runs in f32 on the CPU");
    }
    let mut forward: Box<dyn FnMut() -> anyhow::Result<()>> = match a.implementation {
        Impl::Ours
        | Impl::OursOps
        | Impl::OursStep
        | Impl::OursPersistent
        | Impl::OursInt8
        | Impl::OursFp16 => {
            let gru = if quantized {
                Gru::from_quantized(
                    config,
                    quantize(&config, &sd, a.implementation == Impl::OursFp16)?,
                )?
            } else {
                let vb = VarBuilder::from_tensors(sd, dtype, &device);
                let kernel = match a.implementation {
                    Impl::Ours => Kernel::Auto,
                    Impl::OursStep => Kernel::FusedStep,
                    Impl::OursPersistent => Kernel::Persistent,
                    _ => Kernel::CandleOps,
                };
                Gru::new(config, vb)?
                    .with_kernel(kernel)
                    .with_wide_steps(!a.f32_steps)?
            };
            let lengths = lengths.clone();
            if a.stream {
                let frames = (0..a.seq_len)
                    .map(|t| x.narrow(0, t, 1))
                    .collect::<candle_core::Result<Vec<_>>>()?;
                Box::new(move || {
                    let mut state = gru_core::GruState::new();
                    for frame in &frames {
                        let out = gru.forward_chunk(frame, &mut state)?;
                        out.device().synchronize()?;
                    }
                    Ok(())
                })
            } else {
                Box::new(move || {
                    let (out, _) = match &lengths {
                        Some(l) => gru.forward_with_lengths(&x, l, None)?,
                        None => gru.forward(&x, None)?,
                    };
                    out.device().synchronize()?;
                    Ok(())
                })
            }
        }
        Impl::CandleNn => {
            if a.bidirectional || a.varlen {
                bail!("candle-nn's GRU has no bidirectional or variable-length mode");
            }
            // candle-nn's GRU reads only the `_l0` names: give each layer its own renamed map.
            let layers = (0..a.num_layers)
                .map(|l| {
                    let m: HashMap<String, Tensor> =
                        ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
                            .iter()
                            .map(|n| (format!("{n}_l0"), sd[&format!("{n}_l{l}")].clone()))
                            .collect();
                    let vb = VarBuilder::from_tensors(m, dtype, &device);
                    candle_nn::rnn::gru(
                        config.layer_input_size(l),
                        a.hidden_size,
                        candle_nn::rnn::GRUConfig::default(),
                        vb,
                    )
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            // candle-nn's GRU wants (batch, seq, features).
            let xb = x.transpose(0, 1)?.contiguous()?;
            Box::new(move || {
                use candle_nn::rnn::RNN;
                let mut input = xb.clone();
                for layer in &layers {
                    let states = layer.seq(&input)?;
                    // states_to_tensor concatenates to (B, T * H) (candle issue #1723).
                    let (b, t, _) = input.dims3()?;
                    input = layer.states_to_tensor(&states)?.reshape((b, t, ()))?;
                }
                input.device().synchronize()?;
                Ok(())
            })
        }
    };

    for _ in 0..a.warmup {
        forward()?;
    }
    peak_rss_reset();
    let mut times = Vec::with_capacity(a.iters);
    for _ in 0..a.iters {
        let t0 = Instant::now();
        forward()?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let flops: f64 = (0..a.num_layers)
        .map(|l| {
            let d = config.num_directions() as f64;
            d * 2.0
                * a.seq_len as f64
                * a.batch as f64
                * config.gate_size() as f64
                * (config.layer_input_size(l) as f64 + a.hidden_size as f64)
        })
        .sum();
    let gflops = flops / (median * 1e-3) / 1e9;
    // What the kernel really ran with (candle's own count may differ: it is re-read per call).
    let threads = gru_core::cpu_threads();
    let level = gru_core::cpu_level();
    let frame_us = a.stream.then(|| median * 1e3 / a.seq_len as f64);
    let peak = peak_rss_mb();
    let implementation = a.implementation.name();
    let dtype_name = crate::dtype_name(a.dtype);
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "impl": implementation,
                "input_size": a.input_size, "hidden_size": a.hidden_size,
                "num_layers": a.num_layers, "bidirectional": a.bidirectional,
                "seq_len": a.seq_len, "batch": a.batch, "varlen": a.varlen, "stream": a.stream,
                "f32_steps": a.f32_steps, "frame_us": frame_us, "cpu_level": level,
                "device": gru_core::device_name(&device), "dtype": dtype_name, "threads": threads,
                "iters": a.iters,
                "median_ms": median, "min_ms": times[0], "max_ms": times[times.len() - 1],
                "gflops": gflops, "peak_mem_mb": peak,
                "event_tracking": !a.no_event_tracking,
            })
        );
    } else {
        println!(
            "{} I={} H={} L={} bi={} T={} B={} varlen={} {} {} threads={} level={}: median {:.3} ms (min {:.3}, max {:.3}){}, {:.1} GFLOP/s, peak RSS {}",
            implementation, a.input_size, a.hidden_size, a.num_layers, a.bidirectional,
            a.seq_len, a.batch, a.varlen, gru_core::device_name(&device), dtype_name, threads,
            level, median, times[0], times[times.len() - 1],
            frame_us.map(|f| format!(", {f:.2} us per streamed frame")).unwrap_or_default(),
            gflops,
            peak.map(|p| format!("{p:.1} MB")).unwrap_or("n/a".into())
        );
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct SgemmArgs {
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long)]
    json: bool,
}

/// Most timed (or warm-up) iterations: more is a mistake, not a benchmark.
const MAX_ITERS: usize = 1_000_000;

/// Largest memory a benchmark may ask for.
const BENCH_BUDGET_BYTES: f64 = 8.0 * (1u64 << 30) as f64;

/// Refuses sizes that would need more than `BENCH_BUDGET_BYTES`, before anything is allocated.
fn check_budget(what: &str, bytes: f64) -> anyhow::Result<()> {
    if bytes.is_nan() || bytes > BENCH_BUDGET_BYTES {
        bail!(
            "{what}: these sizes need {:.3e} bytes, more than the {} GiB a benchmark may use",
            bytes,
            BENCH_BUDGET_BYTES / (1u64 << 30) as f64
        );
    }
    Ok(())
}

pub fn sgemm(a: SgemmArgs) -> anyhow::Result<()> {
    if let Some(n) = a.threads {
        if n == 0 {
            bail!("--threads must be at least 1");
        }
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let n = a.size;
    if n == 0 {
        bail!("--size must be at least 1");
    }
    check_budget("--size", 3.0 * 4.0 * (n as f64) * (n as f64))?;
    if a.iters > MAX_ITERS {
        bail!("--iters must be at most {MAX_ITERS}");
    }
    let x = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    let y = Tensor::randn(0f32, 1.0, (n, n), &Device::Cpu)?;
    x.matmul(&y)?;
    let mut times = Vec::new();
    for _ in 0..a.iters.max(1) {
        let t0 = Instant::now();
        std::hint::black_box(x.matmul(&y)?);
        times.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let gflops = 2.0 * (n as f64).powi(3) / (median * 1e-3) / 1e9;
    if a.json {
        println!(
            "{}",
            serde_json::json!({"impl": "sgemm", "size": n, "median_ms": median, "gflops": gflops,
                               "threads": gru_core::cpu_threads()})
        );
    } else {
        println!("sgemm {n}^3: median {median:.3} ms, {gflops:.1} GFLOP/s");
    }
    Ok(())
}
