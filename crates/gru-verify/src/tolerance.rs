//! `Tolerance` and the element-wise comparison of two tensors.

use candle_core::{DType, Tensor};
use serde::Serialize;

use crate::error::Result;

/// Pass iff `|a - b| <= atol + rtol * |b|` for every element (`b` the reference). NaN or Inf
/// never passes, on either side: a reference holding one is a broken reference, and ours holding
/// one is a broken result, even when both agree.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Tolerance {
    pub atol: f64,
    pub rtol: f64,
}

impl Tolerance {
    pub fn new(atol: f64, rtol: f64) -> Self {
        Self { atol, rtol }
    }

    /// Checks a tolerance from a user (finite, >= 0); `Err` says why not.
    pub fn check(name: &str, value: f64) -> std::result::Result<f64, String> {
        if value.is_finite() && value >= 0.0 {
            Ok(value)
        } else {
            Err(format!(
                "{name} = {value} is not a tolerance: it must be finite and >= 0"
            ))
        }
    }

    /// Defaults per dtype: f64 1e-10/1e-8, f32 1e-5/1e-4, f16 1e-2/1e-2, bf16 5e-2/5e-2.
    pub fn for_dtype(dtype: DType) -> Self {
        match dtype {
            DType::F64 => Self::new(1e-10, 1e-8),
            DType::F16 => Self::new(1e-2, 1e-2),
            DType::BF16 => Self::new(5e-2, 5e-2),
            _ => Self::new(1e-5, 1e-4),
        }
    }

    /// Whether `actual` matches `expected`.
    pub fn accepts(&self, actual: f64, expected: f64) -> bool {
        actual.is_finite()
            && expected.is_finite()
            && (actual - expected).abs() <= self.atol + self.rtol * expected.abs()
    }
}

/// The outcome of comparing one tensor with its reference.
#[derive(Debug, Clone, Serialize)]
pub struct Comparison {
    pub name: String,
    pub shape: Vec<usize>,
    pub expected_shape: Vec<usize>,
    /// Largest `|a - b|` over finite pairs.
    pub max_abs: f64,
    /// Largest `|a - b| / |b|` over finite pairs with `b != 0`.
    pub max_rel: f64,
    /// Index of the element with the largest `|a - b|`.
    pub worst_index: Vec<usize>,
    /// Index of the first element (row-major) outside the tolerance.
    pub first_mismatch: Option<Vec<usize>>,
    pub mismatches: usize,
    pub passed: bool,
}

fn unravel(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = flat % shape[d].max(1);
        flat /= shape[d].max(1);
    }
    idx
}

/// The largest `|a - b|`, infinite when either holds NaN or Inf or the shapes differ: a
/// distance under which nothing broken is ever "close" (the exact-answer verdict's measure).
pub fn distance(a: &Tensor, b: &Tensor) -> Result<f64> {
    let c = compare("", a, b, Tolerance::new(f64::INFINITY, 0.0))?;
    Ok(if c.mismatches > 0 {
        f64::INFINITY
    } else {
        c.max_abs
    })
}

/// Compares `actual` with `expected` element-wise in f64. A shape mismatch is a failure that
/// names both shapes.
pub fn compare(
    name: &str,
    actual: &Tensor,
    expected: &Tensor,
    tol: Tolerance,
) -> Result<Comparison> {
    let shape = actual.dims().to_vec();
    let expected_shape = expected.dims().to_vec();
    let mut c = Comparison {
        name: name.to_string(),
        shape: shape.clone(),
        expected_shape: expected_shape.clone(),
        max_abs: 0.0,
        max_rel: 0.0,
        worst_index: vec![],
        first_mismatch: None,
        mismatches: 0,
        passed: false,
    };
    if shape != expected_shape {
        c.mismatches = expected.elem_count().max(actual.elem_count());
        return Ok(c);
    }
    let a = actual
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let b = expected
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?;
    let mut worst = None;
    for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
        if x.is_finite() && y.is_finite() {
            let d = (x - y).abs();
            if worst.is_none() || d > c.max_abs {
                c.max_abs = d;
                worst = Some(i);
            }
            if y != 0.0 {
                c.max_rel = c.max_rel.max(d / y.abs());
            }
        }
        if !tol.accepts(x, y) {
            c.mismatches += 1;
            if c.first_mismatch.is_none() {
                c.first_mismatch = Some(unravel(i, &shape));
            }
            if !(x.is_finite() && y.is_finite()) {
                c.max_abs = f64::INFINITY;
                worst = Some(i);
            }
        }
    }
    c.worst_index = worst.map(|i| unravel(i, &shape)).unwrap_or_default();
    c.passed = c.mismatches == 0;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn rule_and_nan() {
        let t = Tolerance::new(1e-5, 1e-4);
        assert!(t.accepts(1.0 + 1e-5, 1.0));
        assert!(!t.accepts(1.0 + 2e-4, 1.0));
        assert!(!t.accepts(f64::NAN, 1.0));
        assert!(!t.accepts(1.0, f64::NAN));
        assert!(!t.accepts(f64::INFINITY, 1.0));
        assert!(!t.accepts(f64::NAN, f64::NAN));
        assert!(!t.accepts(f64::INFINITY, f64::INFINITY));
        // Even an infinite tolerance passes no NaN.
        assert!(!Tolerance::new(f64::INFINITY, 0.0).accepts(f64::NAN, 1.0));
        assert!(Tolerance::check("atol", f64::INFINITY).is_err());
        assert!(Tolerance::check("rtol", -1.0).is_err());
        assert!(Tolerance::check("rtol", f64::NAN).is_err());
    }

    #[test]
    fn compare_finds_first_and_worst() {
        let e = Tensor::new(&[[0f32, 1.0], [2.0, 3.0]], &Device::Cpu).unwrap();
        let a = Tensor::new(&[[0f32, 1.0], [2.5, 3.9]], &Device::Cpu).unwrap();
        let c = compare("x", &a, &e, Tolerance::for_dtype(DType::F32)).unwrap();
        assert!(!c.passed);
        assert_eq!(c.first_mismatch, Some(vec![1, 0]));
        assert_eq!(c.worst_index, vec![1, 1]);
        assert_eq!(c.mismatches, 2);
        let s = Tensor::new(&[0f32, 1.0], &Device::Cpu).unwrap();
        assert!(
            !compare("x", &s, &e, Tolerance::for_dtype(DType::F32))
                .unwrap()
                .passed
        );
    }
}
