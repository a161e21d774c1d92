//! AVX-512F tiles. One panel row of f32 is a single zmm register, so a tile takes two panels side
//! by side (32 columns) of up to 8 rows: 16 accumulators of the 32 registers, and 10 loads (2
//! panel rows, 8 broadcasts folded into the multiply-adds) per 16 fused multiply-adds.

use std::arch::x86_64::*;

use super::{entry, vector_row};

vector_row! {
    F32: [__m512; 1] of f32, bank 32, rows 8, panels 2,
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_add_ps,
    |acc, a, b| _mm512_fmadd_ps(a, b, acc)
}

vector_row! {
    F64: [__m512d; 2] of f64, bank 32, rows 8, panels 1,
    _mm512_setzero_pd, _mm512_loadu_pd, _mm512_storeu_pd, _mm512_set1_pd, _mm512_add_pd,
    |acc, a, b| _mm512_fmadd_pd(a, b, acc)
}

entry!(run_f32, f32, F32, "avx512f,avx2,fma");
entry!(run_f64, f64, F64, "avx512f,avx2,fma");
