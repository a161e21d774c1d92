//! The steps of one int8 direction of one layer, its hidden units split across a team of threads.
//! Each member computes its units' columns of the input projections (a block of steps at a time,
//! just ahead of the steps that read them) and of `W_hh h` at each step, runs their gates and
//! writes their part of the next state. A step's `W_hh h` quantizes the whole state over its min
//! and max, so each member leaves the min and max of its part in a slot, and the members meet at
//! a spin barrier after each step. A lone member runs the same loop without meeting anyone.
//! Nothing is allocated inside the loop.

use std::ops::Range;

use super::gates::gates;
use super::input::{choose_qparams, quantize_row, row_min_max, InputQuant};
use super::int8::{PackedInt8, Strided, NC};
use crate::cpu::team::{SharedMut, SpinBarrier};
use crate::packing::LengthPlan;

/// Multiply-adds of one step's `W_hh h` below which one thread runs a direction: splitting would
/// cost more at the barrier than it saves.
const SPLIT_WORK: usize = 1 << 17;
/// Fewest steps worth a team (it costs a thread start per call).
const MIN_SPLIT_STEPS: usize = 16;
/// Most members, and fewest units each.
const MAX_TEAM: usize = 8;
const MIN_UNITS: usize = 32;
/// Floats of projected inputs in one member's block of steps: the block stays in cache until
/// its steps read it.
const GI_BLOCK: usize = 1 << 17;

/// A layer's input, quantized once for every direction: its valid rows in PyTorch's packed order
/// (step `t`'s at rows `starts[t]..starts[t + 1]`, the running sequences longest first), the
/// projection's padded row length of bytes each, their sums, and the quantization of them all.
pub(crate) struct QuantizedRows<'a> {
    pub qa: &'a [u8],
    pub sums: &'a [i32],
    pub starts: &'a [usize],
    pub q: InputQuant,
}

/// How many members split a direction when `threads` threads are at hand for it.
pub(crate) fn members(hidden: usize, batch: usize, t_len: usize, threads: usize) -> usize {
    let work = batch * 3 * hidden * hidden;
    if threads < 2 || work < SPLIT_WORK || t_len < MIN_SPLIT_STEPS {
        return 1;
    }
    threads.min(hidden / MIN_UNITS).clamp(1, MAX_TEAM)
}

/// One direction's packed linears and what its steps need to know.
pub(crate) struct Direction<'a> {
    pub ih: &'a PackedInt8,
    pub hh: &'a PackedInt8,
    pub hidden: usize,
    pub reduce_range: bool,
    pub reverse: bool,
}

