//! Variable-length batches, as PyTorch's `pack_padded_sequence(x, lengths, enforce_sorted=False)`
//! followed by `pad_packed_sequence(..., total_length=T)` treats them.
//!
//! The batch is ordered by decreasing length once (`perm`), so that at every time step the active
//! sequences are a prefix of that order (`active[t]` of them): the recurrent matmul then runs on
//! exactly the rows that still have data, as PyTorch's packed batches do.

use candle_core::{Device, Tensor};

use crate::error::{GruError, Result};

/// Validated lengths of a batch and the order in which the kernel visits it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LengthPlan {
    /// `lengths[b]`: valid steps of batch element `b`, in `1..=seq_len`.
    pub lengths: Vec<usize>,
    /// Batch indices sorted by decreasing length (stable).
    pub perm: Vec<usize>,
    /// `active[t]`: how many sequences have a step `t`.
    pub active: Vec<usize>,
}

impl LengthPlan {
    /// All `batch` sequences run for all `seq_len` steps.
    pub fn full(batch: usize, seq_len: usize) -> Self {
        Self {
            lengths: vec![seq_len; batch],
            perm: (0..batch).collect(),
            active: vec![batch; seq_len],
        }
    }

    /// Checks `lengths` as PyTorch does: one per batch element, each in `1..=seq_len`.
    pub fn new(lengths: &[usize], batch: usize, seq_len: usize) -> Result<Self> {
        if lengths.len() != batch {
            // The most common cause: a batch-first input read as (seq, batch, feature).
            let hint = if lengths.len() == seq_len {
                format!(
                    "; the input's time axis has {seq_len} steps: is it batch-first? \
                     (Gru::with_batch_first(true), `--batch-first`)"
                )
            } else {
                String::new()
            };
            return Err(GruError::Lengths(format!(
                "expected {batch} lengths (one per batch element), got {}{hint}",
                lengths.len()
            )));
        }
        for (i, &len) in lengths.iter().enumerate() {
            if len == 0 {
                return Err(GruError::Lengths(format!(
                    "lengths[{i}] is 0: every sequence needs at least one step \
                     (PyTorch: 'Length of all samples has to be greater than 0')"
                )));
            }
            if len > seq_len {
                return Err(GruError::Lengths(format!(
                    "lengths[{i}] = {len} exceeds the sequence length {seq_len} of the input"
                )));
            }
        }
        let mut perm: Vec<usize> = (0..batch).collect();
        perm.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]));
        let active = (0..seq_len)
            .map(|t| lengths.iter().filter(|&&l| l > t).count())
            .collect();
        Ok(Self {
            lengths: lengths.to_vec(),
            perm,
            active,
        })
    }

    /// Whether every sequence runs the full length (no masking needed).
    pub fn is_full(&self) -> bool {
        self.active.iter().all(|&a| a == self.perm.len())
    }

    /// `(seq_len, batch, 1)` u8 mask, 1 where step `t` of element `b` is valid: the ops path
    /// selects with it (`where_cond`, so NaN in padding cannot leak).
    pub fn mask(&self, device: &Device) -> Result<Tensor> {
        let t_len = self.active.len();
        let batch = self.lengths.len();
        let mut m = vec![0u8; t_len * batch];
        for t in 0..t_len {
            for b in 0..batch {
                m[t * batch + b] = u8::from(self.lengths[b] > t);
            }
        }
        Ok(Tensor::from_vec(m, (t_len, batch, 1), device)?)
    }
}

