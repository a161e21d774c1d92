//! NEON tiles (every aarch64 CPU has NEON and fused multiply-add). One panel row of f32 is four
//! q registers: up to 6 rows (24 accumulators, 4 panel rows and the broadcast: 29 of the 32
//! registers); of f64 eight, up to 2 rows.

use std::arch::aarch64::*;

use super::{entry, vector_row};

vector_row! {
    F32: [float32x4_t; 4] of f32, bank 32, rows 6, panels 1,
    zero_f32, vld1q_f32, vst1q_f32, vdupq_n_f32, vaddq_f32,
    |acc, a, b| vfmaq_f32(acc, a, b)
}

vector_row! {
    F64: [float64x2_t; 8] of f64, bank 32, rows 2, panels 1,
    zero_f64, vld1q_f64, vst1q_f64, vdupq_n_f64, vaddq_f64,
    |acc, a, b| vfmaq_f64(acc, a, b)
}

/// # Safety
/// NEON (every aarch64 CPU).
#[inline(always)]
unsafe fn zero_f32() -> float32x4_t {
    // SAFETY: the caller's contract.
    unsafe { vdupq_n_f32(0.0) }
}

/// # Safety
/// NEON (every aarch64 CPU).
#[inline(always)]
unsafe fn zero_f64() -> float64x2_t {
    // SAFETY: the caller's contract.
    unsafe { vdupq_n_f64(0.0) }
}

entry!(run_f32, f32, F32, "neon");
entry!(run_f64, f64, F64, "neon");
