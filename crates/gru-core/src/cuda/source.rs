//! The CUDA kernels' source text and the launch geometry of the persistent kernel: both are plain
//! data, available without the `cuda` feature, so that the test `cuda_kernel_source` can compile
//! the exact text NVRTC gets as host C++ and launch it the way the CUDA path does.

/// The CUDA C++ source that NVRTC compiles (gate step and persistent layer, f32 and f64).
pub const CUDA_SOURCE: &str = include_str!("gru.cu");

/// Threads per block of the per-step gate kernel (one thread per batch row and hidden unit).
pub const GATE_BLOCK: usize = 256;

/// What the persistent kernel's plan needs to know about the GPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuLimits {
    /// Multiprocessors (0 without cooperative launch).
    pub sm_count: usize,
    /// Shared memory a block may opt in to, in bytes.
    pub max_smem: usize,
    /// Threads per block the grid-barrier kernel can run with (its registers allowing).
    pub max_threads: usize,
    /// Threads per block the cluster kernels can run with; 0 when there are none (compute
    /// capability below 9.0, or their program was refused).
    pub cluster_max_threads: usize,
}

/// The layer a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerShape {
    pub seq_len: usize,
    pub batch: usize,
    pub hidden: usize,
    pub directions: usize,
    /// Bytes per value (4 for f32, 8 for f64).
    pub elem_size: usize,
}

/// Knobs of the plan (benchmarks set them through `GRU_PERSISTENT_*`; see `layer.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuning {
    /// Work items (row x group of 4 batch rows) a block aims for without clusters.
    pub items: usize,
    /// Threads per block at most for one gate item and one row item per thread.
    pub max_threads: usize,
    /// Column slices per row item; `None`: the plan's choice.
    pub k_split: Option<usize>,
    /// Blocks per cluster: `None` the plan's choice (clusters where the GPU has them and a
    /// direction needs more than one block), `Some(0)` never, `Some(n)` exactly `n` (2, 4 or 8).
    pub cluster: Option<usize>,
    /// A cluster plan exchanges `h` by `st.async` stores counted on mbarriers instead of at the
    /// cluster barrier (see `gru.cu`); no effect without a cluster.
    pub async_exchange: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            items: ITEMS_PER_BLOCK,
            max_threads: MAX_THREADS,
            k_split: None,
            cluster: None,
            async_exchange: false,
        }
    }
}

/// How one layer runs as a single persistent launch: `blocks_per_direction` blocks per direction,
/// each owning `units` hidden units with their `W_hh` rows in `smem_bytes` of shared memory, each
/// row of `gh` summed by `k_split` threads over slices of the columns; `cluster` > 0: the blocks
/// of a direction are one thread-block cluster (`gru_persist_cluster<n>_*`), else they meet at a
/// grid barrier (`gru_persist_*`, cooperative launch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PersistentPlan {
    pub units: usize,
    pub blocks_per_direction: usize,
    pub threads: usize,
    pub smem_bytes: usize,
    pub k_split: usize,
    pub cluster: usize,
    /// The cluster exchanges `h` by `st.async` and mbarriers (`Tuning::async_exchange`).
    pub async_exchange: bool,
}

/// Work items (row x group of 4 batch rows) a block aims for by default: enough to fill 8 warps,
/// few enough that a step stays short (the recurrence is latency-bound at small batch). Fewer
/// items mean more blocks: shorter steps, a wider grid barrier.
pub const ITEMS_PER_BLOCK: usize = 256;

/// Threads per block at most by default for one gate item and one row item per thread.
pub const MAX_THREADS: usize = 256;

/// Threads per block the column split may grow a block to by default: each row item's chain of
/// dependent adds gets `k_split` times shorter, the block's barriers a little longer.
pub const K_SPLIT_THREADS: usize = 1024;

/// Column splits the plan picks from by default, most first (on an H200 a split of 4 was the
/// fastest of 1, 2 and 4 for long, medium and a 256-unit layer at batch 16; 8 was no faster).
const K_SPLITS: [usize; 3] = [4, 2, 1];

