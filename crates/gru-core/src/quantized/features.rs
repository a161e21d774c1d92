//! What the CPU offers the quantized kernels: AVX2 with FMA (capped by `GRU_CPU_LEVEL`, as the
//! float kernel is).

/// AVX2 with FMA: the CPU kernel's level (detected once there, capped by GRU_CPU_LEVEL).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    crate::cpu::simd::level() >= crate::cpu::simd::Level::Avx2
}
