//! The SIMD level the CPU kernel runs at: the CPU's best, found once, capped by the environment
//! variable `GRU_CPU_LEVEL` (`scalar`, `baseline`, `avx2`, `avx512`) so that one host can test and
//! time every level it has. The microkernel has one explicit build per level
//! ([`super::microkernel`]); the rest of the hot path (packing, the gate pass) is compiled once
//! per x86-64 level by [`multiversion!`]: code reached through closures or generics would
//! otherwise get the baseline build (SSE2 on x86-64).

use std::sync::OnceLock;

/// The environment variable that caps the level.
pub(crate) const LEVEL_ENV: &str = "GRU_CPU_LEVEL";

/// A SIMD level of the CPU kernel, lowest first.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) enum Level {
    /// The portable reference tiles (plain arrays; for tests and unknown CPUs).
    Scalar,
    /// What every CPU of the architecture has: SSE2 on x86-64, NEON on aarch64.
    Baseline,
    /// x86-64 with AVX2 and FMA.
    Avx2,
    /// x86-64 with AVX-512F (and AVX2, FMA).
    Avx512,
}

impl Level {
    /// The name `GRU_CPU_LEVEL` takes.
    pub fn env_name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Baseline => "baseline",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// The name, with what the baseline is on this architecture.
    pub fn name(self) -> &'static str {
        match self {
            Level::Scalar => "scalar",
            Level::Baseline if cfg!(target_arch = "aarch64") => "baseline (neon)",
            Level::Baseline if cfg!(target_arch = "x86_64") => "baseline (sse2)",
            Level::Baseline => "baseline",
            Level::Avx2 => "avx2",
            Level::Avx512 => "avx512",
        }
    }

    /// Whether the gate pass fuses `a * b + c` at this level (one instruction; without the
    /// hardware a fused multiply-add would be a slow libm call).
    pub fn has_fma(self) -> bool {
        match self {
            Level::Scalar => false,
            Level::Baseline => cfg!(target_arch = "aarch64"),
            Level::Avx2 | Level::Avx512 => true,
        }
    }

    fn parse(s: &str) -> Option<Level> {
        Some(match s.trim().to_ascii_lowercase().as_str() {
            "scalar" => Level::Scalar,
            "baseline" => Level::Baseline,
            "sse2" if cfg!(target_arch = "x86_64") => Level::Baseline,
            "neon" if cfg!(target_arch = "aarch64") => Level::Baseline,
            "avx2" => Level::Avx2,
            "avx512" => Level::Avx512,
            _ => return None,
        })
    }
}

/// The best level this CPU has.
pub(crate) fn detected() -> Level {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if has!("avx512f") && has!("avx2") && has!("fma") {
            Level::Avx512
        } else if has!("avx2") && has!("fma") {
            Level::Avx2
        } else {
            Level::Baseline
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    Level::Baseline
}

/// The cap `GRU_CPU_LEVEL` sets: `Ok(None)` when unset, an error naming the variable when its
/// value is not a level.
pub(crate) fn level_cap() -> Result<Option<Level>, String> {
    match std::env::var(LEVEL_ENV) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Level::parse(&v).map(Some).ok_or_else(|| {
            format!(
                "{LEVEL_ENV}={v:?} is not a CPU level: expected scalar, baseline, avx2 or avx512"
            )
        }),
        Err(e) => Err(e.to_string()),
    }
}

/// The level the CPU kernel runs at: the CPU's best, capped by `GRU_CPU_LEVEL` (a level above
/// the CPU's gives the CPU's). Read once per process; a malformed value is reported once on
/// stderr and ignored (the `gru` binary refuses it at start).
pub(crate) fn level() -> Level {
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| match level_cap() {
        Ok(cap) => cap.map_or(detected(), |cap| cap.min(detected())),
        Err(e) => {
            eprintln!("warning: {LEVEL_ENV}: {e}; using {}", detected().name());
            detected()
        }
    })
}

/// Every level this CPU can run, lowest first (the tests run each).
pub(crate) fn levels() -> Vec<Level> {
    [Level::Scalar, Level::Baseline, Level::Avx2, Level::Avx512]
        .into_iter()
        .filter(|&l| l <= detected())
        .collect()
}

/// `multiversion!(fn name<T: Real>(args) -> R { body })` defines `name`, which runs `body`
/// compiled for the kernel's level (x86-64: AVX-512, AVX2 + FMA, or baseline). The body is an
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
                    _ => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_order() {
        assert_eq!(Level::parse(" AVX2 "), Some(Level::Avx2));
        assert_eq!(Level::parse("avx512"), Some(Level::Avx512));
        assert_eq!(Level::parse("scalar"), Some(Level::Scalar));
        assert_eq!(Level::parse("avx"), None);
        assert!(Level::Scalar < Level::Baseline && Level::Avx2 < Level::Avx512);
        let all = levels();
        assert_eq!(all.first(), Some(&Level::Scalar));
        assert_eq!(all.last(), Some(&detected()));
    }
}
