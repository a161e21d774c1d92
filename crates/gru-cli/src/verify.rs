//! `gru verify`: run reference cases and print a table (or JSON).

use std::path::PathBuf;
use std::process::ExitCode;

use gru_verify::{find_cases, run_case, Case, CaseReport, RunOptions};

#[derive(clap::Args)]
pub struct Args {
    /// Case files or folders (every *.case.safetensors beneath them).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Weights file to use instead of the one each case names.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Module path of the GRU in the weights file (overrides the case's).
    #[arg(long)]
    prefix: Option<String>,
    /// cpu, cuda, cuda:N, metal, metal:N or auto.
    #[arg(long, default_value = "cpu", value_parser = crate::device_arg)]
    device: gru_core::DeviceSpec,
    /// Run in this dtype (f32, f64, f16, bf16); default: the dtype of each case's input.
    #[arg(long, value_parser = crate::dtype_arg)]
    dtype: Option<candle_core::DType>,
    /// Absolute tolerance (finite, >= 0); default per dtype.
    #[arg(long, value_parser = crate::tolerance_arg)]
    atol: Option<f64>,
    /// Relative tolerance (finite, >= 0); default per dtype.
    #[arg(long, value_parser = crate::tolerance_arg)]
    rtol: Option<f64>,
    /// Print one JSON object per case instead of the table.
    #[arg(long)]
    json: bool,
    /// Let cuBLAS use TF32 for f32 matmuls (CUDA; off by default, as in PyTorch).
    #[arg(long)]
    allow_tf32: bool,
    /// Recurrence implementation.
    #[arg(long, value_enum, default_value_t = crate::KernelArg::Auto)]
    kernel: crate::KernelArg,
}

enum Outcome {
    Ran(Box<CaseReport>),
    Failed { path: String, error: String },
}

pub fn main(a: Args) -> anyhow::Result<ExitCode> {
    crate::set_allow_tf32(a.allow_tf32);
    let opts = RunOptions {
        weights: a.weights,
        prefix: a.prefix,
        device: crate::open_device(a.device)?,
        dtype: a.dtype,
        atol: a.atol,
        rtol: a.rtol,
        kernel: a.kernel.into(),
    };
    let cases = find_cases(&a.paths);
    if cases.is_empty() {
        anyhow::bail!("no *.case.safetensors found in {:?}", a.paths);
    }
    let outcomes: Vec<Outcome> = cases
        .iter()
        .map(|p| match Case::load(p).and_then(|c| run_case(&c, &opts)) {
            Ok(r) => Outcome::Ran(Box::new(r)),
            Err(e) => Outcome::Failed {
                path: p.display().to_string(),
                // One line: candle appends a backtrace under RUST_BACKTRACE=1.
                error: e.to_string().lines().next().unwrap_or_default().to_string(),
            },
        })
        .collect();
    if a.json {
        for o in &outcomes {
            let v = match o {
                Outcome::Ran(r) => serde_json::to_value(r)?,
                Outcome::Failed { path, error } => {
                    serde_json::json!({"path": path, "error": error, "passed": false})
                }
            };
            println!("{v}");
        }
    } else {
        print_table(&outcomes);
    }
    let errors = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Failed { .. }))
        .count();
    let failed = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Ran(r) if !r.passed))
        .count();
    if !a.json {
        println!(
            "{} cases: {} passed, {} failed, {} could not run",
            outcomes.len(),
            outcomes.len() - errors - failed,
            failed,
            errors
        );
    }
    Ok(if errors > 0 {
        ExitCode::from(crate::EXIT_ERROR)
    } else if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_table(outcomes: &[Outcome]) {
    let mut rows = vec![[
        "case".to_string(),
        "model".to_string(),
        "dtype".to_string(),
        "device".to_string(),
        "max|d| output".to_string(),
        "max|d| h_n".to_string(),
        "result".to_string(),
    ]];
    let mut notes = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Ran(r) => {
                // Names come from files: escaped, so that none can forge a row.
                let name = r.name.escape_debug().to_string();
                rows.push([
                    name.clone(),
                    r.config.clone(),
                    r.dtype.clone(),
                    r.device.clone(),
                    format!("{:.2e}", r.output.max_abs),
                    r.h_n
                        .as_ref()
                        .map(|h| format!("{:.2e}", h.max_abs))
                        .unwrap_or("-".into()),
                    match (r.passed, r.passed_by_exact) {
                        (true, false) => "PASS".into(),
                        (true, true) => "PASS (exact)".into(),
                        _ => "FAIL".into(),
                    },
                ]);
                if let Some(x) = &r.exact {
                    let said = if r.passed_by_exact {
                        "past the tolerance against PyTorch, but closer to the exact answer \
                         than PyTorch's f32"
                    } else if r.passed {
                        "within the tolerance"
                    } else {
                        "farther from the exact answer than PyTorch's f32"
                    };
                    notes.push(format!(
                        "{name}: {said}: max |ours - exact| {:.2e}, max |PyTorch - exact| {:.2e}",
                        x.ours, x.reference
                    ));
                }
                if let (false, Some(d)) = (r.passed, &r.divergence) {
                    notes.push(format!("{name}: {d}"));
                }
            }
            Outcome::Failed { path, error } => {
                let name = std::path::Path::new(path)
                    .file_name()
                    .map(|n| {
                        n.to_string_lossy()
                            .trim_end_matches(".case.safetensors")
                            .to_string()
                    })
                    .unwrap_or_else(|| path.clone())
                    .escape_debug()
                    .to_string();
                rows.push([
                    name.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "ERROR".into(),
                ]);
                notes.push(format!("{name}: {}", crate::one_line(error)));
            }
        }
    }
    let widths: Vec<usize> = (0..7)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for (i, r) in rows.iter().enumerate() {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(s, w)| format!("{s:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
        if i == 0 {
            println!(
                "{}",
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  ")
            );
        }
    }
    for n in notes {
        println!("  {n}");
    }
}