impl Direction<'_> {
    /// Runs the direction over `x` with `members` threads, writing its output into `out` and
    /// returning its last state `(B, H)`.
    pub fn run(
        &self,
        x: &QuantizedRows<'_>,
        h0: Option<&[f32]>,
        (t_len, batch): (usize, usize),
        plan: &LengthPlan,
        members: usize,
        out: LayerOut,
    ) -> Vec<f32> {
        let hidden = self.hidden;
        let bh = batch * hidden;
        // The state, double-buffered: members read all of one buffer while writing their units
        // of the other.
        let mut states = vec![0.0f32; 2 * bh];
        if let Some(h0) = h0 {
            states[..bh].copy_from_slice(h0);
            states[bh..].copy_from_slice(h0);
        }
        let members = members.clamp(1, (hidden / NC).max(1));
        // Units split at whole column blocks.
        let bounds: Vec<usize> = (0..=members)
            .map(|i| {
                if i == members {
                    hidden
                } else {
                    hidden * i / members / NC * NC
                }
            })
            .collect();
        // Min and max of each member's part of the state: `slots[parity * members + id]`, the
        // parity of the step that reads them.
        let mut slots = vec![(0.0f32, 0.0f32); 2 * members];
        let barrier = SpinBarrier::new(members);
        let shared = Shared {
            states: SharedMut(states.as_mut_ptr()),
            out,
            slots: SharedMut(slots.as_mut_ptr()),
        };
        let member = |id: usize| -> usize {
            let _poison = barrier.poison_on_panic();
            let units = bounds[id]..bounds[id + 1];
            let team = Team {
                id,
                members,
                barrier: &barrier,
                shared,
            };
            self.member(x, (t_len, batch), plan, units, &team)
        };
        let cur = if members == 1 {
            member(0)
        } else {
            let member = &member;
            std::thread::scope(|scope| {
                for id in 1..members {
                    scope.spawn(move || member(id));
                }
                member(0)
            })
        };
        states.truncate((cur + 1) * bh);
        states.drain(..cur * bh);
        states
    }

    /// One member's loop over every step, on units `units`; returns which state buffer holds
    /// the last state.
    fn member(
        &self,
        x: &QuantizedRows<'_>,
        (t_len, batch): (usize, usize),
        plan: &LengthPlan,
        units: Range<usize>,
        team: &Team<'_>,
    ) -> usize {
        let hidden = self.hidden;
        let bh = batch * hidden;
        let g = 3 * hidden;
        // Rows of whole column blocks; this member's blocks of each gate.
        let gw = g.div_ceil(NC) * NC;
        let blocks: [Range<usize>; 3] = std::array::from_fn(|k| {
            PackedInt8::blocks_of(k * hidden + units.start..k * hidden + units.end)
        });
        let tb = (GI_BLOCK / (batch * gw).max(1)).clamp(1, t_len.max(1));
        let mut gi = vec![0.0f32; tb * batch * gw];
        let mut gh = vec![0.0f32; batch * gw];
        let (kx, kh) = (self.ih.k_padded(), self.hh.k_padded());
        let mut qh = vec![0u8; batch * kh];
        let mut qh_sums = vec![0i32; batch];
        let zeros = vec![0.0f32; units.len()];
        let order = |t: usize| &plan.perm[..plan.active[t]];
        let time = |s: usize| if self.reverse { t_len - 1 - s } else { s };
        let Shared { states, out, slots } = team.shared;
        // SAFETY (every access through the shared pointers below): during a step members read
        // the whole of buffer `cur` and write only their own units of buffer `1 - cur`, of `out`
        // and their own slot of the next step's parity; the barrier at the top of each step
        // orders one step's writes before the next step's reads.
        let state = |buf: usize, b: usize| -> *mut f32 {
            unsafe { states.ptr().add(buf * bh + b * hidden) }
        };
        let leave_min_max = |buf: usize, t: usize, parity: usize| {
            let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
            for &b in order(t) {
                let r = unsafe {
                    std::slice::from_raw_parts(state(buf, b).add(units.start), units.len())
                };
                let (l, h) = row_min_max(r);
                lo = lo.min(l);
                hi = hi.max(h);
            }
            unsafe { *slots.ptr().add(parity * team.members + team.id) = (lo, hi) };
        };
        if t_len == 0 {
            return 0;
        }
        let mut cur = 0;
        leave_min_max(cur, time(0), 0);
        let mut prev_m = plan.active[time(0)];
        for s in 0..t_len {
            let t = time(s);
            team.barrier.wait();
            // The block holding step t (steps t0..t0 + tb), projected when first reached, with
            // the quantization of the whole sequence's input (PyTorch's one call).
            let t0 = t / tb * tb;
            let t1 = (t0 + tb).min(t_len);
            if (self.reverse && t + 1 == t1) || (!self.reverse && t == t0) {
                let (r0, r1) = (x.starts[t0], x.starts[t1]);
                for b in &blocks {
                    let mut y = Strided {
                        data: &mut gi,
                        rows: r1 - r0,
                        stride: gw,
                        offset: b.start * NC,
                    };
                    let qa = &x.qa[r0 * kx..r1 * kx];
                    self.ih
                        .run_blocks(qa, &x.sums[r0..r1], x.q, &mut y, b.clone());
                }
            }
            let m = plan.active[t];
            // Sequences that just ended keep their last state in both buffers.
            for &b in &plan.perm[m.min(prev_m)..prev_m] {
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        state(cur, b).add(units.start),
                        state(1 - cur, b).add(units.start),
                        units.len(),
                    );
                }
            }
            prev_m = m;
            if m > 0 {
                // The running states quantized together, over the min and max of all parts.
                let parts = unsafe {
                    std::slice::from_raw_parts(slots.ptr().add(s % 2 * team.members), team.members)
                };
                let (lo, hi) = parts
                    .iter()
                    .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &(l, h)| {
                        (lo.min(l), hi.max(h))
                    });
                let q = choose_qparams(lo, hi, self.reduce_range);
                let inv = 1.0 / q.scale;
                for (p, &b) in order(t).iter().enumerate() {
                    let h = unsafe { std::slice::from_raw_parts(state(cur, b), hidden) };
                    qh_sums[p] = quantize_row(h, inv, q.zero_point, &mut qh[p * kh..(p + 1) * kh]);
                }
                for b in &blocks {
                    let mut y = Strided {
                        data: &mut gh,
                        rows: m,
                        stride: gw,
                        offset: b.start * NC,
                    };
                    self.hh
                        .run_blocks(&qh[..m * kh], &qh_sums[..m], q, &mut y, b.clone());
                }
                let base = x.starts[t] - x.starts[t0];
                for (p, &b) in order(t).iter().enumerate() {
                    let w = units.len();
                    let (h, h_out, o) = unsafe {
                        (
                            std::slice::from_raw_parts(state(cur, b).add(units.start), w),
                            std::slice::from_raw_parts_mut(state(1 - cur, b).add(units.start), w),
                            std::slice::from_raw_parts_mut(
                                out.at((t * batch + b) * out.width + units.start),
                                w,
                            ),
                        )
                    };
                    let gi_row = &gi[(base + p) * gw..][..g];
                    let gh_row = &gh[p * gw..][..g];
                    gates(gi_row, gh_row, hidden, units.clone(), &zeros, h, h_out, o);
                }
            }
            cur = 1 - cur;
            if s + 1 < t_len {
                leave_min_max(cur, time(s + 1), (s + 1) % 2);
            }
        }
        cur
    }
}