/// The cluster sizes there are kernels for.
pub const CLUSTER_SIZES: [usize; 3] = [2, 4, 8];

impl PersistentPlan {
    /// The plan for `batch` rows, `hidden` units and `directions` of `elem_size`-byte values on a
    /// device with `sm_count` multiprocessors and `max_smem` bytes of shared memory per block,
    /// without clusters, with the default tuning; or `None` when the layer does not fit on chip
    /// (or a kernel index could overflow 32 bits), in which case the per-step path runs.
    pub fn new(
        seq_len: usize,
        batch: usize,
        hidden: usize,
        directions: usize,
        elem_size: usize,
        sm_count: usize,
        max_smem: usize,
    ) -> Option<Self> {
        let shape = LayerShape {
            seq_len,
            batch,
            hidden,
            directions,
            elem_size,
        };
        let gpu = GpuLimits {
            sm_count,
            max_smem,
            max_threads: 1024,
            cluster_max_threads: 0,
        };
        Self::plan(shape, gpu, Tuning::default())
    }

    /// The plan for `shape` on `gpu` with `tuning`: a cluster plan where clusters apply and fit,
    /// else a grid-barrier plan; `None` when neither fits.
    pub fn plan(shape: LayerShape, gpu: GpuLimits, tuning: Tuning) -> Option<Self> {
        let LayerShape {
            seq_len,
            batch,
            hidden,
            directions,
            ..
        } = shape;
        if batch == 0 || hidden == 0 || directions == 0 || gpu.sm_count < directions {
            return None;
        }
        // 32-bit kernel arithmetic: the step index, G = 3DH, B * H (the barrier target in `fit`).
        let fits_32 = seq_len <= i32::MAX as usize
            && hidden <= i32::MAX as usize / 4
            && directions.checked_mul(3 * hidden)? <= i32::MAX as usize
            && batch.checked_mul(hidden)? <= i32::MAX as usize;
        if !fits_32 {
            return None;
        }
        let clusters = gpu.cluster_max_threads > 0;
        let grid = Self::grid_units(shape, gpu, tuning);
        // By default a cluster only where the grid plan already has 2-8 blocks per direction
        // (fewer, larger blocks than that plan would be a different trade, not yet measured),
        // and then the largest that fits: on an H200, long (4 blocks by the grid plan) ran in
        // 4.3 ms as a cluster of 8, 5.9 ms as one of 4, 8.0 ms with the grid barrier.
        let candidates: Vec<usize> = match tuning.cluster {
            Some(0) => Vec::new(),
            Some(n) if !clusters || !CLUSTER_SIZES.contains(&n) => return None,
            Some(n) => vec![n],
            None if !clusters => Vec::new(),
            None => match grid {
                Some((_, blocks)) if blocks > 1 => CLUSTER_SIZES
                    .into_iter()
                    .rev()
                    .filter(|&c| c >= blocks)
                    .collect(),
                _ => Vec::new(),
            },
        };
        let limit = gpu.cluster_max_threads / 32 * 32;
        for &n in &candidates {
            let units = hidden.div_ceil(n);
            let plan = (n <= gpu.sm_count)
                .then(|| Self::fit(shape, gpu.max_smem, tuning, (units, n, n), limit, limit))
                .flatten();
            // Forced: that cluster or nothing; chosen: the next size, then the grid barrier.
            if plan.is_some() || tuning.cluster.is_some() {
                return plan;
            }
        }
        let (units, _) = grid?;
        // Fewer units per block when shared memory is short (each block then holds less).
        let (h4, s, bp) = Self::padded(hidden, batch);
        let budget = gpu.max_smem / shape.elem_size;
        let max_units = budget.checked_sub(h4 * bp)? / (3 * (s + bp));
        let units = units.min(max_units);
        if units == 0 {
            return None;
        }
        let blocks = hidden.div_ceil(units);
        if blocks > gpu.sm_count / directions {
            return None;
        }
        let limit = gpu.max_threads / 32 * 32;
        let items = tuning.max_threads.min(limit);
        Self::fit(
            shape,
            gpu.max_smem,
            tuning,
            (units, blocks, 0),
            items,
            limit,
        )
    }

