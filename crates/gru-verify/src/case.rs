//! Reference cases (`NAME.case.safetensors`, written by `scripts/export_reference.py`) and running
//! one against the Rust model.
//!
//! Format: tensors `input`, `output`, `h_n`, optional `h0` and `lengths` (int64); string metadata
//! `weights` (path relative to the case file), `batch_first` ("true"/"false", default "false"),
//! `prefix` (module path of the GRU in the weights file; optional when it holds one GRU), optional
//! `atol`, `rtol`, and `kind` = "cell" for GRUCell cases; optionally the exact answer
//! `output_f64`, `h_n_f64` (the model run in f64, see `exact`).

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use gru_core::{lengths_from_tensor, Kernel};
use gru_weights::WeightFile;
use serde::Serialize;

use crate::error::{Result, VerifyError};
use crate::exact::{Exact, ExactVerdict};
use crate::tolerance::{compare, Comparison, Tolerance};

/// `nn.GRU` or `nn.GRUCell`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CaseKind {
    Gru,
    Cell,
}

/// One reference case, read from disk.
#[derive(Debug, Clone)]
pub struct Case {
    pub path: PathBuf,
    pub name: String,
    pub kind: CaseKind,
    pub weights: PathBuf,
    pub prefix: Option<String>,
    pub batch_first: bool,
    pub atol: Option<f64>,
    pub rtol: Option<f64>,
    pub input: Tensor,
    pub output: Tensor,
    pub h_n: Option<Tensor>,
    pub h0: Option<Tensor>,
    pub lengths: Option<Vec<usize>>,
    /// The exact answer (the model run in f64), when the case carries it.
    pub exact: Option<Exact>,
}

