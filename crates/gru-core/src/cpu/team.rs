//! A direction's team: its hidden units split across a few threads (each with its own panels of
//! `W_hh^T` and its own `gh` buffer), the pointer they share to write disjoint ranges, and the
//! spin barrier they meet at after each phase of a step.

use crate::activation::Real;

use super::panels::{groups, GROUP};

/// Below this many multiply-adds per step, one thread runs the whole step: splitting would
/// cost more in synchronisation than it saves.
const SPLIT_WORK: usize = 1 << 17;

/// Most threads one direction's steps are split across.
const MAX_TEAM: usize = 8;

/// Fewer steps than this run on one thread (with the matmul threaded by panels instead).
const MIN_SPLIT_STEPS: usize = 16;

/// The groups of hidden units `g0..g1` (see [`super::panels`]) that one thread advances each
/// step: its panels of `W_hh^T` are contiguous, and its `gh` buffer holds their products.
pub(super) struct Chunk<T> {
    pub g0: usize,
    pub g1: usize,
    /// `(B, (g1 - g0) * GROUP)`.
    pub gh: Vec<T>,
    /// The matmuls' packed left operand (grown on first use).
    pub scratch: Vec<T>,
}

/// Splits the units so that every thread gets a share of both the matmul and the gate pass.
pub(super) fn chunks<T: Real>(
    hidden: usize,
    batch: usize,
    seq_len: usize,
    threads: usize,
) -> Vec<Chunk<T>> {
    let work = batch * hidden * 3 * hidden;
    let groups = groups(hidden);
    // Splitting costs a thread start per call: worth it over many steps (a GRUCell or a short
    // streamed chunk threads its matmul instead).
    let n = if threads > 1 && work >= SPLIT_WORK && seq_len >= MIN_SPLIT_STEPS {
        // At least 32 units per member, and few enough members that the barrier stays cheap.
        threads.min(hidden / 32).clamp(1, MAX_TEAM).min(groups)
    } else {
        1
    };
    (0..n)
        .map(|i| {
            let (g0, g1) = (groups * i / n, groups * (i + 1) / n);
            Chunk {
                g0,
                g1,
                gh: vec![T::zero(); batch * (g1 - g0) * GROUP],
                scratch: Vec::new(),
            }
        })
        .collect()
}

/// A pointer shared by the threads of one step, each writing a disjoint range through it.
#[derive(Clone, Copy)]
pub(super) struct SharedMut<T>(pub *mut T);
// SAFETY: only used to write disjoint element ranges from different threads (see `advance`).
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}

impl<T> SharedMut<T> {
    /// A method, not a field access, so that closures capture the `Sync` wrapper.
    pub fn ptr(&self) -> *mut T {
        self.0
    }
}

/// A barrier for the few threads of one direction, waited on twice per time step: it spins
/// (a wake-up through the OS costs more than a step of a small GRU), then yields so that an
/// oversubscribed machine still makes progress. A member that panics poisons it, and the others
/// panic instead of waiting forever.
pub(super) struct SpinBarrier {
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
            if spins < 20_000 {
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
