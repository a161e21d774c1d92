//! The portable reference tiles: plain arrays, a multiply then an add (no fused multiply-add).
//! The fallback on CPUs with no SIMD level of ours, and what the tests compare the SIMD levels
//! against. A tile takes two panels, like AVX-512's, so that the pairing is tested on every host.

use super::{entry, PanelRow, NR};
use crate::activation::Real;

#[derive(Clone, Copy)]
pub(super) struct Row<T>([T; NR]);

impl<T: Real> PanelRow<T> for Row<T> {
    const REGS: usize = 1;
    const BANK: usize = 32;
    const ROWS: usize = 8;
    const PANELS: usize = 2;
    type Splat = T;

    #[inline(always)]
    unsafe fn zero() -> Self {
        Self([T::zero(); NR])
    }

    #[inline(always)]
    unsafe fn load(p: *const T) -> Self {
        // SAFETY: the trait's contract: `p` valid for NR values.
        Self(unsafe { std::ptr::read_unaligned(p as *const [T; NR]) })
    }

    #[inline(always)]
    unsafe fn store(self, p: *mut T) {
        // SAFETY: the trait's contract: `p` valid for NR values.
        unsafe { std::ptr::write_unaligned(p as *mut [T; NR], self.0) }
    }

    #[inline(always)]
    unsafe fn splat(p: *const T) -> T {
        // SAFETY: the trait's contract: `p` valid for one value.
        unsafe { *p }
    }

    #[inline(always)]
    unsafe fn mul_add(self, a: T, b: Self) -> Self {
        let mut r = self.0;
        for j in 0..NR {
            r[j] += a * b.0[j];
        }
        Self(r)
    }

    #[inline(always)]
    unsafe fn add(self, other: Self) -> Self {
        let mut r = self.0;
        for j in 0..NR {
            r[j] += other.0[j];
        }
        Self(r)
    }
}

pub(super) type F32 = Row<f32>;
pub(super) type F64 = Row<f64>;

entry!(run_f32, f32, F32);
entry!(run_f64, f64, F64);