fn case_err(path: &Path, reason: impl Into<String>) -> VerifyError {
    VerifyError::Case {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

impl Case {
    /// Reads and checks a case file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = WeightFile::open(path)?;
        let meta = file.metadata();
        // Only stored tensors: a weight-norm pair (`output_g`, `output_v`) computes a module's
        // weight, never a case's data.
        let get = |name: &str| -> Result<Option<Tensor>> {
            match file.info(name) {
                Some(_) if file.computed_from(name).is_none() => {
                    Ok(Some(file.load(name, &Device::Cpu)?))
                }
                _ => Ok(None),
            }
        };
        let need = |name: &str| -> Result<Tensor> {
            get(name)?.ok_or_else(|| case_err(path, format!("missing tensor `{name}`")))
        };
        let float = |name: &str, v: Option<&String>| -> Result<Option<f64>> {
            v.map(|s| {
                s.trim()
                    .parse::<f64>()
                    .map_err(|_| format!("{name} = {s:?} is not a number"))
                    .and_then(|x| Tolerance::check(name, x))
                    .map_err(|e| case_err(path, format!("metadata {e}")))
            })
            .transpose()
        };
        let batch_first = match meta
            .get("batch_first")
            .map(|s| s.trim().to_ascii_lowercase())
        {
            None => false,
            Some(s) if s == "true" || s == "1" => true,
            Some(s) if s == "false" || s == "0" => false,
            Some(s) => {
                return Err(case_err(
                    path,
                    format!("metadata `batch_first` = {s:?}: expected true or false"),
                ))
            }
        };
        let kind = match meta.get("kind").map(String::as_str) {
            None | Some("gru") => CaseKind::Gru,
            Some("cell") => CaseKind::Cell,
            Some(k) => {
                return Err(case_err(
                    path,
                    format!("metadata `kind` = {k:?}: expected gru or cell"),
                ))
            }
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let weights = match meta.get("weights") {
            Some(w) => dir.join(w),
            None => {
                return Err(case_err(
                    path,
                    "missing metadata `weights` (path of the weights file)",
                ))
            }
        };
        let lengths = match get("lengths")? {
            Some(t) => Some(lengths_from_tensor(&t).map_err(|e| case_err(path, e.to_string()))?),
            None => None,
        };
        let name = path
            .file_name()
            .map(|n| {
                n.to_string_lossy()
                    .trim_end_matches(".case.safetensors")
                    .to_string()
            })
            .unwrap_or_default();
        let output = need("output")?;
        let h_n =
            match (kind, get("h_n")?) {
                (CaseKind::Gru, None) => return Err(case_err(
                    path,
                    "missing tensor `h_n`: a GRU case must carry it (only a cell case has none)",
                )),
                (_, h) => h,
            };
        // A reference that is NaN or Inf could only "pass" against an equally broken result.
        for (what, t) in [("output", Some(&output)), ("h_n", h_n.as_ref())] {
            if let Some(at) = t.map(gru_core::first_non_finite).transpose()?.flatten() {
                return Err(case_err(
                    path,
                    format!(
                        "reference `{what}` holds NaN or Inf at flat index {at}; a reference \
                         must be finite (NaN never passes)"
                    ),
                ));
            }
        }
        let time_axis = match (kind, output.rank()) {
            (CaseKind::Cell, _) => None,
            (_, 3) if batch_first => Some(1),
            _ => Some(0),
        };
        let exact = Exact::check(
            get("output_f64")?,
            get("h_n_f64")?,
            &output,
            h_n.as_ref(),
            time_axis,
        )
        .map_err(|e| case_err(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            name,
            kind,
            weights,
            prefix: meta.get("prefix").filter(|p| !p.is_empty()).cloned(),
            batch_first,
            atol: float("atol", meta.get("atol"))?,
            rtol: float("rtol", meta.get("rtol"))?,
            input: need("input")?,
            output,
            h_n,
            h0: get("h0")?,
            lengths,
            exact,
        })
    }
}

/// How to run cases; every field overrides what the case file says.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub weights: Option<PathBuf>,
    pub prefix: Option<String>,
    pub device: Device,
    /// Run the model in this dtype (default: the dtype of the case's `input`).
    pub dtype: Option<DType>,
    pub atol: Option<f64>,
    pub rtol: Option<f64>,
    pub kernel: Kernel,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            weights: None,
            prefix: None,
            device: Device::Cpu,
            dtype: None,
            atol: None,
            rtol: None,
            kernel: Kernel::Auto,
        }
    }
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseReport {
    pub name: String,
    pub path: String,
    pub kind: CaseKind,
    /// e.g. `GRU(4, 5, num_layers=2, bidirectional=True)`.
    pub config: String,
    pub dtype: String,
    pub device: String,
    pub tolerance: Tolerance,
    pub output: Comparison,
    pub h_n: Option<Comparison>,
    pub passed: bool,
    /// How close ours and the reference are to the exact answer, when the case carries it.
    pub exact: Option<ExactVerdict>,
    /// Passed through the exact answer: past the tolerance against PyTorch's f32 output, but
    /// at least as close to the exact answer as it.
    pub passed_by_exact: bool,
    /// For a failing case: where the output first leaves the tolerance.
    pub divergence: Option<String>,
}

