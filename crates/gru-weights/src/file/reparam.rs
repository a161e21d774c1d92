//! Weights that a state dict stores reparametrized: weight norm and spectral norm, by either of
//! PyTorch's APIs. The weight itself is not in the file; it is computed from what is, as
//! PyTorch's forward in eval mode computes it, and listed under its plain name (`rnn.weight_hh_l0`)
//! so that discovery, `gru`, `convert` and the `VarBuilder` see an ordinary tensor.
//!
//! | API | stored | weight |
//! | --- | --- | --- |
//! | `parametrizations.weight_norm(m, "w", dim)` | `parametrizations.w.original0` (g), `.original1` (v) | `v * g / norm_except_dim(v, dim)` |
//! | `utils.weight_norm(m, "w", dim)` | `w_g`, `w_v` | the same |
//! | `parametrizations.spectral_norm(m, "w")` | `parametrizations.w.original`, `.0._u`, `.0._v` | `w / (u . (W v))` |
//! | `utils.spectral_norm(m, "w")` | `w_orig`, `w_u`, `w_v` | the same |
//!
//! `dim` is not stored. Weight norm's is read from the shape of `g` (size 1 on every other axis; a
//! 0-d `g` is `dim=None`, one norm for the whole tensor). Spectral norm's `W` is the weight with
//! axis `dim` moved first and the rest flattened; `dim` is the axis `u` and `v` fit. Where several
//! fit (a square matrix, a convolution with as many inputs as outputs), the stored `u`, the last
//! power iteration's `normalize(W v)`, tells them apart: the axis whose `W v` points along `u` is
//! taken, and when none clearly does, loading the weight is an error. Values are computed in f64
//! and rounded once, within an ulp of PyTorch's own arithmetic.
//!
//! A second parametrization chained on the same weight (`parametrizations.w.1`) makes the weight
//! not computable: seen by its tensors, or, for one without tensors (a custom `Symmetric`), by
//! the `_metadata` of a pickled state dict, a pickled module, or a `torch.export` program's graph
//! (`pt2::graph_chains`). A safetensors file keeps no `_metadata`: there, such a
//! stateless second parametrization cannot be seen.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor, D};

use crate::error::{Result, WeightsError};
use crate::formats::container::{join, TensorInfo};

/// How a weight absent from the file is computed from tensors present in it (full names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reparam {
    /// `v * (g / norm_except_dim(v, 2, dim))`; `dim: None` is one norm over the whole tensor.
    WeightNorm {
        g: String,
        v: String,
        dim: Option<usize>,
    },
    /// `weight / vdot(u, W v)` in eval mode (no power iteration); `dims`: the axes `u` and `v`
    /// fit (`W` is the weight with that axis first, the rest flattened), one chosen on load.
    SpectralNorm {
        original: String,
        u: String,
        v: String,
        dims: Vec<usize>,
    },
}

impl Reparam {
    /// The stored tensors it reads.
    pub(crate) fn sources(&self) -> Vec<&str> {
        match self {
            Reparam::WeightNorm { g, v, .. } => vec![g, v],
            Reparam::SpectralNorm { original, u, v, .. } => vec![original, u, v],
        }
    }

    /// What it is, for listings: `weight norm (dim 0) of `a.w_g`, `a.w_v``.
    pub(crate) fn describe(&self) -> String {
        let names = self
            .sources()
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ");
        match self {
            Reparam::WeightNorm { dim: Some(d), .. } => format!("weight norm (dim {d}) of {names}"),
            Reparam::WeightNorm { dim: None, .. } => format!("weight norm (dim None) of {names}"),
            Reparam::SpectralNorm { dims, .. } => {
                let dims: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
                format!("spectral norm (dim {}) of {names}", dims.join(" or "))
            }
        }
    }
}

/// Most axes of a weight read as reparametrized (PyTorch's weights have at most 5: Conv3d); the
/// axis searches are quadratic in it.
const MAX_RANK: usize = 8;

