//! `gru`: verify PyTorch parity, inspect weight files, run a GRU on saved inputs, benchmark.

mod bench;
mod convert;
mod inspect;
mod run;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gru",
    version,
    about = "PyTorch-trained GRUs on candle: verify, inspect, run, bench"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check reference cases (files or folders of *.case.safetensors) against PyTorch's outputs.
    Verify(verify::Args),
    /// List every GRU / GRUCell in a .safetensors or .pt file.
    Inspect(inspect::Args),
    /// Run a GRU from a weight file on an input tensor and write output and h_n.
    Run(run::Args),
    /// Extract a GRU / GRUCell from a checkpoint into a safetensors file with PyTorch's names.
    Convert(convert::Args),
    /// Time the forward pass on random weights and inputs.
    Bench(bench::Args),
    /// Time candle's matmul on SIZE x SIZE x SIZE (the yardstick for GFLOP/s figures).
    Sgemm(bench::SgemmArgs),
}

/// Where a command takes its GRU from.
#[derive(clap::Args)]
pub struct WeightsArgs {
    /// A .safetensors state_dict, a .pt/.pth checkpoint (plain or a training checkpoint dict), a
    /// TorchScript or torch.export archive, a torch.distributed.checkpoint folder, or a Hugging
    /// Face folder or sharded checkpoint (its *.index.json).
    #[arg(long)]
    weights: std::path::PathBuf,
    /// Module path of the GRU in the file (needed when it holds several), e.g. `encoder.rnn`.
    #[arg(long)]
    prefix: Option<String>,
}

/// Exit code 2: a case or a command could not run (bad input, missing file, ...).
pub const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // --help and --version print in full; a bad argument is one line, exit code 2.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            // clap's message, its possible values and tips folded into one line.
            let text = e.to_string();
            let parts: Vec<&str> = text
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
                .collect();
            eprintln!("{}", parts.join(" "));
            return ExitCode::from(EXIT_ERROR);
        }
    };
    // A panic is a bug, but still gets one line and exit code 2, never a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let msg = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let at = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{at}: {msg}");
    }));
    match std::panic::catch_unwind(|| run(cli)) {
        Ok(code) => code,
        Err(_) => ExitCode::from(EXIT_ERROR),
    }
}

/// Fixes `RAYON_NUM_THREADS` when it is unset (or not a positive number) to the count candle
/// would use: candle 0.11 counts the cores again on every matmul otherwise (it reads
/// `/proc/cpuinfo`: ~20 us a call, more than a streamed frame takes). Called before any thread
/// exists, as `set_var` requires.
fn fix_thread_count() {
    let valid = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .is_some_and(|n| n > 0);
    if !valid {
        let n = candle_core::utils::get_num_threads();
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

fn run(cli: Cli) -> ExitCode {
    fix_thread_count();
    let result = gru_core::check_cpu_level_env()
        .map_err(anyhow::Error::from)
        .and_then(|()| dispatch(cli));
    match result {
        Ok(code) => code,
        Err(e) => {
            // One line, no backtrace: the chain of contexts, outermost first, each cut at its
            // first line (candle appends a backtrace to its errors under RUST_BACKTRACE=1), and
            // a cause already quoted by the error above it not repeated.
            let mut parts: Vec<String> = Vec::new();
            for c in e.chain() {
                let line = c.to_string().lines().next().unwrap_or_default().to_string();
                if !parts.last().is_some_and(|p| p.contains(&line)) {
                    parts.push(line);
                }
            }
            let msg = parts.join(": ");
            eprintln!("error: {msg}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Verify(a) => verify::main(a),
        Command::Inspect(a) => inspect::main(a).map(|()| ExitCode::SUCCESS),
        Command::Run(a) => run::main(a).map(|()| ExitCode::SUCCESS),
        Command::Convert(a) => convert::main(a).map(|()| ExitCode::SUCCESS),
        Command::Bench(a) => bench::main(a).map(|()| ExitCode::SUCCESS),
        Command::Sgemm(a) => bench::sgemm(a).map(|()| ExitCode::SUCCESS),
    }
}

/// `s` with its control characters escaped (`\n`, `\u{1b}`): text from a file (a name, an error
/// quoting one) printed as it is could cut a line or forge one, or drive the terminal.
pub fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The first 8 of `names`, each shown by `show`, joined, and how many more: a file may hold
/// millions of names, and one line must stay readable.
pub fn listed<S: AsRef<str>>(names: &[S], show: impl Fn(&str) -> String) -> String {
    const SHOWN: usize = 8;
    let mut s: Vec<String> = names.iter().take(SHOWN).map(|n| show(n.as_ref())).collect();
    if names.len() > SHOWN {
        s.push(format!("and {} more", names.len() - SHOWN));
    }
    s.join(", ")
}

/// `--dtype`, for clap's `value_parser`: f32, f64, f16, bf16 (and PyTorch's long names).
pub fn dtype_arg(s: &str) -> Result<candle_core::DType, String> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => candle_core::DType::F32,
        "f64" | "float64" | "double" => candle_core::DType::F64,
        "f16" | "float16" | "half" => candle_core::DType::F16,
        "bf16" | "bfloat16" => candle_core::DType::BF16,
        _ => return Err("expected f32, f64, f16 or bf16".into()),
    })
}

/// `--atol` / `--rtol`, for clap's `value_parser`: finite and >= 0, as case metadata must be.
pub fn tolerance_arg(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| "not a number".to_string())?;
    gru_verify::Tolerance::check("the tolerance", v)
}

/// `--device`, for clap's `value_parser`: cpu, cuda[:N], metal[:N] or auto.
pub fn device_arg(s: &str) -> Result<gru_core::DeviceSpec, String> {
    s.parse().map_err(|e: gru_core::GruError| e.to_string())
}

/// The dtype's short name (`f32`), as `--dtype` takes it.
pub fn dtype_name(d: candle_core::DType) -> String {
    format!("{d:?}").to_lowercase()
}

/// `--kernel`: which recurrence implementation runs.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum KernelArg {
    Auto,
    /// The fused per-step kernel.
    Step,
    /// CUDA: one persistent launch per layer.
    Persistent,
    /// The candle-ops recurrence.
    Ops,
}

impl From<KernelArg> for gru_core::Kernel {
    fn from(k: KernelArg) -> Self {
        match k {
            KernelArg::Auto => Self::Auto,
            KernelArg::Step => Self::FusedStep,
            KernelArg::Persistent => Self::Persistent,
            KernelArg::Ops => Self::CandleOps,
        }
    }
}

/// Opens `--device`; `auto` says on stderr what it chose and why.
pub fn open_device(spec: gru_core::DeviceSpec) -> anyhow::Result<candle_core::Device> {
    let (device, note) = spec.open_explained()?;
    if let Some(note) = note {
        eprintln!("{note}");
    }
    Ok(device)
}

/// `--allow-tf32`: let cuBLAS use TF32 for f32 matmuls (faster on Ampere and later, ~1e-3
/// relative error: f32 parity tolerances then fail). Off by default, as in PyTorch.
pub fn set_allow_tf32(allow: bool) {
    #[cfg(feature = "cuda")]
    candle_core::cuda_backend::set_gemm_reduced_precision_f32(allow);
    #[cfg(not(feature = "cuda"))]
    let _ = allow;
}