    /// Units and blocks per direction of a grid-barrier plan before shared memory is counted:
    /// about `tuning.items` work items per block, at most one block per SM.
    fn grid_units(shape: LayerShape, gpu: GpuLimits, tuning: Tuning) -> Option<(usize, usize)> {
        let LayerShape { batch, hidden, .. } = shape;
        let max_threads = tuning.max_threads.min(gpu.max_threads) / 32 * 32;
        if batch > max_threads {
            return None;
        }
        let groups = batch.div_ceil(4);
        let mut units = tuning
            .items
            .max(1)
            .div_ceil(3 * groups)
            .min(max_threads / batch)
            .min(max_threads / (3 * groups))
            .clamp(1, hidden);
        // Every direction's blocks must be co-resident: at most one block per SM here.
        let max_blocks = gpu.sm_count / shape.directions;
        if hidden.div_ceil(units) > max_blocks {
            units = hidden.div_ceil(max_blocks);
        }
        Some((units, hidden.div_ceil(units)))
    }

    /// The plan with `(units per block, blocks per direction, cluster)` (cluster 0: none) and the
    /// column split as tuned (or the most that keeps row items within `K_SPLIT_THREADS`, or the
    /// gate items where they are more, and slices of at least 16 columns), if the gate and row
    /// items before the split fit in `items` threads, all threads in `limit` (the kernel's) and
    /// its shared memory in `max_smem`.
    fn fit(
        shape: LayerShape,
        max_smem: usize,
        tuning: Tuning,
        (units, blocks, cluster): (usize, usize, usize),
        items: usize,
        limit: usize,
    ) -> Option<Self> {
        let LayerShape { batch, hidden, .. } = shape;
        // The grid barrier's target, T * nb, is a u32.
        if shape.seq_len.checked_mul(blocks)? > u32::MAX as usize {
            return None;
        }
        let gate_items = units.checked_mul(batch)?;
        let row_items = 3 * units * batch.div_ceil(4);
        if gate_items.max(row_items) > items {
            return None;
        }
        let (h4, _, _) = Self::padded(hidden, batch);
        let cap = gate_items.max(K_SPLIT_THREADS).min(limit);
        let candidates: Vec<usize> = match tuning.k_split {
            Some(k) => vec![k.clamp(1, h4 / 4)],
            None => K_SPLITS
                .into_iter()
                .filter(|&k| k == 1 || (row_items * k <= cap && h4 / k >= 16))
                .collect(),
        };
        candidates.into_iter().find_map(|k_split| {
            let threads = gate_items.max(row_items * k_split).div_ceil(32) * 32;
            let smem =
                Self::smem_bytes(hidden, batch, units, k_split, cluster > 0, shape.elem_size);
            (threads <= limit && smem <= max_smem).then_some(Self {
                units,
                blocks_per_direction: blocks,
                threads,
                smem_bytes: smem,
                k_split,
                cluster,
                async_exchange: cluster > 0 && tuning.async_exchange,
            })
        })
    }

    /// `(H4, S, Bp)`: hidden size rounded up to 4, the row stride of `Ws` (`H4`, plus 4 when
    /// `H4 / 4` is even, so that 16-byte row reads hit distinct banks), batch rounded up to 4.
    fn padded(hidden: usize, batch: usize) -> (usize, usize, usize) {
        let h4 = hidden.div_ceil(4) * 4;
        let s = if (h4 / 4).is_multiple_of(2) {
            h4 + 4
        } else {
            h4
        };
        (h4, s, batch.div_ceil(4) * 4)
    }

