//! The CUDA kernels' source text and the launch geometry of the persistent kernel: both are plain
//! data, available without the `cuda` feature, so that the test `cuda_kernel_source` can compile
//! the exact text NVRTC gets as host C++ and launch it the way the CUDA path does.

/// The CUDA C++ source that NVRTC compiles (gate step and persistent layer, f32 and f64).
pub const CUDA_SOURCE: &str = include_str!("kernels/gru.cu");

/// Threads per block of the per-step gate kernel (one thread per batch row and hidden unit).
pub const GATE_BLOCK: usize = 256;

/// How one layer runs as a single persistent launch: `blocks_per_direction` blocks per direction,
/// each owning `units` hidden units with their `W_hh` rows in `smem_bytes` of shared memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistentPlan {
    pub units: usize,
    pub blocks_per_direction: usize,
    pub threads: usize,
    pub smem_bytes: usize,
}

/// Work items (row x group of 4 batch rows) a block aims for by default: enough to fill 8 warps,
/// few enough that a step stays short (the recurrence is latency-bound at small batch). Fewer
/// items mean more blocks: shorter steps, a wider grid barrier.
pub const ITEMS_PER_BLOCK: usize = 256;

/// Threads per block at most by default: each thread holds one gate item and one row item.
pub const MAX_THREADS: usize = 256;

impl PersistentPlan {
    /// The plan for `batch` rows, `hidden` units and `directions` of `elem_size`-byte values on a
    /// device with `sm_count` multiprocessors and `max_smem` bytes of shared memory per block; or
    /// `None` when the layer does not fit on chip (or a kernel index could overflow 32 bits), in
    /// which case the per-step path runs.
    pub fn new(
        seq_len: usize,
        batch: usize,
        hidden: usize,
        directions: usize,
        elem_size: usize,
        sm_count: usize,
        max_smem: usize,
    ) -> Option<Self> {
        Self::with_items(
            seq_len,
            batch,
            hidden,
            directions,
            elem_size,
            sm_count,
            max_smem,
            ITEMS_PER_BLOCK,
            MAX_THREADS,
        )
    }

    /// As [`PersistentPlan::new`], aiming for `items` work items per block, with at most
    /// `max_threads` threads per block.
    pub fn with_items(
        seq_len: usize,
        batch: usize,
        hidden: usize,
        directions: usize,
        elem_size: usize,
        sm_count: usize,
        max_smem: usize,
        items: usize,
        max_threads: usize,
    ) -> Option<Self> {
        let max_threads = max_threads / 32 * 32;
        if batch == 0 || hidden == 0 || directions == 0 || sm_count < directions {
            return None;
        }
        if batch > max_threads || hidden > i32::MAX as usize / 4 {
            return None;
        }
        let groups = batch.div_ceil(4);
        let mut units = items
            .max(1)
            .div_ceil(3 * groups)
            .min(max_threads / batch)
            .min(max_threads / (3 * groups))
            .clamp(1, hidden);
        // Every direction's blocks must be co-resident: at most one block per SM here.
        let max_blocks = sm_count / directions;
        if hidden.div_ceil(units) > max_blocks {
            units = hidden.div_ceil(max_blocks);
        }
        let (h4, s, bp) = Self::padded(hidden, batch);
        let budget = max_smem / elem_size;
        let fixed = h4 * bp;
        let max_units = budget.checked_sub(fixed)? / (3 * (s + bp));
        units = units.min(max_units);
        if units == 0 {
            return None;
        }
        let blocks = hidden.div_ceil(units);
        let work = (units * batch).max(3 * units * groups);
        if blocks > max_blocks || work > max_threads {
            return None;
        }
        // 32-bit kernel arithmetic: the barrier target T * nb, the step index, G = 3DH.
        let fits = seq_len.checked_mul(blocks)? <= u32::MAX as usize
            && seq_len <= i32::MAX as usize
            && directions.checked_mul(3 * hidden)? <= i32::MAX as usize;
        fits.then_some(Self {
            units,
            blocks_per_direction: blocks,
            threads: work.div_ceil(32) * 32,
            smem_bytes: Self::smem_bytes(hidden, batch, units, elem_size),
        })
    }

    /// `(H4, S, Bp)`: hidden size rounded up to 4, the row stride of `Ws` (`H4`, plus 4 when
    /// `H4 / 4` is even, so that 16-byte row reads hit distinct banks), batch rounded up to 4.
    fn padded(hidden: usize, batch: usize) -> (usize, usize, usize) {
        let h4 = hidden.div_ceil(4) * 4;
        let s = if (h4 / 4) % 2 == 0 { h4 + 4 } else { h4 };
        (h4, s, batch.div_ceil(4) * 4)
    }

    /// Shared memory of a block with `units` units: `Ws (3U, S) + hs (H4, Bp) + gs (3U, Bp)`.
    pub fn smem_bytes(hidden: usize, batch: usize, units: usize, elem_size: usize) -> usize {
        let (h4, s, bp) = Self::padded(hidden, batch);
        (3 * units * s + h4 * bp + 3 * units * bp) * elem_size
    }

    /// Blocks in the whole grid.
    pub fn grid(&self, directions: usize) -> usize {
        self.blocks_per_direction * directions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H100: (usize, usize) = (132, 227 * 1024);

    #[test]
    fn small_layers_run_in_one_block() {
        let p = PersistentPlan::new(50, 1, 32, 1, 4, H100.0, H100.1).unwrap();
        assert_eq!((p.units, p.blocks_per_direction, p.threads), (32, 1, 96));
        // One gate item and one row item per thread.
        let p = PersistentPlan::new(2000, 8, 128, 1, 4, H100.0, H100.1).unwrap();
        assert_eq!((p.units, p.blocks_per_direction, p.threads), (32, 4, 256));
    }

    #[test]
    fn blocks_cover_every_unit_within_the_sm_count() {
        for (b, h, d) in [
            (8, 128, 1),
            (32, 256, 2),
            (64, 512, 1),
            (16, 700, 2),
            (3, 7, 2),
        ] {
            let p = PersistentPlan::new(100, b, h, d, 4, H100.0, H100.1).unwrap();
            assert!(p.units * p.blocks_per_direction >= h, "{p:?}");
            assert!((p.blocks_per_direction - 1) * p.units < h, "{p:?}");
            assert!(p.grid(d) <= H100.0, "{p:?}");
            assert!(p.smem_bytes <= H100.1, "{p:?}");
            assert!(p.threads >= 32 && p.threads <= 256 && p.threads % 32 == 0);
            assert!(p.units * b <= p.threads && 3 * p.units * b.div_ceil(4) <= p.threads);
        }
    }

    #[test]
    fn layers_that_do_not_fit_fall_back() {
        // h alone (H x B) exceeds shared memory.
        assert!(PersistentPlan::new(10, 200, 1024, 1, 4, H100.0, H100.1).is_none());
        // More batch rows than threads.
        assert!(PersistentPlan::new(10, 1024, 16, 1, 4, H100.0, H100.1).is_none());
        // Too many units for the SMs' shared memory.
        assert!(PersistentPlan::new(10, 4, 8192, 2, 4, H100.0, H100.1).is_none());
        // The barrier counter would wrap.
        assert!(PersistentPlan::new(usize::MAX / 2, 4, 256, 1, 4, H100.0, H100.1).is_none());
        assert!(PersistentPlan::new(10, 0, 16, 1, 4, H100.0, H100.1).is_none());
    }
}
