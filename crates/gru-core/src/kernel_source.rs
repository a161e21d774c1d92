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

/// Work items (row x group of 4 batch rows) a block aims for: enough to fill 8 warps, few enough
/// that a step stays short (the recurrence is latency-bound at small batch).
const ITEMS_PER_BLOCK: usize = 256;

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
        if batch == 0 || hidden == 0 || directions == 0 || sm_count < directions {
            return None;
        }
        let bp = batch.checked_add(3)? / 4 * 4;
        let groups = bp / 4;
        let mut units = ITEMS_PER_BLOCK.div_ceil(3 * groups).clamp(1, hidden);
        // Every direction's blocks must be co-resident: at most one block per SM here.
        let max_blocks = sm_count / directions;
        if hidden.div_ceil(units) > max_blocks {
            units = hidden.div_ceil(max_blocks);
        }
        // Shared memory: Ws (H, 3U) + hs (H, Bp) + gs (3U, Bp).
        let budget = max_smem / elem_size;
        let fixed = hidden.checked_mul(bp)?;
        let per_unit = 3 * (hidden + bp);
        let max_units = budget.checked_sub(fixed)? / per_unit;
        if max_units == 0 {
            return None;
        }
        units = units.min(max_units);
        let blocks = hidden.div_ceil(units);
        if blocks > max_blocks {
            return None;
        }
        let elems = 3 * units * hidden + fixed + 3 * units * bp;
        let work = (3 * units * groups).max(units * batch);
        let threads = work.div_ceil(32).clamp(1, 8) * 32;
        // 32-bit kernel arithmetic: B * H and the barrier target T * nb.
        let i32_max = i32::MAX as usize;
        let fits = batch.checked_mul(hidden)? <= i32_max
            && (3 * units).checked_mul(groups)? <= i32_max
            && seq_len.checked_mul(blocks)? <= u32::MAX as usize
            && seq_len <= i32_max
            && directions.checked_mul(3 * hidden)? <= i32_max;
        fits.then_some(Self {
            units,
            blocks_per_direction: blocks,
            threads,
            smem_bytes: elems * elem_size,
        })
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
        }
    }

    #[test]
    fn layers_that_do_not_fit_fall_back() {
        // h alone (H x B) exceeds shared memory.
        assert!(PersistentPlan::new(10, 1024, 1024, 1, 4, H100.0, H100.1).is_none());
        // Too many units for the SMs' shared memory.
        assert!(PersistentPlan::new(10, 4, 8192, 2, 4, H100.0, H100.1).is_none());
        // The barrier counter would wrap.
        assert!(PersistentPlan::new(usize::MAX / 2, 4, 256, 1, 4, H100.0, H100.1).is_none());
        assert!(PersistentPlan::new(10, 0, 16, 1, 4, H100.0, H100.1).is_none());
    }
}
