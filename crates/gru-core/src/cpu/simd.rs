//! The SIMD level of the CPU, found once, and the register budget of the matmul microkernel at
//! each level. The hot functions are compiled once per level (`multiversion!`): code reached
//! through closures or generics would otherwise get the baseline build (SSE2 on x86-64).

/// What the CPU offers the kernels.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Level {
    /// Whatever the target enables by default (SSE2 on x86-64, NEON on aarch64).
    Baseline,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// x86-64 with AVX-512F (and AVX2, FMA).
    Avx512,
}

impl Level {
    /// Bytes in one SIMD register.
    fn vector_bytes(self) -> usize {
        match self {
            Level::Baseline => 16,
            Level::Avx2 => 32,
            Level::Avx512 => 64,
        }
    }

    /// Whether `a * b + c` is one fused instruction (rather than a slow libm call) at this level.
    pub fn has_fma(self) -> bool {
        match self {
            Level::Baseline => cfg!(target_arch = "aarch64"),
            Level::Avx2 | Level::Avx512 => true,
        }
    }

    /// Whether the level has registers to spare for a few extra partial sums (AVX2 and up, or
    /// aarch64's 32 NEON registers; not SSE2).
    pub fn has_many_registers(self) -> bool {
        self != Level::Baseline || cfg!(target_arch = "aarch64")
    }

    /// Rows of the microkernel for `elem` bytes per value and `panel` values per row: as many
    /// as keep its accumulators (rows x panel), one row of the panel and the broadcast value in
    /// registers (16 of them; 32 on AVX-512 and aarch64).
    pub fn kernel_rows(self, elem: usize, panel: usize) -> usize {
        let per_row = (panel * elem).div_ceil(self.vector_bytes());
        let registers: usize = if self == Level::Avx512 || cfg!(target_arch = "aarch64") {
            32
        } else {
            16
        };
        (registers.saturating_sub(1 + per_row) / per_row).clamp(1, super::gemm::MAX_ROWS)
    }
}

/// The level of this CPU, detected once.
pub(crate) fn level() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<Level> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            use std::arch::is_x86_feature_detected as has;
            if has!("avx512f") && has!("avx2") && has!("fma") {
                Level::Avx512
            } else if has!("avx2") && has!("fma") {
                Level::Avx2
            } else {
                Level::Baseline
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    Level::Baseline
}

/// `multiversion!(fn name<T: Real>(args) -> R { body })` defines `name`, which runs `body`
/// compiled for the CPU's best level (x86-64: AVX-512, AVX2 + FMA, or baseline). The body is an
/// inlined generic function, so everything it inlines gets the level's instructions.
macro_rules! multiversion {
    (
        $(#[$meta:meta])*
        $vis:vis fn $name:ident<$t:ident: $bound:path>($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
        $body:block
    ) => {
        $(#[$meta])*
        $vis fn $name<$t: $bound>($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body<$t: $bound>($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512<$t: $bound>($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2<$t: $bound>($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match $crate::cpu::simd::level() {
                    // SAFETY: the CPU has these features (detected at run time by `level`).
                    $crate::cpu::simd::Level::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::cpu::simd::Level::Avx2 => return unsafe { avx2($($arg),*) },
                    $crate::cpu::simd::Level::Baseline => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    #[test]
    fn kernel_rows_fit_the_registers() {
        // Two AVX2 registers per f32 row of 16: 6 rows (12 + 2 + 1 registers); f64 needs 4 per
        // row: 2 rows (8 + 4 + 1).
        assert_eq!(Level::Avx2.kernel_rows(4, 16), 6);
        assert_eq!(Level::Avx2.kernel_rows(8, 16), 2);
        assert_eq!(Level::Avx512.kernel_rows(4, 16), 8);
        assert_eq!(Level::Avx512.kernel_rows(8, 16), 8);
        assert!(Level::Baseline.kernel_rows(8, 16) >= 1);
    }
}