/// The axis weight norm normalizes along, from the shapes of `g` and `v`: `Some(None)` for a
/// whole-tensor norm, `None` when `g` does not fit `v` (then it is not a weight norm).
fn weight_norm_dim(g: &[usize], v: &[usize]) -> Option<Option<usize>> {
    if v.len() > MAX_RANK {
        return None;
    }
    if g.is_empty() {
        return Some(None);
    }
    if g.len() != v.len() {
        return None;
    }
    // Where `v` has size 1 on the axis, every choice gives the same norm: the first is taken.
    (0..v.len())
        .find(|&d| g[d] == v[d] && g.iter().enumerate().all(|(i, &n)| i == d || n == 1))
        .map(Some)
}

/// PyTorch's type promotion of two float dtypes (`None` when either is not a float).
fn promote(a: DType, b: DType) -> Option<DType> {
    if !a.is_float() || !b.is_float() {
        return None;
    }
    Some(match (a, b) {
        _ if a == b => a,
        (DType::F64, _) | (_, DType::F64) => DType::F64,
        // f32 with a half type, or f16 with bf16.
        _ => DType::F32,
    })
}

/// The axes `d` for which `u` has `shape[d]` elements and `v` the product of the others; `None`
/// when there is none (then it is not a spectral norm).
fn spectral_dims(shape: &[usize], u: &[usize], v: &[usize]) -> Option<Vec<usize>> {
    if shape.len() < 2 || shape.len() > MAX_RANK || u.len() != 1 || v.len() != 1 {
        return None;
    }
    let total = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    let dims: Vec<usize> = (0..shape.len())
        .filter(|&d| shape[d] > 0 && u[0] == shape[d] && v[0] == total / shape[d])
        .collect();
    (!dims.is_empty()).then_some(dims)
}

/// Every reparametrized weight of `infos` (sorted by name) whose plain name the file lacks, with
/// its listing (named as the module's own parameter, shaped and typed as the stored value).
///
/// `chained` (sorted) lists the parametrization lists known to hold a second parametrization
/// (from a pickled state dict's `_metadata`, or an exported program's graph): theirs are not
/// computed; `None` (the file cannot tell) computes none of `torch.nn.utils.parametrizations`'.
pub(crate) fn find(infos: &[TensorInfo], chained: Option<&[String]>) -> Vec<(TensorInfo, Reparam)> {
    let by_name: HashMap<&str, &TensorInfo> = infos.iter().map(|t| (t.name.as_str(), t)).collect();
    let mut out = Vec::new();
    let mut add = |prefix: &str, param: &str, like: &TensorInfo, how: Reparam| {
        let name = join(prefix, param);
        // Float values only; the result has their promoted dtype, as PyTorch's arithmetic gives.
        let mut dtype = Some(like.dtype);
        for src in how.sources() {
            dtype = dtype
                .zip(by_name.get(src))
                .and_then(|(d, i)| promote(d, i.dtype));
        }
        if let (false, Some(dtype)) = (by_name.contains_key(name.as_str()), dtype) {
            out.push((
                TensorInfo {
                    name,
                    dtype,
                    shape: like.shape.clone(),
                },
                how,
            ));
        }
    };
    // Of a ParametrizationList only these may exist: any other tensor under
    // `parametrizations.{param}.` (a second parametrization, another one's buffers) means a
    // chain this reading would get wrong.
    // `infos` is sorted by name, so the names under a prefix are one run of it.
    let only = |list: &str, allowed: &[&str]| {
        let Some(chained) = chained else {
            return false;
        };
        if chained.binary_search_by(|c| c.as_str().cmp(list)).is_ok() {
            return false;
        }
        let under = format!("{list}.");
        let start = infos.partition_point(|t| t.name.as_str() < under.as_str());
        infos[start..]
            .iter()
            .map_while(|t| t.name.strip_prefix(&under))
            .all(|rest| allowed.contains(&rest))
    };
    for t in infos {
        if let Some((m, param, how)) = reading(t, &by_name, &only) {
            add(m, param, t, how);
        }
    }
    out
}

