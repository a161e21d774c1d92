//! A direction's team: its batch rows or its hidden units split across a few threads (each with
//! its own `gh` buffer), the pointer they share to write disjoint ranges, and the spin barrier
//! they meet at.

use super::aligned::Aligned;
use crate::activation::Real;

use super::panels::{groups, GROUP};

/// Below this many multiply-adds per step, one thread runs the whole step: splitting would
/// cost more in synchronisation than it saves.
const SPLIT_WORK: usize = 1 << 17;

/// Most threads one direction's steps are split across.
const MAX_TEAM: usize = 8;

/// Fewer steps than this run on one thread (with the matmul threaded by panels instead).
const MIN_SPLIT_STEPS: usize = 16;

/// Fewest batch rows per member for a split by rows: fewer leave the microkernel too few
/// accumulators.
const MIN_ROWS_PER_MEMBER: usize = 4;

/// What one thread of a direction's team advances each step: the state rows `r0..r1` and, of
/// those, the groups of hidden units `g0..g1` (see [`super::panels`]). Its rows hold the
/// sequences at positions `lane, lane + lanes, ...` of the plan's order (longest first); its
/// panels of `W_hh^T` are contiguous, and its `gh` buffer holds their products. It projects its
/// own inputs too (its rows, its units), so no other member ever reads what it writes there.
pub(super) struct Chunk<T> {
    pub r0: usize,
    pub r1: usize,
    pub lane: usize,
    pub lanes: usize,
    pub g0: usize,
    pub g1: usize,
    /// `(r1 - r0, (g1 - g0) * GROUP)`.
    pub gh: Aligned<T>,
    /// The projected inputs of the current block of steps: the active rows of each step in turn
    /// (step `j`'s from row `gi_at[j]`), `(g1 - g0) * GROUP` values each.
    pub gi: Aligned<T>,
    /// `block + 1` row offsets into `gi`.
    pub gi_at: Vec<usize>,
    /// The block's input rows gathered in state-row order, when they are not already contiguous.
    pub xg: Vec<T>,
}

impl<T> Chunk<T> {
    /// How many of this chunk's rows are active when the first `m` sequences of the plan's
    /// order are.
    pub fn active(&self, m: usize) -> usize {
        m.saturating_sub(self.lane)
            .div_ceil(self.lanes)
            .min(self.r1 - self.r0)
    }
}

/// How a direction's steps are shared.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Split {
    /// One thread.
    None,
    /// By batch rows: every member runs all units of its own rows, which depend on no other
    /// member's, so members never meet.
    Rows,
    /// By hidden units, for batches too small to split by rows: every step reads every unit of
    /// the previous state, so members meet after each step.
    Units,
}

/// How a direction's work splits across up to `threads` members, and into how many.
pub(super) fn split(hidden: usize, batch: usize, seq_len: usize, threads: usize) -> (Split, usize) {
    let work = batch * hidden * 3 * hidden;
    // Splitting costs a thread start per call: worth it over many steps (a GRUCell or a short
    // streamed chunk threads its matmul instead).
    if threads < 2 || work < SPLIT_WORK || seq_len < MIN_SPLIT_STEPS {
        return (Split::None, 1);
    }
    let by_rows = threads.min(batch / MIN_ROWS_PER_MEMBER).min(MAX_TEAM);
    if by_rows >= 2 {
        return (Split::Rows, by_rows);
    }
    // At least 32 units per member, and few enough members that the barrier stays cheap.
    let n = threads
        .min(hidden / 32)
        .clamp(1, MAX_TEAM)
        .min(groups(hidden));
    if n == 1 {
        (Split::None, 1)
    } else {
        (Split::Units, n)
    }
}

/// Splits a direction's work across up to `threads` members (see [`split`]).
pub(super) fn chunks<T: Real>(
    hidden: usize,
    batch: usize,
    seq_len: usize,
    threads: usize,
) -> (Split, Vec<Chunk<T>>) {
    let groups = groups(hidden);
    let chunk = |(r0, r1, lane, lanes): (usize, usize, usize, usize), g0: usize, g1: usize| Chunk {
        r0,
        r1,
        lane,
        lanes,
        g0,
        g1,
        gh: Aligned::new((r1 - r0) * (g1 - g0) * GROUP),
        gi: Aligned::default(),
        gi_at: Vec::new(),
        xg: Vec::new(),
    };
    let (how, n) = split(hidden, batch, seq_len, threads);
    let chunks = match how {
        Split::None => vec![chunk((0, batch, 0, 1), 0, groups)],
        // Member i takes every n-th sequence from the i-th: lengths spread evenly.
        Split::Rows => {
            let mut r0 = 0;
            (0..n)
                .map(|i| {
                    let rows = (batch - i).div_ceil(n);
                    r0 += rows;
                    chunk((r0 - rows, r0, i, n), 0, groups)
                })
                .collect()
        }
        Split::Units => (0..n)
            .map(|i| chunk((0, batch, 0, 1), groups * i / n, groups * (i + 1) / n))
            .collect(),
    };
    (how, chunks)
}

/// A pointer shared by the threads of one step, each writing a disjoint range through it.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut<T>(pub *mut T);
// SAFETY: only used to write disjoint element ranges from different threads, and to read what
// other threads wrote before a barrier they all passed (see `advance`, `quantized::team`).
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// A method, not a field access, so that closures capture the `Sync` wrapper.
    pub fn ptr(&self) -> *mut T {
        self.0
    }
}

/// Spins of a barrier wait before it yields (see [`SpinBarrier`]): a few microseconds. When the
/// OS runs two members on one CPU (seen on a 2-vCPU VM, in about half the runs of some shapes),
/// each wait lasts until the spinner yields: 20 000 spins made a 2-layer H128 B4 forward 11-15x
/// slower than on one thread; 300 keep it within about 2x (BENCHMARKS.md, 2026-12-08).
const SPINS: u32 = 300;

/// A barrier for the few threads of one direction split by units, waited on after each step: it
/// spins (a wake-up through the OS costs more than a step of a small GRU), then yields so that an
/// oversubscribed machine still makes progress. A member that panics poisons it, and the others
/// panic instead of waiting forever.
pub(crate) struct SpinBarrier {
    n: usize,
    count: std::sync::atomic::AtomicUsize,
    generation: std::sync::atomic::AtomicUsize,
    poisoned: std::sync::atomic::AtomicBool,
}

impl SpinBarrier {
    pub fn new(n: usize) -> Self {
        Self {
            n,
            count: 0.into(),
            generation: 0.into(),
            poisoned: false.into(),
        }
    }

    pub fn wait(&self) {
        use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release};
        if self.n == 1 {
            return;
        }
        let gen = self.generation.load(Acquire);
        if self.count.fetch_add(1, AcqRel) + 1 == self.n {
            self.count.store(0, Relaxed);
            self.generation.fetch_add(1, Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Acquire) == gen {
            if self.poisoned.load(Relaxed) {
                panic!("a GRU kernel thread panicked");
            }
            if spins < SPINS {
                std::hint::spin_loop();
                spins += 1;
            } else {
                std::thread::yield_now();
            }
        }
    }

    pub fn poison_on_panic(&self) -> impl Drop + '_ {
        struct Guard<'a>(&'a SpinBarrier);
        impl Drop for Guard<'_> {
            fn drop(&mut self) {
                if std::thread::panicking() {
                    self.0
                        .poisoned
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
        Guard(self)
    }
}
