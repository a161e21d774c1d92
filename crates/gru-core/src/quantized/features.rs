//! What the CPU offers the quantized kernels: AVX2 with FMA (capped by `GRU_CPU_LEVEL`, as the
//! float kernel is).

/// AVX2 with FMA, detected once.
#[cfg(target_arch = "x86_64")]
pub(crate) fn avx2_fma() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        // The CPU kernel's level (AVX2 and FMA detected, capped by GRU_CPU_LEVEL).
        crate::cpu::simd::level() >= crate::cpu::simd::Level::Avx2
    })
}
