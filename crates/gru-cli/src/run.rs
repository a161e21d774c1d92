//! `gru run`: a GRU (or, with `--cell`, a GRUCell) from a weight file on an input from
//! safetensors or .npy; writes `output` and `h_n` to a safetensors file or .npy files (never over
//! something that is not a regular file).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device, Tensor};
use gru_weights::{ModuleKind, WeightFile};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    source: crate::WeightsArgs,
    /// Input: a .npy file, or a safetensors or `torch.save` file holding `input` (or one
    /// tensor, as `torch.save(x, path)` writes).
    #[arg(long)]
    input: PathBuf,
    /// Initial state h0, same formats (tensor `h0` in a safetensors file or `torch.save` dict).
    #[arg(long)]
    h0: Option<PathBuf>,
    /// Lengths of a padded variable-length batch, comma-separated (one per batch element).
    #[arg(long, value_delimiter = ',')]
    lengths: Option<Vec<usize>>,
    /// Where to write: `Y.safetensors` (`output` and `h_n`), or `Y.npy` (`output`; `h_n` in
    /// `Y.h_n.npy`).
    #[arg(long)]
    out: PathBuf,
    /// cpu, cuda, cuda:N, metal, metal:N or auto.
    #[arg(long, default_value = "cpu", value_parser = crate::device_arg)]
    device: gru_core::DeviceSpec,
    /// Compute dtype (f32, f64, f16, bf16); default: the dtype of the weights.
    #[arg(long, value_parser = crate::dtype_arg)]
    dtype: Option<candle_core::DType>,
    /// The input is (batch, seq, feature), as with nn.GRU(batch_first=True).
    #[arg(long)]
    batch_first: bool,
    /// Let cuBLAS use TF32 for f32 matmuls (CUDA; off by default, as in PyTorch).
    #[arg(long)]
    allow_tf32: bool,
    /// Run the GRUCell instead of the GRU: input `(B, input_size)` or `(input_size)`, h0 `(B, H)`
    /// or `(H)`; `output` and `h_n` are both the new state h', as `nn.GRUCell` returns it.
    #[arg(long, conflicts_with_all = ["lengths", "batch_first"])]
    cell: bool,
    /// Recurrence implementation.
    #[arg(long, value_enum, default_value_t = crate::KernelArg::Auto)]
    kernel: crate::KernelArg,
    /// Small f32 layers (hidden size up to 128, batch x hidden up to 512) compute their steps in
    /// f32 on the CPU, not in f64 rounded to f32 per step (faster, about as far from the exact
    /// answer as PyTorch).
    #[arg(long)]
    f32_steps: bool,
}

/// Reads one tensor from a .npy file or a safetensors file (by `name`, or its only tensor), told
/// apart by content; it must hold floats.
fn read_tensor(path: &Path, name: &str, arg: &str) -> anyhow::Result<Tensor> {
    let mut magic = [0u8; 6];
    let is_npy = {
        use std::io::Read;
        let mut f = gru_weights::open_regular(path).with_context(|| format!("--{arg}"))?;
        f.read(&mut magic).unwrap_or(0) == 6 && &magic == b"\x93NUMPY"
    };
    let t = if is_npy {
        gru_weights::read_npy(path).with_context(|| format!("--{arg}"))?
    } else {
        let file = WeightFile::open(path).with_context(|| format!("--{arg}"))?;
        // Only a stored tensor: a weight-norm pair computes module weights, never an input.
        let chosen = match file.info(name) {
            Some(_) if file.computed_from(name).is_none() => name.to_string(),
            _ if file.tensors().len() == 1 => file.tensors()[0].name.clone(),
            _ => bail!(
                "--{arg} {}: no tensor `{name}` and more than one tensor in the file",
                path.display()
            ),
        };
        file.load(&chosen, &Device::Cpu)
            .with_context(|| format!("--{arg}"))?
    };
    if !t.dtype().is_float() {
        bail!(
            "--{arg} {}: dtype {} is not a float type: a GRU takes float features \
             (f32, f64, f16, bf16); embed token ids first",
            path.display(),
            crate::dtype_name(t.dtype())
        );
    }
    Ok(t)
}

