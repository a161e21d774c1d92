//! What the CPU offers the quantized kernels: AVX2 with FMA on x86-64, the dot-product
//! instructions on aarch64 (capped by `GRU_CPU_LEVEL`, as the float kernel is).

/// AVX2 with FMA: the CPU kernel's level (detected once there, capped by GRU_CPU_LEVEL).
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    crate::cpu::simd::level() >= crate::cpu::simd::Level::Avx2
}

/// The dot-product instructions (`sdot`) beside NEON, unless `GRU_CPU_LEVEL=scalar`.
#[cfg(target_arch = "aarch64")]
pub(crate) fn neon_dotprod() -> bool {
    crate::cpu::simd::level() >= crate::cpu::simd::Level::Baseline
        && std::arch::is_aarch64_feature_detected!("dotprod")
}
