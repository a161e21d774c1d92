//! The largest elementwise difference of two tensors, in f64 whatever their dtype.

use candle_core::{DType, Tensor};

/// max |a - b| over all elements (same shape, any float dtype).
pub fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