/// Where no GRU could be taken: a GRUCell where one was asked for (at `prefix`, or the file has
/// no GRU at all) gets an error saying to run it with `--cell`, not "no GRU found".
fn cell_hint(file: &WeightFile, prefix: Option<&str>) -> Option<anyhow::Error> {
    let no_gru = || {
        file.discover()
            .found
            .iter()
            .all(|g| g.kind != ModuleKind::Gru)
    };
    if prefix.is_none() && !no_gru() {
        return None;
    }
    let cell = file.select(ModuleKind::GruCell, prefix).ok()?;
    let at = match cell.prefix.as_str() {
        "" => String::new(),
        p => format!(" at `{p}`"),
    };
    Some(anyhow::anyhow!(
        "{}: holds a GRUCell{at}, not a GRU: run it with --cell",
        file.path().display()
    ))
}

/// What `gru run` runs.
enum Module {
    Gru(gru_core::Gru),
    Cell(gru_core::GruCell),
}

/// What `--out` asks for, by its extension.
enum Out {
    /// `.safetensors` (or no extension): one file with `output` and `h_n`.
    Safetensors,
    /// `Y.npy`: `output` in it, `h_n` in `Y.h_n.npy` beside it.
    Npy { h_n: PathBuf },
}

/// Reads `--out`'s extension and checks that every file it names may be written.
fn out_files(out: &Path) -> anyhow::Result<Out> {
    let ext = out
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    let kind = match ext.as_deref() {
        None | Some("safetensors") => Out::Safetensors,
        Some("npy") => Out::Npy {
            h_n: out.with_extension("h_n.npy"),
        },
        Some(other) => bail!(
            "--out {}: .{other} is not a format `gru run` writes; use .safetensors (output and \
             h_n in one file) or .npy (output; h_n beside it as NAME.h_n.npy)",
            out.display()
        ),
    };
    gru_weights::check_output_path(out).context("--out")?;
    if let Out::Npy { h_n } = &kind {
        gru_weights::check_output_path(h_n).context("--out")?;
    }
    Ok(kind)
}

/// NaN or Inf in the input gives NaN outputs; refuse it by name instead (padding excepted).
/// `converted_to`: `t` was converted to that dtype, and a value beyond its range became Inf.
/// Read in chunks, in place: never a whole copy of the input.
fn check_finite(
    t: &Tensor,
    name: &str,
    valid_steps: Option<(&[usize], bool)>,
    converted_to: Option<DType>,
) -> anyhow::Result<()> {
    let bad = match (valid_steps, t.rank()) {
        (Some((lengths, batch_first)), 3) => {
            let mut found = None;
            // A count of lengths that does not match the batch is the library's error to give.
            let batch = t.dim(usize::from(!batch_first))?;
            for (b, &len) in lengths.iter().enumerate().take(batch) {
                let seq = if batch_first {
                    t.get(b)?
                } else {
                    t.narrow(1, b, 1)?.squeeze(1)?
                };
                let n = len.min(seq.dim(0)?);
                if let Some(i) = gru_core::first_non_finite(&seq.narrow(0, 0, n)?)? {
                    found = Some(format!("batch {b}, valid step {}", i / seq.dim(1)?.max(1)));
                    break;
                }
            }
            found
        }
        _ => gru_core::first_non_finite(t)?.map(|i| format!("flat index {i}")),
    };
    match (bad, converted_to) {
        (Some(at), None) => bail!("--{name}: holds NaN or Inf at {at}"),
        (Some(at), Some(d)) => bail!(
            "--{name}: its value at {at} is beyond the range of the model's dtype {} (Inf after \
             conversion)",
            d.as_str()
        ),
        (None, _) => Ok(()),
    }
}