    /// Shared memory of a block with `units` units:
    /// `Ws (3U, S) + hs (NH, H4, Bp) + gs (k_split, Bp, 3U)`, NH = 2 in a cluster, else 1; a
    /// cluster's two 8-byte mbarriers after them.
    pub fn smem_bytes(
        hidden: usize,
        batch: usize,
        units: usize,
        k_split: usize,
        cluster: bool,
        elem_size: usize,
    ) -> usize {
        let (h4, s, bp) = Self::padded(hidden, batch);
        let nh = if cluster { 2 } else { 1 };
        let mbarriers = if cluster { 16 } else { 0 };
        (3 * units * s + nh * h4 * bp + k_split * 3 * units * bp) * elem_size + mbarriers
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

    fn shape(seq_len: usize, batch: usize, hidden: usize, directions: usize) -> LayerShape {
        LayerShape {
            seq_len,
            batch,
            hidden,
            directions,
            elem_size: 4,
        }
    }

    fn tuned(cluster: Option<usize>, k_split: Option<usize>) -> Tuning {
        Tuning {
            cluster,
            k_split,
            ..Tuning::default()
        }
    }

    fn hopper(clusters: bool) -> GpuLimits {
        GpuLimits {
            sm_count: H100.0,
            max_smem: H100.1,
            max_threads: 1024,
            cluster_max_threads: if clusters { 1024 } else { 0 },
        }
    }

    #[test]
    fn small_layers_run_in_one_block() {
        let p = PersistentPlan::new(50, 1, 32, 1, 4, H100.0, H100.1).unwrap();
        // 2 slices of 16 columns: 96 rows x 2 threads.
        assert_eq!((p.units, p.blocks_per_direction, p.k_split), (32, 1, 2));
        assert_eq!((p.threads, p.cluster), (192, 0));
        // One block needs no cluster even where there are clusters.
        let c = PersistentPlan::plan(shape(50, 1, 32, 1), hopper(true), Tuning::default());
        assert_eq!(c, Some(p));
        let p = PersistentPlan::new(2000, 8, 128, 1, 4, H100.0, H100.1).unwrap();
        assert_eq!((p.units, p.blocks_per_direction, p.k_split), (32, 4, 4));
        assert_eq!((p.threads, p.cluster), (768, 0));
    }

    #[test]
    fn the_async_exchange_is_asked_of_cluster_plans_only() {
        let tuning = Tuning {
            async_exchange: true,
            ..Tuning::default()
        };
        // long: a cluster of 8 with the st.async exchange; small (one block): no cluster, none.
        let p = PersistentPlan::plan(shape(2000, 8, 128, 1), hopper(true), tuning).unwrap();
        assert_eq!((p.cluster, p.async_exchange), (8, true));
        let p = PersistentPlan::plan(shape(50, 1, 32, 1), hopper(true), tuning).unwrap();
        assert_eq!((p.cluster, p.async_exchange), (0, false));
        let p = PersistentPlan::plan(shape(2000, 8, 128, 1), hopper(false), tuning).unwrap();
        assert_eq!((p.cluster, p.async_exchange), (0, false));
        // Off unless asked.
        let p = PersistentPlan::plan(shape(2000, 8, 128, 1), hopper(true), Tuning::default());
        assert!(!p.unwrap().async_exchange);
    }

    #[test]
    fn several_blocks_per_direction_form_a_cluster_where_there_are_clusters() {
        // long: 4 blocks by the grid plan -> one cluster of 8 (the largest that fits), h
        // double-buffered in shared memory.
        let p = PersistentPlan::plan(shape(2000, 8, 128, 1), hopper(true), Tuning::default());
        let p = p.unwrap();
        assert_eq!((p.units, p.blocks_per_direction, p.cluster), (16, 8, 8));
        assert_eq!((p.k_split, p.threads), (4, 384));
        // Ws, two buffers of h, the partial sums, and the two mbarriers of the st.async exchange.
        assert_eq!(p.smem_bytes, (48 * 132 + 2 * 128 * 8 + 4 * 48 * 8) * 4 + 16);
        // Where 8 does not fit (here: a GPU of 6 SMs), the next size down; where no cluster
        // fits (a thread limit below every cluster plan), the grid barrier.
        let six_sms = GpuLimits {
            sm_count: 6,
            ..hopper(true)
        };
        let p = PersistentPlan::plan(shape(2000, 8, 128, 1), six_sms, Tuning::default());
        let p = p.unwrap();
        assert_eq!((p.units, p.blocks_per_direction, p.cluster), (32, 4, 4));
        let narrow = GpuLimits {
            cluster_max_threads: 64,
            ..hopper(true)
        };
        let p = PersistentPlan::plan(shape(2000, 8, 128, 1), narrow, Tuning::default());
        assert_eq!(p.map(|p| (p.cluster, p.blocks_per_direction)), Some((0, 4)));
        // medium: 32 blocks per direction by the grid plan: no cluster by default; forced, 8
        // blocks of 32 units.
        let p = PersistentPlan::plan(shape(100, 32, 256, 2), hopper(true), Tuning::default());
        assert_eq!(p.unwrap().cluster, 0);
        let eight = tuned(Some(8), None);
        let p = PersistentPlan::plan(shape(100, 32, 256, 2), hopper(true), eight).unwrap();
        assert_eq!((p.units, p.blocks_per_direction, p.cluster), (32, 8, 8));
        assert_eq!((p.k_split, p.threads, p.grid(2)), (1, 1024, 16));
        // The cluster kernels' own thread limit: 1024 threads refused at 896.
        let fewer = GpuLimits {
            cluster_max_threads: 896,
            ..hopper(true)
        };
        assert!(PersistentPlan::plan(shape(100, 32, 256, 2), fewer, eight).is_none());
        // large: 128 blocks per direction by the grid plan: the grid barrier.
        let p = PersistentPlan::plan(shape(200, 64, 512, 1), hopper(true), Tuning::default());
        assert_eq!(p.unwrap().cluster, 0);
        // Off, forced, forced where there are none, a size without a kernel.
        let off = tuned(Some(0), None);
        let p = PersistentPlan::plan(shape(2000, 8, 128, 1), hopper(true), off).unwrap();
        assert_eq!((p.cluster, p.blocks_per_direction), (0, 4));
        let eight = tuned(Some(8), Some(4));
        let p = PersistentPlan::plan(shape(2000, 8, 128, 1), hopper(true), eight).unwrap();
        assert_eq!((p.units, p.cluster, p.k_split, p.threads), (16, 8, 4, 384));
        assert!(PersistentPlan::plan(shape(2000, 8, 128, 1), hopper(false), eight).is_none());
        let three = tuned(Some(3), None);
        assert!(PersistentPlan::plan(shape(2000, 8, 128, 1), hopper(true), three).is_none());
    }

    #[test]
    fn blocks_cover_every_unit_within_the_sm_count() {
        for clusters in [false, true] {
            for (b, h, d) in [
                (8, 128, 1),
                (32, 256, 2),
                (64, 512, 1),
                (16, 700, 2),
                (3, 7, 2),
                (1, 5, 1),
            ] {
                let p =
                    PersistentPlan::plan(shape(100, b, h, d), hopper(clusters), Tuning::default())
                        .unwrap();
                assert!(p.units * p.blocks_per_direction >= h, "{p:?}");
                if p.cluster == 0 {
                    assert!((p.blocks_per_direction - 1) * p.units < h, "{p:?}");
                } else {
                    assert_eq!(p.blocks_per_direction, p.cluster, "{p:?}");
                }
                assert!(p.grid(d) <= H100.0, "{p:?}");
                assert!(p.smem_bytes <= H100.1, "{p:?}");
                assert!(p.threads >= 32 && p.threads <= 1024 && p.threads.is_multiple_of(32));
                let row_items = 3 * p.units * b.div_ceil(4) * p.k_split;
                assert!(p.units * b <= p.threads && row_items <= p.threads, "{p:?}");
            }
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
        // Neither with clusters.
        let big = PersistentPlan::plan(shape(10, 200, 1024, 1), hopper(true), Tuning::default());
        assert!(big.is_none());
    }
}
