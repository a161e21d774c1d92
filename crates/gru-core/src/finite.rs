//! Finding NaN and Inf in a tensor without copying it whole: inputs, weights and references are
//! checked before use (a NaN in would be NaN out, silently), and a check that converted an 860 MB
//! input to f64 at once needed five times its size.

use candle_core::{DType, Tensor};

use crate::error::Result;

/// Values read at once (8 MiB of f64 at most).
const CHUNK: usize = 1 << 20;

/// The flat (row-major) index of the first NaN or Inf in `t`, if any; integer tensors have none.
/// Reads `t` in chunks of at most [`CHUNK`] values along its leading dimensions, so it never
/// holds more than one chunk's copy, whatever the tensor's size, layout or device.
pub fn first_non_finite(t: &Tensor) -> Result<Option<usize>> {
    if !t.dtype().is_float() || t.elem_count() == 0 {
        return Ok(None);
    }
    if t.rank() == 0 {
        return scan(&t.reshape(1)?);
    }
    let rows = t.dim(0)?;
    let per_row = t.elem_count() / rows;
    let step = (CHUNK / per_row).max(1);
    let mut start = 0;
    while start < rows {
        let n = step.min(rows - start);
        let chunk = t.narrow(0, start, n)?;
        let found = if per_row > CHUNK {
            // One row is more than a chunk: look inside it.
            first_non_finite(&chunk.squeeze(0)?)?
        } else {
            scan(&chunk.flatten_all()?)?
        };
        if let Some(i) = found {
            return Ok(Some(start * per_row + i));
        }
        start += n;
    }
    Ok(None)
}

/// The first non-finite value of a 1-D tensor of at most a chunk.
fn scan(flat: &Tensor) -> Result<Option<usize>> {
    let at = |v: &[f64]| v.iter().position(|x| !x.is_finite());
    Ok(match flat.dtype() {
        DType::F32 => flat.to_vec1::<f32>()?.iter().position(|x| !x.is_finite()),
        DType::F64 => at(&flat.to_vec1::<f64>()?),
        // f16, bf16 (and 8-bit floats): every value of theirs is exact in f32.
        _ => flat
            .to_dtype(DType::F32)?
            .to_vec1::<f32>()?
            .iter()
            .position(|x| !x.is_finite()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn finds_the_first_non_finite_value_in_any_layout() {
        let dev = Device::Cpu;
        let mut v = vec![1f32; 3 * 5 * 7];
        v[2 * 35 + 4 * 7 + 6] = f32::NAN;
        let t = Tensor::from_vec(v, (3, 5, 7), &dev).unwrap();
        assert_eq!(first_non_finite(&t).unwrap(), Some(2 * 35 + 4 * 7 + 6));
        // Transposed (not contiguous): the index is of the transposed tensor's order.
        let tt = t.transpose(0, 1).unwrap();
        assert_eq!(first_non_finite(&tt).unwrap(), Some(4 * 21 + 2 * 7 + 6));
        for dt in [DType::F16, DType::BF16, DType::F64] {
            let c = t.to_dtype(dt).unwrap();
            assert_eq!(
                first_non_finite(&c).unwrap(),
                Some(2 * 35 + 4 * 7 + 6),
                "{dt:?}"
            );
        }
        let ok = Tensor::ones((2, 3), DType::F32, &dev).unwrap();
        assert_eq!(first_non_finite(&ok).unwrap(), None);
        let inf = Tensor::new(f32::INFINITY, &dev).unwrap();
        assert_eq!(first_non_finite(&inf).unwrap(), Some(0));
        // A row longer than a chunk is searched inside.
        let mut big = vec![0f32; 2 * (CHUNK + 3)];
        big[CHUNK + 3 + CHUNK + 1] = f32::NEG_INFINITY;
        let big = Tensor::from_vec(big, (2, CHUNK + 3), &dev).unwrap();
        assert_eq!(first_non_finite(&big).unwrap(), Some(2 * CHUNK + 4));
    }
}
