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
    /// A .safetensors state_dict or a .pt/.pth checkpoint (plain or a training checkpoint dict).
    #[arg(long)]
    weights: std::path::PathBuf,
    /// Module path of the GRU in the file (needed when it holds several), e.g. `encoder.rnn`.
    #[arg(long)]
    prefix: Option<String>,
}

/// Exit code 2: a case or a command could not run (bad input, missing file, ...).
pub const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
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

fn run(cli: Cli) -> ExitCode {
    let result = match cli.command {
        Command::Verify(a) => verify::main(a),
        Command::Inspect(a) => inspect::main(a).map(|()| ExitCode::SUCCESS),
        Command::Run(a) => run::main(a).map(|()| ExitCode::SUCCESS),
        Command::Convert(a) => convert::main(a).map(|()| ExitCode::SUCCESS),
        Command::Bench(a) => bench::main(a).map(|()| ExitCode::SUCCESS),
        Command::Sgemm(a) => bench::sgemm(a).map(|()| ExitCode::SUCCESS),
    };
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

/// Parses `--dtype`.
pub fn parse_dtype(s: &str) -> anyhow::Result<candle_core::DType> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" | "float" => candle_core::DType::F32,
        "f64" | "float64" | "double" => candle_core::DType::F64,
        "f16" | "float16" | "half" => candle_core::DType::F16,
        "bf16" | "bfloat16" => candle_core::DType::BF16,
        other => anyhow::bail!("--dtype `{other}`: expected f32, f64, f16 or bf16"),
    })
}

/// Parses `--kernel`.
pub fn parse_kernel(s: &str) -> anyhow::Result<gru_core::Kernel> {
    use gru_core::Kernel;
    Ok(match s {
        "auto" => Kernel::Auto,
        "step" => Kernel::FusedStep,
        "persistent" => Kernel::Persistent,
        "ops" => Kernel::CandleOps,
        other => anyhow::bail!(
            "--kernel `{}`: expected auto, step, persistent or ops",
            other.escape_debug()
        ),
    })
}

/// Parses `--device`; `auto` says on stderr what it chose and why.
pub fn parse_device(s: &str) -> anyhow::Result<candle_core::Device> {
    let (device, note) = s.parse::<gru_core::DeviceSpec>()?.open_explained()?;
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