/// How `t`, if it is the value a reparametrization reads first (`v`, `original`, `_v`, `_orig`),
/// makes a weight with the tensors beside it: the weight's module and parameter name, and how.
/// `only(list, allowed)`: whether a ParametrizationList holds those tensors and no others.
fn reading<'a>(
    t: &'a TensorInfo,
    by_name: &HashMap<&str, &TensorInfo>,
    only: &dyn Fn(&str, &[&str]) -> bool,
) -> Option<(&'a str, &'a str, Reparam)> {
    let (prefix, last) = t.name.rsplit_once('.').unwrap_or(("", t.name.as_str()));
    let shape = |n: &str| by_name.get(n).map(|i| i.shape.as_slice());
    match last {
        // parametrizations.weight_norm: `{m}.parametrizations.{param}.original1` is `v`.
        "original1" => {
            let (m, param) = split_parametrization(prefix)?;
            let g = format!("{prefix}.original0");
            let dim = weight_norm_dim(shape(&g)?, &t.shape)?;
            only(prefix, &["original0", "original1"]).then_some(())?;
            let v = t.name.clone();
            Some((m, param, Reparam::WeightNorm { g, v, dim }))
        }
        // parametrizations.spectral_norm: `.original` with the buffers `.0._u`, `.0._v`.
        "original" => {
            let (m, param) = split_parametrization(prefix)?;
            let (u, v) = (format!("{prefix}.0._u"), format!("{prefix}.0._v"));
            let dims = spectral_dims(&t.shape, shape(&u)?, shape(&v)?)?;
            only(prefix, &["original", "0._u", "0._v"]).then_some(())?;
            let original = t.name.clone();
            Some((
                m,
                param,
                Reparam::SpectralNorm {
                    original,
                    u,
                    v,
                    dims,
                },
            ))
        }
        _ => {
            // utils.weight_norm: `{param}_v` with `{param}_g` (a `_v` beside `_orig` is spectral
            // norm's, read from `_orig`).
            if let Some(param) = last.strip_suffix("_v").filter(|p| !p.is_empty()) {
                if by_name.contains_key(join(prefix, &format!("{param}_orig")).as_str()) {
                    return None;
                }
                let g = join(prefix, &format!("{param}_g"));
                let dim = weight_norm_dim(shape(&g)?, &t.shape)?;
                let v = t.name.clone();
                return Some((prefix, param, Reparam::WeightNorm { g, v, dim }));
            }
            // utils.spectral_norm: `{param}_orig` with `{param}_u`, `{param}_v`.
            let param = last.strip_suffix("_orig").filter(|p| !p.is_empty())?;
            let u = join(prefix, &format!("{param}_u"));
            let v = join(prefix, &format!("{param}_v"));
            let dims = spectral_dims(&t.shape, shape(&u)?, shape(&v)?)?;
            let original = t.name.clone();
            Some((
                prefix,
                param,
                Reparam::SpectralNorm {
                    original,
                    u,
                    v,
                    dims,
                },
            ))
        }
    }
}

/// Splits `{m}.parametrizations.{param}` into (`m`, `param`).
fn split_parametrization(list: &str) -> Option<(&str, &str)> {
    let (head, param) = list.rsplit_once('.')?;
    if head == "parametrizations" {
        return Some(("", param));
    }
    let m = head.strip_suffix(".parametrizations")?;
    Some((m, param))
}