/// Runs `case` and compares with its references.
pub fn run_case(case: &Case, opts: &RunOptions) -> Result<CaseReport> {
    let weights_path = opts.weights.clone().unwrap_or_else(|| case.weights.clone());
    let file = WeightFile::open(&weights_path)?;
    let dtype = opts.dtype.unwrap_or(case.input.dtype());
    let dev = &opts.device;
    let prefix = opts.prefix.as_deref().or(case.prefix.as_deref());
    let input = case.input.to_dtype(dtype)?.to_device(dev)?;
    let h0 = match &case.h0 {
        Some(h) => Some(h.to_dtype(dtype)?.to_device(dev)?),
        None => None,
    };
    let (config, output, h_n) = match case.kind {
        CaseKind::Cell => {
            let (cell, _) = file.gru_cell(prefix, Some(dtype), dev)?;
            let cell = cell.with_kernel(opts.kernel);
            let out = cell.forward(&input, h0.as_ref())?;
            let config = format!(
                "GRUCell({}, {}{})",
                cell.input_size(),
                cell.hidden_size(),
                if cell.bias() { "" } else { ", bias=False" }
            );
            (config, out.clone(), out)
        }
        CaseKind::Gru => {
            let (gru, _) = file.gru(prefix, Some(dtype), dev)?;
            let gru = gru
                .with_batch_first(case.batch_first)
                .with_kernel(opts.kernel);
            let (out, h_n) = match &case.lengths {
                Some(l) => gru.forward_with_lengths(&input, l, h0.as_ref())?,
                None => gru.forward(&input, h0.as_ref())?,
            };
            (gru.config().to_string(), out, h_n)
        }
    };
    for (name, v) in [("atol", opts.atol), ("rtol", opts.rtol)] {
        if let Some(v) = v {
            Tolerance::check(name, v).map_err(|e| case_err(&case.path, e))?;
        }
    }
    let base = Tolerance::for_dtype(dtype);
    let tol = Tolerance::new(
        opts.atol.or(case.atol).unwrap_or(base.atol),
        opts.rtol.or(case.rtol).unwrap_or(base.rtol),
    );
    let out_cmp = compare("output", &output, &case.output, tol)?;
    let hn_cmp = match &case.h_n {
        Some(r) => Some(compare("h_n", &h_n, r, tol)?),
        None => None,
    };
    let within = out_cmp.passed && hn_cmp.as_ref().is_none_or(|c| c.passed);
    // Ours beside the references: a cell case's `h_n` is its output.
    let ours_h_n = case.h_n.as_ref().map(|_| &h_n);
    let exact = match &case.exact {
        Some(x) => Some(x.verdict((&output, ours_h_n), (&case.output, case.h_n.as_ref()), tol)?),
        None => None,
    };
    // A shape mismatch is never rescued.
    let shapes_match = out_cmp.shape == out_cmp.expected_shape
        && hn_cmp.as_ref().is_none_or(|c| c.shape == c.expected_shape);
    let passed_by_exact =
        !within && shapes_match && exact.as_ref().is_some_and(|x| x.at_least_as_close);
    let passed = within || passed_by_exact;
    let divergence = if within {
        None
    } else {
        Some(divergence(case, &output, &out_cmp, hn_cmp.as_ref(), tol)?)
    };
    Ok(CaseReport {
        name: case.name.clone(),
        path: case.path.display().to_string(),
        kind: case.kind,
        config,
        dtype: format!("{dtype:?}").to_lowercase(),
        device: gru_core::device_name(dev),
        tolerance: tol,
        output: out_cmp,
        h_n: hn_cmp,
        passed,
        exact,
        passed_by_exact,
        divergence,
    })
}