/// Where a direction writes its output: the layer's `(T, B, width)` output (zero past each
/// length), its `H` values of each row from column `offset` (bidirectional layers: both
/// directions at once, side by side as PyTorch lays them).
#[derive(Clone, Copy)]
pub(crate) struct LayerOut {
    pub ptr: SharedMut<f32>,
    pub width: usize,
    pub offset: usize,
}

impl LayerOut {
    /// # Safety
    /// `i + offset` lies in the layer's output.
    unsafe fn at(&self, i: usize) -> *mut f32 {
        unsafe { self.ptr.ptr().add(i + self.offset) }
    }
}

/// What the members share: the state buffers, the output and the min/max slots.
#[derive(Clone, Copy)]
struct Shared {
    states: SharedMut<f32>,
    out: LayerOut,
    slots: SharedMut<(f32, f32)>,
}

/// One member's place in its team.
struct Team<'a> {
    id: usize,
    members: usize,
    barrier: &'a SpinBarrier,
    shared: Shared,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quantized::input::min_max;
    use crate::quantized::WeightScheme;

    /// A team of any size gives the lone member's numbers bit for bit: every unit's products
    /// and gates are the same operations wherever its column lands, and the quantization of the
    /// state sees the same min and max. Sizes leave partial column blocks; lengths vary.
    #[test]
    fn teams_give_the_lone_member_s_numbers() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for (input, hidden, lengths) in [
            (7, 44, vec![20, 7, 13, 1, 20]),
            (16, 64, vec![18, 18, 18]),
            (5, 72, vec![3, 25, 25, 9, 14, 25, 2, 11, 25]),
        ] {
            let (batch, t_len) = (lengths.len(), *lengths.iter().max().unwrap());
            let plan = LengthPlan::new(&lengths, batch, t_len).unwrap();
            let g = 3 * hidden;
            let mut linear = |k: usize| {
                let w: Vec<i8> = (0..g * k).map(|_| next() as i8).collect();
                let scheme = WeightScheme::PerChannel {
                    scales: (0..g).map(|j| 0.002 + (j % 7) as f32 * 1e-4).collect(),
                    zero_points: vec![0; g],
                };
                let bias: Vec<f32> = (0..g).map(|j| (j % 11) as f32 * 0.05 - 0.25).collect();
                PackedInt8::new(&w, g, k, &scheme, Some(&bias))
            };
            let (ih, hh) = (linear(input), linear(hidden));
            let x: Vec<f32> = (0..t_len * batch * input)
                .map(|_| (next() % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let h0: Vec<f32> = (0..batch * hidden)
                .map(|_| (next() % 2001) as f32 / 2000.0 - 0.5)
                .collect();
            // The valid rows in packed order, quantized over all of them.
            let mut starts = vec![0];
            let mut xs = Vec::new();
            for t in 0..t_len {
                for &b in &plan.perm[..plan.active[t]] {
                    xs.push(&x[(t * batch + b) * input..][..input]);
                }
                starts.push(xs.len());
            }
            let (lo, hi) = min_max(xs.iter().copied());
            let q = choose_qparams(lo, hi, true);
            let kp = ih.k_padded();
            let mut qa = vec![0u8; xs.len() * kp];
            let sums: Vec<i32> = xs
                .iter()
                .zip(qa.chunks_mut(kp))
                .map(|(r, dst)| quantize_row(r, 1.0 / q.scale, q.zero_point, dst))
                .collect();
            let rows = QuantizedRows {
                qa: &qa,
                sums: &sums,
                starts: &starts,
                q,
            };
            for reverse in [false, true] {
                let dir = Direction {
                    ih: &ih,
                    hh: &hh,
                    hidden,
                    reduce_range: true,
                    reverse,
                };
                let run = |members: usize| {
                    let mut out = vec![0.0f32; t_len * batch * hidden];
                    let h = dir.run(
                        &rows,
                        Some(&h0),
                        (t_len, batch),
                        &plan,
                        members,
                        LayerOut {
                            ptr: SharedMut(out.as_mut_ptr()),
                            width: hidden,
                            offset: 0,
                        },
                    );
                    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                    (bits(&out), bits(&h))
                };
                let alone = run(1);
                assert!(
                    alone.0.iter().any(|&b| b != 0),
                    "the output is not all zero"
                );
                for members in [2, 3, 4] {
                    assert!(
                        run(members) == alone,
                        "{members} members, hidden {hidden}, reverse {reverse}"
                    );
                }
            }
        }
    }
}