/// PyTorch's `pad_sequence` with the lengths it implies: sequences `(L_i, *)` (token ids, or
/// feature rows) padded with `padding_value` to the longest, stacked to `(B, T, *)` when
/// `batch_first`, else `(T, B, *)`; ready for [`crate::Gru::forward_with_lengths`] (after an
/// embedding, for ids).
///
/// ```
/// # use candle_core::{Device, Tensor};
/// let seqs = [vec![3u32, 1, 4], vec![1, 5], vec![9, 2, 6, 5]];
/// let seqs: Vec<Tensor> = seqs
///     .iter()
///     .map(|s| Tensor::new(s.as_slice(), &Device::Cpu))
///     .collect::<candle_core::Result<_>>()?;
/// let (ids, lengths) = gru_core::pad_sequences(&seqs, true, 0.0)?;
/// assert_eq!(ids.dims(), &[3, 4]);
/// assert_eq!(lengths, vec![3, 2, 4]);
/// assert_eq!(ids.to_vec2::<u32>()?[1], vec![1, 5, 0, 0]);
/// # Ok::<(), gru_core::GruError>(())
/// ```
pub fn pad_sequences(
    sequences: &[Tensor],
    batch_first: bool,
    padding_value: f64,
) -> Result<(Tensor, Vec<usize>)> {
    let Some(first) = sequences.first() else {
        return Err(GruError::arg("sequences", "is empty: nothing to pad"));
    };
    if first.rank() == 0 {
        return Err(GruError::arg(
            "sequences",
            "holds a scalar: each sequence must be (L, *)",
        ));
    }
    let trailing = &first.dims()[1..];
    for (i, s) in sequences.iter().enumerate() {
        if s.rank() == 0 || &s.dims()[1..] != trailing || s.dtype() != first.dtype() {
            return Err(GruError::arg(
                "sequences",
                format!(
                    "[{i}] is {:?} {:?}, sequence 0 is (L, {trailing:?}) {:?}: every sequence \
                     must share the trailing dims and dtype",
                    s.dims(),
                    s.dtype(),
                    first.dtype()
                ),
            ));
        }
    }
    let lengths: Vec<usize> = sequences
        .iter()
        .map(|s| s.dim(0))
        .collect::<candle_core::Result<_>>()?;
    let t_max = lengths.iter().copied().max().unwrap_or(0);
    let padded = sequences
        .iter()
        .zip(&lengths)
        .map(|(s, &len)| {
            if len == t_max {
                return Ok(s.clone());
            }
            let mut shape = vec![t_max - len];
            shape.extend_from_slice(trailing);
            // Made on the CPU in f64 (Metal has no f64), then cast and moved.
            let pad = Tensor::full(padding_value, shape, &Device::Cpu)?
                .to_dtype(s.dtype())?
                .to_device(s.device())?;
            Tensor::cat(&[s, &pad], 0)
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
    let stacked = Tensor::stack(&padded, if batch_first { 0 } else { 1 })?;
    Ok((stacked, lengths))
}

/// Converts lengths given as a tensor (PyTorch's int64 `lengths`) to `usize`, rejecting negative
/// values and non-integer dtypes with an error that names the tensor.
pub fn lengths_from_tensor(lengths: &Tensor) -> Result<Vec<usize>> {
    use candle_core::DType;
    if lengths.rank() != 1 {
        return Err(GruError::arg(
            "lengths",
            format!("must be 1-D, got shape {:?}", lengths.dims()),
        ));
    }
    let values: Vec<i64> = match lengths.dtype() {
        DType::I64 => lengths.to_vec1::<i64>()?,
        DType::U32 | DType::U8 | DType::I32 | DType::I16 => {
            lengths.to_dtype(DType::I64)?.to_vec1::<i64>()?
        }
        other => {
            return Err(GruError::arg(
                "lengths",
                format!("must hold integers (int64 as PyTorch writes it), got {other:?}"),
            ))
        }
    };
    values
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            usize::try_from(v)
                .map_err(|_| GruError::Lengths(format!("lengths[{i}] = {v} is negative")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_first_input_read_as_seq_first_gets_a_hint() {
        // (B=25, T=6) read as (T=25, B=6) with 25 lengths.
        let e = LengthPlan::new(&[3; 25], 6, 25).unwrap_err().to_string();
        assert!(
            e.contains("expected 6 lengths") && e.contains("batch-first"),
            "{e}"
        );
        let e = LengthPlan::new(&[3; 4], 6, 25).unwrap_err().to_string();
        assert!(!e.contains("batch-first"), "{e}");
    }

    #[test]
    fn pad_sequences_pads_and_refuses_mismatches() {
        let dev = Device::Cpu;
        let a = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev).unwrap();
        let b = Tensor::new(&[[5f32, 6.]], &dev).unwrap();
        let (x, lengths) = pad_sequences(&[a.clone(), b.clone()], false, -1.0).unwrap();
        assert_eq!((x.dims(), lengths), (&[2, 2, 2][..], vec![2, 1]));
        assert_eq!(
            x.get(1).unwrap().to_vec2::<f32>().unwrap(),
            [[3., 4.], [-1., -1.]]
        );
        let c = Tensor::new(&[[1f32, 2., 3.]], &dev).unwrap();
        assert!(pad_sequences(&[a, c], true, 0.0).is_err());
        assert!(pad_sequences(&[], true, 0.0).is_err());
    }

    #[test]
    fn plan_orders_by_length() {
        let p = LengthPlan::new(&[2, 5, 1, 5], 4, 5).unwrap();
        assert_eq!(p.perm, vec![1, 3, 0, 2]);
        assert_eq!(p.active, vec![4, 3, 2, 2, 2]);
        assert!(!p.is_full());
        assert!(LengthPlan::new(&[3, 3], 2, 3).unwrap().is_full());
    }

    #[test]
    fn rejects_what_pytorch_rejects() {
        let e = LengthPlan::new(&[2, 0], 2, 3).unwrap_err().to_string();
        assert!(e.contains("lengths[1] is 0"), "{e}");
        let e = LengthPlan::new(&[4, 1], 2, 3).unwrap_err().to_string();
        assert!(e.contains("exceeds"), "{e}");
        let e = LengthPlan::new(&[1], 2, 3).unwrap_err().to_string();
        assert!(e.contains("expected 2 lengths"), "{e}");
    }

    #[test]
    fn lengths_tensor_conversion() {
        let t = Tensor::new(&[3i64, 1], &Device::Cpu).unwrap();
        assert_eq!(lengths_from_tensor(&t).unwrap(), vec![3, 1]);
        let t = Tensor::new(&[3i64, -1], &Device::Cpu).unwrap();
        assert!(lengths_from_tensor(&t).is_err());
        let t = Tensor::new(&[3f32], &Device::Cpu).unwrap();
        assert!(lengths_from_tensor(&t).is_err());
    }
}
