//! The exact answer of a case, and the verdict it allows.
//!
//! Two correct f32 implementations of a trained GRU drift apart over a long sequence (its
//! recurrent weights amplify each step's rounding), so a fixed tolerance against PyTorch's f32
//! output can fail a correct port. A case may carry the exact answer, the same model run in f64
//! by PyTorch (`output_f64`, `h_n_f64`): a case past its tolerance then passes when our output is
//! at least as close to the exact answer as PyTorch's own f32 output is (within `atol`).

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::tolerance::{distance, Tolerance};

/// The exact answer: `output` and `h_n` of the case computed in f64.
#[derive(Debug, Clone)]
pub struct Exact {
    pub output: Tensor,
    pub h_n: Option<Tensor>,
}

/// How close ours and PyTorch's f32 are to the exact answer (max |difference| over `output`
/// and `h_n`).
#[derive(Debug, Clone, Serialize)]
pub struct ExactVerdict {
    /// max |ours - exact|.
    pub ours: f64,
    /// max |PyTorch - exact|: the reference's own error.
    pub reference: f64,
    /// `ours <= reference + atol`.
    pub at_least_as_close: bool,
}

impl Exact {
    /// Checks the exact answer against the references it stands beside: f64, their shapes,
    /// and, at the first time step (`time_axis` of `output`; `None`: one step, a cell's),
    /// close to the reference as rounding allows: far from it there, it is not this model's
    /// exact answer (a case error). Later steps may drift as far as the model amplifies
    /// rounding. `Err` says why.
    pub(crate) fn check(
        output_f64: Option<Tensor>,
        h_n_f64: Option<Tensor>,
        output: &Tensor,
        h_n: Option<&Tensor>,
        time_axis: Option<usize>,
    ) -> Result<Option<Self>, String> {
        let output_f64 = match (output_f64, &h_n_f64) {
            (None, None) => return Ok(None),
            (None, Some(_)) => return Err("has `h_n_f64` but no `output_f64`".into()),
            (Some(o), _) => o,
        };
        if h_n.is_some() != h_n_f64.is_some() {
            return Err(match h_n {
                Some(_) => "has `output_f64` but no `h_n_f64` beside its `h_n`".into(),
                None => "has `h_n_f64` but no `h_n`".into(),
            });
        }
        let pairs = [
            ("output", Some(output), Some(&output_f64)),
            ("h_n", h_n, h_n_f64.as_ref()),
        ];
        for (what, reference, exact) in pairs {
            let (Some(reference), Some(exact)) = (reference, exact) else {
                continue;
            };
            if exact.dtype() != DType::F64 {
                return Err(format!(
                    "`{what}_f64` is {:?}: the exact answer must be f64",
                    exact.dtype()
                ));
            }
            if exact.dims() != reference.dims() {
                return Err(format!(
                    "`{what}_f64` has shape {:?}, `{what}` {:?}",
                    exact.dims(),
                    reference.dims()
                ));
            }
            if what != "output" {
                continue; // the final state: drifted as far as the last step has
            }
            // One step of rounding keeps an f32 (or half) reference well within a thousand times
            // its tolerance of the exact answer; another model or input is far beyond that.
            let first = |t: &Tensor| match time_axis {
                Some(axis) if t.dim(axis).is_ok_and(|n| n > 0) => t.narrow(axis, 0, 1),
                _ => Ok(t.clone()),
            };
            let (r, e) = match (first(reference), first(exact)) {
                (Ok(r), Ok(e)) => (to_f64(&r)?, to_f64(&e)?),
                (Err(err), _) | (_, Err(err)) => return Err(err.to_string()),
            };
            let base = Tolerance::for_dtype(reference.dtype());
            let reason = Tolerance::new(1000.0 * base.atol, 1000.0 * base.rtol);
            if let Some(i) = (0..e.len()).find(|&i| !reason.accepts(r[i], e[i])) {
                return Err(format!(
                    "`output_f64` disagrees with `output` at the first time step beyond \
                     rounding ({:.6e} vs {:.6e}): not the exact answer of this case's model",
                    e[i], r[i]
                ));
            }
        }
        Ok(Some(Self {
            output: output_f64,
            h_n: h_n_f64,
        }))
    }

    /// How close `output` (and `h_n`) of ours and of the reference are to the exact answer.
    pub(crate) fn verdict(
        &self,
        ours: (&Tensor, Option<&Tensor>),
        reference: (&Tensor, Option<&Tensor>),
        tol: Tolerance,
    ) -> crate::Result<ExactVerdict> {
        let error = |(out, h_n): (&Tensor, Option<&Tensor>)| -> crate::Result<f64> {
            let mut e = distance(out, &self.output)?;
            if let (Some(h), Some(x)) = (h_n, &self.h_n) {
                e = e.max(distance(h, x)?);
            }
            Ok(e)
        };
        let (ours, reference) = (error(ours)?, error(reference)?);
        Ok(ExactVerdict {
            ours,
            reference,
            at_least_as_close: ours.is_finite() && ours <= reference + tol.atol,
        })
    }
}

fn to_f64(t: &Tensor) -> Result<Vec<f64>, String> {
    t.to_dtype(DType::F64)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1::<f64>())
        .map_err(|e| e.to_string())
}
