//! The CUDA path: the kernel source (`gru.cu`, compiled at first use with NVRTC by `nvrtc`), the
//! per-step path (`per_step`: one host loop of a cuBLAS GEMM and a gate launch per step) and the
//! persistent path (`persistent`: a whole layer in one launch). The ops' CPU halves only refuse
//! (they are never dispatched to the CPU); `source` is public for the host-C++ harness test.

#[cfg(feature = "cuda")]
pub(crate) mod nvrtc;
pub(crate) mod per_step;
pub(crate) mod persistent;
pub mod source;

/// The CUDA kernels of a device, loaded once (`()` without the `cuda` feature).
#[cfg(feature = "cuda")]
pub(crate) type DeviceKernels = nvrtc::CudaKernels;
#[cfg(not(feature = "cuda"))]
pub(crate) type DeviceKernels = ();

/// The device kernels index with 32-bit integers: refuse what would wrap, naming the sizes.
pub(crate) fn check_kernel_sizes(
    t_len: usize,
    batch: usize,
    hidden: usize,
    g: usize,
) -> candle_core::Result<()> {
    let max = i32::MAX as usize;
    let ok = hidden
        .checked_mul(3)
        .and_then(|h3| batch.checked_mul(h3))
        .is_some_and(|n| n <= max && g <= max && t_len < max - 2);
    if !ok {
        candle_core::bail!(
            "gru: batch {batch} x 3 * hidden_size {hidden} (or seq_len {t_len}) exceeds the \
             GPU kernels' 32-bit indexing; split the batch"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_kernel_sizes;

    #[test]
    fn sizes_past_32_bit_indexing_are_refused() {
        assert!(check_kernel_sizes(100, 64, 512, 2 * 3 * 512).is_ok());
        let err = check_kernel_sizes(10, 1 << 15, 1 << 16, 3 << 16).unwrap_err();
        assert!(err.to_string().contains("32-bit"), "{err}");
        assert!(check_kernel_sizes(10, usize::MAX / 2, 4, 12).is_err());
        assert!(check_kernel_sizes(i32::MAX as usize, 1, 1, 3).is_err());
    }
}