/// Computes the weight `name` stands for, in the dtype of its stored value, on the CPU, from
/// the stored tensors `load` gives (in f64, rounded once at the end).
pub(crate) fn compute(
    name: &str,
    how: &Reparam,
    dtype: DType,
    load: impl Fn(&str) -> Result<Tensor>,
) -> Result<Tensor> {
    let f64_of =
        |n: &str| -> Result<Tensor> { Ok(load(n)?.to_device(&Device::Cpu)?.to_dtype(DType::F64)?) };
    match how {
        Reparam::WeightNorm { g, v, dim } => {
            let (gt, vt) = (f64_of(g)?, f64_of(v)?);
            let w = match dim {
                None => {
                    let norm = vt.sqr()?.sum_all()?.sqrt()?;
                    vt.broadcast_mul(&gt.reshape(())?.div(&norm)?)?
                }
                Some(d) => {
                    // Axis `d` first, the rest flattened: one norm per row.
                    let moved = vt.transpose(0, *d)?.contiguous()?;
                    let rows = moved.dim(0)?;
                    let mat = moved.reshape((rows, ()))?;
                    let norm = mat.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
                    let scale = gt.flatten_all()?.reshape((rows, 1))?.div(&norm)?;
                    mat.broadcast_mul(&scale)?
                        .reshape(moved.shape())?
                        .transpose(0, *d)?
                        .contiguous()?
                }
            };
            Ok(w.to_dtype(dtype)?)
        }
        Reparam::SpectralNorm {
            original,
            u,
            v,
            dims,
        } => {
            let w = f64_of(original)?;
            let (ut, vt) = (f64_of(u)?, f64_of(v)?.reshape(((), 1))?);
            let mut fits = Vec::with_capacity(dims.len());
            for &d in dims {
                fits.push(spectral_fit(&w, d, &ut, &vt)?);
            }
            let sigma = choose_sigma(name, dims, &fits)?;
            Ok(w.affine(1.0 / sigma, 0.0)?.to_dtype(dtype)?)
        }
    }
}

/// `(sigma, alignment)` of reading the weight along axis `d`: `sigma = u . (W v)` with `W` the
/// weight with axis `d` first (PyTorch's `permute(d, rest...)`) and the rest flattened, and the
/// cosine between `u` and `W v`. The stored `u` is the last power iteration's `normalize(W v)`,
/// so along the axis the model was trained with the cosine is close to 1.
fn spectral_fit(w: &Tensor, d: usize, u: &Tensor, v: &Tensor) -> Result<(f64, f64)> {
    let order: Vec<usize> = std::iter::once(d)
        .chain((0..w.rank()).filter(|&i| i != d))
        .collect();
    let moved = w.permute(order)?.contiguous()?;
    let rows = moved.dim(0)?;
    let wv = moved.reshape((rows, ()))?.matmul(v)?.flatten_all()?;
    let sigma = (u * &wv)?.sum_all()?.to_scalar::<f64>()?;
    let norms = wv.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?
        * u.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    Ok((sigma, (sigma / norms).abs()))
}

