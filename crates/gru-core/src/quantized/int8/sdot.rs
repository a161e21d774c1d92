//! The int8 tiles on aarch64's dot-product instruction (`sdot`, FEAT_DotProd: Cortex-A76 and
//! later, Apple M1 and later, Graviton 2 and later): each i32 lane gains the exact sum of four
//! i8 x i8 products. The u8 inputs enter as `a - 128` (a signed byte) and each column's sum gets
//! `128 * sum_k W[j, k]` back. fbgemm's x86 numbers saturate each pair of u8 x i8 products at
//! i16, which inputs of at most 128 never reach (`reduce_range` quantizes to 0..128, 128 where
//! the range is symmetric): for them the exact sums are fbgemm's. A call with a larger input
//! runs the portable loops. Same tiles and epilogue as the AVX2 path: 4 rows x 16 columns of
//! accumulators in registers, then `fma(f32(raw), scale_in * scale_w, bias)`.

use std::arch::aarch64::*;

use super::{InputQuant, PackedInt8, RowsOut, KG, NC};

/// Whether no input exceeds 128 (so no pair of products could have saturated in fbgemm's
/// kernel: 2 * 128 * -128 = -32768 and 2 * 128 * 127 = 32512 fit an i16).
pub(super) fn inputs_fit(qa: &[u8]) -> bool {
    qa.iter().fold(0u8, |m, &v| m.max(v)) <= 128
}

/// # Safety
/// The CPU must have the dot-product instructions; no input of `qa` above 128.
#[target_feature(enable = "neon,dotprod")]
pub(super) unsafe fn run<Y: RowsOut + ?Sized>(
    p: &PackedInt8,
    qa: &[u8],
    row_sums: &[i32],
    q: InputQuant,
    y: &mut Y,
    blocks: std::ops::Range<usize>,
) {
    let base = blocks.start;
    let sizes = (qa.len(), row_sums.len(), y.rows());
    super::for_each_tile(p, sizes, blocks, |i0, mr, b0, nb| {
        // SAFETY: the dot-product instructions (this function's contract); the tile's rows and
        // blocks exist (checked by `for_each_tile`).
        unsafe { sized_tile!(tile::<Y>(mr, nb; p, qa, row_sums, q, y, i0, b0, base)) }
    });
}

/// `acc + w · a` per i32 lane over its four bytes (stable Rust has no `sdot` intrinsic yet).
#[inline(always)]
unsafe fn sdot(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: registers only; the caller has the dot-product instructions.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.16b",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

/// Rows `i0..i0 + R` x column blocks `b0..b0 + B` (two vectors of 4 columns each).
///
/// # Safety
/// The dot-product instructions; the rows and blocks exist.
#[target_feature(enable = "neon,dotprod")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const B: usize, Y: RowsOut + ?Sized>(
    p: &PackedInt8,
    qa: &[u8],
    row_sums: &[i32],
    q: InputQuant,
    y: &mut Y,
    i0: usize,
    b0: usize,
    base: usize,
) {
    // SAFETY: the caller's contract: the instructions, and the rows and blocks exist.
    unsafe {
        let groups = p.kp / KG;
        let mut acc = [[[vdupq_n_s32(0); 2]; B]; R];
        let a0 = qa.as_ptr().add(i0 * p.kp);
        let w0 = p.data.as_ptr().add(b0 * groups * NC * KG);
        for g in 0..groups {
            let mut w = [[vdupq_n_s8(0); 2]; B];
            for (b, wb) in w.iter_mut().enumerate() {
                let ptr = w0.add((b * groups + g) * NC * KG);
                *wb = [vld1q_s8(ptr), vld1q_s8(ptr.add(16))];
            }
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let a = (a0.add(r * p.kp + g * KG) as *const i32).read_unaligned();
                // a - 128 as a signed byte: the top bit flipped.
                let a = veorq_s8(vreinterpretq_s8_s32(vdupq_n_s32(a)), vdupq_n_s8(i8::MIN));
                for b in 0..B {
                    acc_r[b][0] = sdot(acc_r[b][0], w[b][0], a);
                    acc_r[b][1] = sdot(acc_r[b][1], w[b][1], a);
                }
            }
        }
        let a_zp = vdupq_n_s32(q.zero_point);
        let a_scale = vdupq_n_f32(q.scale);
        for (r, acc_r) in acc.iter().enumerate() {
            let i = i0 + r;
            let row_sum = vdupq_n_s32(row_sums[i]);
            for (b, halves) in acc_r.iter().enumerate() {
                for (h, &acc) in halves.iter().enumerate() {
                    let j0 = (b0 + b) * NC + h * 4;
                    if j0 >= p.n {
                        continue;
                    }
                    let ld = |v: &[i32]| vld1q_s32(v[j0..j0 + 4].as_ptr());
                    // The sum of the u8 inputs' products, then fbgemm's offsets (wrapping as
                    // the portable loop's i32 arithmetic does).
                    let acc = vaddq_s32(acc, vshlq_n_s32::<7>(ld(&p.col_sums)));
                    let raw = vsubq_s32(
                        vsubq_s32(acc, vmulq_s32(a_zp, ld(&p.col_offsets))),
                        vmulq_s32(row_sum, ld(&p.zero_points)),
                    );
                    let mult = vmulq_f32(a_scale, vld1q_f32(p.scales[j0..j0 + 4].as_ptr()));
                    let rawf = vcvtq_f32_s32(raw);
                    let out = match &p.bias {
                        Some(bias) => vfmaq_f32(vld1q_f32(bias[j0..j0 + 4].as_ptr()), rawf, mult),
                        None => vmulq_f32(rawf, mult),
                    };
                    let yr = y.row(i);
                    let y0 = j0 - base * NC;
                    if j0 + 4 <= p.n {
                        vst1q_f32(yr[y0..y0 + 4].as_mut_ptr(), out);
                    } else {
                        let mut tmp = [0f32; 4];
                        vst1q_f32(tmp.as_mut_ptr(), out);
                        let e = p.n - j0;
                        yr[y0..y0 + e].copy_from_slice(&tmp[..e]);
                    }
                }
            }
        }
    }
}
