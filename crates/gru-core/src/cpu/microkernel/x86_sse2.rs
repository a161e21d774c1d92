//! SSE2 tiles, the x86-64 baseline: no fused multiply-add (a multiply, then an add). One panel
//! row of f32 is four xmm registers: up to 2 rows; of f64 eight, one row.

use std::arch::x86_64::*;

use super::{entry, vector_row};

vector_row! {
    F32: [__m128; 4] of f32, bank 16, rows 2, panels 1,
    _mm_setzero_ps, _mm_loadu_ps, _mm_storeu_ps, _mm_set1_ps, _mm_add_ps,
    |acc, a, b| _mm_add_ps(acc, _mm_mul_ps(a, b))
}

vector_row! {
    F64: [__m128d; 8] of f64, bank 16, rows 1, panels 1,
    _mm_setzero_pd, _mm_loadu_pd, _mm_storeu_pd, _mm_set1_pd, _mm_add_pd,
    |acc, a, b| _mm_add_pd(acc, _mm_mul_pd(a, b))
}

entry!(run_f32, f32, F32);
entry!(run_f64, f64, F64);
