//! AVX2 + FMA tiles. One panel row of f32 is two ymm registers: up to 6 rows (12 accumulators,
//! 2 panel rows and the broadcast: 15 of the 16 registers); of f64 four, up to 2 rows.

use std::arch::x86_64::*;

use super::{entry, vector_row};

vector_row! {
    F32: [__m256; 2] of f32, bank 16, rows 6, panels 1,
    _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps, _mm256_set1_ps, _mm256_add_ps,
    |acc, a, b| _mm256_fmadd_ps(a, b, acc)
}

vector_row! {
    F64: [__m256d; 4] of f64, bank 16, rows 2, panels 1,
    _mm256_setzero_pd, _mm256_loadu_pd, _mm256_storeu_pd, _mm256_set1_pd, _mm256_add_pd,
    |acc, a, b| _mm256_fmadd_pd(a, b, acc)
}

entry!(run_f32, f32, F32, "avx2,fma");
entry!(run_f64, f64, F64, "avx2,fma");