/// The `sigma` of the axis the weight was normalized along, among those `u` and `v` fit. Two
/// axes fit a square matrix or a convolution with as many inputs as outputs; then the one whose
/// `W v` points along `u` is taken, or, when the stored vectors do not tell, it is an error
/// naming the weight (unless every reading gives the same `sigma`).
fn choose_sigma(name: &str, dims: &[usize], fits: &[(f64, f64)]) -> Result<f64> {
    let same = |a: f64, b: f64| (a - b).abs() <= 1e-9 * a.abs().max(b.abs());
    if fits.iter().all(|f| same(f.0, fits[0].0)) {
        return Ok(fits[0].0);
    }
    let best = (0..fits.len())
        .max_by(|&a, &b| fits[a].1.total_cmp(&fits[b].1))
        .expect("at least one axis fits");
    let runner_up = (0..fits.len())
        .filter(|&i| i != best)
        .map(|i| fits[i].1)
        .fold(0.0, f64::max);
    if fits[best].1 >= 0.5 && runner_up <= 0.5 * fits[best].1 {
        return Ok(fits[best].0);
    }
    let told: Vec<String> = dims
        .iter()
        .zip(fits)
        .map(|(d, f)| format!("dim {d}: cosine {:.3}", f.1))
        .collect();
    Err(WeightsError::Tensor {
        name: name.to_string(),
        reason: format!(
            "is spectral-normalized, and its `u` and `v` fit more than one axis ({}), which its \
             stored vectors do not tell apart; save the model after \
             `torch.nn.utils.parametrize.remove_parametrizations` (or `remove_spectral_norm`)",
            told.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::formats::container::f32_info as t;

    #[test]
    fn weight_norm_axis_comes_from_g() {
        assert_eq!(weight_norm_dim(&[6, 1], &[6, 4]), Some(Some(0)));
        assert_eq!(weight_norm_dim(&[1, 4], &[6, 4]), Some(Some(1)));
        assert_eq!(weight_norm_dim(&[], &[6, 4]), Some(None));
        assert_eq!(weight_norm_dim(&[1, 1, 3], &[2, 5, 3]), Some(Some(2)));
        assert_eq!(weight_norm_dim(&[6, 4], &[6, 4]), None);
        assert_eq!(weight_norm_dim(&[6], &[6, 4]), None);
    }

    #[test]
    fn finds_both_apis_and_skips_what_it_cannot_read() {
        let infos = vec![
            t("a.parametrizations.weight_hh_l0.original0", &[12, 1]),
            t("a.parametrizations.weight_hh_l0.original1", &[12, 4]),
            t("b.weight_ih_g", &[]),
            t("b.weight_ih_v", &[12, 3]),
            t("c.parametrizations.weight.original", &[5, 7]),
            t("c.parametrizations.weight.0._u", &[5]),
            t("c.parametrizations.weight.0._v", &[7]),
            t("d.weight_orig", &[4, 2, 3]),
            t("d.weight_u", &[4]),
            t("d.weight_v", &[6]),
            // Two parametrizations chained: not read.
            t("e.parametrizations.weight.original0", &[3, 1]),
            t("e.parametrizations.weight.original1", &[3, 2]),
            t("e.parametrizations.weight.1.base", &[3, 2]),
            // An unrelated `x_g` / `x_v` pair whose shapes do not fit.
            t("f.x_g", &[3, 3]),
            t("f.x_v", &[3, 3]),
            // Present already: nothing to compute.
            t("h.weight", &[2, 2]),
            t("h.weight_g", &[2, 1]),
            t("h.weight_v", &[2, 2]),
        ];
        let mut infos = infos;
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        let mut found: Vec<(String, Reparam)> = find(&infos, Some(&[]))
            .into_iter()
            .map(|(i, how)| (i.name, how))
            .collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["a.weight_hh_l0", "b.weight_ih", "c.weight", "d.weight"]
        );
        assert!(matches!(
            found[0].1,
            Reparam::WeightNorm { dim: Some(0), .. }
        ));
        assert!(matches!(found[1].1, Reparam::WeightNorm { dim: None, .. }));
        assert!(matches!(&found[3].1, Reparam::SpectralNorm { dims, .. } if dims == &[0]));
    }

    #[test]
    fn chains_and_unknown_chains_stop_parametrizations() {
        let mut infos = vec![
            t("a.parametrizations.w.original0", &[3, 1]),
            t("a.parametrizations.w.original1", &[3, 2]),
            t("b.parametrizations.w.original0", &[3, 1]),
            t("b.parametrizations.w.original1", &[3, 2]),
            t("c.w_g", &[3, 1]),
            t("c.w_v", &[3, 2]),
        ];
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        let names = |chained| -> Vec<String> {
            let mut v: Vec<String> = find(&infos, chained)
                .into_iter()
                .map(|f| f.0.name)
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(Some(&[])), ["a.w", "b.w", "c.w"]);
        let chained = ["b.parametrizations.w".to_string()];
        assert_eq!(names(Some(&chained)), ["a.w", "c.w"]);
        // Chains unknown (an export graph that cannot be read): only the old API's hooks.
        assert_eq!(names(None), ["c.w"]);
    }

    #[test]
    fn spectral_axis_comes_from_u_and_v() {
        assert_eq!(spectral_dims(&[5, 7], &[5], &[7]), Some(vec![0]));
        assert_eq!(spectral_dims(&[5, 7], &[7], &[5]), Some(vec![1]));
        assert_eq!(spectral_dims(&[5, 7], &[6], &[7]), None);
        assert_eq!(spectral_dims(&[4, 4], &[4], &[4]), Some(vec![0, 1]));
        assert_eq!(spectral_dims(&[3, 4, 2], &[4], &[6]), Some(vec![1]));
        assert_eq!(spectral_dims(&[4, 4, 2], &[4], &[8]), Some(vec![0, 1]));
        assert_eq!(spectral_dims(&[4, 3, 4], &[4], &[12]), Some(vec![0, 2]));
        // A product that overflows is no spectral norm, not a panic.
        assert_eq!(spectral_dims(&[1 << 62, 4, 0], &[1 << 62], &[0]), None);
        assert_eq!(spectral_dims(&[1 << 62, 8], &[1 << 62], &[8]), None);
    }

    #[test]
    fn the_axis_along_u_is_chosen_or_refused() {
        // W = [[1, 2], [-0.5, 0]], v = e1: along dim 0 W v = (1, -0.5), along dim 1 (W^T) (1, 2),
        // orthogonal to each other; u along either picks that axis.
        let dev = Device::Cpu;
        let w = Tensor::new(&[[1f64, 2.], [-0.5, 0.]], &dev).unwrap();
        let v = Tensor::new(&[[1f64], [0.]], &dev).unwrap();
        let fits_for = |u: [f64; 2]| -> Vec<(f64, f64)> {
            let u = Tensor::new(&u, &dev).unwrap();
            [0, 1]
                .iter()
                .map(|&d| spectral_fit(&w, d, &u, &v).unwrap())
                .collect()
        };
        let (n0, n1) = (1.25f64.sqrt(), 5f64.sqrt());
        let sigma = choose_sigma("w", &[0, 1], &fits_for([1. / n0, -0.5 / n0])).unwrap();
        assert!((sigma - n0).abs() < 1e-12, "{sigma}");
        let sigma = choose_sigma("w", &[0, 1], &fits_for([1. / n1, 2. / n1])).unwrap();
        assert!((sigma - n1).abs() < 1e-12, "{sigma}");
        // u halfway between the two readings: not told apart.
        let e = choose_sigma("w", &[0, 1], &[(1.0, 0.8), (2.0, 0.7)])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("`w`:") && e.contains("dim 0: cosine 0.800"),
            "{e}"
        );
        // Readings that agree need no choice.
        assert_eq!(
            choose_sigma("w", &[0, 1], &[(3.0, 0.1), (3.0, 0.1)]).unwrap(),
            3.0
        );
    }

    #[test]
    fn dtypes_promote_as_in_pytorch() {
        assert_eq!(promote(DType::F16, DType::F16), Some(DType::F16));
        assert_eq!(promote(DType::F16, DType::F32), Some(DType::F32));
        assert_eq!(promote(DType::F16, DType::BF16), Some(DType::F32));
        assert_eq!(promote(DType::F32, DType::F64), Some(DType::F64));
        assert_eq!(promote(DType::U8, DType::F32), None);
    }

    #[test]
    fn weight_norm_is_computed_per_row() {
        let dev = Device::Cpu;
        let v = Tensor::new(&[[3f32, 4.], [0., 2.]], &dev).unwrap();
        let g = Tensor::new(&[[10f32], [1.]], &dev).unwrap();
        let how = Reparam::WeightNorm {
            g: "g".into(),
            v: "v".into(),
            dim: Some(0),
        };
        let w = compute("w", &how, DType::F32, |n| {
            Ok(if n == "g" { g.clone() } else { v.clone() })
        })
        .unwrap();
        assert_eq!(w.to_vec2::<f32>().unwrap(), [[6., 8.], [0., 1.]]);
    }
}