/// Says where a failing case departs: the earliest time step at which `output` leaves the
/// tolerance (with batch element and direction), and the layer/direction of failing `h_n` rows.
fn divergence(
    case: &Case,
    output: &Tensor,
    out_cmp: &Comparison,
    hn_cmp: Option<&Comparison>,
    tol: Tolerance,
) -> Result<String> {
    let mut parts = Vec::new();
    if out_cmp.shape != out_cmp.expected_shape {
        parts.push(format!(
            "output shape {:?} != reference {:?}",
            out_cmp.shape, out_cmp.expected_shape
        ));
    } else if !out_cmp.passed {
        let dims = output.dims().to_vec();
        let a = output
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let b = case
            .output
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let (time_axis, batch_axis) = match (case.kind, dims.len(), case.batch_first) {
            (CaseKind::Cell, _, _) => (None, Some(0)),
            (_, 2, _) => (Some(0), None),
            (_, _, true) => (Some(1), Some(0)),
            _ => (Some(0), Some(1)),
        };
        let features = *dims.last().unwrap_or(&1);
        let hidden = case
            .h_n
            .as_ref()
            .and_then(|h| h.dims().last().copied())
            .unwrap_or(features);
        let mut best: Option<Vec<usize>> = None;
        for i in 0..a.len() {
            if tol.accepts(a[i], b[i]) {
                continue;
            }
            let mut idx = vec![0; dims.len()];
            let mut f = i;
            for d in (0..dims.len()).rev() {
                idx[d] = f % dims[d];
                f /= dims[d];
            }
            let key = |v: &Vec<usize>| time_axis.map(|t| v[t]).unwrap_or(0);
            if best.as_ref().is_none_or(|bst| key(&idx) < key(bst)) {
                best = Some(idx);
            }
        }
        if let Some(idx) = best {
            let mut s = String::from("output leaves the tolerance");
            if let Some(t) = time_axis {
                s += &format!(" first at time step t={}", idx[t]);
            }
            if let Some(bx) = batch_axis {
                s += &format!(", batch {}", idx[bx]);
            }
            let feat = idx[idx.len() - 1];
            let dir = if features > hidden && feat >= hidden {
                "reverse"
            } else {
                "forward"
            };
            s += &format!(", feature {feat} ({dir} direction of the last layer)");
            let i = idx.iter().zip(&dims).fold(0, |acc, (x, d)| acc * d + x);
            s += &format!(": got {:.6e}, expected {:.6e}", a[i], b[i]);
            parts.push(s);
        }
        if let Some(t_axis) = time_axis {
            parts.push(growth(&a, &b, &dims, t_axis));
        }
    }
    if let Some(h) = hn_cmp.filter(|h| !h.passed) {
        match &h.first_mismatch {
            Some(idx) if h.shape.len() >= 2 && h.shape == h.expected_shape => {
                let out_features = out_cmp.shape.last().copied().unwrap_or(1);
                let hidden = h.shape.last().copied().unwrap_or(1);
                let dirs = (out_features / hidden.max(1)).max(1);
                let row = idx[0];
                if case.kind == CaseKind::Gru {
                    parts.push(format!(
                        "h_n first differs at row {row} (layer {}, {} direction)",
                        row / dirs,
                        if row % dirs == 1 {
                            "reverse"
                        } else {
                            "forward"
                        }
                    ));
                } else {
                    parts.push(format!("h_n first differs at {idx:?}"));
                }
            }
            _ => parts.push(format!(
                "h_n shape {:?} vs reference {:?}",
                h.shape, h.expected_shape
            )),
        }
    }
    if case.exact.is_none() {
        parts.push(
            "a trained model's f32 outputs drift apart over a long sequence even in two correct \
             implementations: re-export the case with its exact answer (export_reference.py \
             writes output_f64 and h_n_f64) and the verdict tells drift from a bug"
                .into(),
        );
    }
    Ok(parts.join("; "))
}

/// How the largest difference grows over the time steps: at the first step, a quarter, half and
/// three quarters through, and the last (a steady growth from the first step is rounding
/// amplified by the recurrence; a jump at one step, a bug there).
fn growth(a: &[f64], b: &[f64], dims: &[usize], t_axis: usize) -> String {
    let steps = dims[t_axis];
    let inner: usize = dims[t_axis + 1..].iter().product();
    let mut per_step = vec![0.0f64; steps];
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        let t = (i / inner.max(1)) % steps.max(1);
        let d = (x - y).abs();
        per_step[t] = per_step[t].max(if d.is_finite() { d } else { f64::INFINITY });
    }
    let mut at: Vec<usize> = [
        0,
        steps / 4,
        steps / 2,
        3 * steps / 4,
        steps.saturating_sub(1),
    ]
    .into_iter()
    .filter(|&t| t < steps)
    .collect();
    at.dedup();
    let shown: Vec<String> = at
        .iter()
        .map(|&t| format!("{:.1e} at t={t}", per_step[t]))
        .collect();
    format!("max |d| per time step: {}", shown.join(", "))
}

/// Every `*.case.safetensors` under `paths` (files are taken as given), sorted. Each folder is
/// walked once, however many symlinks lead to it, so that a link cycle ends.
pub fn find_cases(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(dir: &Path, seen: &mut HashSet<PathBuf>, out: &mut Vec<PathBuf>) {
        let Ok(real) = std::fs::canonicalize(dir) else {
            return;
        };
        if !seen.insert(real) {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, seen, out);
            } else if p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().ends_with(".case.safetensors"))
            {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    for p in paths {
        if p.is_dir() {
            let mut found = Vec::new();
            walk(p, &mut seen, &mut found);
            found.sort();
            out.extend(found);
        } else {
            out.push(p.clone());
        }
    }
    out
}