/// `t` in the model's dtype on `device`, refused by name where a value does not fit the dtype
/// (1e5 in f16); `t` was checked finite already.
fn convert(
    t: &Tensor,
    name: &str,
    valid_steps: Option<(&[usize], bool)>,
    dtype: DType,
    device: &Device,
) -> anyhow::Result<Tensor> {
    let c = t.to_dtype(dtype)?;
    if dtype != t.dtype() {
        check_finite(&c, name, valid_steps, Some(dtype))?;
    }
    Ok(c.to_device(device)?)
}

pub fn main(a: Args) -> anyhow::Result<()> {
    crate::set_allow_tf32(a.allow_tf32);
    out_files(&a.out)?;
    let device = crate::open_device(a.device)?;
    let dtype = a.dtype;
    let file = WeightFile::open(&a.source.weights)?;
    let prefix = a.source.prefix.as_deref();
    let (module, report) = if a.cell {
        let (cell, report) = file.gru_cell(prefix, dtype, &device)?;
        let cell = cell
            .with_kernel(a.kernel.into())
            .with_wide_steps(!a.f32_steps)?;
        (Module::Cell(cell), report)
    } else {
        let (gru, report) = file
            .gru(prefix, dtype, &device)
            .map_err(|e| cell_hint(&file, prefix).unwrap_or_else(|| e.into()))?;
        let gru = gru
            .with_batch_first(a.batch_first)
            .with_kernel(a.kernel.into())
            .with_wide_steps(!a.f32_steps)?;
        (Module::Gru(gru), report)
    };
    if !report.unused_under_prefix.is_empty() {
        eprintln!(
            "warning: tensors under `{}` not used by the {}: {}",
            report.prefix,
            if a.cell { "GRUCell" } else { "GRU" },
            crate::listed(&report.unused_under_prefix, crate::one_line)
        );
    }
    let model_dtype = match &module {
        Module::Gru(g) => g.dtype(),
        Module::Cell(c) => c.dtype(),
    };
    let input = read_tensor(&a.input, "input", "input")?;
    let valid = a.lengths.as_deref().map(|l| (l, a.batch_first));
    check_finite(&input, "input", valid, None)?;
    let input = convert(&input, "input", valid, model_dtype, &device)?;
    let h0 = match &a.h0 {
        Some(p) => {
            let h = read_tensor(p, "h0", "h0")?;
            check_finite(&h, "h0", None, None)?;
            Some(convert(&h, "h0", None, model_dtype, &device)?)
        }
        None => None,
    };
    let (output, h_n) = match (&module, &a.lengths) {
        (Module::Gru(gru), Some(l)) => gru.forward_with_lengths(&input, l, h0.as_ref())?,
        (Module::Gru(gru), None) => gru.forward(&input, h0.as_ref())?,
        (Module::Cell(cell), _) => {
            let h = cell.forward(&input, h0.as_ref())?;
            (h.clone(), h)
        }
    };
    let (output, h_n) = (
        output.to_device(&Device::Cpu)?,
        h_n.to_device(&Device::Cpu)?,
    );
    match out_files(&a.out)? {
        Out::Safetensors => {
            let map = HashMap::from([
                ("output".to_string(), output.clone()),
                ("h_n".to_string(), h_n.clone()),
            ]);
            gru_weights::save_safetensors(&map, &a.out)
                .with_context(|| format!("--out {}", a.out.display()))?;
            println!(
                "wrote {}: output {:?}, h_n {:?}",
                a.out.display(),
                output.dims(),
                h_n.dims()
            );
        }
        Out::Npy { h_n: h_n_path } => {
            for (t, p) in [(&output, &a.out), (&h_n, &h_n_path)] {
                // numpy has no bfloat16: widen it.
                let t = if t.dtype() == DType::BF16 {
                    t.to_dtype(DType::F32)?
                } else {
                    t.clone()
                };
                gru_weights::save_npy(&t, p).with_context(|| format!("--out {}", p.display()))?;
            }
            println!(
                "wrote {} (output {:?}) and {} (h_n {:?})",
                a.out.display(),
                output.dims(),
                h_n_path.display(),
                h_n.dims()
            );
        }
    }
    Ok(())
}
