//! `gru convert`: extract one GRU / GRUCell from a checkpoint (.pt or safetensors) into a
//! safetensors file with PyTorch's names, loadable by `nn.GRU.load_state_dict`.

use std::path::PathBuf;

use anyhow::Context;

use gru_weights::{save_gru, save_gru_cell, WeightFile};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: crate::WeightsArgs,
    /// Take the GRUCell instead of the GRU.
    #[arg(long)]
    cell: bool,
    /// Output safetensors file.
    #[arg(long)]
    out: PathBuf,
    /// Module path to write the tensors under (default: none, as `gru.state_dict()` has them).
    #[arg(long, default_value = "")]
    out_prefix: String,
    /// Convert to f32, f64, f16 or bf16 (narrowing is lossy).
    #[arg(long, value_parser = crate::dtype_arg)]
    dtype: Option<candle_core::DType>,
}

pub fn main(a: Args) -> anyhow::Result<()> {
    let dtype = a.dtype;
    gru_weights::check_output_path(&a.out).context("--out")?;
    let file = WeightFile::open(&a.source.weights)?;
    let dev = candle_core::Device::Cpu;
    let report = if a.cell {
        let (cell, report) = file.gru_cell(a.source.prefix.as_deref(), dtype, &dev)?;
        save_gru_cell(&cell, &a.out_prefix, &a.out)?;
        report
    } else {
        let (gru, report) = file.gru(a.source.prefix.as_deref(), dtype, &dev)?;
        save_gru(&gru, &a.out_prefix, &a.out)?;
        report
    };
    println!(
        "wrote {} ({} tensors of `{}`, {:?} -> {:?})",
        a.out.display(),
        report.applied.len(),
        report.prefix,
        report.stored_dtype,
        report.dtype
    );
    Ok(())
}
