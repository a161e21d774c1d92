//! A tensor assembled from its chunks: that they cover it exactly once (`check_cover`, then each
//! placed where its offsets say, none overlapping another).

use candle_core::DType;

/// Where a chunk lies in its tensor: its offsets and sizes.
pub(crate) type Region<'a> = (&'a [usize], &'a [usize]);

/// The chunks lie inside the tensor and hold as many elements as it has. That they do not
/// overlap (and so cover it exactly once) is checked as they are placed (`place`).
pub(crate) fn check_cover<'a>(
    shape: &[usize],
    chunks: impl IntoIterator<Item = Region<'a>>,
) -> std::result::Result<(), String> {
    let numel = |s: &[usize]| match s.contains(&0) {
        true => Ok(0),
        false => s
            .iter()
            .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
            .ok_or("a size overflows"),
    };
    let mut total = 0u64;
    for (offsets, sizes) in chunks {
        if offsets.len() != shape.len() || sizes.len() != shape.len() {
            return Err(format!(
                "a chunk of rank {} in a tensor of rank {}",
                sizes.len(),
                shape.len()
            ));
        }
        for d in 0..shape.len() {
            if offsets[d]
                .checked_add(sizes[d])
                .is_none_or(|e| e > shape[d])
            {
                return Err(format!(
                    "the chunk at {offsets:?} of size {sizes:?} reaches past its size {shape:?}"
                ));
            }
        }
        total = total
            .checked_add(numel(sizes)?)
            .ok_or("the chunks' sizes overflow")?;
    }
    if total != numel(shape)? {
        return Err(format!(
            "its chunks hold {total} elements of its {}: some are missing or repeated",
            numel(shape)?
        ));
    }
    Ok(())
}

/// A whole tensor being assembled from its chunks: its bytes, and which elements are placed.
pub(crate) struct Assembly<'a> {
    whole: Vec<u8>,
    seen: Vec<bool>,
    shape: &'a [usize],
    dtype: DType,
}

impl<'a> Assembly<'a> {
    /// Zeroed buffers for `total` bytes of `dtype` elements, or why they cannot be had.
    pub(crate) fn new(
        shape: &'a [usize],
        dtype: DType,
        total: usize,
    ) -> std::result::Result<Self, String> {
        let es = dtype.size_in_bytes();
        let mut whole: Vec<u8> = Vec::new();
        let mut seen: Vec<bool> = Vec::new();
        whole
            .try_reserve_exact(total)
            .and_then(|_| seen.try_reserve_exact(total / es))
            .map_err(|_| format!("cannot allocate its {total} bytes"))?;
        whole.resize(total, 0);
        seen.resize(total / es, false);
        Ok(Self {
            whole,
            seen,
            shape,
            dtype,
        })
    }

    /// Places the chunk at `region`, read as `got` elements of shape `got_shape` (`bytes`): it
    /// must be what the region says, and overlap no chunk placed before (see `place`).
    pub(crate) fn put(
        &mut self,
        region: Region,
        got: DType,
        got_shape: &[usize],
        bytes: &[u8],
    ) -> std::result::Result<(), String> {
        let (offsets, sizes) = region;
        if got != self.dtype || got_shape != sizes {
            return Err(format!(
                "its chunk at {offsets:?} holds {got:?} {got_shape:?}, not {:?} {sizes:?}",
                self.dtype
            ));
        }
        let es = self.dtype.size_in_bytes();
        place(
            &mut self.whole,
            &mut self.seen,
            self.shape,
            es,
            region,
            bytes,
        )
        .map_err(|at| format!("its chunk at {offsets:?} overlaps another at flat index {at}"))
    }

    /// The assembled tensor, on the CPU.
    pub(crate) fn into_tensor(self) -> candle_core::Result<candle_core::Tensor> {
        candle_core::Tensor::from_raw_buffer(
            &self.whole,
            self.dtype,
            self.shape,
            &candle_core::Device::Cpu,
        )
    }
}

/// Copies a chunk's contiguous elements (`es` bytes each) into the whole tensor's buffer,
/// marking each element in `seen`; an element already seen means two chunks overlap (`Err`
/// with its flat index).
fn place(
    whole: &mut [u8],
    seen: &mut [bool],
    shape: &[usize],
    es: usize,
    (offsets, sizes): Region,
    bytes: &[u8],
) -> std::result::Result<(), usize> {
    let rank = shape.len();
    let mut mark = |start: usize, len: usize| -> std::result::Result<(), usize> {
        for (i, s) in seen[start..start + len].iter_mut().enumerate() {
            if std::mem::replace(s, true) {
                return Err(start + i);
            }
        }
        Ok(())
    };
    if rank == 0 {
        mark(0, 1)?;
        whole.copy_from_slice(&bytes[..es]);
        return Ok(());
    }
    // An empty chunk places nothing, whatever its other sizes. A chunk with elements lies inside
    // the tensor (`check_cover`), which then has elements too: its strides fit, as it was
    // allocated.
    if sizes.contains(&0) {
        return Ok(());
    }
    // Row-major strides of the whole tensor, in elements.
    let mut stride = vec![1usize; rank];
    for d in (0..rank - 1).rev() {
        stride[d] = stride[d + 1] * shape[d + 1];
    }
    let run = sizes[rank - 1];
    let rows: usize = sizes[..rank - 1].iter().product();
    let mut idx = vec![0usize; rank - 1];
    for row in 0..rows {
        let start: usize = (0..rank - 1)
            .map(|d| (offsets[d] + idx[d]) * stride[d])
            .sum::<usize>()
            + offsets[rank - 1];
        mark(start, run)?;
        whole[start * es..(start + run) * es]
            .copy_from_slice(&bytes[row * run * es..(row + 1) * run * es]);
        for d in (0..rank - 1).rev() {
            idx[d] += 1;
            if idx[d] < sizes[d] {
                break;
            }
            idx[d] = 0;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::formats::dcp::metadata::Chunk;

    fn chunk(offsets: &[usize], sizes: &[usize]) -> Chunk {
        Chunk {
            file: "s".into(),
            range: 0..0,
            offsets: offsets.to_vec(),
            sizes: sizes.to_vec(),
        }
    }

    #[test]
    fn chunks_must_cover_the_tensor_once() {
        let rows = [chunk(&[0, 0], &[2, 3]), chunk(&[2, 0], &[1, 3])];
        assert_eq!(check_cover(&[3, 3], rows.iter().map(Chunk::region)), Ok(()));
        let gap = [chunk(&[0, 0], &[2, 3])];
        assert!(check_cover(&[3, 3], gap.iter().map(Chunk::region))
            .unwrap_err()
            .contains("missing"));
        let past = [chunk(&[0, 0], &[4, 3])];
        assert!(check_cover(&[3, 3], past.iter().map(Chunk::region))
            .unwrap_err()
            .contains("past"));
        let huge = [chunk(&[usize::MAX, 0], &[2, 3])];
        assert!(check_cover(&[3, 3], huge.iter().map(Chunk::region)).is_err());
        // Overlapping and missing in equal measure passes the count, and fails when placed.
        let both = [chunk(&[0, 0], &[2, 3]), chunk(&[1, 0], &[1, 3])];
        assert_eq!(check_cover(&[3, 3], both.iter().map(Chunk::region)), Ok(()));
        let (mut whole, mut seen) = (vec![0u8; 9], vec![false; 9]);
        place(&mut whole, &mut seen, &[3, 3], 1, both[0].region(), &[0; 6]).unwrap();
        assert_eq!(
            place(&mut whole, &mut seen, &[3, 3], 1, both[1].region(), &[0; 3]),
            Err(3)
        );
    }

    #[test]
    fn empty_chunks_place_nothing_whatever_their_sizes() {
        let big = 1usize << 62;
        let empty = chunk(&[0, 0, 0], &[0, big, 4]);
        assert_eq!(
            place(&mut [], &mut [], &[0, big, 4], 4, empty.region(), &[]),
            Ok(())
        );
        let flat = [chunk(&[0, 0, 0], &[1 << 40, 1 << 40, 0])];
        assert_eq!(
            check_cover(&[1 << 40, 1 << 40, 0], flat.iter().map(Chunk::region)),
            Ok(())
        );
    }

    #[test]
    fn chunks_land_where_their_offsets_say() {
        // A 3 x 4 tensor of bytes 0..12 as two column chunks (cols 0-1, cols 2-3).
        let left = chunk(&[0, 0], &[3, 2]);
        let right = chunk(&[0, 2], &[3, 2]);
        let (mut whole, mut seen) = (vec![0u8; 12], vec![false; 12]);
        place(
            &mut whole,
            &mut seen,
            &[3, 4],
            1,
            left.region(),
            &[0, 1, 4, 5, 8, 9],
        )
        .unwrap();
        place(
            &mut whole,
            &mut seen,
            &[3, 4],
            1,
            right.region(),
            &[2, 3, 6, 7, 10, 11],
        )
        .unwrap();
        assert_eq!(whole, (0..12).collect::<Vec<u8>>());
        assert!(seen.iter().all(|&s| s));
        // Rows of 2-byte elements, the second chunk shorter.
        let (mut whole, mut seen) = (vec![0u8; 12], vec![false; 6]);
        let top = chunk(&[0, 0], &[2, 2]);
        place(
            &mut whole,
            &mut seen,
            &[3, 2],
            2,
            top.region(),
            &[1, 1, 2, 2, 3, 3, 4, 4],
        )
        .unwrap();
        place(
            &mut whole,
            &mut seen,
            &[3, 2],
            2,
            chunk(&[2, 0], &[1, 2]).region(),
            &[5, 5, 6, 6],
        )
        .unwrap();
        assert_eq!(whole, [1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]);
    }
}
